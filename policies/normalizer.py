"""Per-key normalizers whose statistics travel inside the policy checkpoint.

Statistics come from :meth:`robodistill.data.store.TrajectoryStore.compute_stats` in this
JSON form (lists are feature-wise over the trailing feature shape)::

    {"obs": {"min": [...], "max": [...], "mean": [...], "std": [...], "count": N}, ...}

``mode="minmax"`` maps ``[min, max]`` to ``[-1, 1]`` (diffusion-policy's choice for
actions); ``mode="gaussian"`` maps to zero mean and unit variance. A feature that never
varies gets scale 1 instead of dividing by zero, so it normalizes to a constant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
from torch import nn

NormMode = Literal["minmax", "gaussian"]
_EPS = 1e-6


class Normalizer(nn.Module):
    """Affine ``x_norm = (x - offset) / scale`` per key; buffers are saved in the state dict.

    Shapes: ``normalize(key, x)`` takes ``(..., *feature_shape)`` and returns the same.
    """

    def __init__(self, feature_shapes: Mapping[str, tuple[int, ...]], mode: NormMode = "minmax"):
        super().__init__()
        if mode not in ("minmax", "gaussian"):
            raise ValueError(f"Normalizer mode must be 'minmax' or 'gaussian', got {mode!r}")
        self.mode = mode
        self.keys = tuple(feature_shapes)
        for key, shape in feature_shapes.items():
            self.register_buffer(f"{key}_offset", torch.zeros(shape))
            self.register_buffer(f"{key}_scale", torch.ones(shape))

    @classmethod
    def from_stats(cls, stats: Mapping[str, Mapping], mode: NormMode = "minmax") -> Normalizer:
        shapes = {key: tuple(np.asarray(s["min"]).shape) for key, s in stats.items()}
        norm = cls(shapes, mode)
        for key, s in stats.items():
            if mode == "minmax":
                lo = np.asarray(s["min"], dtype=np.float64)
                hi = np.asarray(s["max"], dtype=np.float64)
                offset, scale = (hi + lo) / 2, (hi - lo) / 2
            else:
                offset = np.asarray(s["mean"], dtype=np.float64)
                scale = np.asarray(s["std"], dtype=np.float64)
            if not (np.all(np.isfinite(offset)) and np.all(np.isfinite(scale))):
                raise ValueError(f"normalizer statistics for {key!r} contain NaN or inf")
            scale = np.where(scale < _EPS, 1.0, scale)
            getattr(norm, f"{key}_offset").copy_(torch.as_tensor(offset))
            getattr(norm, f"{key}_scale").copy_(torch.as_tensor(scale))
        return norm

    def _params(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self.keys:
            raise KeyError(f"Normalizer has no statistics for {key!r}; it knows {list(self.keys)}")
        return getattr(self, f"{key}_offset"), getattr(self, f"{key}_scale")

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        offset, scale = self._params(key)
        return (x - offset) / scale

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        offset, scale = self._params(key)
        return x * scale + offset

    def config(self) -> dict:
        """What a checkpoint's config.json needs to rebuild this module before loading."""
        shapes = {k: list(getattr(self, f"{k}_offset").shape) for k in self.keys}
        return {"mode": self.mode, "feature_shapes": shapes}

    @classmethod
    def from_config(cls, config: Mapping) -> Normalizer:
        return cls({k: tuple(v) for k, v in config["feature_shapes"].items()}, config["mode"])
