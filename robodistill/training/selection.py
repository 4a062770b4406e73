"""Checkpoint selection for every trainer: validate on fixed seeds, keep the best policy.

Every teacher and student selects with :class:`BestPolicyKeeper`, so all of them choose on
the same validation seeds, with the same ordering (:func:`is_better`), into the same files::

    <directory>/policy/     the best policy so far (what later stages load)
    <directory>/best.json   the validation result that chose it (survives restarts)

The ordering is the trainer section's ``selection`` key: ``success`` (success rate, then
mean max score, then mean return) or ``max_score`` (mean max score, then success rate, then
mean return); the mean max score is ``max_score_mean`` of
:func:`robodistill.core.summaries.summarize_episodes` (Diffusion Policy's Push-T metric).
Under ``success`` the max score breaks ties only where it is the env's own ``info["score"]``:
a max of the reward (Pendulum, Hopper, Nav) would put one good step before the return.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

from robodistill.config import RunConfig
from robodistill.config.base import Selection
from robodistill.core.rollout import rollout
from robodistill.core.rundir import write_json_atomic
from robodistill.core.seeds import VALIDATION_SEED_OFFSET, episode_seeds
from robodistill.core.summaries import summarize_episode_list
from robodistill.policies import Policy, load_policy


def rollout_summary(cfg: RunConfig, policy: Policy, seeds: list[int], source_policy: str,
                    env_kwargs: dict[str, Any] | None = None) -> tuple[dict[str, Any], list]:  # fmt: skip
    """Roll ``policy`` out on ``seeds`` with the run's env settings (``env_kwargs`` replaces
    ``env.kwargs``; ``env.success_key`` holds for both): the return / length / success / max score summary, and the episodes."""
    episodes = rollout(
        cfg.env.id, policy, seeds, num_envs=cfg.env.num_envs,
        max_episode_steps=cfg.env.max_episode_steps,
        env_kwargs=cfg.env.make_kwargs(env_kwargs),
        source_policy=source_policy,
    )  # fmt: skip
    return summarize_episode_list(episodes), episodes


SELECTIONS: tuple[str, ...] = get_args(Selection)
"""The values of a trainer's ``selection`` key (:data:`robodistill.config.base.Selection`)."""


def selection_key(summary: dict[str, Any], selection: str = "success",
                  with_score: bool = True) -> tuple[float, float, float]:  # fmt: skip
    """Sort key of one validation ``summary``; higher is better.

    ``success``: (success rate, mean max score, mean return); ``max_score``: (mean max score,
    success rate, mean return). A missing success rate (an env without one) counts as 0, a
    missing return as -inf; ``with_score=False`` puts 0 in the max score's place.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")

    def number(key: str, missing: float) -> float:
        value = summary.get(key)
        return missing if value is None or value != value else float(value)  # NaN: missing

    success = number("success_rate", 0.0)
    score = number("max_score_mean", float("-inf")) if with_score else 0.0
    ret = number("return_mean", float("-inf"))
    return (score, success, ret) if selection == "max_score" else (success, score, ret)


def is_better(new: dict[str, Any], old: dict[str, Any] | None,
              selection: str = "success") -> bool:  # fmt: skip
    """Whether validation summary ``new`` beats ``old`` (``None``: nothing kept yet) in the
    ``selection`` ordering (:func:`selection_key`). The two are compared on success rate and
    return alone when either lacks a mean max score (a ``best.json`` written before max
    scores existed, as it was compared when kept) and, under ``success``, when either's
    score is not the env's ``info["score"]`` (``score_source``) but the reward's max."""
    if old is None:
        return True

    def scored(summary: dict[str, Any]) -> bool:
        if summary.get("max_score_mean") is None:
            return False
        return selection == "max_score" or summary.get("score_source") == "info.score"

    both = scored(new) and scored(old)
    return selection_key(new, selection, both) > selection_key(old, selection, both)


Validator = Callable[[Policy, list[int]], dict[str, Any]]
"""``(policy, seeds) -> summary`` (``success_rate``, ``max_score_mean``, ``return_mean``, ...)."""


class BestPolicyKeeper:
    """Validates a policy on ``episodes`` validation seeds (default ``teach.eval_episodes``)
    and saves it to ``directory/policy`` (with ``directory/best.json``) when it beats the best
    so far in the ``selection`` ordering (default ``teach.selection``; students pass their
    own section's). ``validate`` replaces the plain rollout summary (e.g. to add a
    measurement)."""

    def __init__(self, cfg: RunConfig, directory: Path, episodes: int | None = None,
                 validate: Validator | None = None, source: str = "teach",
                 selection: str | None = None):  # fmt: skip
        self.cfg, self.directory, self.source = cfg, Path(directory), source
        self.selection = cfg.teach.selection if selection is None else selection
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
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

    def revalidate(self) -> dict[str, Any] | None:
        """Re-validate the kept policy (``directory/policy``) on this keeper's seeds when its
        record was measured on a different number of them, and make that its record (its
        step and tag stay): later candidates then compete with it on the same seeds. Returns
        the new record, or ``None`` when there was nothing to do."""
        if self.best is None or self.best.get("episodes") == len(self.seeds):
            return None
        summary = self.validate(load_policy(self.directory / "policy"), self.seeds)
        self.best = self.best | summary | {"revalidated_from_episodes": self.best.get("episodes")}
        write_json_atomic(self.best_path, self.best)
        return self.best

    def evaluate(self, policy: Policy, step: int, tag: dict[str, Any] | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
        """Validate ``policy``; returns the result (summary + ``step`` + ``tag``, e.g. which
        sub-stage made it) and the row to log (``eval_*`` keys, ``eval_best_return_mean``)."""
        result = self.validate(policy, self.seeds) | {"step": int(step), **(tag or {})}
        row = {f"eval_{k}": v for k, v in result.items()
               if k not in ("step", "episodes", "score_source", *(tag or {}))}  # fmt: skip
        if is_better(result, self.best, self.selection):
            policy.save(self.directory / "policy")
            self.best = result
            write_json_atomic(self.best_path, result)
        row["eval_best_return_mean"] = self.best["return_mean"]
        return result, row
