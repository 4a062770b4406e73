"""A small MLP student (kind ``"mlp_student"``): what DAgger distills RL teachers into.

::

    student = MLPStudent.build(obs_space, act_space, obs_stats, action_stats,
                               hidden=[256, 256], head="gaussian", squash="clip")
    student.act(obs)                           # (B, D) -> (B, A) float32, within the Box
    mean, log_std = student.distribution(obs)  # (B, A) each (Gaussian head only)
    student.save("distill/dagger/policy"); load_policy("distill/dagger/policy")

Everything acting needs is inside one ``nn.Module`` (:class:`MLPStudentNet`): the
observation normalizer, the MLP, the action (un)normalizer and the squash to the action
Box. :meth:`MLPStudent.actor` wraps it as ``obs (B, D) float32 -> action (B, A) float32``
with no numpy and no Python control flow on values, so ONNX export can trace it as is.

Heads:

* ``deterministic``: one linear head, trained by MSE on the teacher's actions;
* ``gaussian``: mean and a state-dependent log-std, trained by KL(teacher ‖ student) to a
  Gaussian teacher; the student acts with the mean.

Squash (how the mean becomes an action; it matches the teacher's parametrization):

* ``clip``: ``clip(mean, low, high)`` (PPO and RLlib teachers, and every MSE student);
* ``tanh``: ``low + (tanh(mean) + 1) / 2 * (high - low)`` (SAC teachers, whose Gaussian is
  over the pre-tanh variable).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

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
from robodistill.policies.sb3_policy import ACTIVATIONS

Head = Literal["deterministic", "gaussian"]
Squash = Literal["clip", "tanh"]

# Log-std bounds in env (or pre-tanh) units, as SB3 bounds SAC's: they keep exp() finite
# while a teacher's std (PPO's starts at 1, SAC's shrinks to ~e^-5) stays well inside.
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def gaussian_kl(
    mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor, log_std_q: torch.Tensor
) -> torch.Tensor:
    """KL(p ‖ q) between diagonal Gaussians, summed over the last dim.

    All inputs (..., A); returns (...). Analytic:
    ``Σ log σq − log σp + (σp² + (μp − μq)²) / (2 σq²) − ½``; zero iff p equals q.
    """
    var_p = torch.exp(2.0 * log_std_p)
    var_q = torch.exp(2.0 * log_std_q)
    kl = log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2.0 * var_q) - 0.5
    return kl.sum(dim=-1)


class MLPStudentNet(nn.Module):
    """Raw observations -> the action Gaussian's (or point's) parameters, normalizers inside.

    ``forward(obs (B, D) float32) -> (mean (B, A), log_std (B, A))`` in the units the squash
    takes (env units for ``clip``, pre-tanh units for ``tanh``). The deterministic head
    returns a log-std of zeros that nothing uses, so both heads have one signature.

    The observation is normalized to zero mean / unit variance and clipped to
    ``±obs_clip`` (states a student drifts into can lie far outside the teacher's data; the
    clip keeps the MLP's input in the range it was trained on). The network predicts the
    action in normalized units, so every action dimension weighs the same in the loss. The
    Gaussian head's log-std has its own normalizer key (``log_std``): offset by the
    teacher's average log-std, not scaled with the means, whose spread says nothing about
    the teacher's std (an untrained PPO teacher: means within ±0.01, std 1).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: list[int],
        activation: str = "Tanh",
        head: Head = "gaussian",
        obs_clip: float = 10.0,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known {sorted(ACTIVATIONS)}")
        if head not in ("deterministic", "gaussian"):
            raise ValueError(f"head must be 'deterministic' or 'gaussian', got {head!r}")
        if not hidden or any(int(w) < 1 for w in hidden):
            raise ValueError(f"hidden sizes must be a non-empty list of positive ints: {hidden}")
        self.head, self.obs_clip = head, float(obs_clip)
        keys = {"obs": (obs_dim,), "action": (act_dim,)}
        if head == "gaussian":
            keys["log_std"] = (act_dim,)
        self.normalizer = Normalizer(keys, mode="gaussian")
        layers: list[nn.Module] = []
        last = obs_dim
        for width in hidden:
            layers += [nn.Linear(last, int(width)), ACTIVATIONS[activation]()]
            last = int(width)
        self.body = nn.Sequential(*layers)
        self.mu = nn.Linear(last, act_dim)
        self.log_std = nn.Linear(last, act_dim) if head == "gaussian" else None

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._hidden(obs)
        mean = self.normalizer.unnormalize("action", self.mu(h))
        if self.log_std is None:
            return mean, torch.zeros_like(mean)
        log_std = self.normalizer.unnormalize("log_std", self.log_std(h))
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        """``obs`` (B, D) -> mean (B, A) only: what acting needs (no log-std head)."""
        return self.normalizer.unnormalize("action", self.mu(self._hidden(obs)))

    def _hidden(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.normalizer.normalize("obs", obs).clamp(-self.obs_clip, self.obs_clip)
        return self.body(x)

    def normalized_error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(pred - target) / action_scale``, both (B, A): MSE in normalized action units."""
        _, scale = self.normalizer._params("action")
        return (pred - target) / scale


class MLPStudentActor(nn.Module):
    """``obs (B, D) float32 -> action (B, A) float32``: the whole deterministic policy as
    one traceable module (normalize, MLP, squash into ``[low, high]``)."""

    def __init__(self, net: MLPStudentNet, low: torch.Tensor, high: torch.Tensor, squash: Squash):
        super().__init__()
        self.net, self.squash = net, squash
        self.register_buffer("low", low.clone())
        self.register_buffer("high", high.clone())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        mean = self.net.mean(obs)
        if self.squash == "tanh":
            return self.low + 0.5 * (torch.tanh(mean) + 1.0) * (self.high - self.low)
        return torch.maximum(torch.minimum(mean, self.high), self.low)


@register_policy
class MLPStudent(Policy):
    """Deterministic, stateless MLP policy distilled from a teacher.

    Args:
        net: the :class:`MLPStudentNet` (its normalizer statistics set).
        observation_space, action_space: the env's spaces (Box; observations flattened).
        squash: ``clip`` or ``tanh`` (see the module doc); ``tanh`` needs finite bounds.
        hidden, activation: the architecture, recorded in ``config.json``.
    """

    kind = "mlp_student"

    def __init__(
        self,
        net: MLPStudentNet,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        squash: Squash = "clip",
        hidden: list[int] | None = None,
        activation: str = "Tanh",
    ):
        if not isinstance(action_space, gym.spaces.Box):
            raise TypeError(f"MLPStudent needs a Box action space, got {action_space}")
        if squash not in ("clip", "tanh"):
            raise ValueError(f"MLPStudent squash must be 'clip' or 'tanh', got {squash!r}")
        low = torch.as_tensor(action_space.low.reshape(-1), dtype=torch.float32)
        high = torch.as_tensor(action_space.high.reshape(-1), dtype=torch.float32)
        if squash == "tanh" and not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError("MLPStudent: squash='tanh' needs finite action bounds; use 'clip'")
        self.net = net
        self.observation_space, self.action_space = observation_space, action_space
        self.squash = squash
        widths = [m.out_features for m in net.body if isinstance(m, nn.Linear)]
        self.hidden = [int(w) for w in (hidden or widths)]
        self.activation = activation
        self.obs_dim = int(np.prod(observation_space.shape))
        self.act_shape = tuple(action_space.shape)
        self.actor = MLPStudentActor(net, low, high, squash).eval()

    @classmethod
    def build(
        cls,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        obs_stats: Mapping[str, Any],
        action_stats: Mapping[str, Any],
        hidden: list[int],
        log_std_stats: Mapping[str, Any] | None = None,
        activation: str = "Tanh",
        head: Head = "gaussian",
        squash: Squash = "clip",
        obs_clip: float = 10.0,
        seed: int | None = None,
    ) -> MLPStudent:
        """A fresh student whose normalizers hold ``obs_stats`` / ``action_stats``.

        Stats: ``{"min", "max", "mean", "std"}`` lists, feature-wise (see
        :func:`array_stats`); ``action_stats`` describe the teacher's labels (means) in the
        squash's input units, ``log_std_stats`` its log-stds (Gaussian head only; required
        there). ``seed`` makes the weight initialization reproducible.
        """
        obs_dim = int(np.prod(observation_space.shape))
        act_dim = int(np.prod(action_space.shape))
        stats_by_key = {"obs": obs_stats, "action": action_stats}
        if head == "gaussian":
            if log_std_stats is None:
                raise ValueError("MLPStudent.build: a Gaussian head needs log_std_stats")
            stats_by_key["log_std"] = log_std_stats
        for name, stats in stats_by_key.items():
            dim = obs_dim if name == "obs" else act_dim
            if np.asarray(stats["mean"]).shape != (dim,):
                raise ValueError(
                    f"MLPStudent.build: {name} statistics have shape "
                    f"{np.asarray(stats['mean']).shape}, the space needs ({dim},)"
                )
        if seed is not None:
            torch.manual_seed(seed)
        net = MLPStudentNet(obs_dim, act_dim, hidden, activation, head, obs_clip)
        fitted = Normalizer.from_stats(stats_by_key, "gaussian")
        net.normalizer.load_state_dict(fitted.state_dict())
        return cls(net, observation_space, action_space, squash, hidden, activation)

    # -- acting ----------------------------------------------------------------------------
    def _obs(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = obs if isinstance(obs, torch.Tensor) else torch.as_tensor(np.asarray(obs))
        if x.ndim < 1 or x[0].numel() != self.obs_dim:
            raise ValueError(
                f"MLPStudent expects observations (B, {self.obs_dim}), got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.obs_dim).to(torch.float32)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """``obs`` (B, D) -> deterministic actions (B, A) float32 within the Box."""
        action = self.actor(self._obs(obs))
        return action.numpy().reshape(-1, *self.act_shape).astype(np.float32, copy=False)

    @torch.no_grad()
    def distribution(self, obs: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``obs`` (B, D) -> ``(mean (B, A), log_std (B, A))`` before the squash (Gaussian
        head only), so a Gaussian student can itself teach another student."""
        if self.net.head != "gaussian":
            raise ValueError("this MLPStudent has a deterministic head: it has no distribution")
        mean, log_std = self.net(self._obs(obs))
        return mean.clone(), log_std.clone()

    # -- export ----------------------------------------------------------------------------
    def onnx_spec(self) -> dict[str, Any]:
        """One ``direct``-mode graph, raw observations (B, D) -> actions (B, A): the
        :class:`MLPStudentActor` (contract: :meth:`Policy.onnx_spec`)."""
        squash = {"clip": "clip(mean, low, high)",
                  "tanh": "low + (tanh(mean) + 1) / 2 * (high - low)"}[self.squash]  # fmt: skip
        return {
            "module": self.actor.eval(),
            "inputs": [
                {"name": "obs", "role": "observation", "example": torch.zeros(2, self.obs_dim)}
            ],
            "outputs": [{"name": "action", "role": "action"}],
            "metadata": {
                "policy_kind": self.kind,
                "policy": {
                    "hidden": self.hidden,
                    "activation": self.activation,
                    "head": self.net.head,
                    "squash": self.squash,
                },  # fmt: skip
                "mode": "direct",
                "deterministic": True,
                "observation": {**space_to_json(self.observation_space), "layout": None},
                "action": space_to_json(self.action_space),
                "normalization": {
                    "observation": f"clip((obs - mean) / std, -{self.net.obs_clip:g}, "
                    f"{self.net.obs_clip:g}) (statistics of the teacher's states)",
                    "action": f"mean = offset + scale * mlp(obs); action = {squash}",
                },
            },
        }

    # -- persistence -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "hidden": self.hidden,
            "activation": self.activation,
            "head": self.net.head,
            "squash": self.squash,
            "obs_clip": self.net.obs_clip,
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json`` + ``model.safetensors`` (``net.*``: weights and normalizers)."""
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        return save_checkpoint(directory, self.config(), tensors)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> MLPStudent:
        config, tensors = load_checkpoint(directory, kind=cls.kind)
        try:
            obs_space = space_from_json(config["observation_space"])
            act_space = space_from_json(config["action_space"])
            net = MLPStudentNet(
                int(np.prod(obs_space.shape)), int(np.prod(act_space.shape)),
                list(config["hidden"]), config["activation"], config["head"],
                float(config["obs_clip"]),
            )  # fmt: skip
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{directory}/config.json is not a valid mlp_student: {e}") from e
        net_tensors = {k[len("net.") :]: v for k, v in tensors.items() if k.startswith("net.")}
        load_state_dict_strict(net, net_tensors, directory)
        return cls(net.eval(), obs_space, act_space, config["squash"], list(config["hidden"]),
                   config["activation"])  # fmt: skip


def array_stats(x: np.ndarray) -> dict[str, list[float]]:
    """Feature-wise ``min/max/mean/std`` of ``x`` (N, F), in the normalizer's JSON form."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if len(x) == 0:
        raise ValueError("array_stats: no rows to compute statistics from")
    return {
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "count": int(len(x)),
    }


__all__ = [
    "LOG_STD_MAX",
    "LOG_STD_MIN",
    "MLPStudent",
    "MLPStudentActor",
    "MLPStudentNet",
    "array_stats",
    "gaussian_kl",
]
