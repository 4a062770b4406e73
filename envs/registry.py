"""The ``robodistill/...`` environment ids and their privileged experts.

Registration uses entry-point strings, so importing this module is cheap: a task's MuJoCo
model is built only when an env of that id is made.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import gymnasium as gym

ENVIRONMENTS: dict[str, dict[str, Any]] = {
    "robodistill/PushT-v0": {
        "entry_point": "robodistill.envs.pusht:PushTEnv",
        "max_episode_steps": 300,
    },
    "robodistill/Nav-v0": {
        "entry_point": "robodistill.envs.nav:NavEnv",
        "max_episode_steps": 400,
        "kwargs": {"embodiment": "holonomic"},
    },
    "robodistill/AGVMaze-v0": {
        "entry_point": "robodistill.envs.agv_maze:AGVMazeEnv",
        "max_episode_steps": 1000,
        "kwargs": {"embodiment": "diffdrive"},
    },
}
"""id -> gymnasium.register keyword arguments, for the ids this package provides."""


class UnknownExpertError(ValueError):
    """No privileged expert exists for this environment id."""


EXPERTS: dict[str, str] = {
    "robodistill/PushT-v0": "robodistill.envs.pusht_smooth_expert:PushTSmoothExpert",
    "robodistill/Nav-v0": "robodistill.envs.nav_expert:NavPlannerExpert",
    "robodistill/AGVMaze-v0": "robodistill.envs.nav_expert:NavPlannerExpert",
}
"""id -> ``module:Class`` of the privileged expert that solves it (``collect.policy: expert``)."""


def embodiments(env_id: str) -> tuple[str, ...]:
    """Embodiments an id accepts through its ``embodiment`` keyword (empty: it has one body)."""
    from robodistill.envs.embodiments import EMBODIMENTS

    if env_id == "robodistill/Nav-v0":
        return tuple(EMBODIMENTS)
    default = ENVIRONMENTS.get(env_id, {}).get("kwargs", {}).get("embodiment")
    return (default,) if default else ()


def register_all() -> None:
    for env_id, kwargs in ENVIRONMENTS.items():
        if env_id not in gym.registry:
            gym.register(env_id, **kwargs)


def make_expert(env_id: str, **kwargs: Any):
    """The privileged expert policy for ``env_id`` (it reads the env's state via ``attach``).

    Keyword arguments the expert's constructor does not take (e.g. ``seed`` for a
    deterministic planner) are dropped.
    """
    if env_id not in EXPERTS:
        known = ", ".join(sorted(EXPERTS)) or "none yet"
        raise UnknownExpertError(
            f"no expert for env id {env_id!r}; experts exist for: {known}. "
            "Use policy 'random' or a saved policy directory instead."
        )
    module, _, name = EXPERTS[env_id].partition(":")
    cls = getattr(importlib.import_module(module), name)
    accepted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})
