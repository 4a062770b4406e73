"""The configuration of :class:`~robodistill.policies.diffusion.DiffusionPolicy`.

Split out of :mod:`robodistill.policies.diffusion`, which re-exports it (import it from
there). :class:`DiffusionPolicyConfig` holds the horizons (To / H / Ta), the UNet's size, the
DDPM / DDIM schedules, the stochastic chain's settings (``chain_eta``, ``min_std``) and the
acting options (temporal ensembling, ``inference_eta``, RTI warm starts, action bounds); it
checks itself on construction and is stored, as :meth:`~DiffusionPolicyConfig.to_dict`, in
the ``"policy"`` entry of a checkpoint's ``config.json``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from robodistill.policies.diffusion_nets import BACKBONES, denoiser_for


@dataclass
class DiffusionPolicyConfig:
    """Everything that defines a :class:`DiffusionPolicy` (stored in ``config.json``)."""

    obs_dim: int
    action_dim: int
    obs_horizon: int = 2
    pred_horizon: int = 16
    action_horizon: int = 8
    backbone: str = "unet"
    down_dims: tuple[int, ...] = (32, 64, 128)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 64
    mlp_width: int = 512
    mlp_blocks: int = 3
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    num_inference_steps: int = 10
    timestep_spacing: str = "trailing"
    clip_sample: bool = True
    chain_eta: float = 1.0
    min_std: float = 0.0067
    temporal_ensemble: float | None = None
    mask_padded_actions: bool = False
    inference_eta: float = 0.0
    rti_steps: int = 0
    rti_discrete_dims: list[int] | None = None
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.down_dims = tuple(int(d) for d in self.down_dims)
        problems = []
        if not 1 <= self.obs_horizon <= self.pred_horizon:
            problems.append(
                f"need 1 <= obs_horizon <= pred_horizon, got {self.obs_horizon} / "
                f"{self.pred_horizon}"
            )
        last_exec = self.obs_horizon - 1 + self.action_horizon
        if self.action_horizon < 1 or last_exec > self.pred_horizon:
            problems.append(
                f"action_horizon must be in [1, pred_horizon - obs_horizon + 1] = "
                f"[1, {self.pred_horizon - self.obs_horizon + 1}] (executed actions start at "
                f"index obs_horizon - 1 of the chunk), got {self.action_horizon}"
            )
        multiple = 2 ** (len(self.down_dims) - 1) if self.backbone == "unet" else 1
        if self.backbone not in BACKBONES:
            problems.append(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.pred_horizon % multiple:
            problems.append(
                f"pred_horizon {self.pred_horizon} must be a multiple of {multiple} for "
                f"{len(self.down_dims)} UNet levels (down_dims); use e.g. "
                f"{math.ceil(self.pred_horizon / multiple) * multiple}"
            )
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            problems.append(
                f"num_inference_steps must be in [1, num_train_timesteps="
                f"{self.num_train_timesteps}], got {self.num_inference_steps}"
            )
        if self.min_std < 0 or self.chain_eta < 0:
            problems.append(f"min_std and chain_eta must be >= 0, got {self.min_std}, "
                            f"{self.chain_eta}")  # fmt: skip
        if self.inference_eta < 0:
            problems.append(f"inference_eta must be >= 0, got {self.inference_eta}")
        if not 0 <= self.rti_steps <= self.num_inference_steps:
            problems.append(
                f"rti_steps must be in [0, num_inference_steps={self.num_inference_steps}] (0: "
                f"no warm start), got {self.rti_steps}"
            )
        bad_dims = [d for d in self.rti_discrete_dims or [] if not 0 <= d < self.action_dim]
        if bad_dims:
            problems.append(
                f"rti_discrete_dims {bad_dims} are not action dims [0, {self.action_dim})"
            )
        if (self.action_low is None) != (self.action_high is None):
            problems.append("give both action_low and action_high, or neither")
        elif self.action_low is not None and not (
            len(self.action_low) == len(self.action_high) == self.action_dim
        ):
            problems.append(f"action_low/high need {self.action_dim} entries each")
        if problems:
            raise ValueError("invalid diffusion policy config: " + "; ".join(problems))

    def denoiser(self) -> nn.Module:
        """A fresh noise predictor of this config's backbone and sizes."""
        return denoiser_for(self, self.pred_horizon)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["down_dims"] = list(self.down_dims)
        return d
