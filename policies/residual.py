"""A frozen base policy plus a PPO residual: ``clip(base(o) + r(features(o)), low, high)``.

::

    policy = ResidualPolicy(base, residual, include_obs=True)   # residual: SB3Policy
    policy.act(obs)                     # (B, D) -> (B, A)
    mean, log_std = policy.distribution(obs)

The residual sees :func:`base_features`: the base's latent z when the base has one
(``act_and_latent``, e.g. COMPASS's base), the base's action, and with ``include_obs`` the raw
observation. The base may be stateful (a chunked diffusion policy keeps a history and an
action queue per batch row): :meth:`ResidualPolicy.reset` forwards to it. This is the
residual-RL refinement of a behaviour-cloned policy that COMPASS's specialists use, and the
one RL-100's online stage offers beside DPPO (``teach.online.method: residual``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodistill.policies.base import Policy, load_policy, register_policy
from robodistill.policies.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from robodistill.policies.sb3_policy import SB3Policy


def base_features(base: Policy, obs: np.ndarray, include_obs: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """What the residual sees: ``(features (B, L + A [+ D]), base_action (B, A))``.

    ``L`` is the size of the base's latent (``base.act_and_latent``), 0 for a base without
    one; the raw observation (B, D) is appended with ``include_obs``. Calls the base once per
    row, so a stateful base advances by one step.
    """
    if hasattr(base, "act_and_latent"):
        action, z = base.act_and_latent(obs)
    else:
        action = base.act(obs)
        z = np.zeros((len(action), 0), np.float32)
    parts = [z, action] + (
        [np.asarray(obs, np.float32).reshape(len(obs), -1)] if include_obs else []
    )
    return np.concatenate(parts, axis=1).astype(np.float32), action


@register_policy
class ResidualPolicy(Policy):
    """A frozen base and a PPO residual over :func:`base_features`.

    Args:
        base: the frozen base policy (any kind; stateful bases are reset through this one).
        residual: the PPO actor over :func:`base_features` (an :class:`SB3Policy` whose action
            Box is ``[-residual_limit, residual_limit]``).
        include_obs: whether the features include the raw observation.

    Its Gaussian is ``N(base(o) + μ_r, σ_r)``: PPO's Gaussian shifted by the base action,
    before the final clip to the action Box.
    """

    kind = "residual"

    def __init__(self, base: Policy, residual: SB3Policy, include_obs: bool = False):
        self.base, self.residual = base, residual
        self.include_obs = bool(include_obs)
        self.observation_space, self.action_space = base.observation_space, base.action_space
        self.low = np.asarray(self.action_space.low, np.float32).reshape(-1)
        self.high = np.asarray(self.action_space.high, np.float32).reshape(-1)

    def attach(self, envs: list) -> None:
        self.base.attach(envs)

    def reset(self, env_ids: np.ndarray | list[int] | None = None) -> None:
        self.base.reset(env_ids)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """(B, D) -> (B, A): base action + deterministic residual, clipped to the Box."""
        features, action = base_features(self.base, obs, self.include_obs)
        return np.clip(action + self.residual.act(features), self.low, self.high).astype(np.float32)

    @torch.no_grad()
    def distribution(self, obs: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) -> (mean (B, A), log_std (B, A)) of the policy's Gaussian (env units)."""
        obs = obs.numpy() if isinstance(obs, torch.Tensor) else np.asarray(obs, np.float32)
        features, action = base_features(self.base, obs, self.include_obs)
        mean, log_std = self.residual.distribution(features)
        return mean + torch.from_numpy(action), log_std

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "include_obs": self.include_obs, "base": "base",
                "residual": "residual"}  # fmt: skip

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json`` + ``model.safetensors`` (a format marker) + ``base/`` + ``residual/``."""
        directory = Path(directory)
        self.base.save(directory / "base")
        self.residual.save(directory / "residual")
        return save_checkpoint(directory, self.config(), {"format_marker": torch.zeros(1)})

    @classmethod
    def load_parts(cls, directory: str | os.PathLike) -> tuple[dict[str, Any], Policy, SB3Policy]:
        """``(config, base, residual)`` of a checkpoint written by :meth:`save` (subclasses
        add their own config fields)."""
        config, _ = load_checkpoint(directory, kind=cls.kind)
        directory = Path(directory)
        residual = load_policy(directory / config.get("residual", "residual"))
        if not isinstance(residual, SB3Policy):
            raise CheckpointError(
                f"{directory}/residual holds a {residual.kind!r}, not an sb3 policy"
            )
        return config, load_policy(directory / config.get("base", "base")), residual

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ResidualPolicy:
        config, base, residual = cls.load_parts(directory)
        return cls(base, residual, config.get("include_obs", False))


__all__ = ["ResidualPolicy", "base_features"]
