"""DAgger: distill an RL teacher into a small MLP student on the states the student visits.

::

    with StageRun(cfg, "distill") as stage:
        metrics = run_distill_dagger(cfg, stage)      # works in stage.dir / "dagger"

Each round ``i`` (Ross et al., 2011):

1. roll out the mixture policy on ``episodes_per_round`` fresh seeds: at every step and
   env, the teacher acts with probability β_i, else the student (β_0 = 1: round 0 is the
   teacher alone; ``beta_decay: 0`` makes every later round the student alone);
2. the teacher labels *every* visited state, whoever acted there: its Gaussian
   ``(mean, log_std)`` for the KL loss, its deterministic action for MSE;
3. the new states join the dataset of all earlier rounds (nothing is dropped);
4. the student trains ``epochs`` passes over the whole aggregated dataset;
5. the student is evaluated on fixed validation seeds and kept when it is the best so far.

Artifacts in ``<run>/distill/dagger/``::

    policy/              the best student on validation (an MLPStudent: eval/collect take it)
    dataset.npz          the aggregated dataset (obs, targets, round, seed; no pickle)
    rounds/round-NNN/    the student after round NNN (the resume point)
    state.json           rounds done, per-round history, best, teacher's validation result

A round commits by writing ``state.json`` last, so an interrupted run resumes at the first
unfinished round (dataset rows of that round are dropped and re-collected). Rollouts, the
mixture's coin flips and the training shuffles are seeded per round, so a resumed round
repeats the interrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodistill.config import ConfigError, DAggerConfig, RunConfig
from robodistill.core.rollout import env_spaces, rollout
from robodistill.core.rundir import StageRun, progress, write_json_atomic
from robodistill.core.seeds import DAGGER_SEED_OFFSET, VALIDATION_SEED_OFFSET, episode_seeds
from robodistill.distill.aggregation import (
    MixturePolicy,
    beta_for_round,
    load_dataset,
    save_dataset,
)
from robodistill.distill.teachers import load_stateless_teacher
from robodistill.policies import Policy
from robodistill.policies.mlp_student import MLPStudent, array_stats, gaussian_kl
from robodistill.training import epochs
from robodistill.training.optim import resolve_device
from robodistill.training.selection import is_better, rollout_summary

log = logging.getLogger(__name__)

DATASET_NAME, STATE_NAME = "dataset.npz", "state.json"
LABEL_BATCH = 8192


def resolve_loss(dagger: DAggerConfig, teacher: Policy) -> tuple[str, str]:
    """``(loss, squash)`` for this teacher: ``kl`` needs ``teacher.distribution``; the squash
    follows the teacher's Gaussian (SAC's is over the pre-tanh variable)."""
    gaussian = callable(getattr(teacher, "distribution", None))
    if getattr(teacher, "kind", "") == "mlp_student":
        gaussian = teacher.net.head == "gaussian"
    loss = dagger.loss if dagger.loss != "auto" else ("kl" if gaussian else "mse")
    if loss == "kl" and not gaussian:
        raise ConfigError(
            f"distill.dagger.loss: 'kl' needs a Gaussian teacher, but the {teacher.kind!r} "
            "teacher has no distribution(); use distill.dagger.loss=mse (or auto)"
        )
    tanh = loss == "kl" and getattr(teacher, "algo", "") == "sac"
    if getattr(teacher, "kind", "") == "mlp_student" and loss == "kl":
        tanh = teacher.squash == "tanh"
    return loss, ("tanh" if tanh else "clip")


def label(teacher: Policy, obs: np.ndarray, loss: str) -> dict[str, np.ndarray]:
    """Teacher targets for ``obs`` (N, D): ``target_mean`` (N, A) and, for ``kl``,
    ``target_log_std`` (N, A). With ``mse`` the mean is the teacher's action."""
    means, log_stds = [], []
    for start in range(0, len(obs), LABEL_BATCH):
        chunk = obs[start : start + LABEL_BATCH]
        if loss == "kl":
            mean, log_std = teacher.distribution(chunk)
            means.append(np.asarray(mean, np.float32))
            log_stds.append(np.asarray(log_std, np.float32))
        else:
            means.append(np.asarray(teacher.act(chunk), np.float32).reshape(len(chunk), -1))
    out = {"target_mean": np.concatenate(means)}
    if loss == "kl":
        out["target_log_std"] = np.concatenate(log_stds)
    return out


def dagger_loss(
    student: MLPStudent, obs: torch.Tensor, targets: dict[str, torch.Tensor], loss: str
) -> torch.Tensor:
    """Mean over the batch: KL(teacher ‖ student) summed over action dims, or the MSE in
    normalized action units. ``obs`` (B, D); targets (B, A) each."""
    mean, log_std = student.net(obs)
    if loss == "kl":
        return gaussian_kl(targets["target_mean"], targets["target_log_std"], mean, log_std).mean()
    return student.net.normalized_error(mean, targets["target_mean"]).pow(2).mean()


def dataset_loss(student: MLPStudent, data: dict[str, np.ndarray], loss: str) -> float:
    """:func:`dagger_loss` over the whole dataset (no gradient)."""
    total, n = 0.0, len(data["obs"])
    with torch.no_grad():
        for start in range(0, n, LABEL_BATCH):
            sl = slice(start, start + LABEL_BATCH)
            targets = {
                k: torch.from_numpy(v[sl]) for k, v in data.items() if k.startswith("target")
            }
            batch = dagger_loss(student, torch.from_numpy(data["obs"][sl]), targets, loss)
            total += float(batch) * len(data["obs"][sl])
    return total / n


def train_epochs(
    student: MLPStudent, data: dict[str, np.ndarray], loss: str, dagger: DAggerConfig, seed: list
) -> list[float]:
    """``dagger.epochs`` shuffled passes of Adam over ``data``; the mean loss of each epoch."""
    arrays = {k: v for k, v in data.items() if k == "obs" or k.startswith("target")}

    def batch_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        targets = {k: v for k, v in batch.items() if k.startswith("target")}
        return dagger_loss(student, batch["obs"], targets, loss)

    return epochs.train_epochs(student.net, arrays, batch_loss, epochs=dagger.epochs,
                               batch_size=dagger.batch_size, learning_rate=dagger.learning_rate,
                               seed=seed,
                               device=resolve_device(dagger.device, "distill.dagger.device"))  # fmt: skip


def run_distill_dagger(
    cfg: RunConfig, stage: StageRun, teacher_path: str | Path | None = None
) -> dict[str, Any]:
    """Distill ``teacher_path`` (default ``cfg.distill.teacher`` or ``<run>/teach/policy``)
    into an :class:`MLPStudent` in ``stage.dir / "dagger"``; returns the student's metrics."""

    dagger = cfg.distill.dagger
    t0 = time.monotonic()
    out = stage.dir / "dagger"
    out.mkdir(parents=True, exist_ok=True)
    if any(width < 1 for width in dagger.hidden):
        raise ConfigError(
            f"distill.dagger.hidden: layer sizes must be positive, got {dagger.hidden}"
        )
    if DAGGER_SEED_OFFSET + dagger.rounds * dagger.episodes_per_round > VALIDATION_SEED_OFFSET:
        raise ConfigError(
            "distill.dagger: rounds × episodes_per_round must stay ≤ "
            f"{VALIDATION_SEED_OFFSET - DAGGER_SEED_OFFSET} (training seeds would reach the "
            "validation seeds); lower distill.dagger.rounds or episodes_per_round"
        )

    # -- teacher, spaces, loss -------------------------------------------------------------
    teacher_path = Path(teacher_path or cfg.distill.teacher or stage.run_dir / "teach" / "policy")
    teacher = load_stateless_teacher(teacher_path)
    obs_space, act_space, _ = env_spaces(cfg.env.id, cfg.env.kwargs)
    t_obs = getattr(teacher, "observation_space", None)
    if t_obs is not None and tuple(t_obs.shape) != tuple(obs_space.shape):
        raise ConfigError(
            f"distill.teacher: {teacher_path} was trained on observations {t_obs.shape}, but "
            f"env.id={cfg.env.id} gives {obs_space.shape}; set env.id to the teacher's env"
        )
    loss, squash = resolve_loss(dagger, teacher)
    head = "gaussian" if loss == "kl" else "deterministic"
    val_seeds = episode_seeds(cfg, dagger.eval_episodes, VALIDATION_SEED_OFFSET)
    log.info("dagger: teacher %s (%s), loss %s, squash %s, %d rounds × %d episodes",
             teacher_path, teacher.kind, loss, squash, dagger.rounds, dagger.episodes_per_round)  # fmt: skip

    # -- resume ----------------------------------------------------------------------------
    state_path, dataset_path = out / STATE_NAME, out / DATASET_NAME
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    student: MLPStudent | None = None
    data: dict[str, np.ndarray] = {}
    if state is not None:
        data = load_dataset(dataset_path, state["rounds_done"])
        student = MLPStudent.load(out / state["student"])
        log.info("dagger: resuming after round %d (%d labeled states from all rounds)",
                 state["rounds_done"] - 1, len(data["obs"]))  # fmt: skip
    else:
        teacher_val = rollout_summary(cfg, teacher, val_seeds, "distill-dagger")[0]
        log.info("dagger: teacher on validation seeds: %s", json.dumps(teacher_val))
        state = {"rounds_done": 0, "history": [], "best": None, "teacher": teacher_val,
                 "loss": loss, "squash": squash, "teacher_path": str(teacher_path)}  # fmt: skip

    bar = progress(dagger.rounds, "dagger", initial=state["rounds_done"], unit="round")
    try:
        for i in range(state["rounds_done"], dagger.rounds):
            # 1. roll out the mixture; 2. the teacher labels every visited state.
            beta = beta_for_round(dagger, i)
            first = DAGGER_SEED_OFFSET + i * dagger.episodes_per_round
            seeds = episode_seeds(cfg, dagger.episodes_per_round, first)
            mixture = MixturePolicy(teacher, student, beta, seed=[cfg.seed, i, 0])
            episodes = rollout(
                cfg.env.id, mixture, seeds, num_envs=cfg.env.num_envs,
                max_episode_steps=cfg.env.max_episode_steps, env_kwargs=cfg.env.make_kwargs(),
                source_policy=f"dagger-round-{i}",
            )  # fmt: skip
            obs = np.concatenate([e.data["obs"].reshape(e.length, -1) for e in episodes])
            new = {"obs": obs.astype(np.float32), **label(teacher, obs, loss),
                   "round": np.full(len(obs), i, np.int32),
                   "seed": np.concatenate([np.full(e.length, e.seed, np.int64)
                                           for e in episodes])}  # fmt: skip
            # 3. aggregate: every round's states stay in the dataset.
            data = new if not data else {k: np.concatenate([data[k], new[k]]) for k in data}
            if student is None:
                # The normalizers see round 0 (the teacher's states and labels) and stay fixed,
                # so the weights carried from round to round keep meaning the same thing.
                log_std = data.get("target_log_std")
                student = MLPStudent.build(
                    obs_space, act_space, array_stats(data["obs"]), array_stats(data["target_mean"]),
                    hidden=dagger.hidden, activation=dagger.activation, head=head, squash=squash,
                    log_std_stats=None if log_std is None else array_stats(log_std),
                    obs_clip=dagger.obs_clip, seed=cfg.seed,
                )  # fmt: skip
            # 4. train on the aggregated dataset.
            loss_before = dataset_loss(student, data, loss)
            epoch_losses = train_epochs(student, data, loss, dagger, seed=[cfg.seed, i, 1])
            loss_after = dataset_loss(student, data, loss)
            # 5. validate; keep the best.
            result = rollout_summary(cfg, student, val_seeds, "distill-dagger")[0] | {"round": i}
            improved = is_better(result, state["best"], dagger.selection)
            round_dir = f"rounds/round-{i:03d}"
            save_dataset(dataset_path, data)
            student.save(out / round_dir)
            if improved:
                student.save(out / "policy")  # each file replaced atomically
                state["best"] = result
            row = {
                "round": i, "beta": beta, "round_states": len(obs),
                "dataset_states": len(data["obs"]), "loss_before": loss_before,
                "loss_after": loss_after, "loss_first_epoch": epoch_losses[0],
                "loss_last_epoch": epoch_losses[-1], "val_return_mean": result["return_mean"],
                "val_success_rate": result["success_rate"],
                "val_max_score_mean": result.get("max_score_mean"),
                "best_return_mean": state["best"]["return_mean"], "improved": improved,
            }  # fmt: skip
            state["history"].append(row)
            state.update(rounds_done=i + 1, student=round_dir)
            write_json_atomic(state_path, state)  # the round's commit point
            stage.log_metrics(i, row)
            log.info(
                "dagger: round %d β=%.3f: +%d states, dataset %d states (all %d rounds kept), "
                "loss %.4g -> %.4g, validation return %.2f (best %.2f)%s", i, beta, len(obs),
                len(data["obs"]), i + 1, loss_before, loss_after, result["return_mean"],
                state["best"]["return_mean"], " *" if improved else "",
            )  # fmt: skip
            bar.update(1)
            bar.set_postfix({"states": len(data["obs"]), "loss": round(loss_after, 4),
                             "val": round(result["return_mean"], 1)}, refresh=False)  # fmt: skip
    finally:
        bar.close()

    last = state["history"][-1]
    return {
        "student": "dagger",
        "policy": str(out / "policy"),
        "teacher": str(teacher_path),
        "loss": loss,
        "rounds": state["rounds_done"],
        "dataset_states": last["dataset_states"],
        "final_loss": last["loss_after"],
        **best_against_teacher(state["best"], state["teacher"], dagger.selection),
        "wall_s": round(time.monotonic() - t0, 3),
    }


def best_against_teacher(best: dict[str, Any], teacher: dict[str, Any],
                         selection: str) -> dict[str, Any]:  # fmt: skip
    """The result fields of a round-based student: its kept round's validation beside the
    teacher's on the same seeds, and the ratio of their mean returns (``None`` when the
    teacher's is 0 or missing)."""
    ratio = None
    if teacher["return_mean"] not in (None, 0):
        ratio = best["return_mean"] / teacher["return_mean"]
    return {
        "best_round": best["round"],
        "best_return_mean": best["return_mean"],
        "best_success_rate": best["success_rate"],
        "best_max_score_mean": best.get("max_score_mean"),
        "teacher_return_mean": teacher["return_mean"],
        "teacher_success_rate": teacher["success_rate"],
        "teacher_max_score_mean": teacher.get("max_score_mean"),
        "selection": selection,
        "validation_return_ratio": ratio,
    }
