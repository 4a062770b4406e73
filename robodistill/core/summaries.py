"""Episode summaries (return, length, success, max score) and the JSON-lines files of stages."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def summarize_episodes(
    returns, lengths, successes, max_scores=None, score_sources=None
) -> dict[str, Any]:
    """Mean/std return, mean length, success rate and mean max score of some episodes.

    ``success_rate`` is over the episodes that report one (``None`` entries in ``successes``
    are envs without a notion of success). ``max_score_mean`` is the mean of each episode's
    max score (the maximum over its steps of ``info["score"]`` where the env reports one, else
    of the reward; Diffusion Policy's Push-T ``mean_score``) over the episodes that have one
    (``None`` / NaN entries are skipped; ``None`` when no episode has one). ``score_source``
    says what was maximized (:func:`score_source`), ``None`` without ``score_sources``.
    """
    returns = np.asarray(returns, dtype=np.float64)
    known = [bool(s) for s in successes if s is not None]
    scores = [float(x) for x in (max_scores if max_scores is not None else ())
              if x is not None and not np.isnan(x)]  # fmt: skip
    return {
        "episodes": int(len(returns)),
        "return_mean": float(returns.mean()) if len(returns) else None,
        "return_std": float(returns.std()) if len(returns) else None,
        "length_mean": float(np.mean(lengths)) if len(returns) else None,
        "success_rate": float(np.mean(known)) if known else None,
        "max_score_mean": float(np.mean(scores)) if scores else None,
        "score_source": score_source(score_sources) if scores else None,
    }


def score_source(sources) -> str | None:
    """What the episodes' max scores maximize: ``"info.score"``, ``"reward"``, both joined by
    ``"+"`` when the episodes differ, ``None`` when none says (or ``sources`` is ``None``)."""
    named = sorted({str(s) for s in (sources if sources is not None else ()) if s})
    return "+".join(named) if named else None


def summarize_episode_list(episodes) -> dict[str, Any]:
    """:func:`summarize_episodes` of :class:`~robodistill.data.episode.Episode` objects."""
    episodes = list(episodes)
    return summarize_episodes(
        [e.return_ for e in episodes],
        [e.length for e in episodes],
        [e.success for e in episodes],
        [e.max_score for e in episodes],
        [e.score_source for e in episodes],
    )


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
