"""RL-100 stage 3, residual form (``teach.online.method: residual``): PPO learns a Gaussian
residual on every executed action of the frozen diffusion policy.

DPPO fine-tunes the denoising chain with a PPO clip of ~0.01, so each update moves the
policy very little; on this machine's hour of online training it never left the imitation
policy's neighbourhood on Nav (docs/algorithms/rl100.md). The residual form (ResiP, Ankile
et al. 2024; COMPASS's specialists here) keeps the diffusion policy as it is and lets plain
PPO correct it, step by step::

    base chunk  ~ diffusion policy (the online start policy, frozen; its own sampler)
    a_base      = the chunk's action for this step          (base.act, one row per env)
    features    = [a_base, obs]                              (policies.residual.base_features)
    residual    ~ N(mu(features), sigma)   in [-residual_limit, residual_limit]
    action      = clip(a_base + residual, low, high)

stable-baselines3's PPO trains the residual (``teach``'s PPO settings, observation
normalization, optional reward scaling); one copy of the base serves every env, one batch row
each (:class:`robodistill.training.residual_env.ResidualVecEnv`), so the chain runs batched. Every ``teach.eval_every`` env steps the
policy (base + deterministic residual, a :class:`ResidualPolicy`) runs on the
``teach.rl100.rl_eval_episodes`` validation seeds through the one
:class:`BestPolicyKeeper`; the :class:`CollapseDetector` and ``max_minutes`` stop training
as in DPPO. The result has the same fields as DPPO's (``best_iterate``, ``last_iterate``,
``kept``, ``started_from``, env steps), with ``method: residual``.

Resume: ``out_dir/checkpoint`` (:mod:`robodistill.training.sb3`'s format: PPO's weights,
optimizer and VecNormalize statistics, plus this stage's state) every
``teach.checkpoint_every`` env steps and at the end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from robodistill.core.rundir import write_json_atomic
from robodistill.core.seeds import ONLINE_RL_SEED_OFFSET, episode_seeds
from robodistill.envs import make_env
from robodistill.policies import load_policy
from robodistill.policies.diffusion import DiffusionPolicy
from robodistill.policies.residual import ResidualPolicy
from robodistill.policies.sb3_policy import SB3Policy
from robodistill.teach.rl100.chunk_envs import training_reward
from robodistill.teach.rl100.online import (
    CollapseDetector,
    check_chain,
    collapse_score,
    online_record,
    online_result,
)
from robodistill.training.checkpoint import result_or_workdir
from robodistill.training.residual_env import ResidualVecEnv
from robodistill.training.sb3 import (
    CheckpointCallback,
    EpisodeRecordCallback,
    EveryNSteps,
    restore_checkpoint,
    save_checkpoint,
)
from robodistill.training.selection import BestPolicyKeeper, is_better

log = logging.getLogger(__name__)


class ResidualOnlineMonitor(EveryNSteps):
    """Validation every ``teach.eval_every`` env steps (and at the start), the online
    stage's own best iterate in ``out_dir/policy``, the collapse detector and the wall-clock
    budget; ``state()`` goes into PPO's checkpoints."""

    def __init__(self, cfg, stage, out_dir: Path, base_dir: Path, vec_normalize,
                 state: dict[str, Any] | None):  # fmt: skip
        super().__init__(cfg.teach.eval_every)
        o, state = cfg.teach.online, state or {}
        self.cfg, self.stage, self.out_dir, self.vec_normalize = cfg, stage, out_dir, vec_normalize
        self.base = load_policy(base_dir)  # the evaluation copy (its rows are the seeds')
        self.keeper = BestPolicyKeeper(cfg, stage.dir, episodes=cfg.teach.rl100.rl_eval_episodes)
        self.detector = CollapseDetector(**state.get("detector", {"fraction": o.collapse_fraction,
                                                                  "patience": o.collapse_patience}))  # fmt: skip
        self.evals: list[dict[str, Any]] = state.get("evals", [])
        self.best_iterate = state.get("best_iterate")
        self.train_s0, self.t_run = float(state.get("train_s", 0.0)), time.monotonic()
        self.budget_s = None if o.max_minutes is None else 60.0 * o.max_minutes
        self.collapsed = bool(state.get("collapsed", False))
        self.stopped_by_budget = False

    def train_s(self) -> float:
        return self.train_s0 + time.monotonic() - self.t_run

    def policy(self, model) -> ResidualPolicy:
        return ResidualPolicy(self.base, SB3Policy.from_model(model, self.vec_normalize),
                              include_obs=True)  # fmt: skip

    def state(self) -> dict[str, Any]:
        return {"detector": asdict(self.detector),
                "evals": self.evals, "best_iterate": self.best_iterate,
                "train_s": self.train_s(), "collapsed": self.collapsed}  # fmt: skip

    def _on_training_start(self) -> None:
        super()._on_training_start()
        if not self.evals:  # step 0: the start policy plus PPO's near-zero initial residual
            self.evaluate(self.model)

    def due(self) -> None:
        self.evaluate(self.model)

    def _on_step(self) -> bool:
        if self.budget_s is not None and self.train_s() >= self.budget_s:
            self.stopped_by_budget = True
        return not (self.collapsed or self.stopped_by_budget)

    def evaluate(self, model) -> dict[str, Any]:
        steps = int(model.num_timesteps)
        if self.evals and self.evals[-1]["env_steps"] == steps:
            return self.evals[-1]
        policy = self.policy(model)
        result, row = self.keeper.evaluate(policy, steps, tag={"stage": "online"})
        self.stage.log_metrics(steps, {"stage": "online", "online_env_steps": steps, **row,
                                       "online_env_steps_per_s": steps / max(self.train_s(), 1e-9)})  # fmt: skip
        self.evals.append({"step": steps, "env_steps": steps,
                           **{k: result[k] for k in ("success_rate", "return_mean")}})  # fmt: skip
        if steps > 0 and is_better(result, self.best_iterate, self.keeper.selection):
            policy.save(self.out_dir / "policy")
            self.best_iterate = online_record(result, steps, steps)
        self.collapsed = self.detector.update(collapse_score(result))
        log.info("teach: rl100 residual online at %d env steps: success %s, return %.2f",
                 steps, result.get("success_rate"), result["return_mean"])  # fmt: skip
        return self.evals[-1]


def run_residual_online(cfg, stage, policy_dir, out_dir) -> dict[str, Any]:
    """Stage 3 of RL-100 in residual form (module docstring); arguments and result as
    :func:`robodistill.teach.rl100.online.run_online_rl`."""
    out_dir = Path(out_dir)
    if (done := result_or_workdir(out_dir)) is not None:
        return done
    t0, teach, o = time.monotonic(), cfg.teach, cfg.teach.online
    base = DiffusionPolicy.load(policy_dir)
    check_chain(cfg, base)
    max_steps = o.max_episode_steps or cfg.env.max_episode_steps

    def make_one():
        env = make_env(cfg.env.id, max_episode_steps=max_steps, **cfg.env.make_kwargs())
        return Monitor(training_reward(env, o))

    raw = DummyVecEnv([make_one for _ in range(o.num_envs)])
    raw.seed(episode_seeds(cfg, 1, ONLINE_RL_SEED_OFFSET)[0])
    # One base for every env, one batch row each: the chain runs once per step for all.
    venv = ResidualVecEnv(raw, base, o.residual_limit, include_obs=True)
    vec_normalize = None
    if teach.normalize_obs or o.reward_scaling:
        venv = vec_normalize = VecNormalize(venv, norm_obs=teach.normalize_obs,
                                            norm_reward=o.reward_scaling, gamma=o.gamma)  # fmt: skip
    model = PPO(
        "MlpPolicy", venv, n_steps=teach.n_steps, n_epochs=teach.n_epochs,
        learning_rate=teach.learning_rate, gamma=o.gamma, gae_lambda=o.gae_lambda,
        batch_size=teach.batch_size, seed=o.seed, device="cpu", verbose=0,
        policy_kwargs={"net_arch": list(teach.net_arch), "log_std_init": o.residual_log_std_init},
    )  # fmt: skip
    ckpt = out_dir / "checkpoint"
    state = restore_checkpoint(ckpt, model, vec_normalize, None)
    if state is not None:
        log.info("teach: rl100 residual online resumed at %d env steps", model.num_timesteps)
    monitor = ResidualOnlineMonitor(cfg, stage, out_dir, Path(policy_dir), vec_normalize, state)
    monitor.keeper.revalidate()  # the kept policy, on the seeds the iterates are judged on
    checkpointer = CheckpointCallback(ckpt, teach.checkpoint_every, vec_normalize, None, monitor)
    # The per-episode training record (teach/episodes.jsonl), as every teacher keeps one.
    record = EpisodeRecordCallback(stage.dir, model.num_timesteps if state is not None else None)
    remaining = o.residual_timesteps - model.num_timesteps
    try:
        if remaining > 0 and not monitor.collapsed:
            model.learn(remaining, callback=CallbackList([record, monitor, checkpointer]),
                        reset_num_timesteps=state is None)  # fmt: skip
        monitor.evaluate(model)  # the last iterate (skipped when just evaluated)
        monitor.policy(model).save(out_dir / "policy_last")
        save_checkpoint(ckpt, model, vec_normalize, None, monitor.state())
    finally:
        venv.close()
        record.close()
    if monitor.collapsed:
        log.warning("teach: rl100 residual online collapsed at %d env steps (evals %s); keeping "
                    "the best checkpoint %s", model.num_timesteps,
                    monitor.evals[-o.collapse_patience :], stage.dir / "policy")  # fmt: skip
    train_s = monitor.train_s()
    result = online_result(
        evals=monitor.evals, best_score=monitor.detector.best, started_from=policy_dir,
        best_iterate=monitor.best_iterate, keeper=monitor.keeper, out_dir=out_dir,
        kept_policy=stage.dir / "policy", env_steps=int(model.num_timesteps), train_s=train_s,
        t0=t0, method="residual", iterations=int(model._n_updates // max(teach.n_epochs, 1)),
        collapsed=monitor.collapsed, stopped_by_budget=monitor.stopped_by_budget,
        residual_limit=o.residual_limit,
    )  # fmt: skip
    write_json_atomic(out_dir / "result.json", result)
    return result
