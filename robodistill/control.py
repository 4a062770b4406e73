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
from robodistill.core.run_env import adopt_env, env_is_set, manifest_env, run_config_env
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


def control_env(cfg: RunConfig, model: Path) -> RunConfig:
    """``cfg`` with the env ``model`` was exported for, unless ``env.id`` is set: the env id
    in its metadata (``env_id``), with the rest of the env section (kwargs, step limit) from
    the export manifest beside the file when that records the same id; a file whose
    metadata names no env: that manifest's env, else the run's ``config.json``."""
    from robodistill.deploy.metadata import read_metadata  # lazy: needs onnxruntime

    if env_is_set(cfg):
        return cfg
    env_id = read_metadata(str(model)).get("env_id")
    found = manifest_env(model.parent, stages=("export",))
    if env_id is None:
        found = found or run_config_env(run_dir(cfg))
        return adopt_env(cfg, *found) if found else cfg
    if found is not None and found[0].get("id") == env_id:
        return adopt_env(cfg, *found)
    return adopt_env(cfg, {"id": env_id}, f"the metadata of {model}")


def robot_env_kwargs(cfg: RunConfig, metadata: dict[str, Any]) -> dict[str, Any]:
    """The SimRobot's env kwargs: the run's (``env.make_kwargs``), except that a model whose
    observation layout marks no ``privileged`` entry (every deployable student) meets the
    randomized env (``env.randomization``) without the privileged draw in its observation:
    the dynamics are still drawn per episode, the robot just does not see them."""
    kwargs = cfg.env.make_kwargs()
    r = kwargs.get("randomization")
    layout = (metadata.get("observation") or {}).get("layout") or []
    if r and r.get("privileged_obs") and not any(p.get("privileged") for p in layout):
        kwargs["randomization"] = {**r, "privileged_obs": False}
    return kwargs


def control_ratio(hz: float, policy_hz: float | None) -> int:
    """Controller ticks per policy tick: ``hz / policy_hz``, which must be an integer."""
    if policy_hz is None or policy_hz == hz:
        return 1
    ratio = hz / policy_hz
    if policy_hz > hz or abs(ratio - round(ratio)) > 1e-9:
        raise ConfigError(f"control.policy_hz: {policy_hz:g} Hz must divide control.hz "
                          f"({hz:g} Hz) a whole number of times")  # fmt: skip
    return int(round(ratio))


def wrap_policy(policy: Any, robot: Any, c: Any, ratio: int, chunk_log: Path | None):
    """``(policy, robot)`` for the controller: ``control.mode=async`` wraps the policy in an
    AsyncPolicy (RTC per ``control.rtc*``), ``ratio`` > 1 interpolates between its actions
    and steps the SimRobot once per policy tick."""
    from robodistill.deploy.async_control import AsyncPolicy
    from robodistill.deploy.interpolation import InterpolatingPolicy, SubsampledRobot
    from robodistill.deploy.rtc import RtcSettings

    if c.rtc and c.mode != "async":
        raise ConfigError("control.rtc: real-time chunking needs control.mode=async (--async)")
    driver = policy
    if c.mode == "async":
        rtc = (RtcSettings(c.rtc_schedule, c.rtc_delay, c.rtc_max_guidance, c.rtc_blend_steps)
               if c.rtc else None)  # fmt: skip
        driver = AsyncPolicy(policy, threshold=c.queue_threshold, rtc=rtc,
                             aggregate=c.aggregate, blend_weight=c.blend_weight,
                             hold_action=robot.safe_action(), log_path=chunk_log)  # fmt: skip
    if ratio > 1:
        driver = InterpolatingPolicy(driver, ratio, c.interpolation)
        robot = SubsampledRobot(robot, ratio)
    return driver, robot


def chunk_metrics(driver: Any) -> dict[str, Any]:
    """Per-chunk inference delays of an AsyncPolicy (steps and ms); empty for sync."""
    inner = getattr(driver, "inner", driver)
    chunks = getattr(inner, "chunks", None)
    if chunks is None:
        return {}
    from robodistill.deploy.controller import summarize_ms

    delays = [ch["delay_steps"] for ch in chunks]
    return {"chunks": len(chunks), "held_steps": inner.held,
            "chunk_delay_steps": {"median": float(np.median(delays)) if delays else None,
                                  "max": int(max(delays)) if delays else None},
            "chunk_compute_ms": summarize_ms([ch["compute_s"] for ch in chunks])}  # fmt: skip


def run_control(cfg: RunConfig, overwrite: bool = False) -> dict[str, Any]:
    """Run the ONNX policy on ``env.id`` at ``control.hz`` for ``control.episodes`` episodes."""
    # Lazy: onnxruntime is an optional extra ([deploy]).
    from robodistill.deploy.controller import Controller
    from robodistill.deploy.robot import SimRobot
    from robodistill.deploy.runtime import OnnxPolicy

    model = control_model_path(cfg)
    cfg = control_env(cfg, model)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    c = cfg.control
    with StageRun(cfg, "control", overwrite=overwrite, inputs={"model_digest": digest}) as stage:
        if stage.skipped:
            return stage.manifest["metrics"]
        policy = OnnxPolicy(model, threads=c.threads, execution=c.execution, seed=cfg.seed)
        hz = c.hz or policy.control_rate_hz
        if not hz:
            raise ConfigError(f"control.hz: {model} records no control rate; set control.hz")
        ratio = control_ratio(hz, c.policy_hz)
        robot = SimRobot(cfg.env.id, episodes=c.episodes,
                         seeds=episode_seeds(cfg, c.episodes, EVAL_SEED_OFFSET),
                         max_episode_steps=cfg.env.max_episode_steps,
                         env_kwargs=robot_env_kwargs(cfg, policy.metadata))  # fmt: skip
        try:
            env_obs = int(np.prod(robot.env.observation_space.shape))
            if env_obs != policy.observation_dim or robot.action_low.size != policy.action_dim:
                raise ConfigError(
                    f"env.id: {cfg.env.id} has {env_obs} observations and "
                    f"{robot.action_low.size} actions, the model {policy.observation_dim} and "
                    f"{policy.action_dim} (exported for {policy.metadata.get('env_id')})"
                )
            driver, plant = wrap_policy(
                policy, robot, c, ratio, stage.dir / "chunks.jsonl" if c.log else None
            )
            controller = Controller(
                driver, plant, hz, on_fault=c.on_fault, max_faults=c.max_faults,
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
        metrics = {**summary, "model": str(model), "hz": hz, **timing, "mode": c.mode,
                   "policy_hz": hz / ratio, **chunk_metrics(driver)}  # fmt: skip
        log.info("control: %s", json.dumps(metrics))
        if result.reason == "interrupted":
            # Partial results stay in the manifest; the stage is re-run, not skipped, later.
            stage.checkpoint(metrics)
            raise KeyboardInterrupt
        stage.finish(metrics)
        return metrics
