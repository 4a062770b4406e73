"""``eval``: evaluating the run's policies on fixed seeds."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from robodistill.config.base import Section


class EvalConfig(Section):
    policy: str = "auto"
    """``random``, ``expert`` (the env's privileged expert), a saved policy directory, or
    ``auto``: the run's teacher and every student it distilled, side by side (the expert
    when the run has no teacher)."""
    episodes: int = Field(20, ge=1, le=1_000_000)
    """Evaluation episodes, on fixed seeds disjoint from collection's."""
    video_episodes: int = Field(2, ge=0, le=100)
    """The first N evaluation episodes are also rendered to ``<run>/eval/videos/seed-<s>.mp4``."""
    video_env_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra ``gymnasium.make`` arguments for the rendered episodes only (e.g. a frame size)."""
    workers: int = Field(1, ge=1, le=1024)
    """Worker processes running evaluation episodes in parallel: local ones, or Ray actors
    when a Ray address is given (``RAY_ADDRESS``, ``--ray-address``); 1 runs them in this
    process."""
    randomization_ranges: Literal["train", "ood", "both"] = "train"
    """With ``env.randomization``: where each evaluation episode's dynamics are drawn.
    ``train``: in the training ranges; ``ood``: out of them (``env.randomization.ood``
    over the training ranges: ``RandomizationConfig.make_kwargs(ood=True)``); ``both``:
    every policy on the same seeds in both, side by side. Out-of-range results go to
    ``<run>/eval/ood/`` and under ``ood`` in the stage's metrics (docs/concepts/privileged.md);
    ``ood`` and ``both`` need ``env.randomization``."""
    latency_decisions: int = Field(50, ge=0, le=1_000_000)
    """Plan cycles timed per saved policy (batch 1, one torch thread): a cycle is the control
    tick that plans and the ticks that follow it up to the next plan (a chunked policy: the
    executed actions of one chunk; the streaming student: one tick). The table gets the worst
    tick and the compute per control step (median and p99) and the measured network calls;
    0: no latency measurement. The name is kept from when it counted one timed decision per
    policy (then a chunk or a streaming step)."""
