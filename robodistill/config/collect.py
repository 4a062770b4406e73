"""``collect``: the trajectory store of demonstration episodes."""

from __future__ import annotations

from pydantic import Field

from robodistill.config.base import Section


class CollectConfig(Section):
    policy: str = "expert"
    """``random``, ``expert`` (the env's privileged expert) or a saved policy directory."""
    episodes: int = Field(100, ge=1, le=10_000_000)
    """Episodes in the trajectory store when the stage is done."""
    flush_every: int = Field(64, ge=1, le=100_000)
    """Episodes journaled before they are merged into the zarr arrays in one batch."""
    workers: int = Field(1, ge=1, le=1024)
    """Worker processes running episodes in parallel (each with ``env.num_envs`` envs): local
    ones, or Ray actors when a Ray address is given (``RAY_ADDRESS``, ``--ray-address``); 1
    runs them in this process."""
