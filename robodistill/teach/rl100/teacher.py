"""The RL-100 teacher: a diffusion policy trained by imitation, then by RL on its denoising
chain. ``teach.rl100.stages`` lists the sub-stages run in order inside the ``teach`` stage;
``il`` (imitation), ``offline`` (OPE-gated RL on the denoising chain,
:mod:`robodistill.teach.rl100.offline`) and ``online`` (DPPO, :mod:`robodistill.teach.rl100.online`);
each is a function in :data:`SUBSTAGES`::

    with StageRun(cfg, "teach", inputs=demos_inputs(cfg)) as stage:
        metrics = run_teach_rl100(cfg, stage)
        stage.finish(metrics)

Artifacts in ``<run>/teach/``::

    policy/              best policy by validation success so far, over all sub-stages
                         (what later stages load as the teacher)
    best.json            the validation result that chose policy/
    il/
      checkpoint/        resumable training state: policy/ (net, EMA, normalizers),
                         optimizer.safetensors, state.json (step, EMA, RNG, scheduler)
      policy/            best imitation policy (the starting point of the RL sub-stages)
      policy_last/       the imitation policy when training ended
      result.json        the sub-stage's metrics; present = done (a resume skips it)

Imitation (``run_il``) is :mod:`robodistill.teach.rl100.imitation`; every sub-stage
runs with ``teach.rl100.torch_threads`` torch threads.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robodistill.config import RunConfig
from robodistill.core.rundir import StageRun, write_json_atomic
from robodistill.core.threads import torch_threads
from robodistill.data.demos import demos_path
from robodistill.policies.diffusion import DiffusionPolicy
from robodistill.teach.rl100.imitation import run_il
from robodistill.teach.rl100.offline import run_offline_rl
from robodistill.teach.rl100.online import run_online_rl
from robodistill.teach.rl100.residual_online import run_residual_online
from robodistill.training.checkpoint import finished_result
from robodistill.training.selection import BestPolicyKeeper

log = logging.getLogger(__name__)


SUMMARY_KEYS = ("episodes", "return_mean", "return_std", "length_mean", "success_rate",
                "max_score_mean", "score_source")  # fmt: skip
"""The kept policy's validation summary fields the teach stage's metrics repeat."""


def run_teach_rl100(cfg: RunConfig, stage: StageRun) -> dict[str, Any]:
    """Run ``teach.rl100.stages`` in order; returns the teach stage's metrics.

    Each sub-stage resumes from its own checkpoint and is skipped once its
    ``<sub>/result.json`` exists. The top-level ``success_rate`` / ``return_mean`` are the
    selected policy's numbers on the validation seeds (``robodistill eval`` reports the
    held-out evaluation seeds).
    """
    t0 = time.monotonic()
    results = {name: SUBSTAGES[name](cfg, stage) for name in cfg.teach.rl100.stages}
    best = json.loads((stage.dir / "best.json").read_text())
    metrics = {
        "algo": "rl100",
        "stages": list(results),
        **{k: best.get(k) for k in SUMMARY_KEYS},
        "selected_on": "validation seeds",
        "best_stage": best.get("stage"),
        "best_step": best.get("step"),
        "policy": str(stage.dir / "policy"),
        **{name: r for name, r in results.items()},
        "wall_s": round(time.monotonic() - t0, 3),
    }
    log.info("teach: %s", json.dumps(metrics))
    return metrics


def run_offline(cfg: RunConfig, stage: StageRun) -> dict[str, Any]:
    """Offline RL on the denoising chain, gated by OPE (:mod:`robodistill.teach.rl100.offline`).

    It starts from the imitation policy; its accepted policy is then rolled out on the
    validation seeds, so ``teach/policy`` advances only if it also wins in simulation.
    """
    sub = stage.dir / "offline"
    done = finished_result(sub) is not None
    with torch_threads(cfg.teach.rl100.torch_threads):
        result = run_offline_rl(cfg, stage, stage.dir / "il" / "policy", demos_path(cfg), sub)
    if not done and (sub / "policy").is_dir():
        keeper = BestPolicyKeeper(cfg, stage.dir, episodes=cfg.teach.rl100.rl_eval_episodes)
        keeper.revalidate()
        tag = {"stage": "offline"}
        evaluated, row = keeper.evaluate(DiffusionPolicy.load(sub / "policy"), 0, tag=tag)
        stage.log_metrics(int(result.get("updates", 0) or 0), tag | row)
        result["validation"] = {k: evaluated[k] for k in ("success_rate", "return_mean")}
        write_json_atomic(sub / "result.json", result)
    return result


def online_start(cfg: RunConfig, teach_dir: Path) -> Path:
    """The policy online RL starts from: the offline sub-stage's when it ran and accepted an
    update (it writes ``offline/policy`` only then), else the imitation policy."""
    if "offline" in cfg.teach.rl100.stages and (teach_dir / "offline" / "policy").is_dir():
        return teach_dir / "offline" / "policy"
    return teach_dir / "il" / "policy"


def run_online(cfg: RunConfig, stage: StageRun) -> dict[str, Any]:
    """Online RL from :func:`online_start`: DPPO on the denoising chain
    (:mod:`robodistill.teach.rl100.online`) or a PPO residual on the frozen policy
    (:mod:`robodistill.teach.rl100.residual_online`), as ``teach.online.method`` says; its
    result names the policy it started from (``started_from``)."""
    run = run_residual_online if cfg.teach.online.method == "residual" else run_online_rl
    with torch_threads(cfg.teach.rl100.torch_threads):
        return run(cfg, stage, online_start(cfg, stage.dir), stage.dir / "online")


SUBSTAGES: dict[str, Callable[[RunConfig, StageRun], dict[str, Any]]] = {
    "il": run_il,
    "offline": run_offline,
    "online": run_online,
}
"""Sub-stage name (``teach.rl100.stages`` entries) -> function(cfg, stage) -> metrics."""
