"""Distill a privileged teacher into a deployable history student with DAgger.

::

    student, log = distill_history(make_env, teacher, "rma", HistoryDAgger(rounds=4))

``make_env()`` gives a ``DomainRandomization(..., privileged_obs=True)`` env; the teacher
(:class:`~robodistill.policies.privileged.PrivilegedTeacher`) reads its whole observation,
the student (:class:`~robodistill.policies.history_student.HistoryStudent`) only the robot
entries (``robot_idx``: every layout entry not marked privileged) and its own window of
(observation, executed action) pairs. Each round ``i`` (Ross et al., 2011):

1. roll out the mixture on fresh seeds: at every step and row the teacher's action is
   executed with probability ``beta_i = beta_decay ** i`` (round 0: the teacher alone),
   else the student's; the window records the executed action, whoever chose it;
2. the teacher labels every visited state: its action and its privileged latent
   ``z = mu(e)``;
3. the rows join the aggregated dataset; the student trains ``epochs`` passes over it:
   ``history``: action MSE; ``rma``: latent MSE (the head is the teacher's, frozen);
   ``hib``: :mod:`robodistill.distill.hib`'s objective.

The log records per round the latent error on the round's *new* rows before training on
them (a held-out measure of the adaptation module) and after.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from robodistill.distill.hib import HIBCritic, gaussian_kl_standard, info_nce
from robodistill.distill.history_resume import DAggerCheckpoint
from robodistill.envs.randomization import robot_indices
from robodistill.policies.history_student import HistoryStudent
from robodistill.training import epochs

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class HistoryDAgger:
    """DAgger budget and the students' sizes and loss weights."""

    rounds: int = 4
    episodes_per_round: int = 8
    beta_decay: float = 0.5
    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3
    history_len: int = 8
    latent_dim: int | None = None  # None: the teacher's
    n_envs: int = 4
    seed: int = 0
    hib_alpha: float = 0.1  # InfoNCE weight (the -I(z; e) bound)
    hib_beta: float = 1e-3  # KL weight (the I(z; h) bound)
    hib_tau: float = 0.1  # InfoNCE temperature
    encoder_arch: tuple[int, ...] = (128, 64)  # the history encoder's hidden widths
    hidden: tuple[int, ...] = (128, 128)  # the head's (history, hib; rma reuses the teacher's)


def robot_view(env: gym.Env) -> np.ndarray:
    """Indices of the env's flat observation a student may see (non-privileged entries)."""
    return robot_indices(env.get_wrapper_attr("observation_layout"),
                         int(env.observation_space.shape[0]))  # fmt: skip


def run_episodes(envs: list[gym.Env], seeds: list[int], act: Callable[[np.ndarray], np.ndarray],
                 reset: Callable[[list[int]], None] = lambda rows: None,
                 on_step: Callable[..., None] | None = None) -> dict[str, Any]:  # fmt: skip
    """One episode per seed, ``len(envs)`` at a time in lockstep.

    ``act(obs (B, D_full)) -> (B, A)`` for every row (inactive rows' results are ignored);
    ``reset(rows)`` starts new episodes in those rows of a stateful policy;
    ``on_step(obs, actions, active)`` sees each step before the envs move. Returns
    per-episode ``returns``, ``successes`` (``info["is_success"]`` of the last step, NaN
    where the env reports none) and ``lengths``, in seed order.
    """
    n, queue = len(envs), list(enumerate(seeds))
    obs = np.zeros((n, int(envs[0].observation_space.shape[0])), dtype=np.float32)
    slot, ret, length = [-1] * n, np.zeros(n), np.zeros(n, dtype=int)
    out = {"returns": np.zeros(len(seeds)), "successes": np.full(len(seeds), np.nan),
           "lengths": np.zeros(len(seeds), dtype=int)}  # fmt: skip

    def start(i: int) -> None:
        slot[i] = -1
        if queue:
            slot[i], seed = queue.pop(0)
            obs[i] = envs[i].reset(seed=int(seed))[0]
            ret[i], length[i] = 0.0, 0
            reset([i])

    for i in range(n):
        start(i)
    while any(s >= 0 for s in slot):
        active = np.array([s >= 0 for s in slot])
        actions = np.asarray(act(obs.copy()), dtype=np.float32)
        if on_step is not None:
            on_step(obs.copy(), actions, active)
        for i in np.flatnonzero(active):
            o, r, term, trunc, info = envs[i].step(actions[i])
            obs[i], ret[i], length[i] = o, ret[i] + r, length[i] + 1
            if term or trunc:
                j = slot[i]
                out["returns"][j], out["lengths"][j] = ret[i], length[i]
                if info.get("is_success") is not None:
                    out["successes"][j] = float(info["is_success"])
                start(i)
    return out


def _collect(envs, seeds, teacher, student, robot_idx, beta, rng) -> tuple[dict, dict]:
    rows: dict[str, list] = {"obs": [], "history": [], "target_mean": [], "target_z": []}
    use_latent = teacher.net.encoder is not None

    def act(obs):
        hist = student.history
        a_s = student.act(obs[:, robot_idx])
        if hist is None:
            hist = np.zeros_like(student.history)
        a_t = teacher.act(obs)
        chosen = np.where((rng.random(len(obs)) < beta)[:, None], a_t, a_s)
        student.set_executed(chosen)  # the window holds what was executed
        act.cache = (hist, a_t, chosen)
        return chosen

    def on_step(obs, actions, active):
        hist, a_t, _ = act.cache
        rows["obs"].append(obs[active][:, robot_idx])
        rows["history"].append(hist[active])
        rows["target_mean"].append(a_t[active])
        z = teacher.latent(obs[active]) if use_latent else np.zeros((active.sum(), 1))
        rows["target_z"].append(z)

    student.reset()
    result = run_episodes(envs, seeds, act, student.reset, on_step)
    data = {k: np.concatenate(v).astype(np.float32) for k, v in rows.items()}
    return data, result


def _losses(student: HistoryStudent, critic: nn.Module | None, cfg: HistoryDAgger):
    net = student.net

    def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        z, log_var = net.encode(batch["history"])
        if net.variant == "rma":  # the adaptation module regresses the teacher's latent
            return (z - batch["target_z"]).pow(2).mean()
        # HIB draws z ~ q(z | h) (reparameterized); the others use the encoder's output.
        z_s = z + torch.randn_like(z) * torch.exp(0.5 * log_var) if net.variant == "hib" else z
        err = (net.mean(batch["obs"], z_s) - batch["target_mean"]) / net.act_scale
        total = err.pow(2).mean()
        if net.variant == "hib":
            total = (total + cfg.hib_alpha * info_nce(critic(z_s), batch["target_z"], cfg.hib_tau)
                     + cfg.hib_beta * gaussian_kl_standard(z, log_var).mean())  # fmt: skip
        return total

    return loss


@torch.no_grad()
def errors(student: HistoryStudent, data: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean action error (normalized units, squared) and, for rma, the latent MSE."""
    net = student.net
    t = {k: torch.from_numpy(v) for k, v in data.items()}
    z, _ = net.encode(t["history"])
    err = ((net.mean(t["obs"], z) - t["target_mean"]) / net.act_scale).pow(2).mean()
    out = {"action_mse": float(err)}
    if net.variant == "rma":
        out["latent_mse"] = float((z - t["target_z"]).pow(2).mean())
    return out


def distill_history(make_env: Callable[[], gym.Env], teacher, variant: str,
                    cfg: HistoryDAgger | None = None,
                    seeds: Callable[[int, int], list[int]] | None = None,
                    on_round: Callable[[int, HistoryStudent, dict], None] | None = None,
                    checkpoint: DAggerCheckpoint | None = None):  # fmt: skip
    """DAgger-distill ``teacher`` into a ``variant`` (``history``, ``rma``, ``hib``) student;
    returns ``(student, log)`` (``log``: one dict per round). ``seeds(round, n)`` gives a
    round's episode seeds (default ``10**6 * (seed + 1) + 1000 * round + j``);
    ``on_round(round, student, row)`` sees the student after each round's training (the
    ``distill`` stage validates and keeps the best there; it may add to ``row``).

    ``checkpoint``: the state after each finished round (after ``on_round``) is saved
    there, and a saved state is resumed from: the rounds after it repeat an uninterrupted
    run's exactly (:mod:`robodistill.distill.history_resume`)."""
    cfg = cfg or HistoryDAgger()
    envs = [make_env() for _ in range(cfg.n_envs)]
    robot_idx = robot_view(envs[0])
    full = envs[0].observation_space
    obs_space = gym.spaces.Box(full.low[robot_idx], full.high[robot_idx], dtype=np.float32)
    student = HistoryStudent.build(variant, teacher, obs_space, envs[0].action_space,
                                   cfg.history_len, cfg.latent_dim, list(cfg.encoder_arch),
                                   list(cfg.hidden), seed=cfg.seed)  # fmt: skip
    # Where the robot's entries sit in the env's full observation: the student then also
    # acts on the env it was distilled in (it drops the privileged entries itself).
    student.arch.update(robot_idx=robot_idx.tolist(), env_obs_dim=int(full.shape[0]))
    critic = None
    if variant == "hib":
        if teacher.net.encoder is None:
            raise ValueError("hib needs a teacher with a privileged encoder (latent_dim > 0)")
        critic = HIBCritic(student.net.latent_dim, teacher.net.latent_dim)
    trained = nn.ModuleDict({"net": student.net, **({"critic": critic} if critic else {})})
    seeds = seeds or (lambda r, n: [10**6 * (cfg.seed + 1) + 1000 * r + j for j in range(n)])
    rng = np.random.default_rng([cfg.seed, 7])
    dataset: dict[str, np.ndarray] = {}
    log: list[dict[str, Any]] = []
    start = 0
    state = checkpoint.load(trained) if checkpoint is not None else None
    if state is not None:  # rounds 0..state["round"] are done: go on from the next one
        rng.bit_generator.state = state["rng"]
        dataset, log, start = state["dataset"], list(state["log"]), state["round"] + 1
        student.net.eval()
        logger.info("%s: resumed after round %d (%d rows)", variant, state["round"],
                    len(dataset["obs"]))  # fmt: skip
    for r in range(start, cfg.rounds):
        t0, beta = time.monotonic(), cfg.beta_decay**r
        new, result = _collect(envs, seeds(r, cfg.episodes_per_round), teacher, student,
                               robot_idx, beta, rng)  # fmt: skip
        before = errors(student, new)
        dataset = new if not dataset else {k: np.concatenate([dataset[k], new[k]])
                                           for k in dataset}  # fmt: skip
        losses = epochs.train_epochs(trained, dataset, _losses(student, critic, cfg),
                                     epochs=cfg.epochs, batch_size=cfg.batch_size,
                                     learning_rate=cfg.learning_rate, seed=[cfg.seed, r])  # fmt: skip
        student.net.eval()
        after = errors(student, new)
        log.append({"round": r, "beta": beta, "rows": len(dataset["obs"]),
                    "return": float(result["returns"].mean()),
                    "success": float(np.nanmean(result["successes"]))
                    if np.isfinite(result["successes"]).any() else None,
                    "loss": losses[-1], **{f"{k}_before": v for k, v in before.items()},
                    **{f"{k}_after": v for k, v in after.items()},
                    "seconds": time.monotonic() - t0})  # fmt: skip
        if on_round is not None:
            on_round(r, student, log[-1])
        if checkpoint is not None:
            checkpoint.save(r, new, trained, rng, log)
    for env in envs:
        env.close()
    student.reset()
    return student, log


# -- the distill stage's students ----------------------------------------------------------

RESULT_NAME = "result.json"


def load_privileged_teacher(path: str | Path, variant: str):
    """The :class:`~robodistill.policies.privileged.PrivilegedTeacher` at ``path`` for the
    ``variant`` student, or a :class:`ConfigError` naming ``distill.teacher``: every history
    student needs a privileged teacher (``teach.privileged``), ``rma`` and ``hib`` an
    ``oracle`` one (its actor reads ``z = mu(e)``)."""
    from robodistill.config import ConfigError
    from robodistill.policies import load_policy

    teacher = load_policy(path)
    if teacher.kind != "privileged_teacher":
        raise ConfigError(
            f"distill.teacher: {path} holds a {teacher.kind!r} policy, but the {variant} "
            "student distills a privileged teacher (teach.privileged: oracle, with "
            "env.randomization.privileged_obs: true); train one, or point distill.teacher at one"
        )
    if variant in ("rma", "hib") and not teacher.net.actor_privileged:
        raise ConfigError(
            f"distill.teacher: the {variant} student needs an oracle teacher (teach.privileged: "
            f"oracle: its actor reads z = mu(e)), but the teacher at {path} does not read z "
            "(asymmetric or blind); train an oracle teacher, or use the history student"
        )
    return teacher


def run_distill_history(cfg, stage, teacher_path: str | Path, variant: str) -> dict[str, Any]:
    """The ``distill`` stage's ``variant`` student (``history``, ``rma``, ``hib``) of the
    privileged teacher at ``teacher_path``, in ``stage.dir / variant``: DAgger rounds of
    :func:`distill_history` on the run's env (``env.randomization`` with ``privileged_obs``)
    and its seeds, validation after each round on the fixed validation seeds, the best
    student kept in ``policy/`` (``distill.history.selection``), ``result.json`` last.

    Artifacts: ``policy/`` (best), ``rounds/round-NNN/`` (each round's student),
    ``dagger/`` (the state after the last finished round,
    :mod:`robodistill.distill.history_resume`), ``result.json`` (the metrics, also what a
    finished student returns when the stage resumes). An interrupted student resumes after
    its last finished round, with the same result as an uninterrupted run.
    """
    from robodistill.config import ConfigError
    from robodistill.core.rundir import directory_digest, write_json_atomic
    from robodistill.core.seeds import DAGGER_SEED_OFFSET, VALIDATION_SEED_OFFSET, episode_seeds
    from robodistill.distill.dagger import best_against_teacher
    from robodistill.envs import make_env
    from robodistill.training.selection import is_better, rollout_summary

    h, t0 = cfg.distill.history, time.monotonic()
    out = stage.dir / variant
    if (out / RESULT_NAME).is_file() and (out / "policy" / "config.json").is_file():
        return json.loads((out / RESULT_NAME).read_text())
    if DAGGER_SEED_OFFSET + h.rounds * h.episodes_per_round > VALIDATION_SEED_OFFSET:
        raise ConfigError(
            "distill.history: rounds × episodes_per_round must stay ≤ "
            f"{VALIDATION_SEED_OFFSET - DAGGER_SEED_OFFSET} (training seeds would reach the "
            "validation seeds)"
        )
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_privileged_teacher(teacher_path, variant)

    def make():
        return make_env(cfg.env.id, max_episode_steps=cfg.env.max_episode_steps,
                        **cfg.env.make_kwargs())  # fmt: skip

    probe = make()
    try:
        dim = int(probe.observation_space.shape[0])
    finally:
        probe.close()
    if tuple(teacher.observation_space.shape) != (dim,):
        raise ConfigError(
            f"distill.teacher: {teacher_path} was trained on observations "
            f"{teacher.observation_space.shape}, but env {cfg.env.id} with env.randomization "
            f"gives ({dim},); set env (id, kwargs, randomization) to the teacher's"
        )
    dagger = HistoryDAgger(
        rounds=h.rounds, episodes_per_round=h.episodes_per_round, beta_decay=h.beta_decay,
        epochs=h.epochs, batch_size=h.batch_size, learning_rate=h.learning_rate,
        history_len=h.k, latent_dim=h.latent_dim, n_envs=cfg.env.num_envs, seed=cfg.seed,
        hib_alpha=cfg.distill.hib.alpha, hib_beta=cfg.distill.hib.beta,
        hib_tau=cfg.distill.hib.tau, encoder_arch=tuple(h.encoder_arch), hidden=tuple(h.hidden),
    )  # fmt: skip
    val_seeds = episode_seeds(cfg, h.eval_episodes, VALIDATION_SEED_OFFSET)
    teacher_val = rollout_summary(cfg, teacher, val_seeds, f"distill-{variant}")[0]
    # The rounds' state (rows, weights, RNG, log, the best validation so far) for a resume.
    checkpoint = DAggerCheckpoint(out / "dagger", {
        **dataclasses.asdict(dagger), "variant": variant, "env": cfg.env.model_dump(mode="json"),
        "teacher_digest": directory_digest(Path(teacher_path)),
        "eval_episodes": h.eval_episodes, "selection": h.selection,
    })  # fmt: skip

    def seeds(r: int, n: int) -> list[int]:
        return episode_seeds(cfg, n, DAGGER_SEED_OFFSET + r * n)

    def on_round(r: int, student: HistoryStudent, row: dict) -> None:
        best = checkpoint.extra.get("best")
        result = rollout_summary(cfg, student, val_seeds, f"distill-{variant}")[0] | {"round": r}
        student.save(out / "rounds" / f"round-{r:03d}")
        improved = is_better(result, best, h.selection)
        if improved:
            student.save(out / "policy")
            checkpoint.extra["best"] = result
        row.update(val_return_mean=result["return_mean"],
                   val_success_rate=result["success_rate"], improved=improved)  # fmt: skip
        # Tagged per student: a resumed student drops only its own rows past its resume point.
        stage.log_metrics(r, {"stage": variant} | {f"{variant}_{k}": v for k, v in row.items()
                                                   if isinstance(v, int | float | bool | None)})  # fmt: skip
        logger.info("%s: round %d: %s", variant, r, json.dumps(row, default=float))

    _, history = distill_history(make, teacher, variant, dagger, seeds, on_round, checkpoint)
    best = checkpoint.extra.get("best")
    metrics = {
        "student": variant,
        "policy": str(out / "policy"),
        "teacher": str(teacher_path),
        "history_len": h.k,
        "rounds": len(history),
        "dataset_states": history[-1]["rows"],
        "final_action_mse": history[-1].get("action_mse_after"),
        "final_latent_mse": history[-1].get("latent_mse_after"),
        "first_latent_mse": history[0].get("latent_mse_before"),
        **best_against_teacher(best, teacher_val, h.selection),
        "history": history,
        "wall_s": round(time.monotonic() - t0, 3),
    }
    write_json_atomic(out / RESULT_NAME, metrics)
    return metrics


__all__ = [
    "HistoryDAgger",
    "distill_history",
    "errors",
    "load_privileged_teacher",
    "robot_view",
    "run_distill_history",
    "run_episodes",
]
