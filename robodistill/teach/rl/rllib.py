"""Train an RL teacher (PPO) with Ray RLlib's new API stack; the ``teach`` stage's loop.

::

    with StageRun(cfg, "teach") as stage:
        metrics = run_teach_rllib(cfg, stage)
        stage.finish(metrics)

Artifacts in ``<run>/teach/``::

    policy/        best evaluated policy (an RLlibPolicy: plain torch weights + config.json;
                   with teach.privileged a PrivilegedTeacher, as on the SB3 side)
    policy_last/   the policy when training ended
    checkpoint/    RLlib's own resumable checkpoint (``algo.save_to_path``), replaced atomically
    best.json      evaluation that chose policy/ (survives restarts)
    episodes.jsonl every training episode: return, length, success, env steps (at the end
                   of the iteration that reported it), wall time

**The RLlib checkpoint is only for resuming training.** Its format is RLlib's: some of its
state files may be pickled (connector and metrics state), so it is never what a policy is
loaded from; ``policy/`` and ``policy_last/`` are (no pickle, no Ray needed).

Ray: with ``RAY_ADDRESS`` set the driver joins that cluster (``ray.init(address=...)``), else
it starts a local Ray with 2 CPUs; an already initialized Ray (tests) is used as is. Only a
connection made here is shut down again (disconnecting from a cluster does not stop it).
On a cluster, every node needs robodistill installed: env runners build their envs with
:func:`robodistill.envs.make_env` (registered with ``ray.tune.register_env``).

Env runners and envs per runner come from ``cfg.teach.num_env_runners`` (default 1) and
``cfg.teach.num_envs_per_env_runner`` (default ``cfg.env.num_envs``) when the config has them.
Failed env runners are restarted (``fault_tolerance(restart_failed_env_runners=True)``).
``teach.training.workers > 1`` trains with that many RLlib learners (``num_learners``: PPO's
update data-parallel over DDP), each on ``1/workers`` of the train batch and minibatch, so
the global sizes stay those of one learner; not with an exploration bonus (its predictor
lives in one learner; the config refuses the combination).

``teach.exploration.method: rnd | rdd`` adds intrinsic rewards through
:mod:`robodistill.teach.rl.exploration_rllib`: the predictor lives in the (single) learner
as a learner connector piece, so nothing is synchronized to env runners, and PPO becomes
two-stream (:mod:`robodistill.teach.rl.two_stream_rllib`: an intrinsic value head,
``A = extrinsic_coef·A_ext + intrinsic_coef·A_int``). The intrinsic head is part of the RLModule, so RLlib's checkpoint
carries it; the predictor's state is saved next to RLlib's files in ``checkpoint/`` as
``exploration.safetensors`` + ``exploration.json`` and restored on resume, and the
statistics of both are logged per iteration as ``exploration_*``.

``teach.privileged: oracle | asymmetric | blind`` trains the privileged PPO teacher of
:mod:`robodistill.teach.rl.privileged_rllib` (a custom RLModule and catalog whose encoder
reads the domain-randomization draw); its evaluations and ``policy/`` are
``PrivilegedTeacher`` policies, which the history students distill.

Not supported on this backend: ``teach.algo: sac`` (raises), ``teach.normalize_reward``
(ignored with a warning).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import gymnasium as gym
import numpy as np

from robodistill.config import RunConfig
from robodistill.core.parallel import init_ray
from robodistill.core.rollout import env_spaces
from robodistill.core.rundir import (
    StageRun,
    committed_dir,
    replace_dir,
    staging_dir,
    write_json_atomic,
)
from robodistill.envs import make_env
from robodistill.errors import StageNotBuilt
from robodistill.policies.rllib_policy import RLlibPolicy
from robodistill.teach.rl.metrics import teacher_metrics
from robodistill.training.episodes import EPISODES_NAME, EpisodeLog
from robodistill.training.selection import BestPolicyKeeper

log = logging.getLogger(__name__)

ENV_NAME = "robodistill_env"
CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "robodistill_state.json"
AGENT = "default_agent"
EPISODE_ITEMS = "robodistill_episodes"
"""The env runners' metric of finished episodes, ``(return, length, success)`` each."""


def create_env(env_config: dict[str, Any]) -> gym.Env:
    """Env creator registered with ``ray.tune.register_env`` (runs inside env runners, so it
    also applies ``teach.torch_threads`` to the runner's process)."""
    if env_config.get("torch_threads"):
        import torch

        torch.set_num_threads(int(env_config["torch_threads"]))
    env = make_env(
        env_config["id"],
        max_episode_steps=env_config.get("max_episode_steps"),
        **env_config.get("kwargs", {}),
    )
    # Each episode's own return and length in its last info (info["episode"]), for the
    # per-episode record: RLlib's episode chunks overlap at the iteration boundaries.
    return gym.wrappers.RecordEpisodeStatistics(env)


def _make_callbacks():
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class SuccessCallback(RLlibCallback):
        """Counts training episodes whose last ``info`` says ``is_success`` (which
        ``make_env`` sets from ``success`` or ``env.success_key`` too), and reports each
        episode's ``(return, length, success)`` (:data:`EPISODE_ITEMS`) for the per-episode
        record."""

        def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
            try:
                info = episode.get_infos(-1)
            except (IndexError, KeyError, TypeError, AttributeError):
                info = {}
            reported = (info or {}).get("is_success")
            success = bool(reported)
            if metrics_logger is not None:
                metrics_logger.log_value("num_successes", int(success), reduce="sum")
                # RecordEpisodeStatistics' totals (create_env): summing the episode's chunks
                # would count steps at iteration boundaries twice (RLlib 2.60's own
                # episode_len_mean does: 3.33 for 3-step episodes).
                stats = (info or {}).get("episode") or {}
                ret = float(stats.get("r", episode.get_return()))
                length = int(stats.get("l", episode.t))
                item = (ret, length, None if reported is None else bool(reported))
                metrics_logger.log_value(EPISODE_ITEMS, item, reduce="item_series")

    return SuccessCallback


def build_config(cfg: RunConfig):
    """The ``PPOConfig`` for ``cfg`` (new API stack)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    teach = cfg.teach
    num_runners = teach.num_env_runners  # 0: sample in the driver
    envs_per = teach.num_envs_per_env_runner or cfg.env.num_envs
    # teach.training.workers > 1: that many learners (DDP), each on its share of the batch,
    # so the train batch and the minibatch keep their one-learner (global) sizes.
    learners = teach.training.workers if teach.training.workers > 1 else 0
    split = max(learners, 1)
    env_to_module = None
    if teach.normalize_obs:
        from ray.rllib.connectors.env_to_module import MeanStdFilter

        def env_to_module(env, spaces=None, device=None):
            return MeanStdFilter(clip_by_value=10.0)

    env_config = {
        "id": cfg.env.id,
        "max_episode_steps": cfg.env.max_episode_steps,
        "kwargs": cfg.env.make_kwargs(),  # with env.success_key, which make_env reads
        "torch_threads": cfg.teach.torch_threads,
    }
    config = (
        PPOConfig()
        .environment(ENV_NAME, env_config=env_config, normalize_actions=False, clip_actions=True)
        .env_runners(
            num_env_runners=num_runners,
            num_envs_per_env_runner=envs_per,
            rollout_fragment_length="auto",
            env_to_module_connector=env_to_module,
        )
        .training(
            lr=teach.learning_rate,
            gamma=teach.gamma,
            num_epochs=teach.n_epochs,
            train_batch_size_per_learner=teach.n_steps * envs_per * max(num_runners, 1) // split,
            minibatch_size=max(1, teach.batch_size // split),
            entropy_coeff=teach.entropy_coef,
        )
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=list(teach.net_arch)))
        .learners(num_learners=learners)
        .fault_tolerance(
            restart_failed_env_runners=True,
            max_num_env_runner_restarts=1000,
            delay_between_env_runner_restarts_s=1.0,
        )
        .callbacks(_make_callbacks())
        .debugging(seed=cfg.seed, log_level="WARN")
    )
    if learners:
        import ray

        # A small host: share what the env runners leave instead of waiting forever for a
        # whole CPU per learner (2 learners + 1 runner on 2 cores).
        cpus = ray.cluster_resources().get("CPU", 1.0) if ray.is_initialized() else learners
        config.learners(num_cpus_per_learner=max(0.1, min(1.0, (cpus - num_runners) / learners)))
    if teach.exploration.method != "none":
        from robodistill.teach.rl.exploration_rllib import add_exploration

        add_exploration(config, teach.exploration, seed=cfg.seed)
    if teach.privileged != "none":
        from robodistill.teach.rl.privileged_rllib import add_privileged, privileged_settings

        _, _, env_doc = env_spaces(cfg.env.id, cfg.env.make_kwargs())
        settings = privileged_settings(
            env_doc["observation_layout"], int(np.prod(env_doc["observation_space"]["shape"])),
            teach.privileged, teach.privileged_latent_dim, teach.privileged_encoder_arch,
        )  # fmt: skip
        add_privileged(config, settings, teach.net_arch)
    return config


def filter_state(algo) -> dict[str, Any] | None:
    """The MeanStdFilter's state for the single agent (merged over env runners), or None."""
    from ray.rllib.connectors.env_to_module import MeanStdFilter

    def get(er):
        for c in er._env_to_module.connectors:
            if isinstance(c, MeanStdFilter):
                return c.get_state()
        return None

    if algo.env_runner is not None:
        state = get(algo.env_runner)
    else:
        state = algo.env_runner_group.foreach_env_runner(get, local_env_runner=False)[0]
    if not state:
        return None
    return next(iter(state.values()))


def to_policy(algo, obs_space: gym.Space, act_space: gym.Space) -> RLlibPolicy:
    """The current RLModule (+ observation filter) as an :class:`RLlibPolicy`."""
    return RLlibPolicy.from_module(algo.get_module(), obs_space, act_space, filter_state(algo))


def policy_converter(cfg: RunConfig):
    """``(algo, obs_space, act_space) -> Policy`` for ``cfg``'s teacher: :func:`to_policy`,
    or with ``teach.privileged`` a ``PrivilegedTeacher``
    (:func:`robodistill.teach.rl.privileged_rllib.to_privileged_teacher`)."""
    if cfg.teach.privileged == "none":
        return to_policy
    from robodistill.teach.rl.privileged_rllib import to_privileged_teacher

    def convert(algo, obs_space: gym.Space, act_space: gym.Space):
        return to_privileged_teacher(algo, obs_space, act_space, filter_state(algo))

    return convert


def save_rllib_checkpoint(algo, directory, state: dict[str, Any]) -> None:
    """``algo.save_to_path`` into a sibling, then swap it in (a crash keeps the old one)."""
    tmp = staging_dir(directory)
    # pyarrow (under RLlib) reads a relative path as a URI without a scheme and refuses it.
    algo.save_to_path(str(tmp.resolve()))
    if state.get("exploration", "none") != "none":
        from robodistill.teach.rl.exploration_rllib import save_exploration

        # RLlib does not checkpoint learner connector pieces (where the predictor lives).
        if not save_exploration(algo, tmp):
            raise RuntimeError("teach: exploration is on but the learner has no predictor")
    write_json_atomic(tmp / STATE_NAME, state)
    replace_dir(tmp, directory)


def _count(value: Any) -> int:
    """A result counter; missing or NaN (an iteration whose env runner died) is 0."""
    try:
        return 0 if value is None or not np.isfinite(value) else int(value)
    except TypeError:
        return 0


def exploration_row(result: dict[str, Any]) -> dict[str, float]:
    """The ``exploration_*`` learner metrics of one ``algo.train()`` result (empty without
    intrinsic rewards)."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    module = result.get("learners", {}).get(DEFAULT_MODULE_ID, {})
    return {
        k: float(v) for k, v in module.items()
        if k.startswith("exploration_") and v is not None and np.isfinite(v)
    }  # fmt: skip


def run_teach_rllib(cfg: RunConfig, stage: StageRun) -> dict[str, Any]:
    """Train PPO on ``cfg.env`` with RLlib for ``cfg.teach.total_timesteps`` env steps.

    Evaluates every ``eval_every`` steps on the fixed validation seeds and keeps the best
    :class:`RLlibPolicy` in ``stage.dir/policy``. Resumes from ``stage.dir/checkpoint``.
    Returns the stage's metrics (the same keys as ``run_teach_sb3``).
    """
    if stage.skipped:
        return stage.manifest["metrics"]
    teach = cfg.teach
    if teach.algo != "ppo":
        raise StageNotBuilt(
            f"teach.algo={teach.algo} is not built on the RLlib backend (only ppo). Nothing was "
            "run. Use teach.backend: sb3"
        )
    if teach.normalize_reward:
        log.warning("teach: normalize_reward is ignored by the RLlib backend")
    from ray.tune import register_env

    t0 = time.monotonic()
    started = init_ray()
    register_env(ENV_NAME, create_env)
    # The env the runners make (env.randomization's privileged entries included).
    obs_space, act_space, _ = env_spaces(cfg.env.id, cfg.env.make_kwargs())
    convert = policy_converter(cfg)
    if not isinstance(act_space, gym.spaces.Box):
        raise ValueError(f"teach rllib: {cfg.env.id} has a non-Box action space {act_space}")
    algo = build_config(cfg).build_algo()
    record: EpisodeLog | None = None
    try:
        # -- resume ------------------------------------------------------------------------
        ckpt_dir = stage.dir / CHECKPOINT_DIR
        state: dict[str, Any] = {}
        source = committed_dir(ckpt_dir, STATE_NAME)  # a crash between renames: .old
        if source is not None:
            algo.restore_from_path(str(source.resolve()))
            state = json.loads((source / STATE_NAME).read_text())
            if teach.exploration.method != "none":
                from robodistill.teach.rl.exploration_rllib import load_exploration

                load_exploration(algo, source)
            log.info("teach: resumed from %s at %d steps", source, state["timesteps"])
        steps = resumed_from = int(state.get("timesteps", 0))
        keeper = BestPolicyKeeper(cfg, stage.dir)
        first_success = state.get("first_success_step")
        last: dict[str, Any] | None = None
        last_step = int(state.get("last_eval_step", -1))
        total_episodes = total_successes = 0
        record = EpisodeLog(stage.dir / EPISODES_NAME, resumed_from if state else None)

        def evaluate() -> dict[str, Any]:
            nonlocal last, last_step
            result, row = keeper.evaluate(convert(algo, obs_space, act_space), steps)
            stage.log_metrics(steps, row)
            log.info("teach: eval at %d steps: %s", steps, json.dumps(row))
            last, last_step = result, steps
            return result

        def ckpt_state() -> dict[str, Any]:
            return {
                "timesteps": steps, "last_eval_step": last_step,
                "first_success_step": first_success, "exploration": teach.exploration.method,
            }  # fmt: skip

        # -- train -------------------------------------------------------------------------
        next_eval = (steps // teach.eval_every + 1) * teach.eval_every
        next_ckpt = (steps // teach.checkpoint_every + 1) * teach.checkpoint_every
        train_t0 = time.monotonic()
        while steps < teach.total_timesteps:
            result = algo.train()
            runners = result.get("env_runners", {})
            sampled = _count(runners.get("num_env_steps_sampled"))
            steps += sampled
            episodes = _count(runners.get("num_episodes"))
            succ = _count(runners.get("num_successes"))
            total_episodes += episodes
            total_successes += succ
            if succ and first_success is None:
                first_success = steps
            for item in runners.get(EPISODE_ITEMS) or ():
                # RLlib reports episodes per iteration: env_steps is the iteration's end.
                record.add(*item, env_steps=steps)
            record.flush()
            row: dict[str, Any] = {"train_episodes": episodes, "train_success": succ}
            if "episode_return_mean" in runners and episodes:
                row["train_return_mean"] = float(runners["episode_return_mean"])
            row |= exploration_row(result)
            stage.log_metrics(steps, row)
            if steps >= next_eval:
                evaluate()
                next_eval = (steps // teach.eval_every + 1) * teach.eval_every
            if steps >= next_ckpt:
                save_rllib_checkpoint(algo, ckpt_dir, ckpt_state())
                next_ckpt = (steps // teach.checkpoint_every + 1) * teach.checkpoint_every
        steps_this_run = steps - resumed_from
        train_seconds = time.monotonic() - train_t0

        # -- final evaluation and artifacts ------------------------------------------------
        final = last if last_step == steps and last is not None else evaluate()
        convert(algo, obs_space, act_space).save(stage.dir / "policy_last")
        save_rllib_checkpoint(algo, ckpt_dir, ckpt_state())
    finally:
        if record is not None:
            record.close()
        algo.stop()
        if started:
            import ray

            ray.shutdown()
    wall = time.monotonic() - t0
    metrics = {"backend": "rllib"} | teacher_metrics(
        teach.algo, steps, resumed_from, final, keeper.best, stage.dir,
        first_success_step=first_success, train_episodes=total_episodes,
        train_successes=total_successes, wall_s=wall,
        steps_per_s=steps_this_run / max(train_seconds, 1e-9),
    )  # fmt: skip
    log.info("teach: %s", json.dumps(metrics))
    return metrics
