"""``robodistill pipeline``: run the configured stages in order and write the run report.

Stages this version does not implement are reported as "not built" in the log and the
report; they are never faked. Each built stage is resumable, so re-running the pipeline
after an interruption continues where it stopped and skips finished stages.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from robodistill.config import RunConfig
from robodistill.run import read_manifest, write_json_atomic
from robodistill.stages import NOT_BUILT, STAGES

log = logging.getLogger(__name__)


def run_pipeline(cfg: RunConfig, overwrite: bool = False) -> dict[str, Any]:
    """Run ``cfg.pipeline.stages``; returns ``{stage: {"status": ..., "metrics": ...}}``."""
    run_dir = Path(cfg.runs_dir) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", cfg.model_dump(mode="json"))
    results: dict[str, Any] = {}
    for stage in cfg.pipeline.stages:
        if stage not in STAGES:
            log.warning("stage '%s' is not built yet: %s; skipped", stage, NOT_BUILT[stage])
            results[stage] = {"status": "not built", "note": NOT_BUILT[stage]}
            continue
        log.info("stage '%s' ...", stage)
        metrics = STAGES[stage](cfg, overwrite=overwrite)
        manifest = read_manifest(run_dir / stage) or {}
        results[stage] = {
            "status": manifest.get("status", "done"),
            "seconds": manifest.get("seconds"),
            "metrics": metrics,
        }
    report = write_report(cfg, results)
    log.info("report: %s", report)
    return results


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_report(cfg: RunConfig, results: dict[str, Any]) -> Path:
    """``<run>/report.md``: one row per stage, then each built stage's metrics."""
    run_dir = Path(cfg.runs_dir) / cfg.name
    lines = [
        f"# robodistill run `{cfg.name}`",
        "",
        f"Environment `{cfg.env.id}`, seed {cfg.seed}. Configuration: `config.json`.",
        "",
        "| stage | status | seconds | episodes | return (mean ± std) | success rate |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for stage, result in results.items():
        m = result.get("metrics") or {}
        ret = (f"{m['return_mean']:.3g} ± {m['return_std']:.3g}"
               if m.get("return_mean") is not None else "—")  # fmt: skip
        lines.append(
            f"| {stage} | {result['status']} | {_fmt(result.get('seconds'))} | "
            f"{_fmt(m.get('episodes'))} | {ret} | {_fmt(m.get('success_rate'))} |"
        )
    not_built = [s for s, r in results.items() if r["status"] == "not built"]
    if not_built:
        lines += ["", "Not built in this version (nothing was run for them):", ""]
        lines += [f"- **{s}**: {results[s]['note']}" for s in not_built]
    for stage, result in results.items():
        if result.get("metrics"):
            lines += ["", f"## {stage}", "", "```json",
                      json.dumps(result["metrics"], indent=2), "```"]  # fmt: skip
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
