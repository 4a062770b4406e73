"""Simulated environments: gymnasium on MuJoCo, plus the shared wrappers.

Imported as ``robodistill.envs``. Importing it registers the project's ``robodistill/...``
ids with gymnasium (``robodistill/PushT-v0``, ``robodistill/Nav-v0``,
``robodistill/AGVMaze-v0``); any other gymnasium id works wherever an env id is accepted.
"""

import os

if not os.environ.get("DISPLAY"):
    # Headless machines (CI, robots, clusters) render MuJoCo through EGL; set before any
    # module imports mujoco, which reads the variable once.
    os.environ.setdefault("MUJOCO_GL", "egl")

from robodistill.envs.make import (  # noqa: E402
    EnvIdError,
    FlattenDictObservation,
    check_env_id,
    control_rate_hz,
    make_env,
)
from robodistill.envs.registry import (  # noqa: E402
    ENVIRONMENTS,
    EXPERTS,
    UnknownExpertError,
    make_expert,
    register_all,
)
from robodistill.envs.spaces import flat_layout, space_from_json, space_to_json  # noqa: E402

register_all()
ROBODISTILL_ENV_IDS: tuple[str, ...] = tuple(ENVIRONMENTS)
"""Ids this package registers (``robodistill/...``); listed by ``robodistill envs``."""

__all__ = [
    "ENVIRONMENTS",
    "EXPERTS",
    "ROBODISTILL_ENV_IDS",
    "EnvIdError",
    "FlattenDictObservation",
    "UnknownExpertError",
    "check_env_id",
    "control_rate_hz",
    "flat_layout",
    "make_env",
    "make_expert",
    "space_from_json",
    "space_to_json",
]
