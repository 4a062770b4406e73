"""The pipeline's stages: the registry the CLI and the pipeline dispatch through.

Each stage reads the run config, works inside its stage directory and returns its metrics;
each is resumable (see :class:`robodistill.core.rundir.StageRun`). Stages that later
versions build raise :class:`~robodistill.errors.StageNotBuilt`, which says so plainly
instead of pretending.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from robodistill.collect import run_collect
from robodistill.config import RunConfig
from robodistill.control import run_control
from robodistill.distill.stage import run_distill
from robodistill.errors import StageNotBuilt
from robodistill.evaluate import run_eval
from robodistill.export import run_export
from robodistill.teach.stage import run_teach

NOT_BUILT: dict[str, str] = {}
"""Stage name -> why it is not built yet (every stage is built; variants may not be)."""


def run_not_built(cfg: RunConfig, stage: str) -> dict[str, Any]:
    raise StageNotBuilt(f"stage '{stage}' is not built yet: {NOT_BUILT[stage]}. Nothing was run.")


STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "collect": run_collect,
    "teach": run_teach,
    "distill": run_distill,
    "eval": run_eval,
    "export": run_export,
    "control": run_control,
}
"""Stage name -> function(cfg, overwrite) for the stages this version implements."""
