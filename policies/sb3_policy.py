"""A stable-baselines3 PPO or SAC actor as a robodistill :class:`Policy` (kind ``"sb3"``).

Only what acting needs is kept: the actor MLP, VecNormalize's observation statistics and
the action bounds. Nothing of SB3 is needed to load it (no zip, no pickle)::

    policy = SB3Policy.from_model(model, vec_normalize)   # model: a trained PPO or SAC
    policy.act(obs)                                       # (B, D) -> (B, A), deterministic
    mean, log_std = policy.distribution(obs)              # (B, A) each, see below
    policy.save("teach/policy"); load_policy("teach/policy")

The action pipeline, exactly as ``model.predict(vec_normalize.normalize_obs(obs),
deterministic=True)`` computes it:

* observation: ``clip((obs - mean) / sqrt(var + eps), -clip_obs, clip_obs)`` in float64 (as
  VecNormalize does it in numpy), then float32;
* PPO: ``mean = action_net(policy_net(obs))``; the action is ``clip(mean, low, high)``;
* SAC: ``mean = mu(latent_pi(obs))``; the action is ``low + (tanh(mean) + 1) / 2 * (high - low)``.

``distribution`` returns the Gaussian in the *policy's own* parametrization (what a KL to
a Gaussian student must compare against):

* PPO: mean and log-std of the Gaussian over actions in env units, *before* the clip to the
  Box (log-std is state-independent and broadcast to (B, A));
* SAC: mean and log-std (clamped to [-20, 2] as SB3 does) of the Gaussian over the
  *pre-tanh* variable ``u``; the action is the tanh-squashed ``u`` unscaled to [low, high].
"""

from __future__ import annotations

import os
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

# SB3's SAC clamps the actor's log-std to this range (stable_baselines3.sac.policies).
SAC_LOG_STD_MIN, SAC_LOG_STD_MAX = -20.0, 2.0

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "Tanh": nn.Tanh,
    "ReLU": nn.ReLU,
    "ELU": nn.ELU,
    "LeakyReLU": nn.LeakyReLU,
    "GELU": nn.GELU,
    "SiLU": nn.SiLU,
    "Sigmoid": nn.Sigmoid,
}
"""Activations a checkpoint may name (rebuilt by name; default arguments only)."""


class SB3Actor(nn.Module):
    """The actor of a PPO or SAC MlpPolicy: hidden MLP -> mean (and log-std).

    ``forward(obs (B, D) normalized float32) -> (mean (B, A), log_std (B, A))``.
    PPO's log-std is a state-independent parameter; SAC's is a linear head on the hidden
    features, clamped to [-20, 2].
    """

    def __init__(self, algo: str, obs_dim: int, act_dim: int, net_arch: list[int], activation: str):
        super().__init__()
        if algo not in ("ppo", "sac"):
            raise ValueError(f"SB3Actor: algo must be 'ppo' or 'sac', got {algo!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"SB3Actor: unknown activation {activation!r}; known {ACTIVATIONS}")
        self.algo = algo
        layers: list[nn.Module] = []
        last = obs_dim
        for width in net_arch:
            layers += [nn.Linear(last, width), ACTIVATIONS[activation]()]
            last = width
        self.hidden = nn.Sequential(*layers)
        self.mu = nn.Linear(last, act_dim)
        if algo == "ppo":
            self.log_std = nn.Parameter(torch.zeros(act_dim))
        else:
            self.log_std_head = nn.Linear(last, act_dim)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.hidden(obs)
        mean = self.mu(latent)
        if self.algo == "ppo":
            log_std = self.log_std.expand_as(mean)
        else:
            log_std = self.log_std_head(latent).clamp(SAC_LOG_STD_MIN, SAC_LOG_STD_MAX)
        return mean, log_std


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _activation_name(module: nn.Module, default: str) -> str:
    for m in module.modules():
        name = type(m).__name__
        if name in ACTIVATIONS:
            return name
    return default


class SB3OnnxGraph(nn.Module):
    """What :meth:`SB3Policy.act` computes, as one exportable graph.

    ``forward(obs (B, D) raw float32) -> action (B, A) float32``: VecNormalize's
    normalization (in float64, as SB3 does it in numpy), the actor's mean, then the clip to
    the Box (PPO) or the tanh un-scaling to [low, high] (SAC). SB3's own ONNX recipe exports
    only the network, leaving these to the caller.
    """

    def __init__(self, policy: SB3Policy):
        super().__init__()
        self.hidden, self.mu, self.algo = policy.actor.hidden, policy.actor.mu, policy.algo
        self.normalize = policy.obs_mean is not None
        if self.normalize:
            self.register_buffer("obs_mean", policy.obs_mean.clone())
            self.register_buffer("obs_scale", torch.sqrt(policy.obs_var + policy.epsilon))
        self.clip_obs = policy.clip_obs
        self.register_buffer("low", policy.low.clone())
        self.register_buffer("high", policy.high.clone())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs
        if self.normalize:
            z = (obs.to(torch.float64) - self.obs_mean) / self.obs_scale
            x = z.clamp(-self.clip_obs, self.clip_obs).to(torch.float32)
        mean = self.mu(self.hidden(x))
        if self.algo == "ppo":
            return torch.maximum(torch.minimum(mean, self.high), self.low)
        return self.low + 0.5 * (torch.tanh(mean) + 1.0) * (self.high - self.low)


@register_policy
class SB3Policy(Policy):
    """Deterministic actor of a trained SB3 PPO/SAC model, with its observation normalizer.

    Args:
        actor: the :class:`SB3Actor` (weights copied from the SB3 model).
        observation_space, action_space: the env's spaces (Box; observations are flattened).
        obs_mean, obs_var: VecNormalize's running statistics, shape of the observation
            (float64, as VecNormalize keeps them), or ``None`` without normalization.
        clip_obs, epsilon: VecNormalize's clip and epsilon.
    """

    kind = "sb3"

    def __init__(
        self,
        actor: SB3Actor,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        obs_mean: torch.Tensor | None = None,
        obs_var: torch.Tensor | None = None,
        clip_obs: float = 10.0,
        epsilon: float = 1e-8,
        net_arch: list[int] | None = None,
        activation: str = "Tanh",
    ):
        if not isinstance(action_space, gym.spaces.Box):
            raise TypeError(f"SB3Policy needs a Box action space, got {action_space}")
        if (obs_mean is None) != (obs_var is None):
            raise ValueError("SB3Policy: give both obs_mean and obs_var, or neither")
        self.actor = actor.eval()
        self.algo = actor.algo
        self.observation_space = observation_space
        self.action_space = action_space
        self.net_arch = list(net_arch or [])
        self.activation = activation
        self.obs_dim = int(np.prod(observation_space.shape))
        self.act_shape = tuple(action_space.shape)
        # Kept flat and in float64, as VecNormalize keeps them, so normalization matches it.
        self.obs_mean = None if obs_mean is None else obs_mean.to(torch.float64).reshape(-1)
        self.obs_var = None if obs_var is None else obs_var.to(torch.float64).reshape(-1)
        self.clip_obs = float(clip_obs)
        self.epsilon = float(epsilon)
        self.low = torch.as_tensor(action_space.low, dtype=torch.float32).reshape(-1)
        self.high = torch.as_tensor(action_space.high, dtype=torch.float32).reshape(-1)
        if self.algo == "sac" and not (
            torch.isfinite(self.low).all() and torch.isfinite(self.high).all()
        ):
            raise ValueError("SB3Policy: SAC unscales tanh outputs and needs finite action bounds")

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_model(cls, model, vec_normalize=None) -> SB3Policy:
        """Copy the actor of a trained SB3 ``PPO`` or ``SAC`` (MlpPolicy, no gSDE).

        ``vec_normalize``: the training env's ``VecNormalize`` (its ``obs_rms`` is copied when
        it normalizes observations), or ``None``.
        """
        from stable_baselines3 import PPO, SAC

        policy = model.policy
        if getattr(policy, "use_sde", False):
            raise ValueError("SB3Policy does not support gSDE (use_sde=True) policies")
        if isinstance(model, PPO):
            algo, hidden_src, head = "ppo", policy.mlp_extractor.policy_net, policy.action_net
        elif isinstance(model, SAC):
            algo, hidden_src, head = "sac", policy.actor.latent_pi, policy.actor.mu
        else:
            raise TypeError(f"SB3Policy.from_model needs a PPO or SAC model, got {type(model)}")
        if not isinstance(head, nn.Linear):
            raise ValueError(f"unsupported {algo} action head {head} (expected one Linear)")
        obs_space, act_space = model.observation_space, model.action_space
        if vec_normalize is not None:
            # VecNormalize may replace image observation spaces; the raw env space is below.
            obs_space = vec_normalize.venv.observation_space
        if not isinstance(obs_space, gym.spaces.Box):
            raise TypeError(f"SB3Policy needs a (flat) Box observation space, got {obs_space}")
        hidden = _linears(hidden_src)
        net_arch = [layer.out_features for layer in hidden]
        activation = _activation_name(hidden_src, "Tanh" if algo == "ppo" else "ReLU")
        actor = SB3Actor(
            algo, int(np.prod(obs_space.shape)), int(np.prod(act_space.shape)), net_arch, activation
        )
        with torch.no_grad():
            for mine, theirs in zip(_linears(actor.hidden), hidden, strict=True):
                mine.load_state_dict(theirs.state_dict())
            actor.mu.load_state_dict(head.state_dict())
            if algo == "ppo":
                actor.log_std.copy_(policy.log_std.detach().cpu())
            else:
                actor.log_std_head.load_state_dict(policy.actor.log_std.state_dict())
        actor = actor.to("cpu")
        mean = var = None
        clip_obs, epsilon = 10.0, 1e-8
        if vec_normalize is not None and vec_normalize.norm_obs:
            mean = torch.as_tensor(np.asarray(vec_normalize.obs_rms.mean, dtype=np.float64))
            var = torch.as_tensor(np.asarray(vec_normalize.obs_rms.var, dtype=np.float64))
            clip_obs, epsilon = vec_normalize.clip_obs, vec_normalize.epsilon
        return cls(actor, obs_space, act_space, mean, var, clip_obs, epsilon, net_arch, activation)

    # -- acting ----------------------------------------------------------------------------
    def normalize(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``obs`` (B, *obs_shape) -> normalized (B, D) float32, as VecNormalize does it."""
        x = torch.as_tensor(np.asarray(obs)) if not isinstance(obs, torch.Tensor) else obs
        x = x.reshape(x.shape[0], self.obs_dim)
        if self.obs_mean is None:
            return x.to(torch.float32)
        # float64 like VecNormalize's numpy statistics, so the result matches it bit for bit.
        z = (x.to(torch.float64) - self.obs_mean) / torch.sqrt(self.obs_var + self.epsilon)
        return z.clamp(-self.clip_obs, self.clip_obs).to(torch.float32)

    @torch.no_grad()
    def distribution(self, obs: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``obs`` (B, D) -> ``(mean (B, A), log_std (B, A))`` float32 tensors.

        PPO: the Gaussian over env-unit actions before the clip to the Box. SAC: the
        Gaussian over the pre-tanh variable (action = unscale(tanh(u))). See the module doc.
        """
        mean, log_std = self.actor(self.normalize(obs))
        # PPO's log-std is an expanded view of a Parameter, which keeps requires_grad even
        # under no_grad: hand out plain tensors (the teacher is never trained through here).
        return mean.detach(), log_std.detach().clone()

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """``obs`` (B, D) float32 -> deterministic actions (B, A) float32 within the Box."""
        mean, _ = self.actor(self.normalize(obs))
        if self.algo == "ppo":
            action = torch.maximum(torch.minimum(mean, self.high), self.low)
        else:
            action = self.low + 0.5 * (torch.tanh(mean) + 1.0) * (self.high - self.low)
        return action.numpy().reshape(-1, *self.act_shape).astype(np.float32, copy=False)

    # -- export ----------------------------------------------------------------------------
    def onnx_spec(self) -> dict[str, Any]:
        """One ``direct``-mode graph, raw observations (B, D) -> actions (B, A); see
        :class:`SB3OnnxGraph` and the contract in :meth:`Policy.onnx_spec`."""
        normalization = None
        if self.obs_mean is not None:
            normalization = (
                f"VecNormalize: clip((obs - mean) / sqrt(var + {self.epsilon:g}), "
                f"-{self.clip_obs:g}, {self.clip_obs:g}) in float64"
            )
        action = "clip to [low, high]" if self.algo == "ppo" else "low + (tanh(u)+1)/2*(high-low)"
        return {
            "module": SB3OnnxGraph(self).eval(),
            "inputs": [
                {"name": "obs", "role": "observation", "example": torch.zeros(2, self.obs_dim)}
            ],
            "outputs": [{"name": "action", "role": "action"}],
            "metadata": {
                "policy_kind": self.kind,
                "policy": {
                    "algo": self.algo,
                    "net_arch": self.net_arch,
                    "activation": self.activation,
                },
                "mode": "direct",
                "deterministic": True,
                "observation": {**space_to_json(self.observation_space), "layout": None},
                "action": space_to_json(self.action_space),
                "normalization": {"observation": normalization, "action": action},
            },
        }

    # -- persistence -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "algo": self.algo,
            "net_arch": self.net_arch,
            "activation": self.activation,
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
            "normalize_obs": self.obs_mean is not None,
            "clip_obs": self.clip_obs,
            "epsilon": self.epsilon,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json`` + ``model.safetensors`` (``actor.*``, ``obs_mean``/``obs_var``)."""
        tensors = {f"actor.{k}": v for k, v in self.actor.state_dict().items()}
        if self.obs_mean is not None:
            tensors["obs_mean"], tensors["obs_var"] = self.obs_mean, self.obs_var
        return save_checkpoint(directory, self.config(), tensors)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SB3Policy:
        config, tensors = load_checkpoint(directory, kind=cls.kind)
        try:
            obs_space = space_from_json(config["observation_space"])
            act_space = space_from_json(config["action_space"])
            actor = SB3Actor(
                config["algo"], int(np.prod(obs_space.shape)), int(np.prod(act_space.shape)),
                list(config["net_arch"]), config["activation"],
            )  # fmt: skip
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{directory}/config.json is not a valid sb3 policy: {e}") from e
        actor_tensors = {
            k[len("actor.") :]: v for k, v in tensors.items() if k.startswith("actor.")
        }
        load_state_dict_strict(actor, actor_tensors, directory)
        normalize = config.get("normalize_obs", False)
        if normalize and not {"obs_mean", "obs_var"} <= set(tensors):
            raise CheckpointError(f"{directory} says normalize_obs but has no obs_mean/obs_var")
        return cls(
            actor, obs_space, act_space,
            tensors["obs_mean"] if normalize else None, tensors["obs_var"] if normalize else None,
            config.get("clip_obs", 10.0), config.get("epsilon", 1e-8),
            list(config["net_arch"]), config["activation"],
        )  # fmt: skip
