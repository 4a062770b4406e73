"""A privileged teacher's actor (kind ``"privileged_teacher"``): robot observation plus the
privileged vector in, action out, with RMA's privileged encoder ``z = mu(e)`` inside.

::

    teacher = PrivilegedTeacher.from_model(ppo, vec_normalize)  # trained by teach.rl.privileged
    teacher.act(obs)               # (B, D + P) -> (B, A): the env's obs with ``privileged``
    teacher.latent(obs)            # (B, L): z = mu(e), what an RMA student regresses
    teacher.net.head(n_robot, z)   # the policy head an RMA student reuses

The flat observation is the env's (:class:`robodistill.envs.randomization.DomainRandomization`
with ``privileged_obs=True``): ``robot_idx`` picks the robot's entries, ``priv_idx`` the
privileged ones. Both are normalized as SB3's ``VecNormalize`` does (statistics copied).
An RLlib privileged teacher converts into the same policy
(``robodistill.teach.rl.privileged_rllib.teacher_from_module``: RLlib's ``MeanStdFilter``
statistics as ``obs_var = (std + 1e-6)**2``, ``eps = 0``).
``actor_privileged=False`` is the asymmetric teacher (only its critic saw ``e``) and the
domain-randomized baseline: its action is a function of the robot entries alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from robodistill.policies.base import Policy, register_policy
from robodistill.policies.checkpoint import (
    CheckpointError,
    load_net_checkpoint,
    load_state_dict_strict,
    save_net_checkpoint,
)


def mlp(sizes: list[int], activation: type[nn.Module] = nn.Tanh, last_act: bool = True):
    """``Linear``/activation stack through ``sizes`` (activation after the last unless
    ``last_act=False``)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class PrivilegedActorNet(nn.Module):
    """Normalization, privileged encoder and policy head of a privileged PPO teacher.

    Args:
        robot_idx, priv_idx: indices of the robot's (D) and the privileged (P) entries.
        obs_mean, obs_var: VecNormalize statistics of the whole flat observation (D + P).
        net_arch: hidden widths of the policy MLP; latent_dim: L, the width of ``z``
            (0: no encoder, the asymmetric or blind actor).
        actor_privileged: whether the head reads ``z`` (oracle) or the robot entries only.
    """

    def __init__(self, robot_idx, priv_idx, act_dim: int, net_arch: list[int], latent_dim: int,
                 encoder_arch: list[int], actor_privileged: bool, clip_obs: float = 10.0,
                 eps: float = 1e-8):  # fmt: skip
        super().__init__()
        self.register_buffer("robot_idx", torch.as_tensor(robot_idx, dtype=torch.long))
        self.register_buffer("priv_idx", torch.as_tensor(priv_idx, dtype=torch.long))
        n = len(robot_idx) + len(priv_idx)
        self.register_buffer("obs_mean", torch.zeros(n))
        self.register_buffer("obs_var", torch.ones(n))
        self.clip_obs, self.eps = float(clip_obs), float(eps)
        self.actor_privileged, self.latent_dim = bool(actor_privileged), int(latent_dim)
        self.encoder = (mlp([len(priv_idx), *encoder_arch, latent_dim], last_act=False)
                        if latent_dim else None)  # fmt: skip
        head_in = len(robot_idx) + (latent_dim if actor_privileged else 0)
        self.policy_net = mlp([head_in, *net_arch])
        self.action_net = nn.Linear(net_arch[-1] if net_arch else head_in, act_dim)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, D + P) raw -> (B, D + P) normalized and clipped, as VecNormalize does."""
        z = (obs - self.obs_mean) / torch.sqrt(self.obs_var + self.eps)
        return z.clamp(-self.clip_obs, self.clip_obs)

    def normalize_robot(self, robot_obs: torch.Tensor) -> torch.Tensor:
        """(B, D) raw robot entries -> normalized (what a student's head feeds in)."""
        mean, var = self.obs_mean[self.robot_idx], self.obs_var[self.robot_idx]
        return ((robot_obs - mean) / torch.sqrt(var + self.eps)).clamp(
            -self.clip_obs, self.clip_obs
        )

    def latent(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, D + P) raw -> z = mu(e) (B, L)."""
        if self.encoder is None:
            raise ValueError("this teacher has no privileged encoder (latent_dim 0)")
        return self.encoder(self.normalize(obs)[:, self.priv_idx])

    def head(self, n_robot: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Normalized robot entries (B, D) and z (B, L) -> action mean (B, A)."""
        x = torch.cat([n_robot, z], dim=-1) if self.actor_privileged else n_robot
        return self.action_net(self.policy_net(x))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D + P) raw -> (mean (B, A), log_std (B, A))."""
        n = self.normalize(obs)
        z = self.encoder(n[:, self.priv_idx]) if self.actor_privileged else None
        mean = self.head(n[:, self.robot_idx], z)
        return mean, self.log_std.expand_as(mean)


@register_policy
class PrivilegedTeacher(Policy):
    """A privileged PPO teacher's actor; acts with its mean, clipped to the action Box."""

    kind = "privileged_teacher"

    def __init__(self, net: PrivilegedActorNet, observation_space: gym.spaces.Box,
                 action_space: gym.spaces.Box, config: dict[str, Any]):  # fmt: skip
        self.net = net.eval()
        self.observation_space, self.action_space = observation_space, action_space
        self.arch = dict(config)
        self.low = torch.as_tensor(action_space.low, dtype=torch.float32)
        self.high = torch.as_tensor(action_space.high, dtype=torch.float32)

    @classmethod
    def from_model(cls, model, vec_normalize=None) -> PrivilegedTeacher:
        """Copy the actor of a PPO trained with ``PrivilegedActorCriticPolicy``."""
        policy = model.policy
        ext, mlp_ext = policy.features_extractor, policy.mlp_extractor
        obs_space = (
            vec_normalize.venv.observation_space if vec_normalize else model.observation_space
        )
        config = {"net_arch": list(mlp_ext.net_arch_pi), "latent_dim": ext.latent_dim,
                  "encoder_arch": list(ext.encoder_arch), "robot_idx": ext.robot_idx.tolist(),
                  "priv_idx": ext.priv_idx.tolist(),
                  "actor_privileged": bool(mlp_ext.actor_privileged)}  # fmt: skip
        net = cls._build(config, int(np.prod(model.action_space.shape)))
        with torch.no_grad():
            if net.encoder is not None:
                net.encoder.load_state_dict(ext.encoder.state_dict())
            net.policy_net.load_state_dict(mlp_ext.policy_net.state_dict())
            net.action_net.load_state_dict(policy.action_net.state_dict())
            net.log_std.copy_(policy.log_std.detach())
            if vec_normalize is not None and vec_normalize.norm_obs:
                net.obs_mean.copy_(torch.as_tensor(vec_normalize.obs_rms.mean))
                net.obs_var.copy_(torch.as_tensor(vec_normalize.obs_rms.var))
                net.clip_obs, net.eps = vec_normalize.clip_obs, vec_normalize.epsilon
            else:  # raw observations: nothing to clip (VecNormalize clips normalized ones)
                net.clip_obs = 1e30
        config.update(clip_obs=net.clip_obs, eps=net.eps)
        return cls(net.cpu(), obs_space, model.action_space, config)

    @staticmethod
    def _build(config: dict[str, Any], act_dim: int) -> PrivilegedActorNet:
        return PrivilegedActorNet(
            config["robot_idx"], config["priv_idx"], act_dim, config["net_arch"],
            config["latent_dim"], config["encoder_arch"], config["actor_privileged"],
            config.get("clip_obs", 10.0), config.get("eps", 1e-8),
        )  # fmt: skip

    def _t(self, obs) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs), dtype=torch.float32).reshape(len(obs), -1)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """(B, D + P) -> (B, A) float32: the mean clipped to the Box."""
        mean, _ = self.net(self._t(obs))
        return torch.maximum(torch.minimum(mean, self.high), self.low).numpy()

    @torch.no_grad()
    def distribution(self, obs) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D + P) -> ``(mean, log_std)`` (B, A) each, before the clip."""
        return self.net(self._t(obs))

    @torch.no_grad()
    def latent(self, obs) -> np.ndarray:
        """(B, D + P) -> z = mu(e) (B, L) float32."""
        return self.net.latent(self._t(obs)).numpy()

    def save(self, directory: str | os.PathLike) -> Path:
        return save_net_checkpoint(directory, {"kind": self.kind, **self.arch},
                                   self.observation_space, self.action_space, self.net)  # fmt: skip

    @classmethod
    def load(cls, directory: str | os.PathLike) -> PrivilegedTeacher:
        config, tensors, obs_space, act_space = load_net_checkpoint(directory, cls.kind)
        try:
            net = cls._build(config, int(np.prod(act_space.shape)))
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{directory}: not a valid privileged_teacher: {e}") from e
        load_state_dict_strict(net, tensors, directory)
        return cls(net, obs_space, act_space, config)
