"""Checkpoint selection for every trainer: validate on fixed seeds, keep the best policy.

Every teacher and student selects with :class:`BestPolicyKeeper`, so all of them choose on
the same validation seeds, with the same ordering (:func:`is_better`), into the same files::

    <directory>/policy/     the best policy so far (what later stages load)
    <directory>/best.json   the validation result that chose it (survives restarts)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robodistill.config import RunConfig
from robodistill.core.rollout import rollout
from robodistill.core.rundir import write_json_atomic
from robodistill.core.seeds import VALIDATION_SEED_OFFSET, episode_seeds
from robodistill.core.summaries import summarize_episodes
from robodistill.policies import Policy


def rollout_summary(cfg: RunConfig, policy: Policy, seeds: list[int], source_policy: str,
                    env_kwargs: dict[str, Any] | None = None) -> tuple[dict[str, Any], list]:  # fmt: skip
    """Roll ``policy`` out on ``seeds`` with the run's env settings (``env_kwargs`` replaces
    ``env.kwargs``): the return / length / success summary, and the episodes."""
    episodes = rollout(
        cfg.env.id, policy, seeds, num_envs=cfg.env.num_envs,
        max_episode_steps=cfg.env.max_episode_steps,
        env_kwargs=cfg.env.kwargs if env_kwargs is None else env_kwargs,
        source_policy=source_policy,
    )  # fmt: skip
    summary = summarize_episodes([e.return_ for e in episodes], [e.length for e in episodes],
                                 [e.success for e in episodes])  # fmt: skip
    return summary, episodes


def is_better(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """Success rate first (envs without one count as 0), then mean return."""

    def key(e):
        return (e["success_rate"] if e["success_rate"] is not None else 0.0, e["return_mean"])

    return old is None or key(new) > key(old)


Validator = Callable[[Policy, list[int]], dict[str, Any]]
"""``(policy, seeds) -> summary`` (``success_rate``, ``return_mean``, ...)."""


class BestPolicyKeeper:
    """Validates a policy on ``episodes`` validation seeds (default ``teach.eval_episodes``)
    and saves it to ``directory/policy`` (with ``directory/best.json``) when it beats the best
    so far. ``validate`` replaces the plain rollout summary (e.g. to add a measurement)."""

    def __init__(self, cfg: RunConfig, directory: Path, episodes: int | None = None,
                 validate: Validator | None = None, source: str = "teach"):  # fmt: skip
        self.cfg, self.directory, self.source = cfg, Path(directory), source
        count = cfg.teach.eval_episodes if episodes is None else episodes
        # Validation seeds, not `robodistill eval`'s: choosing the best checkpoint on the seeds
        # it is later reported on would flatter it.
        self.seeds = episode_seeds(cfg, count, VALIDATION_SEED_OFFSET)
        self.validate = validate or self._rollout
        self.best_path = self.directory / "best.json"
        # best.json is written right after policy/ is, so it always describes that policy.
        self.best = json.loads(self.best_path.read_text()) if self.best_path.is_file() else None

    def _rollout(self, policy: Policy, seeds: list[int]) -> dict[str, Any]:
        return rollout_summary(self.cfg, policy, seeds, self.source)[0]

    def evaluate(self, policy: Policy, step: int, tag: dict[str, Any] | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
        """Validate ``policy``; returns the result (summary + ``step`` + ``tag``, e.g. which
        sub-stage made it) and the row to log (``eval_*`` keys, ``eval_best_return_mean``)."""
        result = self.validate(policy, self.seeds) | {"step": int(step), **(tag or {})}
        row = {f"eval_{k}": v for k, v in result.items()
               if k not in ("step", "episodes", *(tag or {}))}  # fmt: skip
        if is_better(result, self.best):
            policy.save(self.directory / "policy")
            self.best = result
            write_json_atomic(self.best_path, result)
        row["eval_best_return_mean"] = self.best["return_mean"]
        return result, row
