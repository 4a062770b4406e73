"""Train an RL teacher (PPO or SAC) with stable-baselines3; the ``teach`` stage's loop.

::

    with StageRun(cfg, "teach") as stage:
        metrics = run_teach_sb3(cfg, stage)
        stage.finish(metrics)

Artifacts in ``<run>/teach/``::

    policy/        best evaluated policy (an SB3Policy, or with ``teach.privileged`` a
                   PrivilegedTeacher: what later stages load as teacher)
    policy_last/   the policy when training ended
    checkpoint/    resumable training state (no pickle), replaced atomically
    best.json      evaluation that chose policy/ (survives restarts)
    episodes.jsonl every training episode: return, length, success, env steps, wall time
    tb/            SB3's TensorBoard scalars (and the stage's own)

Reads top to bottom: environments, model, resume, callbacks, ``learn``, final evaluation.

Resuming restores the policy and optimizer states, ``num_timesteps``, VecNormalize's
statistics and the exploration module's state, then trains until ``total_timesteps``.
It is not bit-identical to an uninterrupted run: environments are re-seeded from
``cfg.seed``, PPO's partially collected rollout is lost, and **SAC's replay buffer is not
saved** (it can be gigabytes, and SB3 only saves it with pickle): a resumed SAC refills
it with ``max(learning_starts, batch_size)`` uniformly random steps before updating again,
exactly like its warm-up at the start.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from robodistill.config import RunConfig
from robodistill.core.rollout import env_spaces
from robodistill.core.rundir import StageRun
from robodistill.envs import make_env
from robodistill.policies.privileged import PrivilegedTeacher
from robodistill.policies.sb3_policy import SB3Policy
from robodistill.teach.rl.exploration_sb3 import find_exploration_env, wrap_exploration
from robodistill.teach.rl.metrics import teacher_metrics
from robodistill.teach.rl.privileged import MODES as PRIVILEGED_MODES
from robodistill.teach.rl.privileged import (
    PrivilegedActorCriticPolicy,
    PrivilegedExtractor,
    layout_indices,
)
from robodistill.teach.rl.two_stream_ppo import TwoStreamPPO
from robodistill.training.sb3 import (
    CheckpointCallback,
    EpisodeRecordCallback,
    EvalCallback,
    ProgressCallback,
    TrainSuccessCallback,
    restore_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"


def privileged_policy_kwargs(cfg: RunConfig, make_one) -> dict[str, Any]:
    """``policy_kwargs`` of :class:`PrivilegedActorCriticPolicy` for ``teach.privileged``:
    the robot / privileged indices from the env's layout (``env.randomization`` with
    ``privileged_obs: true``, checked by the config), ``teach.net_arch``, the encoder."""
    probe = make_one()
    try:
        robot, priv = layout_indices(probe)
    finally:
        probe.close()
    actor_p, critic_p = PRIVILEGED_MODES[cfg.teach.privileged]
    return {
        "features_extractor_class": PrivilegedExtractor,
        "features_extractor_kwargs": {
            "robot_idx": robot.tolist(),
            "priv_idx": priv.tolist(),
            "latent_dim": cfg.teach.privileged_latent_dim,
            "encoder_arch": list(cfg.teach.privileged_encoder_arch),
        },  # fmt: skip
        "net_arch": list(cfg.teach.net_arch),
        "actor_privileged": actor_p,
        "critic_privileged": critic_p,
    }


def run_teach_sb3(cfg: RunConfig, stage: StageRun) -> dict[str, Any]:
    """Train ``cfg.teach.algo`` on ``cfg.env`` for ``cfg.teach.total_timesteps`` steps.

    Evaluates every ``eval_every`` steps on the fixed validation seeds (disjoint from
    ``robodistill eval``'s) and keeps the best policy (success rate, then mean return) in ``stage.dir/policy``.
    Resumes from ``stage.dir/checkpoint`` when one exists. Returns the stage's metrics.
    """
    if stage.skipped:
        return stage.manifest["metrics"]
    teach = cfg.teach
    t0 = time.monotonic()

    # -- environments ----------------------------------------------------------------------
    # DummyVecEnv steps the envs in this process: on 2 cores it beats SubprocVecEnv (as Sync
    # beat Async gymnasium vector envs, 9.5k vs 4k steps/s), since IPC costs more than a step.
    def make_one():
        env = make_env(
            cfg.env.id, max_episode_steps=cfg.env.max_episode_steps, **cfg.env.make_kwargs()
        )
        return Monitor(env)  # raw episode returns/lengths for SB3's rollout/ep_rew_mean

    venv = DummyVecEnv([make_one for _ in range(cfg.env.num_envs)])
    venv.seed(cfg.seed)  # env i gets seed cfg.seed + i at its first reset
    explore_venv, explore_callback = None, None
    if teach.exploration.method != "none":
        venv, explore_callback = wrap_exploration(
            venv, teach.exploration, teach.gamma, cfg.seed, two_stream=teach.algo == "ppo",
            stage=stage, layout=env_spaces(cfg.env.id, cfg.env.kwargs)[2]["observation_layout"],
        )  # fmt: skip
        explore_venv = find_exploration_env(venv)
    vec_normalize = None
    if teach.normalize_obs or teach.normalize_reward:
        venv = vec_normalize = VecNormalize(
            venv, norm_obs=teach.normalize_obs, norm_reward=teach.normalize_reward,
            gamma=teach.gamma,
        )  # fmt: skip

    # -- model -----------------------------------------------------------------------------
    common = dict(
        learning_rate=teach.learning_rate, gamma=teach.gamma, batch_size=teach.batch_size,
        policy_kwargs={"net_arch": list(teach.net_arch)}, seed=cfg.seed,
        tensorboard_log=str(stage.dir / "tb"), device="cpu", verbose=0,
    )  # fmt: skip
    if teach.algo == "ppo":
        ppo = dict(n_steps=teach.n_steps, n_epochs=teach.n_epochs, ent_coef=teach.entropy_coef,
                   **common)  # fmt: skip
        if explore_callback is not None:  # RND's two value heads (teach/rl/two_stream_ppo.py)
            x = teach.exploration
            model = TwoStreamPPO("MlpPolicy", venv, gamma_int=x.gamma_int,
                                 extrinsic_coef=x.extrinsic_coef,
                                 intrinsic_coef=x.intrinsic_coef, **ppo)  # fmt: skip
        elif teach.privileged != "none":  # teach/rl/privileged.py: who reads z = mu(e)
            model = PPO(PrivilegedActorCriticPolicy, venv,
                        **(ppo | {"policy_kwargs": privileged_policy_kwargs(cfg, make_one)}))  # fmt: skip
        else:
            model = PPO("MlpPolicy", venv, **ppo)
    else:
        model = SAC(
            "MlpPolicy", venv, buffer_size=teach.buffer_size,
            learning_starts=teach.learning_starts, **common,
        )  # fmt: skip

    # -- resume ----------------------------------------------------------------------------
    ckpt_dir = stage.dir / CHECKPOINT_DIR
    state = restore_checkpoint(ckpt_dir, model, vec_normalize, explore_venv)
    resumed_from = model.num_timesteps if state is not None else 0
    if state is not None:
        log.info("teach: resumed from %s at %d steps", ckpt_dir, resumed_from)
        if teach.algo == "sac":
            # The replay buffer starts empty again: warm it up before the next update.
            refill = max(teach.learning_starts, teach.batch_size)
            model.learning_starts = model.num_timesteps + refill

    # -- callbacks -------------------------------------------------------------------------
    to_policy = (PrivilegedTeacher.from_model if teach.privileged != "none"
                 else SB3Policy.from_model)  # fmt: skip
    evaluator = EvalCallback(cfg, stage, vec_normalize, to_policy)
    checkpointer = CheckpointCallback(
        ckpt_dir, teach.checkpoint_every, vec_normalize, explore_venv, evaluator
    )
    bar = ProgressCallback(teach.total_timesteps, f"teach {teach.algo} {cfg.env.id}")
    successes = TrainSuccessCallback(stage, (state or {}).get("first_success_step"))
    evaluator.train_success = successes  # its first_success_step goes into checkpoints
    episodes = EpisodeRecordCallback(stage.dir, resumed_from if state is not None else None)
    callbacks = [bar, successes, episodes, evaluator, checkpointer]
    if explore_callback is not None:
        callbacks.insert(1, explore_callback)

    # -- train -----------------------------------------------------------------------------
    # SB3 treats learn()'s total_timesteps as *additional* steps when it does not reset the
    # counter, so ask for what is left to end at exactly total_timesteps (PPO rounds up to
    # whole rollouts).
    remaining = teach.total_timesteps - model.num_timesteps
    if remaining > 0:
        model.learn(
            remaining, callback=CallbackList(callbacks), tb_log_name=teach.algo,
            reset_num_timesteps=state is None,
        )  # fmt: skip
    steps_this_run = model.num_timesteps - resumed_from
    train_seconds = time.monotonic() - t0

    # -- final evaluation and artifacts ----------------------------------------------------
    final = evaluator.last if evaluator.last_step == model.num_timesteps else None
    if final is None:
        evaluator.model = model  # set by learn(); set here too when nothing was left to learn
        final = evaluator.evaluate()
    to_policy(model, vec_normalize).save(stage.dir / "policy_last")
    successes.flush()
    episodes.close()
    save_checkpoint(ckpt_dir, model, vec_normalize, explore_venv, evaluator.state())
    venv.close()
    wall = time.monotonic() - t0
    metrics = teacher_metrics(
        teach.algo, model.num_timesteps, resumed_from, final, evaluator.keeper.best, stage.dir,
        first_success_step=successes.first_success_step,
        train_episodes=successes.total_episodes, train_successes=successes.total_successes,
        wall_s=wall, steps_per_s=steps_this_run / max(train_seconds, 1e-9),
    )  # fmt: skip
    log.info("teach: %s", json.dumps(metrics))
    return metrics
