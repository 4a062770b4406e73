"""Delay-robustness results (``benchmarks/delay.py``): their JSON, table and plot, in one
place for the benchmark, the docs and the run report (``<run>/delay/delay.json``).

The JSON: ``{"env": id, "results": {kind: {mode: {str(delay): point}}}, ...}``, a point
``{"success": rate, "episodes": n, ...}``; the delay is in control steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODES = ("sync", "async", "async+rtc")
STYLES = {"sync": "s--", "async": "o-", "async+rtc": "D-"}
SEED0 = 900_000


def read_results(path: Path) -> dict[str, Any] | None:
    """The document at ``path``, or None when it is absent or holds no point."""
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    if not any(pts for modes in doc.get("results", {}).values() for pts in modes.values()):
        return None
    return doc


def delays_of(results: dict) -> list[int]:
    """Every delay measured for any kind and mode, ascending."""
    return sorted({int(d) for modes in results.values() for pts in modes.values() for d in pts})


def _counts(results: dict) -> list[int]:
    return sorted({p["episodes"] for m in results.values() for q in m.values() for p in q.values()})


def table(results: dict, delays: list[int] | None = None, env: str = "", seed0: int = SEED0,
          episodes: int | None = None) -> str:  # fmt: skip
    """A markdown table: success per delay for each kind and mode (cells say the episode
    count), and the d=4 / d=0 ratio."""
    delays = delays if delays is not None else delays_of(results)
    counts = _counts(results)
    per_point = " or ".join(str(c) for c in counts) if counts else str(episodes)
    on = f" on {env}" if env else ""
    lines = [f"Success{on} ({per_point} episodes per point, seeds {seed0}..; delay in "
             "control steps of 0.1 s):", "",
             "| policy | mode | " + " | ".join(f"d={d}" for d in delays) + " | d=4 / d=0 |",
             "| --- | --- | " + " | ".join("---" for _ in delays) + " | --- |"]  # fmt: skip
    for kind, modes in results.items():
        for mode, points in modes.items():
            cells = [f"{100 * points[str(d)]['success']:.0f} % ({points[str(d)]['episodes']})"
                     if str(d) in points else "—" for d in delays]  # fmt: skip
            base, four = points.get("0"), points.get("4")
            ratio = (f"{four['success'] / base['success']:.2f}"
                     if base and four and base["success"] else "—")  # fmt: skip
            lines.append(f"| {kind} | {mode} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def plot(results: dict, delays: list[int] | None, path: Path, title: str = "") -> Path:
    """One panel per kind: success % against the delay, a line per mode of :data:`MODES`;
    saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    delays = delays if delays is not None else delays_of(results)
    kinds = list(results)
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds), 3.4), dpi=100,
                             sharey=True, squeeze=False)  # fmt: skip
    for ax, kind in zip(axes[0], kinds, strict=True):
        for mode in MODES:  # variants (other RTC settings) stay in the table only
            pts = results[kind].get(mode, {})
            xs = [d for d in delays if str(d) in pts]
            if xs:
                ys = [100 * pts[str(d)]["success"] for d in xs]
                ax.plot(xs, ys, STYLES[mode], label=mode)
        counts = _counts({kind: results[kind]})
        ax.set_title(f"{kind} ({'/'.join(map(str, counts))} episodes per point)", fontsize=9)
        ax.set_xlabel("inference delay (control steps)")
        ax.set_xticks(delays)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("success %")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def report_section(run_dir: Path) -> list[str]:
    """The run report's "Delay robustness" lines from ``<run>/delay/delay.json`` (and its
    plot, redrawn to ``<run>/delay/delay.png``); none when the run holds no delay results."""
    folder = Path(run_dir) / "delay"
    doc = read_results(folder / "delay.json")
    if doc is None:
        return []
    results = doc["results"]
    delays = delays_of(results)
    png = plot(results, delays, folder / "delay.png", title=doc.get("env", ""))
    sources = doc.get("policies") or {}
    named = "; ".join(f"{k}: `{v}`" for k, v in sources.items() if k in results)
    return ["", "## Delay robustness", "",
            "`benchmarks/delay.py`: success against an injected inference delay (simulated, in "
            "control steps), synchronous vs asynchronous vs asynchronous + RTC, in the "
            "controller loop (`delay/delay.json`)" + (f". Policies: {named}." if named else "."),
            "",
            table(results, delays, doc.get("env", ""), doc.get("seed0", SEED0)), "",
            f"![success against injected inference delay]"
            f"({png.relative_to(run_dir).as_posix()})"]  # fmt: skip
