"""Episode summaries (return, length, success) and the JSON-lines files stages append to."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def summarize_episodes(returns, lengths, successes) -> dict[str, Any]:
    """Mean/std return, mean length, and success rate over the episodes that report one
    (``None`` entries in ``successes`` are envs without a notion of success)."""
    returns = np.asarray(returns, dtype=np.float64)
    known = [bool(s) for s in successes if s is not None]
    return {
        "episodes": int(len(returns)),
        "return_mean": float(returns.mean()) if len(returns) else None,
        "return_std": float(returns.std()) if len(returns) else None,
        "length_mean": float(np.mean(lengths)) if len(returns) else None,
        "success_rate": float(np.mean(known)) if known else None,
    }


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file; ``[]`` when it does not exist. A last line cut short
    by a crash is skipped with a warning."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            # A line cut short by a crash: the episode it described is simply re-run.
            log.warning("ignoring a truncated line in %s", path)
    return rows
