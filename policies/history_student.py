"""Deployable students that adapt from history (kind ``"history_student"``).

A student sees the robot's observation (B, D) and its own history: the last ``k``
(observation, executed action) pairs, a state it keeps per batch row and zeroes at each
episode's start. Never the privileged draw: its observation space is the robot's entries
alone (the distiller slices them out, see ``robodistill.distill.history``).

::

    z = encoder(normalize(history))        # (B, L) the adaptation latent
    mean = head(normalize(obs), z)         # (B, A), clipped to the action Box
    history_next = [history[:, 1:], (obs, action)]

Variants (what trains the encoder and the head, see ``docs/concepts/privileged.md``):

* ``history``: encoder and head end to end on the teacher's actions (two-stage imitation);
* ``rma``: the head is the teacher's own policy head, frozen; the encoder (RMA's adaptation
  module) regresses the teacher's privileged latent ``z = mu(e)``;
* ``hib``: the encoder is Gaussian ``q(z | history)`` trained with the historical
  information bottleneck (imitation + InfoNCE to ``mu(e)`` + β KL to N(0, I)); acting uses
  its mean.

The whole step is one traceable module (:class:`HistoryStudentNet`), so the ONNX graph
holds the encoder and the window: ``history`` is a ``state`` input the runtime keeps and
re-initializes to zeros per episode, ``history_next`` the matching output.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from robodistill.envs.spaces import space_to_json
from robodistill.policies.base import Policy, register_policy
from robodistill.policies.checkpoint import (
    CheckpointError,
    load_net_checkpoint,
    load_state_dict_strict,
    save_net_checkpoint,
)
from robodistill.policies.privileged import mlp

Variant = Literal["history", "rma", "hib"]
VARIANTS = ("history", "rma", "hib")


class HistoryStudentNet(nn.Module):
    """``forward(obs (B, D), history (B, k, D + A)) -> (action (B, A), history_next)``.

    Observations (current and in the history) are normalized with the teacher's statistics
    (``obs_mean``, ``obs_std``, clipped to ±``clip``); actions in the history are mapped to
    [-1, 1] by the Box. For ``rma`` the head's input is what the teacher's head took
    (normalized robot entries and z); the others predict the action in normalized units.
    """

    def __init__(self, variant: Variant, obs_dim: int, act_dim: int, history_len: int,
                 latent_dim: int, encoder_arch: list[int], hidden: list[int],
                 low: np.ndarray, high: np.ndarray, rma_head: nn.Module | None = None,
                 clip: float = 10.0):  # fmt: skip
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if history_len < 1:
            raise ValueError(f"history_len must be >= 1, got {history_len}")
        self.variant, self.k, self.clip = variant, int(history_len), float(clip)
        self.obs_dim, self.act_dim, self.latent_dim = int(obs_dim), int(act_dim), int(latent_dim)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        low_t = torch.as_tensor(low, dtype=torch.float32).reshape(-1)
        high_t = torch.as_tensor(high, dtype=torch.float32).reshape(-1)
        self.register_buffer("low", low_t)
        self.register_buffer("high", high_t)
        self.register_buffer("act_center", (high_t + low_t) / 2)
        self.register_buffer("act_scale", (high_t - low_t) / 2)
        out = latent_dim * (2 if variant == "hib" else 1)
        self.encoder = mlp([self.k * (obs_dim + act_dim), *encoder_arch, out], nn.ELU,
                           last_act=False)  # fmt: skip
        if variant == "rma":
            if rma_head is None:
                raise ValueError("an rma student needs the teacher's head (rma_head)")
            self.head = copy.deepcopy(rma_head)
            self.head.requires_grad_(False)  # RMA reuses the teacher's head as is
        else:
            self.head = mlp([obs_dim + latent_dim, *hidden, act_dim], nn.ELU, last_act=False)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs - self.obs_mean) / self.obs_std).clamp(-self.clip, self.clip)

    def encode(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """history (B, k, D + A) raw -> (z mean (B, L), log-variance (B, L) for hib, else None)."""
        obs = self.normalize(history[..., : self.obs_dim])
        act = (history[..., self.obs_dim :] - self.act_center) / self.act_scale
        out = self.encoder(torch.cat([obs, act], dim=-1).flatten(1))
        if self.variant == "hib":
            mean, log_var = out.chunk(2, dim=-1)
            return mean, log_var.clamp(-10.0, 4.0)
        return out, None

    def mean(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """obs (B, D) raw, z (B, L) -> action mean (B, A) in env units (before the clip)."""
        n = self.normalize(obs)
        if self.variant == "rma":
            return self.head(torch.cat([n, z], dim=-1))
        return self.act_center + self.act_scale * self.head(torch.cat([n, z], dim=-1))

    def forward(self, obs: torch.Tensor, history: torch.Tensor):
        z, _ = self.encode(history)
        action = torch.maximum(torch.minimum(self.mean(obs, z), self.high), self.low)
        step = torch.cat([obs, action], dim=-1).unsqueeze(1)
        return action, torch.cat([history[:, 1:], step], dim=1)


class _RMAHead(nn.Module):
    """The teacher's ``policy_net`` then ``action_net``: [normalized obs, z] -> mean."""

    def __init__(self, policy_net: nn.Module, action_net: nn.Module):
        super().__init__()
        self.policy_net, self.action_net = policy_net, action_net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.action_net(self.policy_net(x))


@register_policy
class HistoryStudent(Policy):
    """A history-conditioned student (see the module doc); state: the window per row."""

    kind = "history_student"

    def __init__(self, net: HistoryStudentNet, observation_space: gym.spaces.Box,
                 action_space: gym.spaces.Box, config: dict[str, Any]):  # fmt: skip
        self.net = net.eval()
        self.observation_space, self.action_space = observation_space, action_space
        self.arch = dict(config)
        self._hist: torch.Tensor | None = None

    @classmethod
    def build(cls, variant: Variant, teacher, observation_space: gym.spaces.Box,
              action_space: gym.spaces.Box, history_len: int = 8, latent_dim: int | None = None,
              encoder_arch: list[int] = (128, 64), hidden: list[int] = (128, 128),
              seed: int | None = None) -> HistoryStudent:  # fmt: skip
        """A fresh student for ``teacher`` (a ``PrivilegedTeacher``): its normalization is
        the teacher's on the robot entries; ``rma`` copies the teacher's head and latent
        width. ``observation_space``: the robot's entries only."""
        if seed is not None:
            torch.manual_seed(seed)
        t = teacher.net
        if variant == "rma" and not t.actor_privileged:
            raise ValueError("rma needs an oracle teacher (its actor reads z = mu(e))")
        latent_dim = int(latent_dim or t.latent_dim or 8)
        if variant == "rma":
            latent_dim = t.latent_dim
        head = _RMAHead(t.policy_net, t.action_net) if variant == "rma" else None
        obs_dim = int(np.prod(observation_space.shape))
        config = {"variant": variant, "obs_dim": obs_dim,
                  "act_dim": int(np.prod(action_space.shape)), "history_len": int(history_len),
                  "latent_dim": latent_dim, "encoder_arch": list(encoder_arch),
                  "hidden": list(hidden), "clip": t.clip_obs,
                  "teacher_arch": list(_widths(t.policy_net))}  # fmt: skip
        net = cls._net(config, action_space, head)
        with torch.no_grad():
            net.obs_mean.copy_(t.obs_mean[t.robot_idx])
            net.obs_std.copy_(torch.sqrt(t.obs_var[t.robot_idx] + t.eps))
        return cls(net, observation_space, action_space, config)

    @staticmethod
    def _net(config: dict[str, Any], action_space, head: nn.Module | None) -> HistoryStudentNet:
        return HistoryStudentNet(
            config["variant"], config["obs_dim"], config["act_dim"], config["history_len"],
            config["latent_dim"], config["encoder_arch"], config["hidden"], action_space.low,
            action_space.high, head, config["clip"],
        )  # fmt: skip

    # -- acting ----------------------------------------------------------------------------
    def reset(self, env_ids=None) -> None:
        """Zero the window of ``env_ids`` (every row when None): a new episode."""
        if env_ids is None or self._hist is None:
            self._hist = None
        else:
            self._hist[torch.as_tensor(np.asarray(env_ids), dtype=torch.long)] = 0.0

    @property
    def history(self) -> np.ndarray | None:
        """(B, k, D + A) the window the next ``act`` reads (None before the first)."""
        return None if self._hist is None else self._hist.numpy().copy()

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """(B, D) robot observations -> (B, A); the window moves on by one step. A student
        distilled by :func:`robodistill.distill.history.distill_history` also takes the
        full observation of its distillation env (config ``env_obs_dim``) and keeps only
        the robot's entries (``robot_idx``) of it."""
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32).reshape(len(obs), -1)
        full = self.arch.get("env_obs_dim")
        if full is not None and x.shape[1] == full != self.net.obs_dim:
            # The env it was distilled in (robot entries + the privileged draw): the student
            # reads the robot's entries alone, the draw never enters the network.
            x = x[:, torch.as_tensor(self.arch["robot_idx"], dtype=torch.long)]
        if x.shape[1] != self.net.obs_dim:
            raise ValueError(f"history_student expects (B, {self.net.obs_dim}) robot "
                             f"observations, got {tuple(x.shape)}")  # fmt: skip
        if self._hist is None or len(self._hist) != len(x):
            self._hist = torch.zeros(len(x), self.net.k, self.net.obs_dim + self.net.act_dim)
        action, self._hist = self.net(x, self._hist)
        return action.numpy()

    def set_executed(self, actions: np.ndarray) -> None:
        """Replace the last window entry's action by the one the env executed (DAgger's
        mixture may execute the teacher's)."""
        self._hist[:, -1, self.net.obs_dim :] = torch.as_tensor(actions, dtype=torch.float32)

    # -- export ----------------------------------------------------------------------------
    def onnx_spec(self) -> dict[str, Any]:
        """``direct`` mode, (obs (B, D), history (B, k, D + A)) -> (action, history_next);
        ``history`` is a zero-initialized state tensor reset per episode."""
        k, d, a = self.net.k, self.net.obs_dim, self.net.act_dim
        return {
            "module": self.net.eval(),
            "inputs": [
                {"name": "obs", "role": "observation", "example": torch.zeros(2, d)},
                {"name": "history", "role": "state", "example": torch.zeros(2, k, d + a)},
            ],  # fmt: skip
            "outputs": [
                {"name": "action", "role": "action"},
                {"name": "history_next", "role": "state"},
            ],  # fmt: skip
            "metadata": {
                "policy_kind": self.kind,
                "policy": dict(self.arch),
                "mode": "direct",
                "deterministic": False,
                "observation": {**space_to_json(self.observation_space), "layout": None},
                "action": space_to_json(self.action_space),
                "state": [
                    {
                        "input": "history",
                        "output": "history_next",
                        "shape": [k, d + a],
                        "init": "zeros",
                        "std": 0.0,
                        "reset": "episode",
                        "content": f"the last {k} (raw observation ({d}), executed action "
                        f"({a})) pairs, oldest first; zeros before the "
                        "episode's first steps",
                    }
                ],  # fmt: skip
                "normalization": {
                    "observation": "clip((obs - mean) / std, -clip, clip) with the teacher's "
                    "statistics; history actions mapped to [-1, 1] by the Box",
                    "action": "clip(head(obs, encoder(history)), low, high)",
                },  # fmt: skip
            },
        }

    # -- persistence -----------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        return save_net_checkpoint(directory, {"kind": self.kind, **self.arch},
                                   self.observation_space, self.action_space, self.net)  # fmt: skip

    @classmethod
    def load(cls, directory: str | os.PathLike) -> HistoryStudent:
        config, tensors, obs_space, act_space = load_net_checkpoint(directory, cls.kind)
        try:
            head = None
            if config["variant"] == "rma":
                widths = config["teacher_arch"]
                head = _RMAHead(mlp([config["obs_dim"] + config["latent_dim"], *widths]),
                                nn.Linear(widths[-1], config["act_dim"]))  # fmt: skip
            net = cls._net(config, act_space, head)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise CheckpointError(f"{directory}: not a valid history_student: {e}") from e
        load_state_dict_strict(net, tensors, directory)
        return cls(net, obs_space, act_space, config)


def _widths(seq: nn.Module) -> list[int]:
    return [m.out_features for m in seq.modules() if isinstance(m, nn.Linear)]
