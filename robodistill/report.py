"""The run report: ``<run>/report.md`` with the stage table, plots and videos."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robodistill.config import RunConfig
from robodistill.core.delay_results import report_section as delay_section
from robodistill.core.summaries import read_jsonl

log = logging.getLogger(__name__)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f} %"


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def score_legend(rows: list[dict[str, Any]]) -> str:
    """The sentence under a table that says what its "mean max score" column maximizes."""
    sources = sorted({r["score_source"] for r in rows if r.get("score_source")})
    what = {"info.score": '`info["score"]`', "reward": "the reward"}
    named = " and ".join(what.get(s, f"`{s}`") for s in "+".join(sources).split("+") if s)
    return (
        'Mean max score: each episode\'s maximum over its steps of `info["score"]` where the '
        "env defines one, else of the reward, averaged over episodes (Push-T: Diffusion "
        "Policy's `mean_score`)" + (f"; here of {named}." if named else ".")
    )


def write_report(cfg: RunConfig, results: dict[str, Any]) -> Path:
    """``<run>/report.md``: one row per stage, then each built stage's metrics."""
    run_dir = Path(cfg.runs_dir) / cfg.name
    lines = [
        f"# robodistill run `{cfg.name}`",
        "",
        f"Environment `{cfg.env.id}`, seed {cfg.seed}. Configuration: `config.json`.",
        "",
        "| stage | status | seconds | episodes | return (mean ± std) | length | success rate "
        "| mean max score |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stage, result in results.items():
        m = result.get("metrics") or {}
        ret = (f"{m['return_mean']:.3g} ± {m['return_std']:.3g}"
               if m.get("return_mean") is not None else "—")  # fmt: skip
        lines.append(
            f"| {stage} | {result['status']} | {_fmt(result.get('seconds'))} | "
            f"{_fmt(m.get('episodes'))} | {ret} | {_fmt(m.get('length_mean'))} | "
            f"{_percent(m.get('success_rate'))} | {_score(m.get('max_score_mean'))} |"
        )
    scored = [
        r["metrics"]
        for r in results.values()
        if (r.get("metrics") or {}).get("max_score_mean") is not None
    ]
    if scored:
        lines += ["", score_legend(scored)]
    not_built = [s for s, r in results.items() if r["status"] == "not built"]
    if not_built:
        lines += ["", "Not built in this version (nothing was run for them):", ""]
        lines += [f"- **{s}**: {results[s]['note']}" for s in not_built]
    eval_metrics = (results.get("eval") or {}).get("metrics") or {}
    table = eval_metrics.get("policies")
    if table:
        lines += ["", "## Teacher vs students", "", *policy_table(table)]
        if (run_dir / "eval" / "success_latency.png").is_file():
            lines += [
                "",
                "![success rate against compute per control step and worst tick]"
                "(eval/success_latency.png)",
            ]
    lines += ranges_section(eval_metrics)
    plot = plot_returns(run_dir, [s for s, r in results.items() if r.get("metrics")])
    if plot is not None:
        lines += ["", f"![per-episode returns]({plot.name})"]
    curves = plot_learning_curves(run_dir)
    if curves is not None:
        lines += ["", f"![training losses]({curves.name})"]
    episodes = plot_training_episodes(run_dir)
    if episodes is not None:
        lines += ["", f"![training episodes: return and success against env steps "
                      f"(teach/episodes.jsonl)]({episodes.name})"]  # fmt: skip
    lines += delay_section(run_dir)  # benchmarks/delay.py --run: <run>/delay/delay.json
    videos = sorted((run_dir / "eval").glob("**/videos/seed-*.*"))
    if videos:
        lines += ["", "Evaluation videos: " + ", ".join(
            f"[{v.stem}]({v.relative_to(run_dir).as_posix()})" for v in videos)]  # fmt: skip
    for stage, result in results.items():
        if result.get("metrics"):
            lines += ["", f"## {stage}", "", "```json",
                      json.dumps(result["metrics"], indent=2), "```"]  # fmt: skip
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ratio(value: float | None) -> str:
    if not value:
        return "—"
    return f"{value:.1f}×" if value >= 0.95 else f"{value:.2g}×"


def _calls(row: dict[str, Any]) -> str:
    calls = row.get("network_calls") or {}
    plan, step = calls.get("per_plan"), calls.get("per_step")
    return "—" if plan is None or step is None else f"{plan:.3g} / {step:.3g}"


def latency_legend(reference: str) -> str:
    """The sentence under the policy table that says what its latency columns measure."""
    return (
        "Latency at batch 1 on one torch thread, per control tick. *Worst tick*: a control "
        "step that plans (a chunked policy's whole chunk, the streaming student's every "
        "step), what a controller waits for. *Per step*: a plan cycle's time over its "
        "control steps, the compute per executed action. Network calls are measured "
        "(denoiser forward calls per plan / per control step). Speed-ups are "
        f"{reference}'s median over the policy's, worst tick with worst tick and per step "
        "with per step."
    )


def policy_table(table: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows of the eval stage's per-policy table (first row: the reference), then
    the legends of its latency and mean max score columns. Rows of an older table (one
    timed decision in ``latency``) show it as their worst tick and no per-step compute."""
    from robodistill.evaluate import tick_ms

    ref = next(iter(table), "the first row")
    lines = [
        "| policy | episodes | success rate | mean max score | return (mean ± std) | length "
        "| worst tick ms (median / p99) | per step ms (median) | net calls (per plan / per "
        f"step) | worst-tick speed-up vs {ref} | per-step speed-up vs {ref} "
        f"| success vs {ref} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, row in table.items():
        worst, p99 = tick_ms(row, "worst_tick"), tick_ms(row, "worst_tick", "p99_ms")
        ms = f"{worst:.3g} / {p99:.3g}" if worst and p99 else "—"
        step = tick_ms(row, "per_step")
        ret = (f"{row['return_mean']:.3g} ± {row['return_std']:.3g}"
               if row.get("return_mean") is not None else "—")  # fmt: skip
        ratio = f"{row['success_ratio']:.2f}" if row.get("success_ratio") is not None else "—"
        lines.append(
            f"| {label} | {_fmt(row.get('episodes'))} | {_percent(row.get('success_rate'))} | "
            f"{_score(row.get('max_score_mean'))} | {ret} | {_fmt(row.get('length_mean'))} | "
            f"{ms} | {'—' if not step else f'{step:.3g}'} | {_calls(row)} | "
            f"{_ratio(row.get('worst_tick_speedup'))} | {_ratio(row.get('per_step_speedup'))} "
            f"| {ratio} |"
        )
    return [*lines, "", latency_legend(ref), "", score_legend(list(table.values()))]


def _rows(metrics: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """An eval result's rows by policy label: its table, or its one policy's summary."""
    if not metrics:
        return {}
    if "policies" in metrics:
        return metrics["policies"]
    spec = str(metrics.get("policy", "policy"))
    return {Path(spec).name or spec: metrics}


def _success_return(row: dict[str, Any] | None) -> tuple[str, str]:
    if not row:
        return "—", "—"
    ret = (f"{row['return_mean']:.3g} ± {row['return_std']:.3g}"
           if row.get("return_mean") is not None else "—")  # fmt: skip
    return _percent(row.get("success_rate")), ret


def ranges_section(metrics: dict[str, Any]) -> list[str]:
    """The eval stage's results in and out of the training ranges side by side
    (``eval.randomization_ranges: ood | both``); nothing when it evaluated in range only."""
    ood = metrics.get("ood")
    if not ood:
        return []
    in_range = metrics.keys() - {"ood", "randomization"}  # empty: evaluated out of range only
    inside, outside = (_rows(metrics) if in_range else {}), _rows(ood)
    ranges = metrics.get("randomization") or {}
    show = lambda table: ", ".join(f"{k} {v}" for k, v in (table or {}).items()) or "—"  # noqa: E731
    lines = [
        "", "## In and out of the training ranges", "",
        f"Every policy on the same held-out seeds; dynamics drawn in the training ranges "
        f"({show(ranges.get('train'))}) and out of them, `env.randomization.ood` "
        f"({show(ranges.get('ood'))}).", "",
        "| policy | episodes | success in range | success out of range | return in range "
        "| return out of range |",
        "| --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for label in [*inside, *(k for k in outside if k not in inside)]:
        s_in, r_in = _success_return(inside.get(label))
        s_out, r_out = _success_return(outside.get(label))
        episodes = (outside.get(label) or inside.get(label) or {}).get("episodes")
        lines.append(f"| {label} | {_fmt(episodes)} | {s_in} | {s_out} | {r_in} | {r_out} |")
    return lines


def _save_plot(path: Path, draw: Callable[[Any], None], legend: bool = True) -> Path:
    """A 6 x 3.5 inch figure with one axes that ``draw`` fills, a legend (unless ``draw``
    makes its own), saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    draw(ax)
    if legend:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_learning_curves(run_dir: Path) -> Path | None:
    """Training loss against step for the teacher and each student (``teach`` and
    ``distill`` ``metrics.jsonl`` rows with a ``loss``; one line per sub-stage/student)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for stage in ("teach", "distill"):
        for r in read_jsonl(run_dir / stage / "metrics.jsonl"):
            if isinstance(r.get("loss"), (int, float)) and isinstance(r.get("step"), int):
                label = f"{stage}: {r['stage']}" if r.get("stage") else stage
                xs, ys = series.setdefault(label, ([], []))
                xs.append(r["step"])
                ys.append(float(r["loss"]))
    if not series:
        return None

    def draw(ax: Any) -> None:
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("gradient step")
        ax.set_ylabel("training loss")

    return _save_plot(run_dir / "learning_curves.png", draw)


def plot_returns(run_dir: Path, stages: list[str]) -> Path | None:
    """Histogram of per-episode returns of each stage (from its ``metrics.jsonl``); the eval
    stage's rows are split by the policy they belong to."""
    series: dict[str, list[float]] = {}
    for stage in stages:
        for r in read_jsonl(run_dir / stage / "metrics.jsonl"):
            if isinstance(r.get("return"), (int, float)):
                label = f"{stage}: {r['policy']}" if r.get("policy") else stage
                series.setdefault(label, []).append(float(r["return"]))
    if not series:
        return None

    def draw(ax: Any) -> None:
        for stage, returns in series.items():
            ax.hist(returns, bins=20, alpha=0.6, label=f"{stage} ({len(returns)} episodes)")
        ax.set_xlabel("episode return")
        ax.set_ylabel("episodes")

    return _save_plot(run_dir / "returns.png", draw)


def _rolling_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and the ``window - 1`` before it (fewer at the start)."""
    sums = [0.0]
    for v in values:
        sums.append(sums[-1] + v)
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window)
            for i in range(len(values))]  # fmt: skip


def plot_training_episodes(run_dir: Path) -> Path | None:
    """Every training episode of the teacher (``teach/episodes.jsonl``): its return against
    the env steps when it ended, with a rolling mean, and the rolling success rate (right
    axis) where the env reports success."""
    rows = [r for r in read_jsonl(run_dir / "teach" / "episodes.jsonl")
            if isinstance(r.get("return"), (int, float)) and isinstance(r.get("env_steps"), int)]  # fmt: skip
    if not rows:
        return None
    steps = [r["env_steps"] for r in rows]
    returns = [float(r["return"]) for r in rows]
    window = max(1, len(rows) // 20)
    judged = [(r["env_steps"], float(bool(r["success"]))) for r in rows
              if r.get("success") is not None]  # fmt: skip

    def draw(ax: Any) -> None:
        ax.scatter(steps, returns, s=4, alpha=0.3, label=f"episode ({len(rows)})")
        ax.plot(steps, _rolling_mean(returns, window), label=f"mean of {window}")
        ax.set_xlabel("env steps")
        ax.set_ylabel("training episode return")
        handles, labels = ax.get_legend_handles_labels()
        if judged:
            right = ax.twinx()
            right.plot([s for s, _ in judged], _rolling_mean([v for _, v in judged], window),
                       color="tab:green", label=f"success rate (mean of {window})")  # fmt: skip
            right.set_ylim(-0.02, 1.02)
            right.set_ylabel("success rate")
            more = right.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels, loc="best", fontsize="small")

    return _save_plot(run_dir / "training_episodes.png", draw, legend=False)
