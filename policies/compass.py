"""COMPASS policies (issue #7): the imitation-learned base with a world model, and the
residual-RL specialist built on it. The generalist lives in :mod:`.generalist`.

::

    base = CompassBase.build(obs_space, act_space, obs_stats, action_stats, hidden=[256, 256],
                             latent_dim=64)
    z = base.latent(obs)                      # (B, D) -> (B, L): what stage 2's PPO sees
    a = base.act(obs)                         # (B, D) -> (B, A), clipped to the Box
    spec = CompassSpecialist(base, residual, embodiment="diffdrive")   # residual: SB3Policy
    spec.act(obs)                             # clip(base(obs) + residual(features(obs)))
    mean, log_std = spec.distribution(obs)    # the Gaussian the generalist is distilled to

:class:`CompassBaseNet` holds four parts, all on the normalized observation::

    encoder   obs (B, D) -> z (B, L)               tanh-bounded latent
    dynamics  (z_t, a_t) -> z_{t+1} (B, L)          the world model: next latent ...
    decoder   z (B, L) -> obs (B, D)                ... and, through it, the next observation
    policy    z (B, L) -> mean (B, A), log_std (A)  the action head (state-independent std)

The world-model heads shape the latent during training (they are not needed to act), so the
representation that stage 2's residual policy sees encodes how the scene evolves under an
action, not only what the expert did (COMPASS, Liu et al. 2025).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from robodistill.envs.spaces import space_from_json, space_to_json
from robodistill.policies.base import Policy, register_policy
from robodistill.policies.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from robodistill.policies.normalizer import Normalizer
from robodistill.policies.residual import ResidualPolicy
from robodistill.policies.sb3_policy import ACTIVATIONS, SB3Policy


def mlp(sizes: list[int], activation: str, last_activation: bool = False) -> nn.Sequential:
    """``Linear`` layers of ``sizes`` with ``activation`` between them (and after the last
    one when ``last_activation``)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(int(n_in), int(n_out)))
        if i < len(sizes) - 2 or last_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def _as_obs(obs: np.ndarray | torch.Tensor, dim: int, who: str) -> torch.Tensor:
    x = obs if isinstance(obs, torch.Tensor) else torch.as_tensor(np.asarray(obs))
    if x.ndim < 1 or x[0].numel() != dim:
        raise ValueError(f"{who} expects observations (B, {dim}), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], dim).to(torch.float32)


class CompassBaseNet(nn.Module):
    """Encoder, world model (latent dynamics + observation decoder) and policy head.

    ``forward(obs (B, D) raw) -> (mean (B, A), log_std (B, A))`` in env action units;
    :meth:`latent`, :meth:`predict_next` and :meth:`decode` are the world model's parts.
    Observations are normalized (and clipped to ``±obs_clip``) inside; actions are
    predicted in normalized units so every action dimension weighs the same in the loss.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], latent_dim: int,
                 activation: str = "ELU", obs_clip: float = 10.0):  # fmt: skip
        super().__init__()
        if not hidden or any(int(w) < 1 for w in hidden) or latent_dim < 1:
            raise ValueError(f"hidden {hidden} and latent_dim {latent_dim} must be positive")
        self.obs_dim, self.act_dim, self.latent_dim = obs_dim, act_dim, latent_dim
        self.obs_clip = float(obs_clip)
        self.normalizer = Normalizer({"obs": (obs_dim,), "action": (act_dim,)}, mode="gaussian")
        self.encoder = mlp([obs_dim, *hidden, latent_dim], activation)
        self.dynamics = mlp([latent_dim + act_dim, *hidden, latent_dim], activation)
        self.decoder = mlp([latent_dim, *hidden, obs_dim], activation)
        self.policy = mlp([latent_dim, *hidden, act_dim], activation)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def normalized_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, D) raw -> (B, D) normalized and clipped (the decoder's target units)."""
        return self.normalizer.normalize("obs", obs).clamp(-self.obs_clip, self.obs_clip)

    def latent(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, D) raw -> z (B, L) in [-1, 1] (tanh keeps PPO's input features bounded)."""
        return torch.tanh(self.encoder(self.normalized_obs(obs)))

    def predict_next(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """z_t (B, L), a_t (B, A) env units -> predicted z_{t+1} (B, L) (a residual step)."""
        a = self.normalizer.normalize("action", action)
        return torch.tanh(
            torch.atanh(z.clamp(-0.999, 0.999)) + self.dynamics(torch.cat([z, a], -1))
        )

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L) -> normalized observation (B, D)."""
        return self.decoder(z)

    def head(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, L) -> (mean (B, A) env units, log_std (B, A))."""
        mean = self.normalizer.unnormalize("action", self.policy(z))
        _, scale = self.normalizer._params("action")
        # The std is learned in normalized units; in env units it scales with the action's.
        return mean, (self.log_std + torch.log(scale)).expand_as(mean)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.latent(obs))


class ClippedActor(nn.Module):
    """``obs (B, D) -> clip(mean, low, high) (B, A)``: a Gaussian net's deterministic action,
    one traceable module for ONNX export."""

    def __init__(self, net: nn.Module, low: torch.Tensor, high: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("low", low.clone())
        self.register_buffer("high", high.clone())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        mean, _ = self.net(obs)
        return torch.maximum(torch.minimum(mean, self.high), self.low)


def _box_bounds(space: gym.spaces.Box) -> tuple[torch.Tensor, torch.Tensor]:
    low = torch.as_tensor(space.low.reshape(-1), dtype=torch.float32)
    high = torch.as_tensor(space.high.reshape(-1), dtype=torch.float32)
    return low, high


@register_policy
class CompassBase(Policy):
    """Stage 1: the IL base (deterministic: acts with the clipped mean; stateless).

    Args:
        net: the :class:`CompassBaseNet` (normalizer statistics set).
        observation_space, action_space: the base embodiment env's spaces (Box).
        hidden, latent_dim, activation: the architecture, recorded in ``config.json``.
    """

    kind = "compass_base"

    def __init__(self, net: CompassBaseNet, observation_space: gym.spaces.Box,
                 action_space: gym.spaces.Box, hidden: list[int], activation: str = "ELU"):  # fmt: skip
        if not isinstance(action_space, gym.spaces.Box):
            raise TypeError(f"CompassBase needs a Box action space, got {action_space}")
        self.net = net.eval()
        self.observation_space, self.action_space = observation_space, action_space
        self.hidden, self.activation = [int(w) for w in hidden], activation
        self.obs_dim, self.act_dim = net.obs_dim, net.act_dim
        self.actor = ClippedActor(net, *_box_bounds(action_space)).eval()

    @classmethod
    def build(cls, observation_space: gym.spaces.Box, action_space: gym.spaces.Box,
              obs_stats: Mapping[str, Any], action_stats: Mapping[str, Any], hidden: list[int],
              latent_dim: int, activation: str = "ELU", obs_clip: float = 10.0,
              seed: int | None = None) -> CompassBase:  # fmt: skip
        """A fresh base with normalizers from ``{"mean", "std", ...}`` statistics."""
        obs_dim = int(np.prod(observation_space.shape))
        act_dim = int(np.prod(action_space.shape))
        if seed is not None:
            torch.manual_seed(seed)
        net = CompassBaseNet(obs_dim, act_dim, hidden, latent_dim, activation, obs_clip)
        fitted = Normalizer.from_stats({"obs": obs_stats, "action": action_stats}, "gaussian")
        net.normalizer.load_state_dict(fitted.state_dict())
        return cls(net, observation_space, action_space, hidden, activation)

    # -- acting ----------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """(B, D) -> (B, A) float32 within the action Box."""
        return self.actor(_as_obs(obs, self.obs_dim, "CompassBase")).numpy().astype(np.float32)

    @torch.no_grad()
    def latent(self, obs: np.ndarray | torch.Tensor) -> np.ndarray:
        """(B, D) -> the pre-trained representation z (B, L) float32."""
        return self.net.latent(_as_obs(obs, self.obs_dim, "CompassBase")).numpy()

    @torch.no_grad()
    def act_and_latent(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, D) -> (action (B, A), z (B, L)) from one encoder pass."""
        x = _as_obs(obs, self.obs_dim, "CompassBase")
        z = self.net.latent(x)
        mean, _ = self.net.head(z)
        action = torch.maximum(torch.minimum(mean, self.actor.high), self.actor.low)
        return action.numpy().astype(np.float32), z.numpy()

    @torch.no_grad()
    def distribution(self, obs: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) -> (mean (B, A), log_std (B, A)) before the clip."""
        mean, log_std = self.net(_as_obs(obs, self.obs_dim, "CompassBase"))
        return mean.clone(), log_std.clone()

    # -- export / persistence --------------------------------------------------------------
    def onnx_spec(self) -> dict[str, Any]:
        """One ``direct`` graph, raw obs (B, D) -> clipped mean action (B, A)."""
        return {
            "module": self.actor.eval(),
            "inputs": [
                {"name": "obs", "role": "observation", "example": torch.zeros(2, self.obs_dim)}
            ],  # fmt: skip
            "outputs": [{"name": "action", "role": "action"}],
            "metadata": {
                "policy_kind": self.kind,
                "policy": {
                    "hidden": self.hidden,
                    "latent_dim": self.net.latent_dim,
                    "activation": self.activation,
                },  # fmt: skip
                "mode": "direct",
                "deterministic": True,
                "observation": {**space_to_json(self.observation_space), "layout": None},
                "action": space_to_json(self.action_space),
                "normalization": {
                    "observation": "clip((obs - mean) / std, ±obs_clip)",
                    "action": "clip(offset + scale * head(encoder(obs)))",
                },  # fmt: skip
            },
        }

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "hidden": self.hidden, "latent_dim": self.net.latent_dim,
                "activation": self.activation, "obs_clip": self.net.obs_clip,
                "observation_space": space_to_json(self.observation_space),
                "action_space": space_to_json(self.action_space)}  # fmt: skip

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json`` + ``model.safetensors`` (``net.*``: all four parts, normalizers)."""
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        return save_checkpoint(directory, self.config(), tensors)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CompassBase:
        config, tensors = load_checkpoint(directory, kind=cls.kind)
        try:
            obs_space = space_from_json(config["observation_space"])
            act_space = space_from_json(config["action_space"])
            net = CompassBaseNet(int(np.prod(obs_space.shape)), int(np.prod(act_space.shape)),
                                 list(config["hidden"]), int(config["latent_dim"]),
                                 config["activation"], float(config["obs_clip"]))  # fmt: skip
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(
                f"{directory}/config.json is not a valid compass_base: {e}"
            ) from e
        load_state_dict_strict(net, {k[4:]: v for k, v in tensors.items() if k.startswith("net.")},
                               directory)  # fmt: skip
        return cls(net, obs_space, act_space, list(config["hidden"]), config["activation"])


# -- stage 2: the residual specialist --------------------------------------------------------


@register_policy
class CompassSpecialist(ResidualPolicy):
    """Stage 2 result: frozen base + PPO residual, ``clip(base(o) + r(features(o)))``
    (:class:`robodistill.policies.residual.ResidualPolicy`), for one embodiment.

    Args:
        base: the frozen base (:class:`CompassBase`, or a generalist when a new embodiment
            is fine-tuned).
        residual: the PPO actor over :func:`~robodistill.policies.residual.base_features`.
        embodiment: the embodiment it was trained on.
        include_obs: whether the features include the raw observation.

    Its Gaussian (what the generalist is distilled to) is ``N(base(o) + μ_r, σ_r)``.
    """

    kind = "compass_specialist"

    def __init__(self, base: Policy, residual: SB3Policy, embodiment: str,
                 include_obs: bool = False):  # fmt: skip
        super().__init__(base, residual, include_obs)
        self.embodiment = embodiment

    def config(self) -> dict[str, Any]:
        return super().config() | {"embodiment": self.embodiment}

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CompassSpecialist:
        config, base, residual = cls.load_parts(directory)
        return cls(base, residual, config["embodiment"], config.get("include_obs", False))


__all__ = ["CompassBase", "CompassBaseNet", "CompassSpecialist", "mlp"]
