"""``robodistill pipeline``: run the configured stages in order and write the run report.

Stages this version does not implement are reported as "not built" in the log and the
report; they are never faked. Each built stage is resumable, so re-running the pipeline
after an interruption continues where it stopped and skips finished stages.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from robodistill.config import RunConfig
from robodistill.core.rundir import read_manifest, write_json_atomic
from robodistill.errors import MissingInput, StageNotBuilt
from robodistill.report import write_report
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
        try:
            metrics = STAGES[stage](cfg, overwrite=overwrite)
        except StageNotBuilt as e:
            # A built stage whose configured variant is not built yet.
            log.warning("%s; skipped", e)
            results[stage] = {"status": "not built", "note": str(e)}
            continue
        except MissingInput as e:
            # Nothing upstream produced what this stage consumes (e.g. no policy to export).
            log.warning("stage '%s' skipped: %s", stage, e)
            results[stage] = {"status": "skipped", "note": str(e)}
            continue
        manifest = read_manifest(run_dir / stage) or {}
        results[stage] = {
            "status": manifest.get("status", "done"),
            "seconds": manifest.get("seconds"),
            "metrics": metrics,
        }
    report = write_report(cfg, results)
    log.info("report: %s", report)
    return results
