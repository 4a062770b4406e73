"""The ``teach`` stage: train the configured teacher into ``<run>/teach/policy``.

``teach.algo`` picks the trainer: ``rl100`` (:mod:`robodistill.teach.rl100.teacher`),
``compass`` (:mod:`robodistill.teach.compass.teacher`), else an RL teacher on
stable-baselines3 (:mod:`robodistill.teach.rl.sb3`) or, with ``teach.backend: rllib``,
Ray RLlib (:mod:`robodistill.teach.rl.rllib`).
"""

from __future__ import annotations

from typing import Any

from robodistill.config import RunConfig
from robodistill.core.rundir import StageRun
from robodistill.core.threads import torch_threads
from robodistill.data.demos import compass_inputs, demos_inputs
from robodistill.teach.compass.teacher import run_teach_compass
from robodistill.teach.rl.sb3 import run_teach_sb3
from robodistill.teach.rl100.teacher import run_teach_rl100


def _train_rllib(cfg: RunConfig, stage: StageRun) -> dict[str, Any]:
    # Lazy: Ray is an optional extra and slow to import; only RLlib runs need it.
    from robodistill.teach.rl.rllib import run_teach_rllib

    return run_teach_rllib(cfg, stage)


def run_teach(cfg: RunConfig, overwrite: bool = False) -> dict[str, Any]:
    """Train the configured teacher into ``<run>/teach/policy`` (resumable)."""
    inputs: dict[str, Any] = {}
    if cfg.teach.algo == "rl100":
        train = run_teach_rl100
        # Checked before the stage directory exists: no demos -> a clear error, nothing made.
        inputs = demos_inputs(cfg)
    elif cfg.teach.algo == "compass":
        train = run_teach_compass
        inputs = compass_inputs(cfg)  # no demos -> a clear error before the stage dir exists
    elif cfg.teach.backend == "rllib":
        train = _train_rllib
    else:
        train = run_teach_sb3
    # RL-100 and COMPASS apply their own sections' thread counts to each sub-stage.
    threads = cfg.teach.torch_threads if cfg.teach.algo in ("ppo", "sac") else None

    with StageRun(cfg, "teach", overwrite=overwrite, inputs=inputs) as stage:
        if stage.skipped:
            return stage.manifest["metrics"]
        with torch_threads(threads):
            metrics = train(cfg, stage)
        stage.finish(metrics)
        return metrics
