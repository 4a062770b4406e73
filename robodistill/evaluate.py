"""The ``eval`` stage: roll policies out on fixed held-out seeds, side by side.

``eval.policy`` names one policy (``random``, ``expert`` or a directory) or ``auto``: the
run's teacher and every student it distilled, which is the teacher-vs-students table of
the report::

    <run>/eval/episodes.jsonl, videos/          one policy
    <run>/eval/<label>/episodes.jsonl, videos/  several (labels: teacher, consistency, ...)
    <run>/eval/table.json                       summary + control-tick latency per policy
    <run>/eval/success_latency.png              success rate against both latencies
    <run>/eval/ood/...                          the same, out of the training ranges

With ``env.randomization``, ``eval.randomization_ranges`` says where the episodes'
dynamics are drawn: ``train`` (the training ranges; the layout above), ``ood`` (out of
them, ``RandomizationConfig.make_kwargs(ood=True)``; in ``<run>/eval/ood/``) or ``both``
(every policy on the same seeds in both). The stage's metrics hold the in-range results
as without randomization, the out-of-range ones under ``ood`` (in the same form: one
policy's summary, or ``{"policies": table, ...}``), and under ``randomization`` the
setting and both sets of ranges. Each summary says ``randomization: train | ood``;
``both`` measures latency once (it does not depend on the draw).

Each policy's summary holds both task metrics: ``success_rate`` and ``max_score_mean``, the
mean over episodes of each episode's maximum of ``info["score"]`` where the env reports one
(Push-T: ``clip(coverage / 0.95, 0, 1)``, Diffusion Policy's ``mean_score``), else of the
reward; ``score_source`` says which (``"info.score"`` / ``"reward"``).

Every policy runs on the same seeds. Per-episode rows are appended as they finish, so a
resumed evaluation runs only the seeds missing from each policy's ``episodes.jsonl``.

Latency (:func:`tick_latency`) times control ticks with
:func:`robodistill.core.latency.policy_tick_latency` (batch 1, one torch thread) in the two
units a chunked policy (teacher, RTI, consistency student: one 16-action chunk per plan, 8
executed) and a per-step one (streaming student: one network call per control step) can be
compared in: ``worst_tick``, the control step that plans (what a controller waits for), and
``per_step``, a plan cycle's time over its control steps (the compute per executed action).
Network calls are measured (a forward hook on the denoiser). Every ratio compares like with
like (:func:`add_ratios`): ``worst_tick_speedup`` and ``per_step_speedup``. ``latency``
repeats the worst tick's median / p99 for readers of older tables, whose ``latency`` was one
timed decision (a chunk's plan, or one streaming ``act``): also the time of a planning tick.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from robodistill.config import RunConfig
from robodistill.core.latency import policy_tick_latency
from robodistill.core.parallel import run_episodes
from robodistill.core.policy_specs import policy_inputs, resolve_policy
from robodistill.core.rollout import env_spaces
from robodistill.core.rundir import StageRun, progress, write_json_atomic
from robodistill.core.seeds import EVAL_SEED_OFFSET, episode_seeds
from robodistill.core.summaries import read_jsonl, summarize_episodes
from robodistill.core.video import write_video
from robodistill.distill.stage import distilled_students, teacher_path
from robodistill.envs import make_env

log = logging.getLogger(__name__)


def eval_targets(cfg: RunConfig) -> dict[str, str]:
    """``{label: policy spec}`` that ``eval.policy`` stands for: ``auto`` is the teacher
    first, then every ``<run>/distill/<student>/policy`` (``distill.students``' order first,
    then by name), or the expert when the run has no teacher yet."""

    spec = cfg.eval.policy
    if spec != "auto":
        return {Path(spec).name if Path(spec).is_dir() else spec: spec}
    teacher = teacher_path(cfg)
    if not (teacher / "config.json").is_file():
        log.info("eval: eval.policy is auto and %s holds no teacher; evaluating the expert",
                 teacher)  # fmt: skip
        return {"expert": "expert"}
    targets = {"teacher": str(teacher)}
    # Every student the run holds, as export's `auto` sees them (a DAgger student distilled
    # under another distill.students counts too): this config's order first, then the rest
    # by name.
    found = distilled_students(Path(cfg.runs_dir) / cfg.name / "distill")
    order = [s for s in cfg.distill.students if s in found]
    for student in [*order, *sorted(set(found) - set(order))]:
        targets[student] = str(found[student])
    return targets


def run_eval(cfg: RunConfig, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate :func:`eval_targets` on ``eval.episodes`` fixed seeds (module docstring)."""
    targets = eval_targets(cfg)
    inputs: dict[str, Any] = {}
    for label, spec in targets.items():
        digest = policy_inputs(spec).get("policy_digest")
        if digest:
            inputs["policy_digest" if len(targets) == 1 else f"{label}_digest"] = digest
    with StageRun(cfg, "eval", overwrite=overwrite, inputs=inputs) as stage:
        if stage.skipped:
            return stage.manifest["metrics"]
        which = cfg.eval.randomization_ranges
        metrics: dict[str, Any] = {}
        if which != "ood":
            metrics = _evaluate_targets(cfg, stage, targets, stage.dir, ood=False)
        if which != "train":
            # The same seeds with dynamics drawn out of the training ranges; latency does not
            # depend on the draw, so `both` reuses the in-range measurement.
            metrics["ood"] = _evaluate_targets(cfg, stage, targets, stage.dir / OOD_DIR,
                                               ood=True, latency_from=metrics or None)  # fmt: skip
            r = cfg.env.randomization
            metrics["randomization"] = {"ranges": which, "train": r.ranges(),
                                        "ood": r.ood_ranges()}  # fmt: skip
        log.info("eval: %s", json.dumps(metrics))
        stage.finish(metrics)
        return metrics


OOD_DIR = "ood"
"""``eval.randomization_ranges: ood | both``: the out-of-range episodes, tables and videos
live in ``<run>/eval/ood/``, laid out as ``<run>/eval/`` is for the training ranges."""
LATENCY_KEYS = ("worst_tick", "per_step", "steps_per_plan", "network_calls", "latency")
"""A row's latency entries (:func:`tick_latency`)."""


def _evaluate_targets(cfg: RunConfig, stage: StageRun, targets: dict[str, str], out_dir: Path,
                      ood: bool, latency_from: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Every target on the eval seeds, in ``out_dir``: one policy's summary (with
    ``policy``), or ``{"policies": table, "reference", "plot"}`` (``table.json`` written).
    ``ood``: dynamics from the out-of-distribution ranges. ``latency_from``: metrics of the
    same targets whose latency entries are reused instead of measured again."""

    def latency(label: str) -> dict[str, Any] | None:
        if latency_from is None:
            return None
        row = latency_from["policies"][label] if len(targets) > 1 else latency_from
        return {k: row[k] for k in LATENCY_KEYS if k in row}

    if len(targets) == 1:
        ((label, spec),) = targets.items()
        return _evaluate(cfg, stage, label, spec, out_dir, ood, latency(label)) | {"policy": spec}
    table = {label: _evaluate(cfg, stage, label, spec, out_dir / label, ood, latency(label))
             | {"policy": spec} for label, spec in targets.items()}  # fmt: skip
    add_ratios(table, reference=next(iter(table)))
    write_json_atomic(out_dir / "table.json", table)
    plot = None if ood else plot_success_latency(table, out_dir / "success_latency.png")
    return {"policies": table, "reference": next(iter(table)),
            "plot": str(plot) if plot else None}  # fmt: skip


def _evaluate(cfg: RunConfig, stage: StageRun, label: str, spec: str, out_dir: Path,
              ood: bool = False, latency: dict[str, Any] | None = None) -> dict:  # fmt: skip
    _, action_space, env_doc = env_spaces(cfg.env.id, cfg.env.kwargs)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "episodes.jsonl"
    done = read_jsonl(results_path)
    done_seeds = {r["seed"] for r in done}
    seeds = episode_seeds(cfg, cfg.eval.episodes, EVAL_SEED_OFFSET)
    todo = [s for s in seeds if s not in done_seeds]
    film = set(seeds[: cfg.eval.video_episodes])
    policy = resolve_policy(spec, cfg.env.id, action_space, cfg.seed + 1)
    bar = progress(cfg.eval.episodes, f"eval {label} {cfg.env.id}", initial=len(done))

    def save_video(seed, frames):
        path = write_video(out_dir / "videos" / f"seed-{seed}.mp4", frames,
                           env_doc["control_rate_hz"])  # fmt: skip
        log.info("eval: video %s", path)

    with open(results_path, "a") as out:

        def record(episode):
            row = {"seed": episode.seed, "return": float(episode.data["reward"].sum()),
                   "length": len(episode.data["reward"]), "success": episode.success,
                   "max_score": episode.max_score,
                   "score_source": episode.score_source}  # fmt: skip
            out.write(json.dumps(row) + "\n")
            out.flush()
            done.append(row)
            name = f"{label} (out of range)" if ood else label
            logged = {k: v for k, v in row.items() if k != "seed"} | {"policy": name}
            stage.log_metrics(len(done), logged)
            bar.update(1)

        # Episodes to film run first, in their own rendering envs; the rest run unrendered.
        video_kwargs = cfg.env.make_kwargs({**cfg.env.kwargs, **cfg.eval.video_env_kwargs},
                                           ood=ood)  # fmt: skip
        batches = [([s for s in todo if s in film], save_video, video_kwargs),
                   ([s for s in todo if s not in film], None, cfg.env.make_kwargs(ood=ood))]  # fmt: skip
        try:
            for batch_seeds, on_frames, env_kwargs in batches:
                run_episodes(cfg, policy, spec, batch_seeds, on_episode=record,
                              workers=1 if on_frames else cfg.eval.workers,
                              field="eval.workers", policy_seed=cfg.seed + 1,
                              env_kwargs=env_kwargs, on_frames=on_frames)  # fmt: skip
        finally:
            bar.close()
    # Rows written before max scores existed have none: those episodes count for success only.
    summary = summarize_episodes(
        [r["return"] for r in done], [r["length"] for r in done], [r["success"] for r in done],
        [r.get("max_score") for r in done], [r.get("score_source") for r in done],
    )  # fmt: skip
    if latency:
        summary |= latency
    elif cfg.eval.latency_decisions and spec not in ("random", "expert"):
        summary |= tick_latency(policy, _latency_obs(cfg), plans=cfg.eval.latency_decisions)
    if cfg.env.randomization is not None:
        summary["randomization"] = "ood" if ood else "train"
    return summary


def _latency_obs(cfg: RunConfig):
    # The env the episodes ran in (with env.randomization: a privileged teacher's obs).
    env = make_env(cfg.env.id, **cfg.env.make_kwargs())
    try:
        obs, _ = env.reset(seed=episode_seeds(cfg, 1, EVAL_SEED_OFFSET)[0])
    finally:
        env.close()
    return obs


MEASURES = {"per_step": "compute per control step", "worst_tick": "worst control tick"}
"""The two latencies of a row, by key: what each one is called on axes and in tables."""


def tick_latency(policy, obs, plans: int) -> dict[str, Any]:
    """A row's latency entries: ``plans`` plan cycles of ``policy`` timed at batch 1 on one
    torch thread on observation ``obs`` (:func:`policy_tick_latency`).

    ``worst_tick`` and ``per_step``: median / p99 / max / mean ms (module docstring);
    ``steps_per_plan``: control steps per plan cycle (measured); ``network_calls``:
    ``per_plan`` (mean; ``per_plan_max``) and ``per_step``, measured denoiser calls (None
    for a policy without a denoiser: MLP and RL policies, one forward pass per step);
    ``latency``: the worst tick's median / p99 under the keys older tables had."""
    ticks = policy_tick_latency(policy, obs, plans=plans, threads=1)
    worst = ticks["worst_tick"]
    return {
        "worst_tick": worst,
        "per_step": ticks["per_step"],
        "steps_per_plan": ticks["steps_per_plan"],
        "network_calls": {
            "per_plan": ticks["calls_per_plan"],
            "per_plan_max": ticks["calls_per_plan_max"],
            "per_step": ticks["calls_per_step"],
        },  # fmt: skip
        "latency": {
            "measure": "worst_tick",
            "median_ms": worst["median_ms"],
            "p99_ms": worst["p99_ms"],
            "plans": ticks["plans"],
            "threads": 1,
        },  # fmt: skip
    }


def tick_ms(row: dict[str, Any], measure: str, stat: str = "median_ms") -> float | None:
    """``row``'s ``measure`` (``worst_tick`` / ``per_step``) ``stat`` in ms, or None. A row
    of an older table has only ``latency``, one timed decision: a planning tick's time, so
    its worst tick; its per-step compute is unknown."""
    entry = row.get(measure)
    if entry is None and measure == "worst_tick":
        entry = row.get("latency")
    return (entry or {}).get(stat)


def add_ratios(table: dict[str, dict[str, Any]], reference: str) -> None:
    """Each row gets ``success_ratio`` (its success / the reference's), ``max_score_ratio``
    (its mean max score / the reference's), ``worst_tick_speedup`` (the reference's median
    worst tick / its own) and ``per_step_speedup`` (the same for the compute per control
    step), where both sides are known: like with like, never a chunk against a step."""
    ref = table[reference]
    for row in table.values():
        for name, ratio in (("success_rate", "success_ratio"),
                            ("max_score_mean", "max_score_ratio")):  # fmt: skip
            v, v_ref = row.get(name), ref.get(name)
            row[ratio] = (v / v_ref) if (v is not None and v_ref) else None
        for measure in MEASURES:
            ms, ms_ref = tick_ms(row, measure), tick_ms(ref, measure)
            row[f"{measure}_speedup"] = (ms_ref / ms) if (ms_ref and ms) else None


def latency_axes(ax, ms: list[float]) -> None:
    """A success-vs-latency panel's axes: latency ``ms`` on a log x axis with plain tick
    labels and a margin around the points, success in % on y, a light grid."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(min(ms) / 1.6, max(ms) * 1.6)
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)


def plot_success_latency(
    table: dict[str, dict[str, Any]], path: Path, measures: tuple[str, ...] = tuple(MEASURES)
) -> Path | None:
    """Success rate (y) against each of ``measures`` (``per_step``: compute per control
    step; ``worst_tick``: worst control tick; median ms, log scale), one panel each, one
    point per policy; panels without a point are left out."""
    panels = {m: {k: (tick_ms(r, m), r["success_rate"]) for k, r in table.items()
                  if tick_ms(r, m) and r.get("success_rate") is not None}
              for m in measures}  # fmt: skip
    panels = {m: points for m, points in panels.items() if points}
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), dpi=100,
                             sharey=True, squeeze=False)  # fmt: skip
    markers = "osD^vP*Xh<>"
    style = {label: (markers[i % len(markers)], f"C{i % 10}") for i, label in enumerate(table)}
    for ax, (measure, points) in zip(axes[0], panels.items(), strict=True):
        # A legend, not annotations: fast students sit close together and their labels collide.
        for label, (ms, success) in sorted(points.items(), key=lambda p: p[1][0]):
            ax.scatter([ms], [100 * success], s=45, marker=style[label][0], color=style[label][1],
                       label=f"{label} ({ms:.3g} ms, {100 * success:.0f} %)")  # fmt: skip
        ax.legend(fontsize=7, loc="lower right")
        latency_axes(ax, [p[0] for p in points.values()])
        ax.set_xlabel(f"{MEASURES[measure]}, median ms\n(batch 1, 1 thread, log scale)")
    axes[0][0].set_ylabel("success rate, %")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
