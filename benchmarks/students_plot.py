"""The Pareto plot of ``benchmarks/students.py``: success against latency, one row of two
panels per task (left: compute per control step, right: worst control tick; torch medians,
batch 1, one thread, log scale), the teacher's DDIM-k points joined as a line (its own
speed/quality curve) and every other policy a marker."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DDIM = re.compile(r"^teacher DDIM-(\d+)$")
PANELS = (("per_step", "compute per control step, median ms"),
          ("worst_tick", "worst control tick (the tick that plans), median ms"))  # fmt: skip


def points(results: dict[str, dict[str, Any]], which: str) -> dict[str, tuple[float, float]]:
    """label -> (torch median ms of ``which``, success %) for rows with both."""
    out = {}
    for label, r in results.items():
        ms = (r.get("torch") or {}).get(which, {}).get("median_ms")
        if ms is not None and r.get("success_rate") is not None:
            out[label] = (ms, 100 * r["success_rate"])
    return out


def plot_front(tasks: dict[str, dict[str, dict[str, Any]]], path: Path) -> Path | None:
    """Write the plot of ``tasks`` (task title -> the benchmark's ``results``) to ``path``."""
    if not any(points(results, "per_step") for results in tasks.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robodistill.evaluate import latency_axes

    fig, axes = plt.subplots(len(tasks), 2, figsize=(11.0, 3.9 * len(tasks)), dpi=100,
                             squeeze=False)  # fmt: skip
    markers = "osD^vP*Xh<>"
    for row, (title, results) in enumerate(tasks.items()):
        for col, (which, xlabel) in enumerate(PANELS):
            ax = axes[row][col]
            pts = points(results, which)
            if not pts:
                ax.set_visible(False)
                continue
            curve = sorted((ms, s, int(DDIM.match(k)[1])) for k, (ms, s) in pts.items()
                           if DDIM.match(k))  # fmt: skip
            if curve:
                ax.plot([p[0] for p in curve], [p[1] for p in curve], "-o", color="0.45",
                        lw=1.5, ms=5, zorder=1, label="teacher DDIM-k (k = steps)")  # fmt: skip
                for ms, s, k in curve:
                    ax.annotate(f"k={k}", (ms, s), textcoords="offset points", xytext=(4, -11),
                                fontsize=7, color="0.35")  # fmt: skip
            # The same marker and colour for a policy in every panel: by its row, not its place.
            others = [k for k in results if not DDIM.match(k)]
            for i, label in enumerate(others):
                if label in pts:
                    ms, s = pts[label]
                    ax.scatter([ms], [s], s=50, marker=markers[i % len(markers)], zorder=2,
                               color=f"C{i % 10}", label=f"{label} ({ms:.3g} ms, {s:.0f} %)")  # fmt: skip
            latency_axes(ax, [p[0] for p in pts.values()])
            ax.set_xlabel(f"{xlabel} (torch, batch 1, 1 thread, log)", fontsize=8)
            ax.set_ylabel("success rate, %")
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=6.5, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
