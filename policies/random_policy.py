"""Uniformly random actions: the baseline every learned policy has to beat."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from robodistill.policies.base import Policy, register_policy
from robodistill.policies.checkpoint import load_checkpoint, save_checkpoint


@register_policy
class RandomPolicy(Policy):
    """Samples each action uniformly from the Box ``[low, high]``.

    Args:
        low, high: action bounds, shape (A,).
        seed: seed of the policy's own generator (independent of the environment's).
    """

    kind = "random"

    def __init__(self, low: np.ndarray, high: np.ndarray, seed: int | None = None):
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)
        if self.low.shape != self.high.shape or self.low.ndim != 1:
            raise ValueError(
                f"RandomPolicy needs 1-D low/high of equal shape, got {self.low.shape} "
                f"and {self.high.shape}"
            )
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high))):
            raise ValueError(
                "RandomPolicy needs finite action bounds (the action space is unbounded)"
            )
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    @classmethod
    def for_space(cls, action_space, seed: int | None = None) -> RandomPolicy:
        return cls(action_space.low.reshape(-1), action_space.high.reshape(-1), seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """``obs`` (B, obs_dim) -> (B, A) uniform in the bounds."""
        batch = np.asarray(obs).shape[0]
        unit = self._rng.random((batch, self.low.size), dtype=np.float32)
        return self.low + (self.high - self.low) * unit

    def save(self, directory: str | os.PathLike) -> Path:
        config = {"kind": self.kind, "seed": self.seed}
        return save_checkpoint(directory, config, {"low": self.low, "high": self.high})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> RandomPolicy:
        config, tensors = load_checkpoint(directory, kind=cls.kind)
        return cls(tensors["low"].numpy(), tensors["high"].numpy(), config.get("seed"))
