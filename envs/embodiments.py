"""Embodiments for the navigation tasks: what a robot body can do, as data.

Adding an embodiment
--------------------
An embodiment is two things: an :class:`EmbodimentSpec` in :data:`EMBODIMENTS` (limits,
footprint, mass, whether it can strafe, its minimum turning radius) and an MJCF builder
function in ``robodistill.envs.nav.ROBOT_BUILDERS`` under the same name. The builder
returns a :class:`robodistill.envs.nav.RobotModel`: the ``<body>`` XML of the robot (a
chassis geom named ``chassis``, rangefinder sites on its rim), its actuators, and two small
callables that place the robot at a pose and turn a body-frame velocity command
``(vx, vy, yaw_rate)`` into ``data.ctrl``. Reuse ``omni_base`` (slide x/y + hinge yaw
driven by velocity actuators) or ``wheeled_base`` (free chassis with two wheel hinges and
casters) when the new robot moves like one of them. The environment does the rest from the
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
    observation_layout: tuple[dict[str, Any], ...] = field(
        default=OBSERVATION_LAYOUT, hash=False
    )

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
