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
      checkpoint/                     PPO's resumable state (robodistill.teach.rl.sb3's format)
      policy/  best.json              best specialist (a CompassSpecialist) on validation
      result.json                     present = done

Stage 1 (:func:`run_base`) trains on transitions ``(o_t, a_t, o_{t+1})`` of the expert's
demonstrations: ``bc(head(z_t), a_t) + world_model_coef * (|f(z_t, a_t) - sg(z_{t+1})|² +
|dec(f(z_t, a_t)) - norm(o_{t+1})|²)`` with ``z = enc(o)``. Stage 2 (:func:`train_residual`)
wraps the env in :class:`ResidualActionWrapper` (PPO's action is a residual added to the
frozen base's action) and :class:`BaseFeaturesWrapper` (PPO's policy and critic see the
base's latent and action), so stable-baselines3, or RLlib with the same wrapped env, trains
it unchanged. The step-0 specialist (a near-zero residual: ``log_std_init`` is small and SB3
initializes the action head at 0.01 gain) is validated first, so a specialist is never kept
worse than its base on the validation seeds.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from robodistill.config import ConfigError, RunConfig
from robodistill.core.rundir import (
    StageRun,
    metrics_line,
    write_json_atomic,
)
from robodistill.core.threads import torch_threads
from robodistill.envs import make_env
from robodistill.envs.embodiments import EMBODIMENTS
from robodistill.policies import Policy
from robodistill.policies.compass import CompassBase, CompassSpecialist, base_features
from robodistill.policies.sb3_policy import SB3Policy
from robodistill.teach.compass.base import run_base
from robodistill.teach.compass.evaluation import embodiment_kwargs, validate_on_embodiment
from robodistill.training.checkpoint import finished_result
from robodistill.training.sb3 import (
    CheckpointCallback,
    EveryNSteps,
    restore_checkpoint,
    save_checkpoint,
)
from robodistill.training.selection import BestPolicyKeeper

log = logging.getLogger(__name__)


# -- shared helpers ------------------------------------------------------------------------


# -- stage 2: residual specialists ---------------------------------------------------------


class ResidualActionWrapper(gym.ActionWrapper):
    """The agent's action is a residual: ``env action = clip(base(o) + residual, low, high)``.

    ``base`` is frozen and acts on the latest raw observation; after every reset/step the
    wrapper keeps ``base_action`` (A,) and ``latent`` (L,) of that observation (one encoder
    pass) for :class:`BaseFeaturesWrapper`. The action space becomes ``±residual_limit``.
    """

    def __init__(self, env: gym.Env, base: Policy, residual_limit: float):
        super().__init__(env)
        self.base = base
        base.attach([env])  # a generalist base reads the embodiment from the env
        shape = env.action_space.shape
        self.low, self.high = env.action_space.low, env.action_space.high
        self.action_space = gym.spaces.Box(-residual_limit, residual_limit, shape, np.float32)
        self.base_action = np.zeros(shape, np.float32)
        self.latent = np.zeros(0, np.float32)

    def _observe(self, obs: np.ndarray) -> None:
        action, z = self.base.act_and_latent(np.asarray(obs, np.float32)[None])
        self.base_action, self.latent = action[0], z[0]

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._observe(obs)
        return obs, info

    def step(self, residual):
        obs, reward, terminated, truncated, info = self.env.step(self.action(residual))
        self._observe(obs)
        return obs, reward, terminated, truncated, info

    def action(self, residual: np.ndarray) -> np.ndarray:
        residual = np.asarray(residual, np.float32).reshape(self.base_action.shape)
        return np.clip(self.base_action + residual, self.low, self.high).astype(np.float32)


class BaseFeaturesWrapper(gym.ObservationWrapper):
    """PPO's observation: ``[z (L), base action (A)]`` (+ the raw obs with ``include_obs``),
    the same vector as :func:`robodistill.policies.compass.base_features`. Must wrap a
    :class:`ResidualActionWrapper` directly (it reuses that wrapper's encoder pass)."""

    def __init__(self, env: ResidualActionWrapper, include_obs: bool = False):
        if not isinstance(env, ResidualActionWrapper):
            raise TypeError("BaseFeaturesWrapper must wrap a ResidualActionWrapper")
        super().__init__(env)
        self.include_obs = include_obs
        probe = np.zeros((1, *env.env.observation_space.shape), np.float32)
        dim = base_features(env.base, probe, include_obs)[0].shape[1]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        parts = [self.env.latent, self.env.base_action]
        if self.include_obs:
            parts.append(np.asarray(obs, np.float32).reshape(-1))
        return np.concatenate(parts).astype(np.float32)


def make_residual_env(cfg: RunConfig, base: Policy, embodiment: str) -> gym.Env:
    """``env.id`` on ``embodiment``, wrapped for residual RL (what SB3 or RLlib trains on)."""
    c = cfg.teach.compass
    env = make_env(cfg.env.id, max_episode_steps=cfg.env.max_episode_steps,
                   **embodiment_kwargs(cfg, embodiment))  # fmt: skip
    return BaseFeaturesWrapper(ResidualActionWrapper(env, base, c.residual_limit), c.residual_obs)


class _SpecialistKeeper(EveryNSteps):
    """Every ``teach.eval_every`` steps validates the specialist and keeps the best in
    ``out/policy`` + ``out/best.json`` (the one keeper); ``state()`` goes into PPO's
    checkpoints."""

    def __init__(self, cfg: RunConfig, out: Path, base: Policy, embodiment: str, vec_normalize,
                 stage: StageRun | _MetricsAppender):  # fmt: skip
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


def train_residual(cfg: RunConfig, stage: StageRun | _MetricsAppender, base: Policy,
                   embodiment: str, out: Path, total_timesteps: int) -> dict[str, Any]:  # fmt: skip
    """Stage 2 for one embodiment: PPO on the residual (module docstring) into ``out``;
    resumable (:mod:`robodistill.training.sb3`'s checkpoints) and skipped once ``out/result.json`` exists.
    ``stage`` only receives the validation metrics (``log_metrics``)."""
    if (done := finished_result(out)) is not None:
        return done
    out.mkdir(parents=True, exist_ok=True)
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
    remaining = total_timesteps - model.num_timesteps
    if remaining > 0:
        model.learn(remaining, callback=CallbackList([keeper, checkpointer]),
                    tb_log_name=f"residual-{embodiment}", reset_num_timesteps=state is None)  # fmt: skip
    if keeper.last_step != model.num_timesteps:
        keeper.evaluate(model)
    keeper.specialist(model).save(out / "policy_last")
    save_checkpoint(ckpt, model, vec_normalize, None, keeper.state())
    venv.close()
    best = keeper.best
    result = {"embodiment": embodiment, "timesteps": int(model.num_timesteps),
              "resumed_from_timesteps": int(resumed_from),
              "best_success_rate": best["success_rate"], "best_return_mean": best["return_mean"],
              "best_step": best["step"], "policy": str(out / "policy"),
              "wall_s": round(time.monotonic() - t0, 2)}  # fmt: skip
    write_json_atomic(out / "result.json", result)
    return result


def _specialist_dir(stage_dir: Path, embodiment: str) -> Path:
    return stage_dir / "compass" / "specialists" / embodiment


class _MetricsAppender:
    """A worker's ``StageRun.log_metrics``: whole lines appended to the stage's
    ``metrics.jsonl`` (each one ``write``, so lines from parallel workers do not interleave),
    timed from the stage's start (``t0``: ``time.monotonic`` is system-wide). The stage's
    TensorBoard does not get them; SB3's own logs are in ``<specialist>/tb``."""

    def __init__(self, path: Path, t0: float):
        self.path, self._t0 = path, t0

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(metrics_line(step, self._t0, metrics))


def _train_residual_worker(cfg: RunConfig, stage_dir: Path, embodiment: str, budget: int,
                           log_level: int, t0: float) -> dict[str, Any]:  # fmt: skip
    """One specialist in a fresh (spawned) process: :func:`train_residual`, logging to the
    terminal and the stage's ``stage.log`` and ``metrics.jsonl``."""

    fmt = f"%(asctime)s %(levelname)s [{embodiment}] %(name)s: %(message)s"
    logging.basicConfig(level=log_level, format=fmt, datefmt="%H:%M:%S", force=True)
    to_file = logging.FileHandler(stage_dir / "stage.log")
    to_file.setFormatter(logging.Formatter(fmt))
    logging.getLogger().addHandler(to_file)
    if embodiment not in EMBODIMENTS:
        raise ConfigError(f"teach.compass.workers: embodiment {embodiment!r} is registered in "
                          "the parent process only and worker processes import robodistill "
                          "afresh; register it in a module robodistill imports, or set "
                          "teach.compass.workers: 1")  # fmt: skip
    # A fresh process: its thread count is set for its whole life.
    torch.set_num_threads(cfg.teach.compass.torch_threads or torch.get_num_threads())
    base = CompassBase.load(stage_dir / "compass" / "base" / "policy")
    out = _specialist_dir(stage_dir, embodiment)
    metrics = _MetricsAppender(stage_dir / "metrics.jsonl", t0)
    return train_residual(cfg, metrics, base, embodiment, out, budget)


def _worker_main(conn, *args) -> None:
    """A spawned process's entry: sends ``("ok", result)`` or ``("error", exception,
    traceback)`` back over ``conn``."""
    import traceback

    try:
        conn.send(("ok", _train_residual_worker(*args)))
    except BaseException as e:  # noqa: BLE001 - the parent re-raises it
        text = traceback.format_exc()
        try:
            conn.send(("error", e, text))
        except Exception:  # an exception that does not pickle: its text still gets there
            conn.send(("error", RuntimeError(f"{type(e).__name__}: {e}"), text))
    finally:
        conn.close()


def _train_in_processes(cfg: RunConfig, stage: StageRun, budgets: dict[str, int],
                        workers: int) -> dict[str, Any]:  # fmt: skip
    """Stage 2 with at most ``workers`` processes, a fresh one per specialist; the biggest
    budgets start first so that the last ones to finish are short. The first error (or
    Ctrl-C) terminates every worker and is raised: their checkpoints are written atomically,
    so a rerun resumes them. Results in ``budgets``' order."""
    import multiprocessing
    from multiprocessing.connection import wait

    # spawn, not fork: a forked child would inherit torch's thread pool and open file handles.
    ctx = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    queue = sorted(budgets, key=budgets.get, reverse=True)
    running: dict[str, tuple[Any, Any]] = {}  # name -> (process, our end of its pipe)
    results: dict[str, Any] = {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                name = queue.pop(0)
                ours, theirs = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_worker_main, name=f"specialist-{name}", args=(
                    theirs, cfg, stage.dir, name, budgets[name], level, stage.t0))  # fmt: skip
                process.start()
                theirs.close()
                running[name] = (process, ours)
            wait([p.sentinel for p, _ in running.values()])
            for name, (process, conn) in list(running.items()):
                if process.is_alive():
                    continue
                message = conn.recv() if conn.poll() else None
                process.join()
                del running[name]
                if message is None:
                    raise RuntimeError(f"teach.compass.workers: the process training the {name} "
                                       f"specialist died (exit code {process.exitcode}); rerun "
                                       "to resume it from its checkpoint")  # fmt: skip
                if message[0] == "error":
                    log.error("specialist %s failed:\n%s", name, message[2])
                    raise message[1]
                results[name] = message[1]
    finally:
        for process, _ in running.values():
            process.terminate()
        for process, conn in running.values():
            process.join()
            conn.close()
    return {n: results[n] for n in budgets}


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
                if finished_result(_specialist_dir(stage.dir, n)) is None}  # fmt: skip
        parallel = _train_in_processes(cfg, stage, todo, c.workers) if (
            c.workers > 1 and len(todo) > 1) else {}  # fmt: skip
        specialists = {}
        for n, b in budgets.items():  # done ones just return their result.json
            specialists[n] = parallel[n] if n in parallel else train_residual(
                cfg, stage, base, n, _specialist_dir(stage.dir, n), b)  # fmt: skip
    metrics = {"algo": "compass", "base": base_result, "specialists": specialists,
               "policy": str(stage.dir / "policy"), "compass": str(stage.dir / "compass"),
               "wall_s": round(time.monotonic() - t0, 2)}  # fmt: skip
    log.info("teach: %s", json.dumps({k: v for k, v in metrics.items() if k != "base"}))
    return metrics
