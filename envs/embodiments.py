"""Embodiments for the navigation tasks: what a robot body can do, as data.

Adding an embodiment
--------------------
An embodiment is two things: an :class:`EmbodimentSpec` in :data:`EMBODIMENTS` (limits,
footprint, mass, whether it can strafe, its minimum turning radius) and an MJCF builder
function in :data:`ROBOT_BUILDERS` under the same name. The builder returns a
:class:`RobotModel`: the ``<body>`` XML of the robot (body ``robot``, a chassis geom named
``chassis``, rangefinder sites ``ray0..`` on its rim), its actuators, ``place()`` to put it
at a pose and ``command()`` to turn a body-frame velocity ``(vx, vy, yaw_rate)`` into
``data.ctrl``. Reuse :class:`OmniBase` (slide x/y + hinge yaw driven by velocity actuators)
or :class:`WheeledBase` (free chassis, two wheel hinges, casters) when the new robot moves
like one of them. The environment does the rest from the
spec alone: it scales the normalized action by the limits, drops ``vy`` when
``can_strafe`` is false, caps the yaw rate at ``|v| / min_turning_radius``, rate-limits by
``max_accel`` / ``max_yaw_accel``, and writes the descriptor part of the observation. Then
``NavEnv(embodiment="new_name")`` works, and the observation layout stays the same, so
padding and generalist code need no change.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

N_RAYS = 16
"""Rangefinder beams in the ring, evenly spaced, beam 0 straight ahead (counter-clockwise)."""

OBSERVATION_LAYOUT: tuple[dict[str, Any], ...] = (
    # goal: distance / GOAL_SCALE (clipped to [0, 5]), cos and sin of the bearing in the body frame
    {"key": "goal", "start": 0, "stop": 3},
    # ranges: clearance from the chassis rim along each beam / max range, in [0, 1]
    {"key": "ranges", "start": 3, "stop": 3 + N_RAYS},
    # velocity: body-frame vx, vy (/ VEL_SCALE) and yaw rate (/ YAW_SCALE), clipped to [-3, 3]
    {"key": "velocity", "start": 3 + N_RAYS, "stop": 6 + N_RAYS},
    # embodiment: the descriptor from EmbodimentSpec.descriptor(), each entry in [0, 1]
    {"key": "embodiment", "start": 6 + N_RAYS, "stop": 11 + N_RAYS},
)
"""Where each part of the flat Nav observation lives (identical for every embodiment)."""

# Normalization constants of the descriptor; fixed so that every embodiment shares a scale.
_RADIUS_SCALE = 0.5  # m
_SPEED_SCALE = 2.0  # m/s
_TURN_SCALE = 2.0  # m
_MASS_SCALE = 150.0  # kg

DESCRIPTOR_FIELDS: tuple[str, ...] = (
    f"footprint_radius / {_RADIUS_SCALE:g} m",
    f"max_vx / {_SPEED_SCALE:g} m/s",
    "can_strafe (0 or 1)",
    f"min_turning_radius / {_TURN_SCALE:g} m",
    f"mass / {_MASS_SCALE:g} kg",
)
"""What each entry of :meth:`EmbodimentSpec.descriptor` is (each clipped to [0, 1])."""
DESCRIPTOR_UNITS: tuple[str, ...] = (
    f"{_RADIUS_SCALE:g} m", f"{_SPEED_SCALE:g} m/s", "1", f"{_TURN_SCALE:g} m", f"{_MASS_SCALE:g} kg"
)  # fmt: skip
"""The unit of each descriptor entry: the amount its value 1 stands for."""


@dataclass(frozen=True)
class EmbodimentSpec:
    """Limits and shape of one robot body.

    Attributes:
        name: key in :data:`EMBODIMENTS` and in ``nav.ROBOT_BUILDERS``.
        observation_layout: ``[{"key", "start", "stop"}, ...]`` of the flat observation.
        action_dim: 3, the normalized ``(vx, vy, yaw_rate)`` command in ``[-1, 1]``.
        max_vx, max_vy: body-frame speed limits, m/s (``max_vy`` is 0 when it cannot strafe).
        max_yaw_rate: rad/s.
        max_accel: linear acceleration limit, m/s^2 (commands are rate-limited by it).
        max_yaw_accel: rad/s^2.
        footprint_radius: radius of the circle that contains the chassis, m.
        mass: kg.
        can_strafe: whether ``vy`` moves the robot sideways.
        min_turning_radius: m; 0 means it can turn in place.
        control_rate_hz: how often the policy acts.
        drive: how the MJCF realises the command (``"omni"``, ``"diff"``, ``"bicycle"``).
    """

    name: str
    max_vx: float
    max_vy: float
    max_yaw_rate: float
    max_accel: float
    max_yaw_accel: float
    footprint_radius: float
    mass: float
    can_strafe: bool
    min_turning_radius: float = 0.0
    control_rate_hz: float = 10.0
    drive: str = "omni"
    action_dim: int = 3
    observation_layout: tuple[dict[str, Any], ...] = field(default=OBSERVATION_LAYOUT, hash=False)

    @property
    def obs_dim(self) -> int:
        return max(part["stop"] for part in self.observation_layout)

    @property
    def action_limits(self) -> np.ndarray:
        """(3,) physical value of action +1 per dim: (m/s, m/s, rad/s)."""
        return np.array([self.max_vx, self.max_vy, self.max_yaw_rate], dtype=np.float64)

    def descriptor(self) -> np.ndarray:
        """(5,) float32 in [0, 1]: radius, max speed, can_strafe, min turning radius, mass."""
        return np.clip(
            np.array(
                [
                    self.footprint_radius / _RADIUS_SCALE,
                    self.max_vx / _SPEED_SCALE,
                    float(self.can_strafe),
                    self.min_turning_radius / _TURN_SCALE,
                    self.mass / _MASS_SCALE,
                ],
                dtype=np.float32,
            ),
            0.0,
            1.0,
        )

    def describe(self) -> dict[str, Any]:
        """The body as exported ONNX metadata records it: name, descriptor (fields and
        values, as the observation carries them) and the spec without its layout."""
        spec = {k: v for k, v in asdict(self).items() if k not in ("name", "observation_layout")}
        values = [float(v) for v in self.descriptor()]
        return {"name": self.name, "descriptor": {"fields": list(DESCRIPTOR_FIELDS),
                                                  "values": values}, "spec": spec}  # fmt: skip

    def to_json(self) -> str:
        """The spec as a JSON document (layout included)."""
        doc = asdict(self)
        doc["observation_layout"] = [dict(p) for p in self.observation_layout]
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> EmbodimentSpec:
        """Inverse of :meth:`to_json`; accepts the string or the parsed dict."""
        doc = dict(json.loads(text) if isinstance(text, str) else text)
        doc["observation_layout"] = tuple(dict(p) for p in doc.get("observation_layout", ()))
        return cls(**doc)


EMBODIMENTS: dict[str, EmbodimentSpec] = {
    # Omni base: the reference robot the planner expert is tuned for.
    "holonomic": EmbodimentSpec(
        name="holonomic",
        max_vx=1.0,
        max_vy=1.0,
        max_yaw_rate=1.5,
        max_accel=2.0,
        max_yaw_accel=4.0,
        footprint_radius=0.25,
        mass=15.0,
        can_strafe=True,
        drive="omni",
    ),
    # Two driven wheels + casters: no sideways motion, can turn in place.
    "diffdrive": EmbodimentSpec(
        name="diffdrive",
        max_vx=1.0,
        max_vy=0.0,
        max_yaw_rate=2.0,
        max_accel=1.5,
        max_yaw_accel=4.0,
        footprint_radius=0.25,
        mass=12.0,
        can_strafe=False,
        drive="diff",
    ),
    # Car-like: yaw rate bounded by |v| / R_min (kinematic bicycle), no turning in place.
    "ackermann": EmbodimentSpec(
        name="ackermann",
        max_vx=1.2,
        max_vy=0.0,
        max_yaw_rate=1.2,
        max_accel=1.5,
        max_yaw_accel=3.0,
        footprint_radius=0.3,
        mass=20.0,
        can_strafe=False,
        min_turning_radius=1.0,
        drive="bicycle",
    ),
    # Large, massive omni platform: slow to accelerate, needs wide gaps.
    "heavy": EmbodimentSpec(
        name="heavy",
        max_vx=0.6,
        max_vy=0.6,
        max_yaw_rate=0.8,
        max_accel=0.4,
        max_yaw_accel=0.8,
        footprint_radius=0.45,
        mass=120.0,
        can_strafe=True,
        drive="omni",
    ),
}
"""Every embodiment by name; ``NavEnv(embodiment=name)`` picks one."""

BUILTIN_MAX_FOOTPRINT = max(s.footprint_radius for s in EMBODIMENTS.values())
"""Largest footprint radius of the built-in bodies, taken before anything else registers:
Nav's layouts are generated for it, so a body registered later (a perturbed copy, a new
robot) never changes which layout a seed draws, whatever the import order."""


# ----------------------------------------------------------------------------------------
# MJCF builders. Collision bits: obstacles/walls/chassis use bit 1, floor/wheels/casters
# bit 2, so chassis never drags on the floor and wheels never snag on obstacles.

RAY_HEIGHT = 0.15
"""World height of the rangefinder ring, m (obstacles are 0.5 m tall)."""


def _ray_sites(radius: float, z: float) -> str:
    # Sites sit on the chassis rim so a reading is clearance, comparable across footprints;
    # rangefinders ignore the site's own body, so the chassis never blocks its own beams.
    sites = []
    for i in range(N_RAYS):
        a = 2 * np.pi * i / N_RAYS
        c, s = np.cos(a), np.sin(a)
        sites.append(
            f'<site name="ray{i}" pos="{radius * c:.4f} {radius * s:.4f} {z:.3f}" '
            f'zaxis="{c:.5f} {s:.5f} 0" size="0.01" rgba="1 0.5 0 0.3"/>'
        )
    return "\n".join(sites)


class RobotModel:
    """A robot's MJCF and the glue between the environment's command and ``data.ctrl``.

    Subclasses set ``body_xml`` / ``actuator_xml`` in ``__init__``; the environment calls
    :meth:`bind` once the model is compiled, then :meth:`place` on reset and :meth:`command`
    before each chunk of physics substeps.
    """

    body_xml: str = ""
    actuator_xml: str = ""
    substeps_per_command: int = 5
    """Physics substeps between :meth:`command` calls (world-frame targets drift with yaw)."""

    def __init__(self, spec: EmbodimentSpec):
        self.spec = spec

    def bind(self, model: Any) -> None:
        """Look up joint and actuator addresses in the compiled ``mujoco.MjModel``."""

    def place(self, model: Any, data: Any, x: float, y: float, yaw: float) -> None:
        """Put the robot at ``(x, y)`` m heading ``yaw`` rad, at rest."""
        raise NotImplementedError

    def command(self, model: Any, data: Any, v_body: np.ndarray) -> None:
        """Write ``data.ctrl`` so the robot tracks ``v_body`` = (vx m/s, vy m/s, yaw rad/s)."""
        raise NotImplementedError


class OmniBase(RobotModel):
    """Planar base: slide x, slide y, hinge yaw, each driven by a velocity actuator.

    Used for ``holonomic``, ``heavy`` and ``ackermann`` (the latter is a kinematically
    constrained base: the environment removes ``vy`` and caps ``|yaw_rate| <= |vx| / R_min``
    before the command reaches the actuators, i.e. a bicycle model, not steered wheels).
    """

    Z = RAY_HEIGHT

    def __init__(self, spec: EmbodimentSpec):
        super().__init__(spec)
        r, m = spec.footprint_radius, spec.mass
        izz = 0.5 * m * r * r
        # Gains scale with mass/inertia so every omni body tracks its (rate-limited) command
        # with the same ~25 ms time constant; sluggishness comes from the spec's accel limits.
        kv_lin, kv_yaw = 40.0 * m, 40.0 * izz
        self.body_xml = f"""
<body name="robot" pos="0 0 {self.Z}">
  <joint name="base_x" type="slide" axis="1 0 0"/>
  <joint name="base_y" type="slide" axis="0 1 0"/>
  <joint name="base_yaw" type="hinge" axis="0 0 1"/>
  <geom name="chassis" type="cylinder" size="{r} 0.1" mass="{m}" contype="1" conaffinity="1"
        rgba="0.2 0.4 0.9 1"/>
  <geom name="nose" type="box" size="{0.25 * r:.3f} {0.15 * r:.3f} 0.01"
        pos="{0.7 * r:.3f} 0 0.1" contype="0" conaffinity="0" mass="0" rgba="1 1 1 1"/>
  {_ray_sites(r, 0.0)}
</body>"""
        self.actuator_xml = f"""
<velocity name="act_x" joint="base_x" kv="{kv_lin:.3f}"/>
<velocity name="act_y" joint="base_y" kv="{kv_lin:.3f}"/>
<velocity name="act_yaw" joint="base_yaw" kv="{kv_yaw:.4f}"/>"""

    def bind(self, model: Any) -> None:
        self.qadr = [int(model.joint(n).qposadr[0]) for n in ("base_x", "base_y", "base_yaw")]
        self.vadr = [int(model.joint(n).dofadr[0]) for n in ("base_x", "base_y", "base_yaw")]
        self.act = [int(model.actuator(n).id) for n in ("act_x", "act_y", "act_yaw")]

    def place(self, model: Any, data: Any, x: float, y: float, yaw: float) -> None:
        data.qpos[self.qadr] = (x, y, yaw)
        data.qvel[self.vadr] = 0.0

    def command(self, model: Any, data: Any, v_body: np.ndarray) -> None:
        yaw = data.qpos[self.qadr[2]]
        c, s = np.cos(yaw), np.sin(yaw)
        vx, vy, w = v_body
        data.ctrl[self.act] = (c * vx - s * vy, s * vx + c * vy, w)


class WheeledBase(RobotModel):
    """Differential drive: free-floating chassis, two wheel hinges with floor friction,
    two frictionless casters (front/back). ``vy`` has no actuator to go to."""

    WHEEL_R = 0.06
    substeps_per_command = 20  # wheel speeds are body-frame: no drift, one write per step

    def __init__(self, spec: EmbodimentSpec):
        super().__init__(spec)
        r, m, wr = spec.footprint_radius, spec.mass, self.WHEEL_R
        self.half_track = r - 0.04
        body_mass = m - 1.0  # two 0.5 kg wheels
        # Casters float 2 mm above the floor when level, so the driven wheels carry the weight
        # (four coplanar contacts would let the frictionless casters take it and wheels slip).
        cz = f"{-(wr - 0.03) + 0.002:.3f}"
        self.body_xml = f"""
<body name="robot" pos="0 0 {wr}">
  <freejoint name="base_free"/>
  <geom name="chassis" type="cylinder" size="{r} 0.06" pos="0 0 0.09" mass="{body_mass}"
        contype="1" conaffinity="1" rgba="0.9 0.5 0.2 1"/>
  <geom name="nose" type="box" size="{0.25 * r:.3f} {0.15 * r:.3f} 0.01"
        pos="{0.7 * r:.3f} 0 0.15" contype="0" conaffinity="0" mass="0" rgba="1 1 1 1"/>
  <geom name="caster_f" type="sphere" size="0.03" pos="{r - 0.07:.3f} 0 {cz}" condim="1"
        contype="2" conaffinity="2" mass="0.1"/>
  <geom name="caster_b" type="sphere" size="0.03" pos="{-(r - 0.07):.3f} 0 {cz}" condim="1"
        contype="2" conaffinity="2" mass="0.1"/>
  <body name="wheel_l" pos="0 {self.half_track:.3f} 0">
    <joint name="wheel_l" type="hinge" axis="0 1 0" damping="0.01" armature="0.005"/>
    <geom type="cylinder" size="{wr} 0.02" zaxis="0 1 0" friction="1.2 0.01 0.001"
          contype="2" conaffinity="2" mass="0.5" rgba="0.1 0.1 0.1 1"/>
  </body>
  <body name="wheel_r" pos="0 {-self.half_track:.3f} 0">
    <joint name="wheel_r" type="hinge" axis="0 1 0" damping="0.01" armature="0.005"/>
    <geom type="cylinder" size="{wr} 0.02" zaxis="0 1 0" friction="1.2 0.01 0.001"
          contype="2" conaffinity="2" mass="0.5" rgba="0.1 0.1 0.1 1"/>
  </body>
  {_ray_sites(r, RAY_HEIGHT - wr)}
</body>"""
        self.actuator_xml = """
<velocity name="act_wl" joint="wheel_l" kv="3" forcelimited="true" forcerange="-6 6"/>
<velocity name="act_wr" joint="wheel_r" kv="3" forcelimited="true" forcerange="-6 6"/>"""

    def bind(self, model: Any) -> None:
        j = model.joint("base_free")
        self.qadr, self.vadr = int(j.qposadr[0]), int(j.dofadr[0])
        self.wheel_q = [int(model.joint(n).qposadr[0]) for n in ("wheel_l", "wheel_r")]
        self.wheel_v = [int(model.joint(n).dofadr[0]) for n in ("wheel_l", "wheel_r")]
        self.act = [int(model.actuator(n).id) for n in ("act_wl", "act_wr")]

    def place(self, model: Any, data: Any, x: float, y: float, yaw: float) -> None:
        q = self.qadr
        data.qpos[q : q + 7] = (x, y, self.WHEEL_R, np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        data.qvel[self.vadr : self.vadr + 6] = 0.0
        data.qpos[self.wheel_q] = 0.0
        data.qvel[self.wheel_v] = 0.0

    def command(self, model: Any, data: Any, v_body: np.ndarray) -> None:
        v, w = v_body[0], v_body[2]
        b = self.half_track
        data.ctrl[self.act] = ((v - w * b) / self.WHEEL_R, (v + w * b) / self.WHEEL_R)


ROBOT_BUILDERS: dict[str, type[RobotModel]] = {
    "holonomic": OmniBase,
    "diffdrive": WheeledBase,
    "ackermann": OmniBase,
    "heavy": OmniBase,
}
"""MJCF builder per embodiment name: ``ROBOT_BUILDERS[name](EMBODIMENTS[name])``."""
