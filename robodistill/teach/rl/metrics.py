"""The result fields every RL teacher (stable-baselines3 or RLlib) reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def teacher_metrics(algo: str, timesteps: int, resumed_from: int, final: dict[str, Any],
                    best: dict[str, Any] | None, stage_dir: Path, *, first_success_step,
                    train_episodes: int, train_successes: int, wall_s: float,
                    steps_per_s: float) -> dict[str, Any]:  # fmt: skip
    """``final`` / ``best``: validation results (the last one, the kept policy's)."""
    best = best or {}
    return {
        "algo": algo,
        "timesteps": int(timesteps),
        "resumed_from_timesteps": int(resumed_from),
        "final_success_rate": final["success_rate"],
        "final_return_mean": final["return_mean"],
        "final_max_score_mean": final.get("max_score_mean"),
        "best_success_rate": best.get("success_rate"),
        "best_max_score_mean": best.get("max_score_mean"),
        "best_return_mean": best.get("return_mean"),
        "best_step": best.get("step"),
        "first_success_step": first_success_step,
        "train_episodes": train_episodes,
        "train_successes": train_successes,
        "policy": str(stage_dir / "policy"),
        "policy_last": str(stage_dir / "policy_last"),
        "wall_s": round(wall_s, 3),
        "steps_per_s": round(steps_per_s, 2),
    }
