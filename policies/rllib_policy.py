"""An RLlib (new API stack) PPO actor as a robodistill :class:`Policy` (kind ``"rllib"``).

Only what acting needs is kept: the actor's MLP (RLlib's actor encoder followed by its
``pi`` head, rebuilt layer by layer as a plain ``nn.Sequential``), the ``MeanStdFilter``
observation statistics when the env-to-module pipeline normalized observations, and the
action bounds. Nothing of Ray is needed to load or run it (no pickle)::

    policy = RLlibPolicy.from_module(module, obs_space, act_space, filter_state)
    policy.act(obs)                         # (B, D) -> (B, A): clip(mean, low, high)
    mean, log_std = policy.distribution(obs)
    policy.save("teach/policy"); load_policy("teach/policy")

The action pipeline, as RLlib computes it with ``explore=False``,
``normalize_actions=False`` and ``clip_actions=True`` (what the teach stage configures):

* observation: ``clip((obs - mean) / (std + 1e-6), -clip, clip)`` (RLlib's ``MeanStdFilter``:
  float64 arithmetic, result cast back to the observation's float32);
* ``action_dist_inputs = pi(actor_encoder(obs))`` = ``[mean (A), log_std (A)]``, log-std
  clamped to ``[-log_std_clip, log_std_clip]`` as RLlib's head does;
* the deterministic action is the Gaussian's mean, clipped to the Box.
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
from robodistill.policies.sb3_policy import ACTIVATIONS

# ray.rllib.utils.numpy.SMALL_NUMBER: MeanStdFilter divides by (std + SMALL_NUMBER).
FILTER_EPSILON = 1e-6


def build_layers(spec: list[dict[str, Any]]) -> nn.Sequential:
    """``[{"type": "Linear", "in": 3, "out": 32}, {"type": "Tanh"}, ...]`` -> nn.Sequential."""
    layers: list[nn.Module] = []
    for item in spec:
        kind = item["type"]
        if kind == "Linear":
            layers.append(nn.Linear(int(item["in"]), int(item["out"])))
        elif kind in ACTIVATIONS:
            layers.append(ACTIVATIONS[kind]())
        else:
            raise ValueError(f"unsupported layer {kind!r} (Linear or one of {sorted(ACTIVATIONS)})")
    return nn.Sequential(*layers)


def _layer_spec(modules: list[nn.Module]) -> list[dict[str, Any]]:
    spec = []
    for m in modules:
        if isinstance(m, nn.Linear):
            spec.append({"type": "Linear", "in": m.in_features, "out": m.out_features})
        elif type(m).__name__ in ACTIVATIONS:
            spec.append({"type": type(m).__name__})
        elif isinstance(m, nn.Identity):
            continue
        else:
            raise ValueError(
                f"RLlibPolicy: cannot convert layer {type(m).__name__} of the RLModule (only "
                f"Linear and {sorted(ACTIVATIONS)}; e.g. fcnet_use_layernorm is not supported)"
            )
    return spec


def _leaf_modules(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if len(list(m.children())) == 0]


class RLlibOnnxGraph(nn.Module):
    """What :meth:`RLlibPolicy.act` computes, as one exportable graph.

    ``forward(obs (B, D) raw float32) -> action (B, A) float32``: the ``MeanStdFilter``
    (float64 arithmetic as RLlib does it), the actor MLP, the Gaussian mean, the clip to the
    Box.
    """

    def __init__(self, policy: RLlibPolicy):
        super().__init__()
        self.layers, self.act_dim = policy.layers, policy.act_dim
        self.normalize = policy.obs_mean is not None
        if self.normalize:
            self.register_buffer("obs_mean", policy.obs_mean.clone())
            # (float32 std + eps in float32), then float64: RLlibPolicy.normalize's order.
            scale = (policy.obs_std + FILTER_EPSILON).to(torch.float64)
            self.register_buffer("obs_scale", scale)
        self.clip_obs = policy.clip_obs or None
        self.register_buffer("low", policy.low.clone())
        self.register_buffer("high", policy.high.clone())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs
        if self.normalize:
            z = (obs.to(torch.float64) - self.obs_mean) / self.obs_scale
            if self.clip_obs is not None:
                z = z.clamp(-self.clip_obs, self.clip_obs)
            x = z.to(torch.float32)
        mean = self.layers(x)[:, : self.act_dim]
        return torch.maximum(torch.minimum(mean, self.high), self.low)


@register_policy
class RLlibPolicy(Policy):
    """Deterministic actor of an RLlib PPO ``RLModule`` with its observation filter.

    Args:
        layers: ``nn.Sequential`` from normalized observations (B, D) to
            ``action_dist_inputs`` (B, 2A).
        layer_spec: the JSON description :func:`build_layers` rebuilds ``layers`` from.
        observation_space, action_space: the env's spaces (Box; observations flattened).
        obs_mean, obs_std: the ``MeanStdFilter``'s mean (float64) and std (float32, as
            RLlib computes it), observation-shaped, or ``None`` without a filter.
        clip_obs: the filter's ``clip_by_value`` (``None``: no clipping).
        log_std_clip: RLlib's ``log_std_clip_param`` (``None``: no clamp).
    """

    kind = "rllib"

    def __init__(
        self,
        layers: nn.Sequential,
        layer_spec: list[dict[str, Any]],
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        obs_mean: torch.Tensor | None = None,
        obs_std: torch.Tensor | None = None,
        clip_obs: float | None = 10.0,
        log_std_clip: float | None = 20.0,
    ):
        if not isinstance(action_space, gym.spaces.Box):
            raise TypeError(f"RLlibPolicy needs a Box action space, got {action_space}")
        self.layers = layers.eval()
        self.layer_spec = layer_spec
        self.observation_space, self.action_space = observation_space, action_space
        self.obs_dim = int(np.prod(observation_space.shape))
        self.act_shape = tuple(action_space.shape)
        self.act_dim = int(np.prod(self.act_shape))
        self.low = torch.as_tensor(action_space.low.reshape(-1), dtype=torch.float32)
        self.high = torch.as_tensor(action_space.high.reshape(-1), dtype=torch.float32)
        self.obs_mean = None if obs_mean is None else obs_mean.to(torch.float64).reshape(-1)
        self.obs_std = None if obs_std is None else obs_std.to(torch.float32).reshape(-1)
        self.clip_obs = clip_obs
        self.log_std_clip = log_std_clip

    # -- conversion ------------------------------------------------------------------------
    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        filter_state: dict[str, Any] | None = None,
    ) -> RLlibPolicy:
        """Copy the actor of a ``DefaultPPOTorchRLModule`` (full or inference-only).

        ``filter_state``: one agent's entry of ``MeanStdFilter.get_state()`` (keys
        ``running_stats``, ``clip_by_value``, ``de_mean_to_zero``, ``de_std_to_one``), or
        ``None`` when observations are not filtered.
        """
        encoder = module.encoder
        actor = getattr(encoder, "actor_encoder", None) or getattr(encoder, "encoder", None)
        if actor is None:
            raise ValueError(f"RLlibPolicy: no actor encoder in {type(encoder).__name__}")
        modules = _leaf_modules(actor) + [
            m for m in _leaf_modules(module.pi) if isinstance(m, nn.Module)
        ]
        spec = _layer_spec(modules)
        layers = build_layers(spec)
        theirs = [m for m in modules if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for mine, src in zip(_linears(layers), theirs, strict=True):
                mine.weight.copy_(src.weight.detach().cpu().to(torch.float32))
                mine.bias.copy_(src.bias.detach().cpu().to(torch.float32))
        log_std_clip = None
        if getattr(module.pi, "clip_log_std", False):
            log_std_clip = float(module.pi.log_std_clip_param)
        if getattr(module.pi, "fixed_std", False) or getattr(module.pi, "free_log_std", False):
            raise ValueError("RLlibPolicy: free_log_std heads are not supported")
        mean = std = None
        clip_obs: float | None = None
        if filter_state is not None:
            mean, std = filter_arrays(filter_state)
            clip_obs = filter_state.get("clip_by_value")
            if not filter_state.get("de_mean_to_zero", True):
                mean = np.zeros_like(mean)
            if not filter_state.get("de_std_to_one", True):
                std = np.ones_like(std) - FILTER_EPSILON
            mean, std = torch.as_tensor(mean), torch.as_tensor(std)
        return cls(layers, spec, observation_space, action_space, mean, std, clip_obs, log_std_clip)

    # -- acting ----------------------------------------------------------------------------
    def normalize(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``obs`` (B, *obs_shape) -> filtered (B, D) float32, as MeanStdFilter does it."""
        x = torch.as_tensor(np.asarray(obs)) if not isinstance(obs, torch.Tensor) else obs
        x = x.reshape(x.shape[0], self.obs_dim).to(torch.float32)
        if self.obs_mean is None:
            return x
        # As RLlib: (float32 obs - float64 mean) / (float32 std + eps in float32).
        z = (x.to(torch.float64) - self.obs_mean) / (self.obs_std + FILTER_EPSILON).to(
            torch.float64
        )
        if self.clip_obs:
            z = z.clamp(-self.clip_obs, self.clip_obs)
        return z.to(torch.float32)

    @torch.no_grad()
    def distribution(self, obs: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``obs`` (B, D) -> ``(mean (B, A), log_std (B, A))``: the Gaussian over env-unit
        actions before the clip to the Box."""
        out = self.layers(self.normalize(obs))
        mean, log_std = out[:, : self.act_dim], out[:, self.act_dim :]
        if self.log_std_clip is not None:
            log_std = log_std.clamp(-self.log_std_clip, self.log_std_clip)
        return mean.detach().clone(), log_std.detach().clone()

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """``obs`` (B, D) float32 -> deterministic actions (B, A) float32 within the Box."""
        mean, _ = self.distribution(obs)
        action = torch.maximum(torch.minimum(mean, self.high), self.low)
        return action.numpy().reshape(-1, *self.act_shape).astype(np.float32, copy=False)

    # -- export ----------------------------------------------------------------------------
    def onnx_spec(self) -> dict[str, Any]:
        """One ``direct``-mode graph, raw observations (B, D) -> actions (B, A); see
        :class:`RLlibOnnxGraph` and the contract in :meth:`Policy.onnx_spec`."""
        normalization = None
        if self.obs_mean is not None:
            clip = f", clipped to +-{self.clip_obs:g}" if self.clip_obs else ""
            normalization = f"MeanStdFilter: (obs - mean) / (std + {FILTER_EPSILON:g}){clip}"
        return {
            "module": RLlibOnnxGraph(self).eval(),
            "inputs": [
                {"name": "obs", "role": "observation", "example": torch.zeros(2, self.obs_dim)}
            ],
            "outputs": [{"name": "action", "role": "action"}],
            "metadata": {
                "policy_kind": self.kind,
                "policy": {
                    "algo": "ppo",
                    "layers": self.layer_spec,
                    "log_std_clip": self.log_std_clip,
                },
                "mode": "direct",
                "deterministic": True,
                "observation": {**space_to_json(self.observation_space), "layout": None},
                "action": space_to_json(self.action_space),
                "normalization": {"observation": normalization, "action": "clip to [low, high]"},
            },
        }

    # -- persistence -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "algo": "ppo",
            "layers": self.layer_spec,
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
            "normalize_obs": self.obs_mean is not None,
            "clip_obs": self.clip_obs,
            "log_std_clip": self.log_std_clip,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json`` + ``model.safetensors`` (``layers.*``, ``obs_mean``/``obs_std``)."""
        tensors = {f"layers.{k}": v for k, v in self.layers.state_dict().items()}
        if self.obs_mean is not None:
            tensors["obs_mean"], tensors["obs_std"] = self.obs_mean, self.obs_std
        return save_checkpoint(directory, self.config(), tensors)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> RLlibPolicy:
        config, tensors = load_checkpoint(directory, kind=cls.kind)
        try:
            obs_space = space_from_json(config["observation_space"])
            act_space = space_from_json(config["action_space"])
            spec = list(config["layers"])
            layers = build_layers(spec)
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(
                f"{directory}/config.json is not a valid rllib policy: {e}"
            ) from e
        layer_tensors = {
            k[len("layers.") :]: v for k, v in tensors.items() if k.startswith("layers.")
        }
        load_state_dict_strict(layers, layer_tensors, directory)
        normalize = config.get("normalize_obs", False)
        if normalize and not {"obs_mean", "obs_std"} <= set(tensors):
            raise CheckpointError(f"{directory} says normalize_obs but has no obs_mean/obs_std")
        return cls(
            layers, spec, obs_space, act_space,
            tensors["obs_mean"] if normalize else None, tensors["obs_std"] if normalize else None,
            config.get("clip_obs"), config.get("log_std_clip"),
        )  # fmt: skip


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def filter_arrays(filter_state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """One agent's ``MeanStdFilter`` state -> ``(mean float64, std float32)`` as RLlib's
    ``RunningStat`` computes them (unbiased variance in float32, 0 for fewer than 2 pushes).
    Only plain Box observations (one running statistic) are supported."""
    stats = filter_state["running_stats"]
    if len(stats) != 1:
        raise ValueError(f"RLlibPolicy: {len(stats)} filter statistics; only one Box is supported")
    s = stats[0]
    mean = np.asarray(_array(s["mean_array"]), dtype=np.float64)
    n = int(s["num_pushes"])
    if n <= 1:
        var = np.zeros_like(mean).astype(np.float32)
    else:
        var = (np.asarray(_array(s["sum_sq_diff_array"])) / (float(n) - 1)).astype(np.float32)
    return mean, np.sqrt(np.maximum(0, var))


def _array(value: Any) -> np.ndarray:
    """RLlib serializes RunningStat arrays (``_serialize_ndarray``); accept both forms."""
    if isinstance(value, np.ndarray):
        return value
    from ray.rllib.utils.filter import _deserialize_ndarray  # only at conversion time

    return _deserialize_ndarray(value)
