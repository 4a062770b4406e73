"""COMPASS stage 3: distill the residual specialists into one generalist (DAgger-style).

::

    robodistill distill --config configs/students/generalist_nav.yaml

``distill.teacher`` for this student is the COMPASS teach directory: ``<run>/teach`` or
``<run>/teach/compass`` (any directory holding ``specialists/<embodiment>/policy``; a
``.../teach/policy`` path is read as its ``teach`` directory); empty: this run's.

Each round ``i``, for every embodiment ``e`` (Ross et al., 2011, one teacher per body):

1. roll out the mixture of ``e``'s specialist (probability β_i) and the generalist acting as
   ``e`` on ``episodes_per_round`` seeds;
2. ``e``'s specialist relabels every visited state with its Gaussian (mean, log-std);
3. the states join the dataset (observations padded to the table's ``D_max``, targets to
   ``A_max``, with ``e``'s slot and action mask);
4. the generalist trains ``epochs`` passes: KL(specialist ‖ generalist) (or MSE on the mean)
   summed over each row's unmasked action dims only;
5. it is validated on every embodiment; the best by ``selection`` is kept (default: the one
   whose worst embodiment comes closest to its specialist, see :func:`selection_key`).

Artifacts in ``<run>/distill/generalist/``: ``policy/`` (best), ``rounds/round-NNN/``,
``dataset.npz``, ``state.json`` (the round's commit point, as in :mod:`robodistill.distill.dagger`), and
with fine-tuning ``finetune/start/`` (the generalist with the new slots) and
``finetune/<embodiment>/`` (the new embodiment's residual on the generalist).

Adding a new embodiment (fine-tuning): add its :class:`EmbodimentSpec` and MJCF builder
(see :mod:`robodistill.envs.embodiments`), then run the distill stage with
``distill.generalist.finetune_from=<a generalist policy dir>`` and
``finetune_embodiments=[<name>]``. The new body takes a free slot whose code starts as its
nearest known embodiment's; a short residual PPO (``finetune_residual_timesteps``) on the
generalist itself becomes its teacher, while the known embodiments are replayed with their
specialists, so the generalist does not forget them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodistill.config import ConfigError, RunConfig
from robodistill.core.rollout import env_spaces, rollout
from robodistill.core.rundir import StageRun, directory_digest, progress, write_json_atomic
from robodistill.core.seeds import DAGGER_SEED_OFFSET, VALIDATION_SEED_OFFSET, episode_seeds
from robodistill.distill import aggregation
from robodistill.envs.embodiments import EMBODIMENTS
from robodistill.policies import load_policy
from robodistill.policies.generalist import EmbodimentTable, Generalist, pad
from robodistill.policies.mlp_student import array_stats, gaussian_kl
from robodistill.teach.compass.evaluation import embodiment_kwargs, validate_on_embodiment
from robodistill.teach.compass.teacher import train_residual
from robodistill.training import epochs
from robodistill.training.optim import resolve_device

log = logging.getLogger(__name__)

LABEL_BATCH = 8192


# -- teachers ------------------------------------------------------------------------------


def compass_dir(cfg: RunConfig) -> Path:
    """The directory holding ``specialists/`` (module docstring)."""
    given = (
        Path(cfg.distill.teacher)
        if cfg.distill.teacher
        else Path(cfg.runs_dir) / cfg.name / "teach"
    )
    candidates = [given, given / "compass"]
    if given.name == "policy":
        candidates.append(given.parent / "compass")
    for path in candidates:
        if (path / "specialists").is_dir():
            return path
    raise ConfigError(
        f"distill.teacher: no COMPASS specialists under {given} (looked for specialists/ in "
        f"{[str(p) for p in candidates]}). Train them first (robodistill teach with "
        "teach.algo=compass) or point distill.teacher at that run's teach directory"
    )


def available_specialists(root: Path) -> list[str]:
    return sorted(p.parent.parent.name for p in (root / "specialists").glob("*/policy/config.json"))


def specialists_inputs(cfg: RunConfig) -> dict[str, Any]:
    """Digests of the specialists (and of ``finetune_from``), so that retrained specialists
    are never skipped over by a finished distill stage."""
    g = cfg.distill.generalist
    inputs: dict[str, Any] = {}
    try:
        root = compass_dir(cfg)
    except ConfigError:
        if not g.finetune_embodiments:
            raise
        root = None
    if root is not None:
        for name in g.embodiments or available_specialists(root):
            inputs[f"specialist_{name}"] = directory_digest(root / "specialists" / name / "policy")
    if g.finetune_from:
        inputs["finetune_from"] = directory_digest(Path(g.finetune_from))
    return inputs


def label(teacher, obs: np.ndarray, act_dim: int) -> dict[str, np.ndarray]:
    """The specialist's Gaussian on ``obs`` (N, D), padded to ``act_dim``: ``target_mean``,
    ``target_log_std`` (N, act_dim)."""
    means, log_stds = [], []
    for start in range(0, len(obs), LABEL_BATCH):
        mean, log_std = teacher.distribution(obs[start : start + LABEL_BATCH])
        means.append(pad(np.asarray(mean), act_dim))
        log_stds.append(pad(np.asarray(log_std), act_dim))
    return {"target_mean": np.concatenate(means), "target_log_std": np.concatenate(log_stds)}


def generalist_loss(policy: Generalist, batch: dict[str, torch.Tensor], loss: str) -> torch.Tensor:
    """Mean over the batch of the masked KL(teacher ‖ student) (or normalized squared error)
    summed over action dims. Batch: ``obs`` (B, D_max), ``slot`` (B,), ``target_mean``,
    ``target_log_std``, ``mask`` (B, A_max)."""
    code = torch.nn.functional.one_hot(batch["slot"].long(), policy.table.n_slots).float()
    mean, log_std = policy.net(batch["obs"], code)
    if loss == "kl":
        # gaussian_kl sums its last axis: give it size-1 axes to keep the per-dim terms.
        per_dim = gaussian_kl(batch["target_mean"][..., None], batch["target_log_std"][..., None],
                              mean[..., None], log_std[..., None])  # fmt: skip
    else:
        _, scale = policy.net.normalizer._params("action")
        per_dim = ((mean - batch["target_mean"]) / scale).pow(2)
    return (per_dim * batch["mask"]).sum(-1).mean()


def train_epochs(
    policy: Generalist, data: dict[str, np.ndarray], cfg: RunConfig, seed: list
) -> list[float]:
    """``distill.generalist.epochs`` shuffled Adam passes over ``data``; mean loss per epoch."""
    g = cfg.distill.generalist
    keys = ("obs", "slot", "target_mean", "target_log_std", "mask")
    return epochs.train_epochs(
        policy.net, {k: data[k] for k in keys}, lambda b: generalist_loss(policy, b, g.loss),
        epochs=g.epochs, batch_size=g.batch_size, learning_rate=g.learning_rate, seed=seed,
        device=resolve_device(g.device, "distill.generalist.device"),
    )  # fmt: skip


def validate_all(cfg: RunConfig, policy, names: list[str], seeds: list[int]) -> dict[str, Any]:
    """Per-embodiment validation plus ``success_rate`` / ``return_mean`` / ``max_score_mean``
    averaged over them (the max score over the embodiments that have one; None if none)."""
    per = {}
    for name in names:
        acting = policy(name) if callable(policy) else policy.for_embodiment(name)
        per[name] = validate_on_embodiment(cfg, acting, name, seeds)
    scores = [p["max_score_mean"] for p in per.values() if p.get("max_score_mean") is not None]
    return {"success_rate": float(np.mean([p["success_rate"] or 0.0 for p in per.values()])),
            "return_mean": float(np.mean([p["return_mean"] for p in per.values()])),
            "max_score_mean": float(np.mean(scores)) if scores else None,
            "per_embodiment": per}  # fmt: skip


def selection_key(result: dict[str, Any], specialists: dict[str, Any], selection: str
                  ) -> tuple[float, ...]:  # fmt: skip
    """Sort key of one round's validation ``result`` (from :func:`validate_all`); higher is
    better. ``specialists`` is the specialists' own :func:`validate_all` on the same seeds.

    ``specialist_ratio``: ``(min_e min(1, g_e / s_e), mean g, mean return)`` with ``g_e`` /
    ``s_e`` the generalist's / specialist's success on embodiment ``e`` (``s_e = 0`` counts as
    matched); ``mean_success``: ``(mean g, mean return)``; ``max_score``: ``(mean max score,
    mean g, mean return)`` (a result without a max score ranks below any with one)."""
    mean = (result["success_rate"], result["return_mean"])
    if selection == "mean_success":
        return mean
    if selection == "max_score":
        score = result.get("max_score_mean")
        return (float("-inf") if score is None else score, *mean)
    ratios = []
    for name, r in result["per_embodiment"].items():
        g = r["success_rate"] or 0.0
        s = specialists["per_embodiment"][name]["success_rate"] or 0.0
        ratios.append(1.0 if s <= 0.0 else min(1.0, g / s))
    return (min(ratios), *mean)


# -- the stage -----------------------------------------------------------------------------


def _teachers(cfg: RunConfig, stage: StageRun, out: Path):
    """``(teachers {name: policy}, start generalist or None, new embodiment names)``."""

    g = cfg.distill.generalist
    root = None if g.finetune_embodiments and not _has_compass(cfg) else compass_dir(cfg)
    found = available_specialists(root) if root is not None else []
    names = list(g.embodiments or found)
    missing = [n for n in names if n not in found]
    if missing:
        raise ConfigError(f"distill.generalist.embodiments: no specialist for {missing} under "
                          f"{root}/specialists (found {found}); train them in teach.compass."
                          "embodiments or use finetune_embodiments")  # fmt: skip
    teachers = {n: load_policy(root / "specialists" / n / "policy") for n in names}
    start, new = None, list(g.finetune_embodiments)
    if new:
        if not g.finetune_from:
            raise ConfigError("distill.generalist.finetune_embodiments needs finetune_from: the "
                              "generalist policy directory to fine-tune")  # fmt: skip
        unknown = [n for n in new if n not in EMBODIMENTS]
        if unknown:
            raise ConfigError(f"distill.generalist.finetune_embodiments: {unknown} are not in "
                              "EMBODIMENTS; add their spec and builder first "
                              "(robodistill.envs.embodiments)")  # fmt: skip
        start_dir = out / "finetune" / "start"
        if not (start_dir / "config.json").is_file():
            start = Generalist.load(g.finetune_from)
            for name in new:
                source = start.add_embodiment(EMBODIMENTS[name])
                log.info("generalist: %s takes a free slot, starting from %s's code", name, source)
            start.save(start_dir)
        start = Generalist.load(start_dir)
        teachers = {n: t for n, t in teachers.items() if n in start.table.specs}
        for name in new:  # a short residual on the (frozen, slot-extended) generalist
            base = Generalist.load(start_dir).for_embodiment(name)
            sub = out / "finetune" / name
            train_residual(cfg, stage, base, name, sub, g.finetune_residual_timesteps)
            teachers[name] = load_policy(sub / "policy")
    if not teachers:
        raise ConfigError("distill.generalist: no embodiment to distill (no specialists found)")
    return teachers, start, new


def _has_compass(cfg: RunConfig) -> bool:
    try:
        compass_dir(cfg)
    except ConfigError:
        return False
    return True


def run_distill_generalist(cfg: RunConfig, stage: StageRun, teacher: str | Path | None = None
                           ) -> dict[str, Any]:  # fmt: skip
    """Distill the specialists into a :class:`Generalist` in ``stage.dir / "generalist"``
    (module docstring); resumable; returns its metrics. ``teacher`` is unused: the
    specialists are found through ``distill.teacher`` (:func:`compass_dir`)."""

    g, t0 = cfg.distill.generalist, time.monotonic()
    out = stage.dir / "generalist"
    out.mkdir(parents=True, exist_ok=True)
    if DAGGER_SEED_OFFSET + g.rounds * g.episodes_per_round > VALIDATION_SEED_OFFSET:
        raise ConfigError("distill.generalist: rounds × episodes_per_round reaches the "
                          "validation seeds; lower one of them")  # fmt: skip
    state_path, dataset_path = out / "state.json", out / "dataset.npz"
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    teachers, start, new = _teachers(cfg, stage, out)
    names = list(teachers)
    val_seeds = episode_seeds(cfg, g.eval_episodes, VALIDATION_SEED_OFFSET)

    student: Generalist | None = start
    data: dict[str, np.ndarray] = {}
    if state is not None:
        data = aggregation.load_dataset(dataset_path, state["rounds_done"])
        student = Generalist.load(out / state["student"])
        log.info("generalist: resuming after round %d", state["rounds_done"] - 1)
    else:
        teacher_val = validate_all(cfg, lambda n: teachers[n], names, val_seeds)
        state = {"rounds_done": 0, "history": [], "best": None, "teachers": teacher_val,
                 "embodiments": names, "finetune": new}  # fmt: skip
    # The table: every distilled embodiment, in a fixed order (the fine-tuned one's own).
    table = student.table if student is not None else EmbodimentTable.from_specs(
        [EMBODIMENTS[n] for n in names], n_slots=g.max_embodiments)  # fmt: skip
    _, act_space, _ = env_spaces(cfg.env.id, embodiment_kwargs(cfg, names[0]))

    bar = progress(g.rounds, "generalist", initial=state["rounds_done"], unit="round")
    try:
        for i in range(state["rounds_done"], g.rounds):
            beta = aggregation.beta_for_round(g, i)
            seeds = episode_seeds(
                cfg, g.episodes_per_round, DAGGER_SEED_OFFSET + i * g.episodes_per_round
            )
            parts = []
            for k, name in enumerate(names):
                acting = None if student is None else student.for_embodiment(name)
                mixture = aggregation.MixturePolicy(
                    teachers[name], acting, beta, seed=[cfg.seed, i, k]
                )
                episodes = rollout(cfg.env.id, mixture, seeds, num_envs=cfg.env.num_envs,
                                   max_episode_steps=cfg.env.max_episode_steps,
                                   env_kwargs=embodiment_kwargs(cfg, name),
                                   source_policy=f"generalist-round-{i}")  # fmt: skip
                obs = np.concatenate([e.data["obs"].reshape(e.length, -1) for e in episodes])
                n = len(obs)
                parts.append({
                    "obs": pad(obs, table.obs_dim), **label(teachers[name], obs, table.act_dim),
                    "slot": np.full(n, table.slots[name], np.int64),
                    "mask": np.repeat(table.mask_tables()[1][table.slots[name]].numpy()[None], n, 0),
                    "round": np.full(n, i, np.int32),
                    "seed": np.concatenate([np.full(e.length, e.seed, np.int64) for e in episodes]),
                })  # fmt: skip
            new_rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            data = (
                new_rows if not data else {k: np.concatenate([data[k], new_rows[k]]) for k in data}
            )
            if student is None:
                # Normalizers from round 0 (the specialists' own states and labels), then fixed.
                stats = {"obs": array_stats(data["obs"]), "action": array_stats(data["target_mean"]),
                         "log_std": array_stats(data["target_log_std"])}  # fmt: skip
                pad_space = act_space  # all Nav bodies share the Box; padded dims are [-1, 1]
                student = Generalist.build(table, pad_space, stats, g.hidden, g.activation,
                                           g.embedding, g.embed_dim, g.obs_clip, seed=cfg.seed,
                                           default=names[0])  # fmt: skip
            losses = train_epochs(student, data, cfg, seed=[cfg.seed, i, 1])
            result = validate_all(cfg, student, names, val_seeds) | {"round": i}
            improved = state["best"] is None or selection_key(
                result, state["teachers"], g.selection
            ) > selection_key(state["best"], state["teachers"], g.selection)
            round_dir = f"rounds/round-{i:03d}"
            aggregation.save_dataset(dataset_path, data)
            student.for_embodiment(names[0]).save(out / round_dir)
            if improved:
                student.save(out / "policy")
                state["best"] = result
            row = {"round": i, "beta": beta, "round_states": len(new_rows["obs"]),
                   "dataset_states": len(data["obs"]), "loss_first_epoch": losses[0],
                   "loss_last_epoch": losses[-1], "val_success_rate": result["success_rate"],
                   "val_return_mean": result["return_mean"], "improved": improved,
                   "val_max_score_mean": result.get("max_score_mean"),
                   **{f"val_success_{n}": r["success_rate"]
                      for n, r in result["per_embodiment"].items()}}  # fmt: skip
            state["history"].append(row)
            state.update(rounds_done=i + 1, student=round_dir)
            write_json_atomic(state_path, state)  # the round's commit point
            stage.log_metrics(i, row)
            log.info("generalist: round %d β=%.3f: dataset %d states, loss %.4g -> %.4g, "
                     "validation success %.2f%s", i, beta, len(data["obs"]), losses[0],
                     losses[-1], result["success_rate"], " *" if improved else "")  # fmt: skip
            bar.update(1)
    finally:
        bar.close()

    best, teacher_val = state["best"], state["teachers"]
    per = {n: {"generalist_success_rate": best["per_embodiment"][n]["success_rate"],
               "specialist_success_rate": teacher_val["per_embodiment"][n]["success_rate"]}
           for n in names}  # fmt: skip
    return {"student": "generalist", "policy": str(out / "policy"), "embodiments": names,
            "finetuned": new, "loss": g.loss, "selection": g.selection,
            "rounds": state["rounds_done"],
            "dataset_states": state["history"][-1]["dataset_states"],
            "best_round": best["round"], "best_success_rate": best["success_rate"],
            "best_return_mean": best["return_mean"],
            "best_max_score_mean": best.get("max_score_mean"),
            "specialists_success_rate": teacher_val["success_rate"], "per_embodiment": per,
            "wall_s": round(time.monotonic() - t0, 3)}  # fmt: skip
