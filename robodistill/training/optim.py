"""Optimizer presets and devices: the settings every trainer shares (threads:
:func:`robodistill.core.threads.torch_threads`)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers.optimization import get_scheduler

from robodistill.config import ConfigError

DIFFUSION_BETAS = (0.95, 0.999)
"""AdamW betas of diffusion policy: a shorter first-moment memory than Adam's default suits
the noisy per-timestep denoising losses (teacher and its students)."""


def resolve_device(setting: str, field: str) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` -> a device; ``cuda`` without one is a :class:`ConfigError`
    naming ``field``."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field} is 'cuda' but torch sees no CUDA device; set it to auto or cpu")
    return torch.device("cuda" if setting != "cpu" and torch.cuda.is_available() else "cpu")


def adamw_with_schedule(
    params: Iterable[torch.nn.Parameter],
    learning_rate: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    schedule: str = "cosine",
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (diffusion policy's betas) with diffusers' warm-up + ``schedule`` learning rate
    over ``total_steps``: the preset of the diffusion teacher and its students."""
    optimizer = torch.optim.AdamW(params, lr=learning_rate, betas=DIFFUSION_BETAS,
                                  weight_decay=weight_decay)  # fmt: skip
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=warmup_steps,
                              num_training_steps=total_steps)  # fmt: skip
    return optimizer, scheduler
