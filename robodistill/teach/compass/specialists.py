"""COMPASS stage 2: one residual PPO specialist per embodiment on top of the frozen base
(stable-baselines3, validated and kept through the one best-policy keeper)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from robodistill.config import RunConfig
from robodistill.core.rundir import (
    MetricsAppender,
    StageRun,
    write_json_atomic,
)
from robodistill.policies import Policy
from robodistill.policies.compass import CompassSpecialist
from robodistill.policies.sb3_policy import SB3Policy
from robodistill.teach.compass.evaluation import validate_on_embodiment
from robodistill.teach.compass.wrappers import make_residual_env
from robodistill.training.checkpoint import result_or_workdir
from robodistill.training.sb3 import (
    CheckpointCallback,
    EpisodeRecordCallback,
    EveryNSteps,
    restore_checkpoint,
    save_checkpoint,
)
from robodistill.training.selection import BestPolicyKeeper

log = logging.getLogger(__name__)


class _SpecialistKeeper(EveryNSteps):
    """Every ``teach.eval_every`` steps validates the specialist and keeps the best in
    ``out/policy`` + ``out/best.json`` (the one keeper); ``state()`` goes into PPO's
    checkpoints."""

    def __init__(self, cfg: RunConfig, out: Path, base: Policy, embodiment: str, vec_normalize,
                 stage: StageRun | MetricsAppender):  # fmt: skip
        super().__init__(cfg.teach.eval_every)
        self.cfg, self.base, self.embodiment = cfg, base, embodiment
        self.vec_normalize, self.stage = vec_normalize, stage
        self.keeper = BestPolicyKeeper(
            cfg,
            out,
            validate=lambda policy, seeds: validate_on_embodiment(cfg, policy, embodiment, seeds),
        )
        self.last_step = -1

    @property
    def best(self) -> dict[str, Any] | None:
        return self.keeper.best

    def specialist(self, model) -> CompassSpecialist:
        residual = SB3Policy.from_model(model, self.vec_normalize)
        return CompassSpecialist(
            self.base, residual, self.embodiment, self.cfg.teach.compass.residual_obs
        )

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "last_eval_step": self.last_step}

    def _on_training_start(self) -> None:
        super()._on_training_start()
        if self.best is None:  # the step-0 specialist is the base (a near-zero residual)
            self.evaluate(self.model)

    def due(self) -> None:
        self.evaluate(self.model)

    def evaluate(self, model) -> dict[str, Any]:
        step = int(model.num_timesteps)
        result, _ = self.keeper.evaluate(self.specialist(model), step)
        self.stage.log_metrics(step, {"stage": f"specialist-{self.embodiment}", **{
            f"eval_{k}": result[k] for k in ("success_rate", "return_mean")}})  # fmt: skip
        log.info("teach: compass %s specialist at %d steps: success %s, return %.2f",
                 self.embodiment, step, result["success_rate"], result["return_mean"])  # fmt: skip
        self.last_step = step
        return result


def train_residual(cfg: RunConfig, stage: StageRun | MetricsAppender, base: Policy,
                   embodiment: str, out: Path, total_timesteps: int) -> dict[str, Any]:  # fmt: skip
    """Stage 2 for one embodiment: PPO on the residual (module docstring) into ``out``;
    resumable (:mod:`robodistill.training.sb3`'s checkpoints) and skipped once ``out/result.json`` exists.
    ``stage`` only receives the validation metrics (``log_metrics``)."""
    if (done := result_or_workdir(out)) is not None:
        return done
    teach, c, t0 = cfg.teach, cfg.teach.compass, time.monotonic()

    def make_one():
        return Monitor(make_residual_env(cfg, base, embodiment))

    venv = DummyVecEnv([make_one for _ in range(cfg.env.num_envs)])
    venv.seed(cfg.seed)
    vec_normalize = None
    if teach.normalize_obs or teach.normalize_reward:
        venv = vec_normalize = VecNormalize(venv, norm_obs=teach.normalize_obs,
                                            norm_reward=teach.normalize_reward, gamma=teach.gamma)  # fmt: skip
    model = PPO(
        "MlpPolicy", venv, n_steps=teach.n_steps, n_epochs=teach.n_epochs,
        learning_rate=teach.learning_rate, gamma=teach.gamma, batch_size=teach.batch_size,
        policy_kwargs={"net_arch": list(teach.net_arch), "log_std_init": c.log_std_init},
        seed=cfg.seed, tensorboard_log=str(out / "tb"), device="cpu", verbose=0,
    )  # fmt: skip
    ckpt = out / "checkpoint"
    state = restore_checkpoint(ckpt, model, vec_normalize, None)
    resumed_from = model.num_timesteps if state is not None else 0
    keeper = _SpecialistKeeper(cfg, out, base, embodiment, vec_normalize, stage)
    checkpointer = CheckpointCallback(ckpt, teach.checkpoint_every, vec_normalize, None, keeper)
    # The specialist's per-episode training record, out/episodes.jsonl.
    record = EpisodeRecordCallback(out, resumed_from if state is not None else None)
    remaining = total_timesteps - model.num_timesteps
    if remaining > 0:
        model.learn(remaining, callback=CallbackList([record, keeper, checkpointer]),
                    tb_log_name=f"residual-{embodiment}", reset_num_timesteps=state is None)  # fmt: skip
    record.close()
    if keeper.last_step != model.num_timesteps:
        keeper.evaluate(model)
    keeper.specialist(model).save(out / "policy_last")
    save_checkpoint(ckpt, model, vec_normalize, None, keeper.state())
    venv.close()
    best = keeper.best
    result = {"embodiment": embodiment, "timesteps": int(model.num_timesteps),
              "resumed_from_timesteps": int(resumed_from),
              "best_success_rate": best["success_rate"], "best_return_mean": best["return_mean"],
              "best_max_score_mean": best.get("max_score_mean"),
              "best_step": best["step"], "policy": str(out / "policy"),
              "wall_s": round(time.monotonic() - t0, 2)}  # fmt: skip
    write_json_atomic(out / "result.json", result)
    return result


def specialist_dir(stage_dir: Path, embodiment: str) -> Path:
    """Where the specialist of ``embodiment`` trains: ``teach/compass/specialists/<name>``."""
    return stage_dir / "compass" / "specialists" / embodiment
