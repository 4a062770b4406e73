"""``robodistill/Nav-v0``: drive a robot among obstacles to a goal, for several embodiments.

The arena is one MuJoCo model per environment instance: a floor, four walls and a fixed
number of obstacle slots (boxes and cylinders). Each reset draws a :class:`Layout` from the
seed and moves/resizes those geoms in place (no recompilation); unused slots are parked
below the floor. The robot comes from ``ROBOT_BUILDERS[embodiment]``. About 60 % of layouts
have a partition wall whose short way through is a door only a small body fits (see
``NavEnv._generate_layout``); every layout is solvable by the largest footprint.

Observation (float32, 27 numbers, see ``EmbodimentSpec.observation_layout``)::

    goal (3)        distance / 5 m clipped to [0, 5], cos and sin of the bearing (body frame)
    ranges (16)     clearance from the chassis rim along 16 beams / 4 m, in [0, 1]
    velocity (3)    body-frame vx, vy / 1 m/s and yaw rate / 1 rad/s, clipped to [-3, 3]
    embodiment (5)  radius, max speed, can_strafe, min turning radius, mass (normalized)

With ``privileged_position=True`` four PRIVILEGED numbers follow (31 in all; the first 27
are unchanged), named in ``NavEnv.observation_layout`` with ``"privileged": True``::

    position (2)    world-frame x, y of the robot in m (room corner at the origin), in
                    [0, width] x [0, height] of the largest room the env draws
    heading (2)     cos and sin of the world-frame yaw

A real robot's policy would not get them (it has no map frame): they are meant as the
input of a count-like exploration bonus (RND), not of the policy.

``layout_seed=k`` fixes the arena: every reset uses the one :class:`Layout` drawn from
``k`` (room size, obstacles, partition, start pose and goal: the layout that
``reset(seed=k)`` draws without it), whatever the episode seed. The episode seed still
seeds ``np_random``, but the reset draws nothing else from it, so every episode starts from
the same state; only the actions make episodes differ.

Action: ``Box(-1, 1, (3,))`` = normalized (vx, vy, yaw rate), scaled by the embodiment's
limits and constrained by it (no ``vy`` without strafing, ``|yaw| <= |vx| / R_min``,
acceleration limits). Control at ``embodiment.control_rate_hz`` (10 Hz: ``dt`` = 0.1 s,
20 physics substeps of 5 ms).

Reward: ``"dense"`` = progress toward the goal (m) - ``collision_penalty`` (0.1) per step in
contact with an obstacle - 0.01 per step + ``success_bonus`` (10) on success; ``"sparse"`` = 1
on success, else 0.
``terminated`` only on success (collisions are penalized, not terminal);
``info["is_success"]`` when the robot centre is within 0.3 m of the goal.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from robodistill.envs.embodiments import (
    BUILTIN_MAX_FOOTPRINT,
    DESCRIPTOR_UNITS,
    EMBODIMENTS,
    N_RAYS,
    ROBOT_BUILDERS,
    EmbodimentSpec,
    RobotModel,
)
from robodistill.envs.nav_grid import GRID_RES, Layout, occupancy_grid, reachable, to_cell

MAX_RANGE = 4.0  # m, rangefinder normalization and cutoff
GOAL_SCALE = 5.0  # m
VEL_SCALE = 1.0  # m/s
YAW_SCALE = 1.0  # rad/s
GOAL_RADIUS = 0.3  # m
OBSTACLE_HEIGHT = 0.5  # m
MAX_FOOTPRINT = BUILTIN_MAX_FOOTPRINT
TIMESTEP = 0.005  # s
PARTITION_PROB = 0.7
"""Chance that a Nav-v0 layout draw gets a partition wall (a narrow and a wide door); draws
are rejected more often with one, so about 63 % of layouts (seeds 0-99) have it."""
NARROW_DOOR = (0.8, 0.86)  # m: > holonomic 0.5 m + planner margins, < heavy's 0.9 m
WIDE_DOOR = (1.15, 1.5)  # m: > 2 * (MAX_FOOTPRINT + 0.05), every body fits
PARTITION_HALF_THICKNESS = 0.1  # m
PARTITION_KEEPOUT = 1.0  # m, other obstacles' centres stay this far from the wall in x
ROOM_SIZE = (6.0, 9.0)  # m, range of a Nav-v0 room's width and height


def _partition(
    rng: np.random.Generator, xd: float, h: float, start: np.ndarray, goal: np.ndarray
) -> np.ndarray | None:
    """(3, 5) boxes of a wall at ``x = xd`` across ``[0, h]`` between ``start`` and
    ``goal`` (x, y): a narrow door near where the straight start-goal line crosses it and
    a wide side gate near the end of the wall that makes the longer detour; None if the
    doors do not fit."""
    t = PARTITION_HALF_THICKNESS
    (sx, sy), (gx, gy) = start[:2], goal[:2]
    y_cross = sy + (gy - sy) * (xd - sx) / (gx - sx)

    def detour(y: float) -> float:
        return float(np.hypot(xd - sx, y - sy) + np.hypot(gx - xd, gy - y))

    lo, hi = (0.8, 0.25 * h), (0.75 * h, h - 0.8)
    gate = lo if detour(np.mean(lo)) > detour(np.mean(hi)) else hi
    for _ in range(10):
        narrow, wide = rng.uniform(*NARROW_DOOR), rng.uniform(*WIDE_DOOR)
        yn = float(np.clip(y_cross + rng.normal(0.0, 0.3), 0.8, h - 0.8))
        yw = rng.uniform(*gate)
        doors = sorted([(yn - narrow / 2, yn + narrow / 2), (yw - wide / 2, yw + wide / 2)])
        edges = [0.0, doors[0][0], doors[0][1], doors[1][0], doors[1][1], h]
        spans = list(zip(edges[::2], edges[1::2], strict=True))
        if min(y1 - y0 for y0, y1 in spans) >= 0.3:
            return np.array([[xd, (y0 + y1) / 2, t, (y1 - y0) / 2, 0.0] for y0, y1 in spans])
    return None


def _arena_xml(robot: RobotModel, n_boxes: int, n_cyls: int, floor: float) -> str:
    h = OBSTACLE_HEIGHT / 2
    walls = "\n".join(
        f'<geom name="wall{i}" type="box" size="1 0.05 {h}" pos="0 0 {h}" rgba="0.5 0.5 0.55 1"/>'
        for i in range(4)
    )
    boxes = "\n".join(
        f'<geom name="box{i}" type="box" size="0.5 0.5 {h}" pos="0 0 -5" rgba="0.6 0.45 0.3 1"/>'
        for i in range(n_boxes)
    )
    cyls = "\n".join(
        f'<geom name="cyl{i}" type="cylinder" size="0.5 {h}" pos="0 0 -5" rgba="0.4 0.6 0.4 1"/>'
        for i in range(n_cyls)
    )
    sensors = "\n".join(f'<rangefinder name="range{i}" site="ray{i}"/>' for i in range(N_RAYS))
    return f"""
<mujoco model="robodistill_nav">
  <option timestep="{TIMESTEP}" integrator="implicitfast">
    <!-- obstacles move at reset: the compile-time BVH of the static world body is stale -->
    <flag midphase="disable"/>
  </option>
  <visual><global offwidth="640" offheight="640"/></visual>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1=".85 .85 .85" rgb2=".75 .75 .75"
             width="256" height="256"/>
    <material name="grid" texture="grid" texrepeat="{floor:.0f} {floor:.0f}"/>
  </asset>
  <default><geom contype="1" conaffinity="1" friction="0.6 0.005 0.0001"/></default>
  <worldbody>
    <light directional="true" pos="0 0 20" dir="0 0 -1"/>
    <geom name="floor" type="plane" size="{floor} {floor} 0.1" material="grid"
          contype="2" conaffinity="2" friction="1 0.005 0.0001"/>
    <camera name="top" pos="0 0 15" xyaxes="1 0 0 0 1 0" fovy="50"/>
    <site name="goal" type="cylinder" size="{GOAL_RADIUS} 0.005" pos="0 0 0.005"
          rgba="0.1 0.9 0.2 0.6"/>
    {walls}
    {boxes}
    {cyls}
    {robot.body_xml}
  </worldbody>
  <actuator>{robot.actuator_xml}</actuator>
  <sensor>{sensors}</sensor>
</mujoco>"""


class NavEnv(gym.Env):
    """Navigate to a goal among obstacles with a chosen embodiment (see module docstring).

    Args:
        embodiment: a key of ``EMBODIMENTS`` (``holonomic``, ``diffdrive``, ``ackermann``,
            ``heavy``).
        reward: ``"dense"`` or ``"sparse"``.
        n_obstacles: obstacles per layout (each a box or a cylinder).
        render_mode: ``None`` or ``"rgb_array"`` (top-down, 480x480).
        collision_penalty: dense reward lost per step in contact with an obstacle.
        success_bonus: dense reward for reaching the goal. Both weigh caution against
            reaching the goal (README, RL-100 section); the sparse reward ignores them.
        layout_seed: ``None`` (default): each reset draws a new layout from the episode
            seed. An int ``>= 0``: every reset uses the one layout drawn from it (room,
            obstacles, start pose and goal all fixed; see the module docstring).
        privileged_position: append the robot's world-frame position and heading (cos,
            sin) to the observation, as the PRIVILEGED layout entries ``position`` and
            ``heading`` (an exploration bonus's input; a real robot would not have them).

    Privileged state for experts: ``layout`` (:class:`Layout`), ``robot_pose()`` ->
    (x, y, yaw), ``embodiment_spec``, ``episode_count`` (increments on every reset).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    default_embodiment = "holonomic"
    expert_heading_mode = "goal"
    """How ``NavPlannerExpert(heading_mode="auto")`` steers heading here: ``"goal"``, the
    omni-base behaviour that leaves non-holonomic bodies a gap to close."""

    def __init__(
        self,
        embodiment: str | None = None,
        reward: str = "dense",
        n_obstacles: int = 8,
        render_mode: str | None = None,
        collision_penalty: float = 0.1,
        success_bonus: float = 10.0,
        layout_seed: int | None = None,
        privileged_position: bool = False,
    ):
        embodiment = embodiment or self.default_embodiment
        if embodiment not in EMBODIMENTS:
            raise ValueError(f"unknown embodiment {embodiment!r}; known: {sorted(EMBODIMENTS)}")
        if reward not in ("dense", "sparse"):
            raise ValueError(f"reward must be 'dense' or 'sparse', got {reward!r}")
        for name, w in (("collision_penalty", collision_penalty), ("success_bonus", success_bonus)):
            if not (isinstance(w, (int, float)) and np.isfinite(w) and w >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}")
        if layout_seed is not None and not (
            isinstance(layout_seed, (int, np.integer))
            and not isinstance(layout_seed, bool)
            and layout_seed >= 0
        ):
            raise ValueError(f"layout_seed must be an int >= 0 or None, got {layout_seed!r}")
        if not isinstance(privileged_position, (bool, np.bool_)):
            raise ValueError(
                f"privileged_position must be True or False, got {privileged_position!r}"
            )
        self.layout_seed = None if layout_seed is None else int(layout_seed)
        self.privileged_position = bool(privileged_position)
        self._fixed_layout: Layout | None = None
        self.embodiment_spec: EmbodimentSpec = EMBODIMENTS[embodiment]
        self.reward_type = reward
        self.collision_penalty, self.success_bonus = float(collision_penalty), float(success_bonus)
        self.n_obstacles = int(n_obstacles)
        self.render_mode = render_mode
        self.robot = ROBOT_BUILDERS[embodiment](self.embodiment_spec)
        n_boxes, n_cyls = self._slot_counts()
        xml = _arena_xml(self.robot, n_boxes, n_cyls, floor=self._floor_half_size())
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        self.robot.bind(self.model)
        self._n_substeps = round(1.0 / self.embodiment_spec.control_rate_hz / TIMESTEP)
        self.dt = self._n_substeps * TIMESTEP
        m = self.model
        self._walls = [m.geom(f"wall{i}").id for i in range(4)]
        self._boxes = [m.geom(f"box{i}").id for i in range(n_boxes)]
        self._cyls = [m.geom(f"cyl{i}").id for i in range(n_cyls)]
        self._solid = np.zeros(m.ngeom, dtype=bool)
        self._solid[self._walls + self._boxes + self._cyls] = True
        self._chassis = m.geom("chassis").id
        self._robot_body = m.body("robot").id
        self._goal_site = m.site("goal").id
        self._camera = m.camera("top").id
        self._range_adr = np.array([m.sensor(f"range{i}").adr[0] for i in range(N_RAYS)])

        self.action_space = gym.spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
        low = np.concatenate([[0, -1, -1], np.zeros(N_RAYS), -3 * np.ones(3), np.zeros(5)])
        high = np.concatenate([[5, 1, 1], np.ones(N_RAYS), 3 * np.ones(3), np.ones(5)])
        self.observation_layout = [dict(p) for p in self.embodiment_spec.observation_layout]
        if self.privileged_position:
            n = len(low)
            w, h = self._arena_size()
            low = np.concatenate([low, [0.0, 0.0, -1.0, -1.0]])
            high = np.concatenate([high, [w, h, 1.0, 1.0]])
            self.observation_layout += [
                {"key": "position", "start": n, "stop": n + 2, "privileged": True},
                {"key": "heading", "start": n + 2, "stop": n + 4, "privileged": True},
            ]
        self.observation_space = gym.spaces.Box(
            low.astype(np.float32), high.astype(np.float32), dtype=np.float32
        )
        self.observation_units, self.action_units = self._units()
        self.layout: Layout | None = None
        self.episode_count = 0
        self._cmd = np.zeros(3)
        self._renderer: mujoco.Renderer | None = None

    # --- layout ------------------------------------------------------------------------
    def _units(self) -> tuple[list[str], list[str]]:
        """Per flat entry, the amount its value 1 stands for (exported ONNX metadata records
        them): observations as the module docstring lists them, actions as the body's limits."""
        spec = self.embodiment_spec
        obs = [f"{GOAL_SCALE:g} m", "1", "1", *[f"{MAX_RANGE:g} m"] * N_RAYS,
               f"{VEL_SCALE:g} m/s", f"{VEL_SCALE:g} m/s", f"{YAW_SCALE:g} rad/s",
               *DESCRIPTOR_UNITS]  # fmt: skip
        if self.privileged_position:
            obs += ["m", "m", "1", "1"]
        return obs, [f"{spec.max_vx:g} m/s", f"{spec.max_vy:g} m/s", f"{spec.max_yaw_rate:g} rad/s"]

    def _slot_counts(self) -> tuple[int, int]:
        """Obstacle geoms (boxes, cylinders) compiled into the model."""
        return self.n_obstacles, self.n_obstacles

    def _floor_half_size(self) -> float:
        return 10.0

    def _arena_size(self) -> tuple[float, float]:
        """Largest (width, height) of a room this env draws, m: the bounds of the
        privileged ``position`` observation."""
        return ROOM_SIZE[1], ROOM_SIZE[1]

    def _generate_layout(self, rng: np.random.Generator) -> Layout:
        """Random room 6-9 m a side with ``n_obstacles`` obstacles, start and goal with at
        least 0.6 m clearance, goal >= half the room's diagonal away and reachable by the
        largest footprint.

        With probability ``PARTITION_PROB`` (and ``n_obstacles >= 3``) three of the
        obstacles instead form a partition wall across the room (at x = 40-60 % of its
        width) with start and goal on opposite sides. It has a narrow door (``NARROW_DOOR``
        m: a 0.5 m holonomic body passes, ``heavy``'s 0.9 m does not) near the straight
        start-goal line and a wide gate (``WIDE_DOOR`` m, every body fits) near an end:
        the short way is only open to small bodies, the detour to all. Reachability is
        checked with the full partition, for the largest footprint, so every embodiment
        can in principle succeed on every layout."""
        while True:
            w, h = rng.uniform(*ROOM_SIZE, size=2)
            partition = self.n_obstacles >= 3 and rng.random() < PARTITION_PROB
            n_free = self.n_obstacles - 3 * partition
            is_box = rng.random(n_free) < 0.5
            centres = rng.uniform([0.5, 0.5], [w - 0.5, h - 0.5], size=(n_free, 2))
            half = rng.uniform(0.2, 0.6, size=(n_free, 2))
            yaw = rng.uniform(0, np.pi, size=n_free)
            if partition:  # keep the other obstacles off the wall, so its doors stay open
                xd = rng.uniform(0.4, 0.6) * w
                keep = PARTITION_KEEPOUT
                left = xd - keep - 0.5  # length of [0.5, xd - keep]
                u = rng.uniform(0.0, w - 1.0 - 2 * keep, size=n_free)
                centres[:, 0] = np.where(u < left, 0.5 + u, xd + keep + (u - left))
            boxes = np.column_stack([centres, half, yaw])[is_box]
            cyls = np.column_stack([centres, half[:, 0]])[~is_box]
            layout = Layout(w, h, boxes, cyls, np.zeros(3), np.zeros(2))
            min_dist = 0.5 * np.hypot(w, h)
            if not partition:
                if self._place_start_goal(layout, rng, clearance=0.6, min_dist=min_dist):
                    return layout
                continue
            off = PARTITION_HALF_THICKNESS + 0.7  # start/goal clearance from the wall
            zones = ((0.0, xd - off), (xd + off, w))
            if rng.random() < 0.5:
                zones = zones[::-1]
            # Start and goal first (reachable without the wall), then the wall between them.
            if not self._place_start_goal(
                layout, rng, clearance=0.6, min_dist=min_dist, start_zone=zones[0],
                goal_zone=zones[1],
            ):  # fmt: skip
                continue
            wall = _partition(rng, xd, h, layout.start, layout.goal)
            if wall is None:
                continue
            layout.boxes = np.concatenate([wall, boxes])
            free = ~occupancy_grid(layout, MAX_FOOTPRINT + 0.05)
            if reachable(free, to_cell(layout.start), to_cell(layout.goal)):
                return layout

    def _place_start_goal(
        self,
        layout: Layout,
        rng: np.random.Generator,
        clearance: float,
        min_dist: float,
        start_zone: tuple[float, float] | None = None,
        goal_zone: tuple[float, float] | None = None,
    ) -> bool:
        """Fill ``layout.start`` / ``layout.goal``; False if no reachable pair was found.

        Zones restrict x to ``[lo, hi]`` m. Reachability uses the largest footprint of any
        embodiment plus 5 cm, so one seed gives the same solvable layout for every body.
        """
        clear = ~occupancy_grid(layout, clearance)
        free = ~occupancy_grid(layout, MAX_FOOTPRINT + 0.05)
        cells = np.argwhere(clear)
        x = (cells[:, 1] + 0.5) * GRID_RES

        def in_zone(zone):
            return cells if zone is None else cells[(x >= zone[0]) & (x <= zone[1])]

        s_cells, g_cells = in_zone(start_zone), in_zone(goal_zone)
        if len(s_cells) == 0 or len(g_cells) == 0:
            return False
        for _ in range(20):
            s = s_cells[rng.integers(len(s_cells))]
            g = g_cells[rng.integers(len(g_cells))]
            sxy, gxy = (s[::-1] + 0.5) * GRID_RES, (g[::-1] + 0.5) * GRID_RES
            if np.hypot(*(gxy - sxy)) < min_dist:
                continue
            if reachable(free, tuple(s), tuple(g)):
                layout.start = np.array([sxy[0], sxy[1], rng.uniform(-np.pi, np.pi)])
                layout.goal = gxy
                return True
        return False

    def _apply_layout(self, layout: Layout) -> None:
        m, half_h = self.model, OBSTACLE_HEIGHT / 2
        w, h, t = layout.width, layout.height, 0.05
        walls = [
            (w / 2, -t, w / 2 + 2 * t, t),
            (w / 2, h + t, w / 2 + 2 * t, t),
            (-t, h / 2, t, h / 2 + 2 * t),
            (w + t, h / 2, t, h / 2 + 2 * t),
        ]
        for gid, (cx, cy, hx, hy) in zip(self._walls, walls, strict=True):
            self._set_geom(gid, (cx, cy, half_h), (hx, hy, half_h), 0.0)
        for i, gid in enumerate(self._boxes):
            if i < len(layout.boxes):
                cx, cy, hx, hy, yaw = layout.boxes[i]
                self._set_geom(gid, (cx, cy, half_h), (hx, hy, half_h), yaw)
            else:
                self._set_geom(gid, (0, 0, -5), (0.1, 0.1, 0.1), 0.0)
        for i, gid in enumerate(self._cyls):
            if i < len(layout.cylinders):
                cx, cy, r = layout.cylinders[i]
                self._set_geom(gid, (cx, cy, half_h), (r, half_h, 0), 0.0)
            else:
                self._set_geom(gid, (0, 0, -5), (0.1, 0.1, 0), 0.0)
        m.site_pos[self._goal_site, :2] = layout.goal
        fovy = np.deg2rad(m.cam_fovy[self._camera])
        m.cam_pos[self._camera] = (w / 2, h / 2, 0.55 * max(w, h) / np.tan(fovy / 2) + 0.5)

    def _set_geom(self, gid: int, pos, size, yaw: float) -> None:
        m = self.model
        m.geom_pos[gid] = pos
        m.geom_quat[gid] = (np.cos(yaw / 2), 0, 0, np.sin(yaw / 2))
        m.geom_size[gid] = size
        # Broad/mid-phase use the bounding sphere and local AABB cached at compile time:
        # they must follow the new size or collisions with grown geoms are missed.
        if m.geom_type[gid] == mujoco.mjtGeom.mjGEOM_BOX:
            half = np.asarray(size, dtype=np.float64)
        else:  # cylinder: size = (radius, half height)
            half = np.array([size[0], size[0], size[1]], dtype=np.float64)
        m.geom_rbound[gid] = np.linalg.norm(half)
        m.geom_aabb[gid] = np.concatenate([np.zeros(3), half])

    # --- gymnasium API -----------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self.layout_seed is None:
            self.layout = self._generate_layout(self.np_random)
        else:  # one layout for every episode, drawn as reset(seed=layout_seed) would
            if self._fixed_layout is None:
                self._fixed_layout = self._generate_layout(
                    gym.utils.seeding.np_random(self.layout_seed)[0]
                )
            self.layout = self._fixed_layout.copy()
        self.episode_count += 1
        self._apply_layout(self.layout)
        mujoco.mj_resetData(self.model, self.data)
        self.robot.place(self.model, self.data, *self.layout.start)
        mujoco.mj_forward(self.model, self.data)
        self._cmd = np.zeros(3)
        self._prev_dist = self._goal_distance()
        return self._obs(), {"is_success": False}

    def step(self, action):
        if self.layout is None:
            raise RuntimeError("call reset() before step()")
        self._cmd = self._constrain(np.asarray(action, dtype=np.float64).reshape(3))
        every = self.robot.substeps_per_command
        for k in range(0, self._n_substeps, every):
            self.robot.command(self.model, self.data, self._cmd)
            mujoco.mj_step(self.model, self.data, nstep=min(every, self._n_substeps - k))
        dist = self._goal_distance()
        success = dist <= GOAL_RADIUS
        collision = self._in_collision()
        if self.reward_type == "sparse":
            reward = 1.0 if success else 0.0
        else:
            reward = (
                (self._prev_dist - dist)
                - self.collision_penalty * collision
                - 0.01
                + self.success_bonus * success
            )
        self._prev_dist = dist
        info = {"is_success": bool(success), "collision": bool(collision), "distance": dist}
        return self._obs(), float(reward), bool(success), False, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, 480, 480)
        self._renderer.update_scene(self.data, camera=self._camera)
        return self._renderer.render()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # --- internals -----------------------------------------------------------------------
    def _constrain(self, action: np.ndarray) -> np.ndarray:
        """Normalized action -> physical body-frame command (vx, vy, yaw) within the spec."""
        spec = self.embodiment_spec
        target = np.clip(np.nan_to_num(action), -1.0, 1.0) * spec.action_limits
        if not spec.can_strafe:
            target[1] = 0.0
        dv = target[:2] - self._cmd[:2]
        step = spec.max_accel * self.dt
        norm = np.hypot(*dv)
        if norm > step:
            dv *= step / norm
        cmd = self._cmd.copy()
        cmd[:2] += dv
        cmd[2] += np.clip(
            target[2] - cmd[2], -spec.max_yaw_accel * self.dt, spec.max_yaw_accel * self.dt
        )
        if spec.min_turning_radius > 0:
            cap = abs(cmd[0]) / spec.min_turning_radius
            cmd[2] = np.clip(cmd[2], -cap, cap)
        return cmd

    def robot_pose(self) -> np.ndarray:
        """(3,) world ``[x m, y m, yaw rad]`` of the chassis body."""
        xmat = self.data.xmat[self._robot_body]
        x, y = self.data.xpos[self._robot_body, :2]
        return np.array([x, y, np.arctan2(xmat[3], xmat[0])])

    def body_velocity(self) -> np.ndarray:
        """(3,) body-frame ``[vx m/s, vy m/s, yaw rate rad/s]`` of the chassis."""
        vel = np.zeros(6)
        mujoco.mj_objectVelocity(
            self.model, self.data, mujoco.mjtObj.mjOBJ_XBODY, self._robot_body, vel, 1
        )
        return np.array([vel[3], vel[4], vel[2]])

    def ranges(self) -> np.ndarray:
        """(N_RAYS,) clearance along each beam in m, capped at ``MAX_RANGE``."""
        r = self.data.sensordata[self._range_adr].copy()
        r[(r < 0) | (r > MAX_RANGE)] = MAX_RANGE
        return r

    def _goal_distance(self) -> float:
        return float(np.hypot(*(self.layout.goal - self.robot_pose()[:2])))

    def _in_collision(self) -> bool:
        d = self.data
        for i in range(d.ncon):
            g1, g2 = d.contact.geom1[i], d.contact.geom2[i]
            if (g1 == self._chassis and self._solid[g2]) or (
                g2 == self._chassis and self._solid[g1]
            ):
                return True
        return False

    def _obs(self) -> np.ndarray:
        x, y, yaw = self.robot_pose()
        dx, dy = self.layout.goal - (x, y)
        dist = np.hypot(dx, dy)
        bearing = np.arctan2(dy, dx) - yaw
        vel = self.body_velocity() / (VEL_SCALE, VEL_SCALE, YAW_SCALE)
        parts = [
            [min(dist / GOAL_SCALE, 5.0), np.cos(bearing), np.sin(bearing)],
            self.ranges() / MAX_RANGE,
            np.clip(vel, -3.0, 3.0),
            self.embodiment_spec.descriptor(),
        ]
        if self.privileged_position:
            parts.append([x, y, np.cos(yaw), np.sin(yaw)])
        obs = np.concatenate(parts).astype(np.float32)
        return np.clip(obs, self.observation_space.low, self.observation_space.high)
