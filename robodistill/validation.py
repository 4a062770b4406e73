"""Checkpoint selection for training stages: validate on fixed seeds, keep the best policy.

Both teacher backends (stable-baselines3, RLlib) use :class:`BestPolicyKeeper`, so they
select on the same validation seeds, with the same ordering, into the same files::

    <stage>/policy/     the best policy so far (what later stages load)
    <stage>/best.json   the validation result that chose it (survives restarts)
"""

from __future__ import annotations

import json
from typing import Any

from robodistill.config import RunConfig
from robodistill.policies import Policy
from robodistill.run import StageRun, write_json_atomic


def rollout_summary(cfg: RunConfig, policy: Policy, seeds: list[int], source_policy: str,
                    env_kwargs: dict[str, Any] | None = None) -> tuple[dict[str, Any], list]:  # fmt: skip
    """Roll ``policy`` out on ``seeds`` with the run's env settings (``env_kwargs`` replaces
    ``env.kwargs``): the return / length / success summary, and the episodes."""
    from robodistill.rollout import rollout
    from robodistill.stages import summarize_episodes

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


class BestPolicyKeeper:
    """Rolls a policy out on ``cfg.teach.eval_episodes`` validation seeds and saves it to
    ``stage.dir/policy`` when it beats the best so far."""

    def __init__(self, cfg: RunConfig, stage: StageRun):
        from robodistill.stages import VALIDATION_SEED_OFFSET, episode_seeds

        self.cfg, self.stage = cfg, stage
        # Validation seeds, not `robodistill eval`'s: choosing the best checkpoint on the seeds
        # it is later reported on would flatter it.
        self.seeds = episode_seeds(cfg, cfg.teach.eval_episodes, VALIDATION_SEED_OFFSET)
        self.best_path = stage.dir / "best.json"
        # best.json is written right after policy/ is, so it always describes that policy.
        self.best = json.loads(self.best_path.read_text()) if self.best_path.is_file() else None

    def evaluate(self, policy: Policy, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Returns the result (summary + ``step``) and the row to log (``eval_*`` keys)."""
        from robodistill.rollout import rollout
        from robodistill.stages import summarize_episodes

        cfg = self.cfg
        episodes = rollout(
            cfg.env.id, policy, self.seeds, num_envs=cfg.env.num_envs,
            max_episode_steps=cfg.env.max_episode_steps, env_kwargs=cfg.env.kwargs,
            source_policy="teach",
        )  # fmt: skip
        result = summarize_episodes(
            [float(e.data["reward"].sum()) for e in episodes],
            [len(e.data["reward"]) for e in episodes],
            [e.success for e in episodes],
        )
        result["step"] = int(step)
        row = {f"eval_{k}": v for k, v in result.items() if k not in ("step", "episodes")}
        if is_better(result, self.best):
            policy.save(self.stage.dir / "policy")
            self.best = result
            write_json_atomic(self.best_path, result)
        row["eval_best_return_mean"] = self.best["return_mean"]
        return result, row
