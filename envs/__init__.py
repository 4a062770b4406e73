"""Simulated environments: gymnasium on MuJoCo, plus the shared wrappers.

Imported as ``robodistill.envs``. Importing it registers the project's ``robodistill/...``
ids with gymnasium (the MuJoCo tasks arrive with the simulators issue); any other
gymnasium id works wherever an env id is accepted.
"""

from robodistill.envs.make import (
    EnvIdError,
    FlattenDictObservation,
    check_env_id,
    control_rate_hz,
    make_env,
)
from robodistill.envs.registry import (
    ENVIRONMENTS,
    EXPERTS,
    UnknownExpertError,
    make_expert,
    register_all,
)
from robodistill.envs.spaces import flat_layout, space_from_json, space_to_json

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
