"""The run report: ``<run>/report.md`` with the stage table, plots and videos."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from robodistill.config import RunConfig

log = logging.getLogger(__name__)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f} %"


def write_report(cfg: RunConfig, results: dict[str, Any]) -> Path:
    """``<run>/report.md``: one row per stage, then each built stage's metrics."""
    run_dir = Path(cfg.runs_dir) / cfg.name
    lines = [
        f"# robodistill run `{cfg.name}`",
        "",
        f"Environment `{cfg.env.id}`, seed {cfg.seed}. Configuration: `config.json`.",
        "",
        "| stage | status | seconds | episodes | return (mean ± std) | length | success rate |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stage, result in results.items():
        m = result.get("metrics") or {}
        ret = (f"{m['return_mean']:.3g} ± {m['return_std']:.3g}"
               if m.get("return_mean") is not None else "—")  # fmt: skip
        lines.append(
            f"| {stage} | {result['status']} | {_fmt(result.get('seconds'))} | "
            f"{_fmt(m.get('episodes'))} | {ret} | {_fmt(m.get('length_mean'))} | "
            f"{_percent(m.get('success_rate'))} |"
        )
    not_built = [s for s, r in results.items() if r["status"] == "not built"]
    if not_built:
        lines += ["", "Not built in this version (nothing was run for them):", ""]
        lines += [f"- **{s}**: {results[s]['note']}" for s in not_built]
    plot = plot_returns(run_dir, [s for s, r in results.items() if r.get("metrics")])
    if plot is not None:
        lines += ["", f"![per-episode returns]({plot.name})"]
    videos = sorted((run_dir / "eval" / "videos").glob("seed-*.*"))
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


def plot_returns(run_dir: Path, stages: list[str]) -> Path | None:
    """Histogram of per-episode returns of each stage (from its ``metrics.jsonl``)."""
    series = {}
    for stage in stages:
        path = run_dir / stage / "metrics.jsonl"
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            returns = [r["return"] for r in rows if isinstance(r.get("return"), (int, float))]
            if returns:
                series[stage] = returns
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for stage, returns in series.items():
        ax.hist(returns, bins=20, alpha=0.6, label=f"{stage} ({len(returns)} episodes)")
    ax.set_xlabel("episode return")
    ax.set_ylabel("episodes")
    ax.legend()
    fig.tight_layout()
    path = run_dir / "returns.png"
    fig.savefig(path)
    plt.close(fig)
    return path
