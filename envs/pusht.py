"""Push-T in MuJoCo: push a T-shaped block onto a fixed goal pose with a round pusher.

The task follows the Push-T benchmark of Chi et al. (diffusion policy) and IBC, rebuilt on
the official ``mujoco`` bindings with an MJCF model written here. Everything the user sees
(observations, actions, reward geometry) is in *workspace units*: the workspace is 512 x 512
units and **1 unit = 1 mm** inside the simulator (so the table is 0.512 m across)::

    y=0  +------------------------------------------+ x=512
         |  wall (5 units in)                       |
         |        o  pusher, radius 15              |
         |                                          |
         |            (256, 256) goal T, 45 deg     |
         |                  \\  (translucent green)  |
         |       ####### <- block bar 120 x 30      |
         |          #    <- block stem 30 x 120     |
         |          #                               |
    y=512+------------------------------------------+

Axes as in the original (pymunk/pygame): x to the right, y *down* on screen, angles turn
x towards y. The simulator is right-handed with z up, which is the same maths; only the
rendered image is flipped vertically so it looks like the original's.

The block's frame is the original's body frame: its origin is the middle of the bar's outer
edge, the bar spans x in [-60, 60], y in [0, 30] and the stem x in [-15, 15], y in [30, 120].
The block slides on planar joints (slide x, slide y, hinge z about the centre of mass at
(0, 45)) with strong viscous damping plus a little dry friction, so it stops as soon as it
is not pushed: the quasi-static behaviour of the original (pymunk damping 0).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

WORKSPACE = 512.0
"""Workspace side in units (the action range maps onto [0, WORKSPACE])."""
UNIT = 1e-3
"""Metres per workspace unit."""
PUSHER_RADIUS = 15.0
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])
"""Goal (x, y, angle) of the block frame, units / radians."""
SUCCESS_THRESHOLD = 0.95
"""Coverage at which an episode counts as solved (and terminates)."""
TEE_COM = np.array([0.0, 45.0])
"""Centre of mass in the block frame (mean of the two boxes' centres, as in the original)."""

# Two boxes in the block frame: (centre x, centre y, half width, half height), units.
TEE_BOXES = np.array([[0.0, 15.0, 60.0, 15.0], [0.0, 75.0, 15.0, 45.0]])
TEE_AREA = float(np.sum(4.0 * TEE_BOXES[:, 2] * TEE_BOXES[:, 3]))

# The 8 corners of the T's outline plus the centre of mass: the keypoint observation.
TEE_KEYPOINTS = np.array(
    [
        [-60.0, 0.0],
        [60.0, 0.0],
        [60.0, 30.0],
        [15.0, 30.0],
        [15.0, 120.0],
        [-15.0, 120.0],
        [-15.0, 30.0],
        [-60.0, 30.0],
        [0.0, 45.0],
    ]
)


def _tee_grid(spacing: float) -> np.ndarray:
    """Cell-centred sample points covering the T in its own frame, (N, 2) units."""
    points = []
    for cx, cy, hx, hy in TEE_BOXES:
        xs = np.arange(cx - hx + spacing / 2, cx + hx, spacing)
        ys = np.arange(cy - hy + spacing / 2, cy + hy, spacing)
        gx, gy = np.meshgrid(xs, ys)
        points.append(np.stack([gx.ravel(), gy.ravel()], axis=1))
    return np.concatenate(points)


_COVERAGE_GRID = _tee_grid(1.0)  # 6300 points, one per unit^2 of the T
# Every point of a T lies within this distance of its pose origin.
_TEE_RADIUS = float(np.linalg.norm(_COVERAGE_GRID, axis=1).max()) + 1.0


def rotation(angle: float) -> np.ndarray:
    """2x2 rotation matrix for ``angle`` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def tee_to_world(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Block-frame points (N, 2) -> world (N, 2) for block ``pose`` (x, y, angle)."""
    return points @ rotation(pose[2]).T + pose[:2]


def world_to_tee(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """World points (..., 2) -> block frame of ``pose`` (inverse of :func:`tee_to_world`)."""
    return (points - pose[:2]) @ rotation(pose[2])


def inside_tee(local: np.ndarray) -> np.ndarray:
    """Boolean mask: which block-frame points (..., 2) lie inside the T (edges included)."""
    x, y = local[..., 0], local[..., 1]
    bar = (np.abs(x) <= 60.0) & (y >= 0.0) & (y <= 30.0)
    stem = (np.abs(x) <= 15.0) & (y >= 30.0) & (y <= 120.0)
    return bar | stem


def tee_distance(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance (units) from world points (..., 2) to the T at ``pose``; 0 inside."""
    local = world_to_tee(pose, points)
    dists = []
    for cx, cy, hx, hy in TEE_BOXES:
        d = np.maximum(np.abs(local - (cx, cy)) - (hx, hy), 0.0)
        dists.append(np.hypot(d[..., 0], d[..., 1]))
    return np.minimum(dists[0], dists[1])


def coverage(block_pose: np.ndarray, goal_pose: np.ndarray = GOAL_POSE) -> float:
    """area(block T ∩ goal T) / area(goal T), from a 1-unit grid of points in the goal T.

    Args:
        block_pose: (3,) block (x, y, angle), units / radians.
        goal_pose: (3,) goal pose, same units.
    Returns:
        coverage in [0, 1]; exactly 1.0 when the poses are equal.
    """
    block = np.asarray(block_pose, np.float64)
    goal = np.asarray(goal_pose, np.float64)
    offset = goal[:2] - block[:2]
    if offset @ offset > (2 * _TEE_RADIUS) ** 2:
        return 0.0  # the two T's are too far apart to overlap; most steps of an episode
    # goal frame -> world -> block frame as one affine map: half the work of two transforms.
    rot_block = rotation(block[2])
    local = _COVERAGE_GRID @ (rotation(goal[2]).T @ rot_block) + offset @ rot_block
    return float(np.mean(inside_tee(local)))


def _score(cov: float) -> float:
    """Per-step reward and ``info["score"]``: ``clip(coverage / 0.95, 0, 1)``."""
    return float(np.clip(cov / SUCCESS_THRESHOLD, 0.0, 1.0))


def keypoint_error(block_pose: np.ndarray, goal_pose: np.ndarray = GOAL_POSE) -> float:
    """Mean distance (units) between the 9 keypoints at ``block_pose`` and at ``goal_pose``."""
    a = tee_to_world(np.asarray(block_pose, np.float64), TEE_KEYPOINTS)
    b = tee_to_world(np.asarray(goal_pose, np.float64), TEE_KEYPOINTS)
    return float(np.mean(np.linalg.norm(a - b, axis=1)))


def block_pose_from_qpos(qpos: np.ndarray) -> np.ndarray:
    """Block (x, y, angle) in units / radians from the model's qpos (5,) (metres, radians)."""
    angle = float(qpos[4])
    # The slides move the hinge point (centre of mass); the frame origin sits at -COM.
    origin = np.asarray(qpos[2:4]) / UNIT + TEE_COM - rotation(angle) @ TEE_COM
    return np.array([origin[0], origin[1], angle])


def qpos_from_units(pusher_xy: np.ndarray, block_pose: np.ndarray) -> np.ndarray:
    """Inverse of :func:`block_pose_from_qpos` plus the pusher: qpos (5,) in metres/radians."""
    x, y, angle = (float(v) for v in block_pose)
    slide = np.array([x, y]) - TEE_COM + rotation(angle) @ TEE_COM
    return np.array([*(np.asarray(pusher_xy, np.float64) * UNIT), *(slide * UNIT), angle])


def _box_geoms(prefix: str, attrs: str, z: float, half_z: float) -> str:
    return "\n".join(
        f'<geom name="{prefix}{i}" type="box" pos="{cx * UNIT} {cy * UNIT} {z}" '
        f'size="{hx * UNIT} {hy * UNIT} {half_z}" {attrs}/>'
        for i, (cx, cy, hx, hy) in enumerate(TEE_BOXES)
    )


def _goal_geoms() -> str:
    # A static, non-colliding copy of the T at the goal pose, barely above the table.
    x, y, a = GOAL_POSE
    return (
        f'<body name="goal" pos="{x * UNIT} {y * UNIT} 0" euler="0 0 {a}">'
        + _box_geoms("goal", 'contype="0" conaffinity="0" rgba="0.56 0.93 0.56 0.5"', 0.0005, 5e-4)
        + "</body>"
    )


def build_mjcf(render_size: int = 96) -> str:
    """The Push-T MJCF model (metres, seconds, kilograms) as a string."""
    w = WORKSPACE * UNIT
    half = w / 2
    com = TEE_COM * UNIT
    # Walls 5 units inside the workspace edge as in the original; 4 units thick.
    walls = "\n".join(
        f'<geom name="wall{i}" type="box" pos="{px} {py} 0.01" size="{sx} {sy} 0.01" '
        'contype="2" conaffinity="2" rgba="0.8 0.8 0.8 1"/>'
        for i, (px, py, sx, sy) in enumerate(
            [
                (0.005 - 0.002, half, 0.002, half),
                (w - 0.006 + 0.002, half, 0.002, half),
                (half, 0.005 - 0.002, half, 0.002),
                (half, w - 0.006 + 0.002, half, 0.002),
            ]
        )
    )
    offscreen = max(int(render_size), 64)
    return f"""
<mujoco model="pusht">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.005" integrator="implicitfast" gravity="0 0 0"/>
  <visual>
    <global offwidth="{offscreen}" offheight="{offscreen}"/>
    <headlight ambient="0.5 0.5 0.5" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
  </visual>
  <default>
    <geom solref="0.01 1" friction="0.3 0.005 0.0001" condim="3"/>
  </default>
  <worldbody>
    <camera name="top" projection="orthographic" fovy="{w}" pos="{half} {half} 1.0"/>
    <geom name="table" type="box" pos="{half} {half} -0.001" size="{half} {half} 0.001"
          contype="0" conaffinity="0" rgba="1 1 1 1"/>
    {walls}
    {_goal_geoms()}
    <body name="pusher" pos="0 0 0.01">
      <joint name="pusher_x" type="slide" axis="1 0 0"/>
      <joint name="pusher_y" type="slide" axis="0 1 0"/>
      <inertial pos="0 0 0" mass="1" diaginertia="1e-4 1e-4 1e-4"/>
      <geom name="pusher" type="sphere" size="{PUSHER_RADIUS * UNIT}"
            contype="1" conaffinity="1" rgba="0.25 0.41 0.88 1"/>
    </body>
    <body name="block" pos="0 0 0.01">
      <joint name="block_x" type="slide" axis="1 0 0" damping="10" frictionloss="0.02"/>
      <joint name="block_y" type="slide" axis="0 1 0" damping="10" frictionloss="0.02"/>
      <joint name="block_yaw" type="hinge" axis="0 0 1" pos="{com[0]} {com[1]} 0"
             damping="0.02" frictionloss="0.001"/>
      <inertial pos="{com[0]} {com[1]} 0" mass="0.1" diaginertia="1e-4 1e-4 1.9e-4"/>
      {_box_geoms("block", 'contype="3" conaffinity="3" rgba="0.47 0.53 0.6 1"', 0.0, 0.01)}
    </body>
  </worldbody>
  <actuator>
    <!-- omega_n = 40 rad/s, critically damped for the 1 kg pusher: settles in ~0.2 s -->
    <position name="pusher_x" joint="pusher_x" kp="1600" kv="80" ctrlrange="0 {w}"/>
    <position name="pusher_y" joint="pusher_y" kp="1600" kv="80" ctrlrange="0 {w}"/>
  </actuator>
</mujoco>
"""


class PushTEnv(gym.Env):
    """Push-T: push the T-shaped block onto the goal pose (256, 256, pi/4).

    Args:
        obs_type: ``"state"`` -> Box (5,) float32 = pusher x, y, block x, y, block angle in
            [0, 2 pi) (units, radians; the original's order); ``"keypoints"`` -> Box (20,) =
            9 block keypoints (x, y) flattened, then pusher x, y; ``"pixels"`` -> Dict with
            ``"pixels"`` (render_size, render_size, 3) uint8 and ``"agent_pos"`` (2,).
        render_mode: ``None`` or ``"rgb_array"`` (top-down orthographic camera).
        render_size: side of rendered frames and pixel observations, pixels.

    Actions: Box(-1, 1, (2,)) float32, the absolute target of the pusher, mapped linearly
    onto [0, 512] units per axis and tracked by two MuJoCo position actuators. Control runs
    at 10 Hz (``dt`` = 0.1 s = 20 physics steps of 5 ms).

    Reward: ``clip(coverage / 0.95, 0, 1)`` where coverage = area(block ∩ goal) / area(goal)
    (as in the original); ``terminated = info["is_success"] = coverage >= 0.95``;
    ``info["coverage"]`` holds the raw coverage.

    Score: ``info["score"]`` (in reset and step) is that same per-step reward,
    ``clip(coverage / 0.95, 0, 1)``. Its maximum over an episode's steps, averaged over
    episodes, is Diffusion Policy's Push-T ``mean_score`` (LeRobot's ``avg_max_reward``;
    the published DP checkpoint reaches 0.957): the "mean max score" that ``eval``, the
    report and the benchmarks show beside the success rate.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    n_substeps = 20
    obs_types = ("state", "keypoints", "pixels")

    def __init__(
        self,
        obs_type: str = "state",
        render_mode: str | None = None,
        render_size: int = 96,
    ):
        if obs_type not in self.obs_types:
            raise ValueError(f"obs_type must be one of {self.obs_types}, got {obs_type!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.obs_type = obs_type
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(self.render_size))
        self.data = mujoco.MjData(self.model)
        self.dt = self.model.opt.timestep * self.n_substeps
        self.goal_pose = GOAL_POSE.copy()
        self._renderer: mujoco.Renderer | None = None

        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        ws = WORKSPACE
        if obs_type == "state":
            self.observation_space = gym.spaces.Box(
                low=np.zeros(5, np.float32),
                high=np.array([ws, ws, ws, ws, 2 * np.pi], np.float32),
                dtype=np.float32,
            )
        elif obs_type == "keypoints":
            self.observation_space = gym.spaces.Box(0.0, ws, shape=(20,), dtype=np.float32)
        else:
            size = self.render_size
            self.observation_space = gym.spaces.Dict(
                {
                    "pixels": gym.spaces.Box(0, 255, (size, size, 3), dtype=np.uint8),
                    "agent_pos": gym.spaces.Box(0.0, ws, shape=(2,), dtype=np.float32),
                }
            )
        # Per flat entry, the amount its value 1 stands for (exported ONNX metadata records
        # them): 1 workspace unit = 1 mm; the action -1..1 spans the workspace's 512 mm.
        self.observation_units = {"state": ["mm"] * 4 + ["rad"], "keypoints": ["mm"] * 20}.get(
            obs_type
        )
        self.action_units = [f"{ws / 2:g} mm about the workspace centre"] * 2
        # Episode bookkeeping that privileged experts read (see PushTExpert).
        self.num_resets = 0
        self.elapsed_steps = 0
        self.episode_seed = 0

    # ----------------------------------------------------------------------------- state
    def pusher_position(self) -> np.ndarray:
        """Pusher centre (2,), units."""
        return self.data.qpos[0:2] / UNIT

    def block_pose(self) -> np.ndarray:
        """Block frame (x, y, angle), units / radians (angle unwrapped)."""
        return block_pose_from_qpos(self.data.qpos)

    def set_state_units(self, pusher_xy: np.ndarray, block_pose: np.ndarray) -> None:
        """Place pusher and block (units / radians) at rest, pusher target = its position."""
        self.data.qpos[:] = qpos_from_units(pusher_xy, block_pose)
        self.data.qvel[:] = 0.0
        self.data.ctrl[:] = self.data.qpos[0:2]
        mujoco.mj_forward(self.model, self.data)

    def coverage(self) -> float:
        """Current coverage of the goal T by the block, in [0, 1]."""
        return coverage(self.block_pose(), self.goal_pose)

    # ------------------------------------------------------------------------ gym API
    def _state_obs(self) -> np.ndarray:
        pose = self.block_pose()
        pose[2] = np.mod(pose[2], 2 * np.pi)
        obs = np.concatenate([self.pusher_position(), pose]).astype(np.float32)
        # float32 rounding of 2 pi - eps can reach 2 pi; clip keeps obs inside the space.
        return np.clip(obs, self.observation_space.low, self.observation_space.high)

    def _get_obs(self) -> Any:
        agent = np.clip(self.pusher_position(), 0.0, WORKSPACE).astype(np.float32)
        if self.obs_type == "state":
            return self._state_obs()
        if self.obs_type == "keypoints":
            kp = tee_to_world(self.block_pose(), TEE_KEYPOINTS).ravel()
            return np.clip(np.concatenate([kp, agent]), 0.0, WORKSPACE).astype(np.float32)
        return {"pixels": self._render_frame(), "agent_pos": agent}

    def _sample_start(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.np_random
        while True:
            pusher = rng.uniform(50.0, 450.0, size=2)
            block = np.array([*rng.uniform(100.0, 400.0, size=2), rng.uniform(-np.pi, np.pi)])
            corners = tee_to_world(block, TEE_KEYPOINTS[:8])
            inside_walls = np.all((corners > 10.0) & (corners < WORKSPACE - 10.0))
            touching = tee_distance(block, pusher) < PUSHER_RADIUS + 2.0
            if inside_walls and not touching and coverage(block) < SUCCESS_THRESHOLD:
                return pusher, block

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Random start: pusher in [50, 450]^2, block xy in [100, 400]^2, angle in [-pi, pi].

        Starts that are already successful, where the pusher touches the block, or where
        the block would overlap a wall are re-drawn (all from ``self.np_random``).
        """
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        pusher, block = self._sample_start()
        self.set_state_units(pusher, block)
        # A per-episode seed for privileged experts, drawn from the same stream so that
        # reset(seed=s) fixes it too.
        self.episode_seed = int(self.np_random.integers(2**31 - 1))
        self.num_resets += 1
        self.elapsed_steps = 0
        cov = self.coverage()
        info = {"coverage": cov, "score": _score(cov), "is_success": cov >= SUCCESS_THRESHOLD}
        return self._get_obs(), info

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self.data.ctrl[:] = (action + 1.0) / 2.0 * WORKSPACE * UNIT
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self.elapsed_steps += 1
        cov = self.coverage()
        success = cov >= SUCCESS_THRESHOLD
        reward = _score(cov)
        info = {"coverage": cov, "score": reward, "is_success": success}
        return self._get_obs(), reward, success, False, info

    # ------------------------------------------------------------------------- render
    def _render_frame(self) -> np.ndarray:
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.render_size, self.render_size)
        self._renderer.update_scene(self.data, camera="top")
        # The camera sees y up; flip rows so y points down as in the original images.
        return np.ascontiguousarray(self._renderer.render()[::-1])

    def render(self):
        """(render_size, render_size, 3) uint8 top-down frame when ``render_mode="rgb_array"``."""
        if self.render_mode == "rgb_array":
            return self._render_frame()
        return None

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
