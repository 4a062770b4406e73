"""The ``control`` stage: an exported ONNX file in the real-time controller.

``run_control`` runs the file on ``env.id`` through the fixed-rate
:class:`~robodistill.deploy.controller.Controller` and reports success and timing;
``<run>/control/ticks.jsonl`` logs every tick.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from robodistill.config import ConfigError, RunConfig
from robodistill.core.rundir import StageRun
from robodistill.core.seeds import EVAL_SEED_OFFSET, episode_seeds
from robodistill.core.summaries import summarize_episodes
from robodistill.errors import MissingInput
from robodistill.export import ONNX_NAME, run_dir

log = logging.getLogger(__name__)


def control_model_path(cfg: RunConfig) -> Path:
    """``control.model``, or (``auto``) the run's ``export/policy.onnx``."""
    path = run_dir(cfg) / "export" / ONNX_NAME if cfg.control.model == "auto" else None
    path = path or Path(cfg.control.model)
    if not path.is_file():
        hint = ("run `robodistill export` for this run first, or set control.model=FILE"
                if cfg.control.model == "auto" else "give an .onnx file written by export")  # fmt: skip
        raise MissingInput(f"control.model: no ONNX file at {path}; {hint}")
    return path


def run_control(cfg: RunConfig, overwrite: bool = False) -> dict[str, Any]:
    """Run the ONNX policy on ``env.id`` at ``control.hz`` for ``control.episodes`` episodes."""
    # Lazy: onnxruntime is an optional extra ([deploy]).
    from robodistill.deploy.controller import Controller
    from robodistill.deploy.robot import SimRobot
    from robodistill.deploy.runtime import OnnxPolicy

    model = control_model_path(cfg)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    c = cfg.control
    with StageRun(cfg, "control", overwrite=overwrite, inputs={"model_digest": digest}) as stage:
        if stage.skipped:
            return stage.manifest["metrics"]
        policy = OnnxPolicy(model, threads=c.threads, execution=c.execution, seed=cfg.seed)
        hz = c.hz or policy.control_rate_hz
        if not hz:
            raise ConfigError(f"control.hz: {model} records no control rate; set control.hz")
        robot = SimRobot(cfg.env.id, episodes=c.episodes,
                         seeds=episode_seeds(cfg, c.episodes, EVAL_SEED_OFFSET),
                         max_episode_steps=cfg.env.max_episode_steps, env_kwargs=cfg.env.kwargs)  # fmt: skip
        try:
            env_obs = int(np.prod(robot.env.observation_space.shape))
            if env_obs != policy.observation_dim or robot.action_low.size != policy.action_dim:
                raise ConfigError(
                    f"env.id: {cfg.env.id} has {env_obs} observations and "
                    f"{robot.action_low.size} actions, the model {policy.observation_dim} and "
                    f"{policy.action_dim} (exported for {policy.metadata.get('env_id')})"
                )
            controller = Controller(
                policy, robot, hz, on_fault=c.on_fault, max_faults=c.max_faults,
                slew_rate=c.slew_rate, late_after=c.late_after, spin_s=c.spin_ms / 1e3,
                realtime_priority=c.realtime_priority,
                log_path=stage.dir / "ticks.jsonl" if c.log else None,
            )  # fmt: skip
            result = controller.run(ticks=c.max_ticks)
        finally:
            robot.close()
        episodes = result.episodes
        with open(stage.dir / "episodes.jsonl", "w") as out:
            out.writelines(json.dumps(e) + "\n" for e in episodes)
        summary = summarize_episodes([e["return"] for e in episodes],
                                     [e["length"] for e in episodes],
                                     [e["success"] for e in episodes],
                                     [e.get("max_score") for e in episodes],
                                     [e.get("score_source") for e in episodes])  # fmt: skip
        timing = result.to_dict()
        timing.pop("episodes")
        metrics = {**summary, "model": str(model), "hz": hz, **timing}
        log.info("control: %s", json.dumps(metrics))
        if result.reason == "interrupted":
            # Partial results stay in the manifest; the stage is re-run, not skipped, later.
            stage.checkpoint(metrics)
            raise KeyboardInterrupt
        stage.finish(metrics)
        return metrics
