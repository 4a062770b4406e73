"""COMPASS stages 1 and 2 (``teach.algo: compass``): the IL base with a world model, then one
residual PPO specialist per embodiment on top of it.

::

    robodistill collect --config configs/teachers/compass_nav.yaml   # holonomic expert demos
    robodistill teach   --config configs/teachers/compass_nav.yaml   # this module

Artifacts in ``<run>/teach/``::

    policy/                           the IL base (what ``eval`` shows as the teacher)
    compass/base/                     stage 1
      checkpoint/                     resumable (robodistill.training.checkpoint)
      policy/  best.json              best base by validation success on base_embodiment
      result.json                     present = done
    compass/specialists/<embodiment>/ stage 2, one per teach.compass.embodiments
      checkpoint/                     PPO's resumable state (robodistill.training.sb3's format)
      policy/  best.json              best specialist (a CompassSpecialist) on validation
      result.json                     present = done

Stage 1 (:func:`robodistill.teach.compass.base.run_base`) trains on transitions ``(o_t, a_t, o_{t+1})`` of the expert's
demonstrations: ``bc(head(z_t), a_t) + world_model_coef * (|f(z_t, a_t) - sg(z_{t+1})|² +
|dec(f(z_t, a_t)) - norm(o_{t+1})|²)`` with ``z = enc(o)``. Stage 2
(:func:`robodistill.teach.compass.specialists.train_residual`) wraps the env in the
residual wrappers of :mod:`robodistill.teach.compass.wrappers` (PPO's action is a residual
added to the frozen base's action; PPO's policy and critic see the base's latent and action), so stable-baselines3, or RLlib with the same wrapped env, trains
it unchanged. The step-0 specialist (a near-zero residual: ``log_std_init`` is small and SB3
initializes the action head at 0.01 gain) is validated first, so a specialist is never kept
worse than its base on the validation seeds. With ``teach.compass.workers > 1`` the
specialists train in parallel processes (:mod:`robodistill.teach.compass.workers`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from robodistill.config import ConfigError, RunConfig
from robodistill.core.rundir import (
    StageRun,
)
from robodistill.core.threads import torch_threads
from robodistill.envs.embodiments import EMBODIMENTS
from robodistill.policies.compass import CompassBase
from robodistill.teach.compass.base import run_base
from robodistill.teach.compass.specialists import specialist_dir, train_residual
from robodistill.teach.compass.workers import train_in_processes
from robodistill.training.checkpoint import finished_result

log = logging.getLogger(__name__)


# -- the teach stage -----------------------------------------------------------------------


def run_teach_compass(cfg: RunConfig, stage: StageRun) -> dict[str, Any]:
    """Stage 1, then stage 2 for every ``teach.compass.embodiments``; the teach metrics."""

    c = cfg.teach.compass
    unknown = sorted({c.base_embodiment, *c.embodiments} - set(EMBODIMENTS))
    if unknown:
        raise ConfigError(f"teach.compass: unknown embodiments {unknown}; known: "
                          f"{sorted(EMBODIMENTS)} (see robodistill.envs.embodiments)")  # fmt: skip
    t0 = time.monotonic()
    with torch_threads(c.torch_threads):
        base_result = run_base(cfg, stage)
        base = CompassBase.load(stage.dir / "compass" / "base" / "policy")
        base.save(stage.dir / "policy")
        budgets = {n: c.timesteps.get(n, cfg.teach.total_timesteps) for n in c.embodiments}
        todo = {n: b for n, b in budgets.items()
                if finished_result(specialist_dir(stage.dir, n)) is None}  # fmt: skip
        parallel = train_in_processes(cfg, stage, todo, c.workers) if (
            c.workers > 1 and len(todo) > 1) else {}  # fmt: skip
        specialists = {}
        for n, b in budgets.items():  # done ones just return their result.json
            specialists[n] = parallel[n] if n in parallel else train_residual(
                cfg, stage, base, n, specialist_dir(stage.dir, n), b)  # fmt: skip
    metrics = {"algo": "compass", "base": base_result, "specialists": specialists,
               "policy": str(stage.dir / "policy"), "compass": str(stage.dir / "compass"),
               "wall_s": round(time.monotonic() - t0, 2)}  # fmt: skip
    log.info("teach: %s", json.dumps({k: v for k, v in metrics.items() if k != "base"}))
    return metrics
