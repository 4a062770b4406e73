"""COMPASS validation: a policy rolled out on one embodiment."""

from __future__ import annotations

from typing import Any

import numpy as np

from robodistill.config import RunConfig
from robodistill.policies import Policy
from robodistill.training.selection import rollout_summary


def embodiment_kwargs(cfg: RunConfig, embodiment: str) -> dict[str, Any]:
    """``env.kwargs`` with ``embodiment`` set (the env id must take that keyword), plus
    ``env.success_key`` (for :func:`robodistill.envs.make_env`)."""
    return cfg.env.make_kwargs({**cfg.env.kwargs, "embodiment": embodiment})


def validate_on_embodiment(
    cfg: RunConfig, policy: Policy, embodiment: str, seeds: list[int]
) -> dict[str, Any]:
    """Roll ``policy`` out on ``embodiment`` and ``seeds``: the summary (return, length, success)
    plus ``travel_steps`` (mean length of the successful episodes, None without one)."""
    out, episodes = rollout_summary(cfg, policy, seeds, f"compass-{embodiment}",
                                    embodiment_kwargs(cfg, embodiment))  # fmt: skip
    done = [e.length for e in episodes if e.success]
    out["travel_steps"] = float(np.mean(done)) if done else None
    return out
