"""Privileged PPO teachers on RLlib (new API stack): who sees the domain-randomization draw.

The RLlib twin of :mod:`robodistill.teach.rl.privileged` (same three modes, same layout,
same :class:`~robodistill.policies.privileged.PrivilegedTeacher` at the end)::

    config = build_config(cfg)          # teach.backend: rllib, teach.privileged: oracle
    algo = config.build_algo()          # add_privileged() swapped in the module below
    algo.train()
    teacher = to_privileged_teacher(algo, obs_space, act_space, filter_state(algo))
    teacher.act(obs)                    # plain torch (a PrivilegedTeacher), no Ray

The env (``env.randomization`` with ``privileged_obs: true``) gives the flat observation
``[robot (D), e (P)]`` (the layout entry ``privileged``), normalized as a whole by RLlib's
``MeanStdFilter`` when ``teach.normalize_obs`` (as SB3's ``VecNormalize`` does there).

RLlib's own pieces are kept; only the encoder is replaced:

* :class:`PrivilegedPPOCatalog` (a ``PPOCatalog``) builds :class:`PrivilegedActorCriticEncoder`
  instead of RLlib's actor-critic MLP encoder. Its ``pi`` and ``vf`` heads are the
  catalog's own (``free_log_std``: a linear mean and a state-independent log-std, SB3's
  ``action_net`` + ``log_std``; a linear value), on the trunks' last width.
* :class:`PrivilegedActorCriticEncoder` reads the filtered observation ``(B, D + P)``:
  ``z = mu(e)`` (``mu``: ``P -> encoder_arch -> L``, tanh, linear last), an actor trunk on
  ``[robot, z]`` (oracle) or ``robot`` (asymmetric, blind) and a critic trunk on
  ``[robot, z]`` (oracle, asymmetric) or ``robot`` (blind); each trunk ``-> net_arch``
  with tanh, SB3's ``mlp_extractor`` layout. ``mu`` is shared by actor and critic (SB3's
  shared features extractor); blind builds none.
* :class:`PrivilegedPPOTorchRLModule` (a ``DefaultPPOTorchRLModule``): RLlib's forward
  passes on that encoder; ``compute_values`` reads the critic trunk; env runners build it
  inference-only, without ``vf``, the critic trunk and (asymmetric) ``mu``.

:func:`to_privileged_teacher` copies ``mu``, the actor trunk, ``pi``'s linear layer and
log-std, and the filter's statistics into a ``PrivilegedTeacher``, whose ``act`` is RLlib's
deterministic action (the Gaussian's mean, clipped to the Box) on the same raw observation.

**The filter's normalization in the teacher.** ``MeanStdFilter`` computes
``(obs - mean) / (std + 1e-6)`` in float64 and clips at ±10; the teacher computes
``(obs - mean) / sqrt(var + eps)`` in float32. The copy sets ``var = (std + 1e-6)²`` and
``eps = 0``, so the two agree up to float32 rounding (~1e-7 relative), not bit for bit.

What differs from the SB3 teacher: the initial weights are RLlib's (torch's default init;
SB3 uses orthogonal init) and the mean and value heads are the catalog's.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.models.base import ACTOR, CRITIC, ENCODER_OUT
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from torch import nn

from robodistill.envs.randomization import robot_indices
from robodistill.policies.privileged import PrivilegedTeacher, mlp
from robodistill.policies.rllib_policy import FILTER_EPSILON, filter_arrays
from robodistill.teach.rl.privileged import MODES

PRIVILEGED_KEY = "robodistill_privileged"
"""``model_config`` key of the privileged settings: ``robot_idx``, ``priv_idx`` (lists),
``latent_dim``, ``encoder_arch``, ``actor_privileged``, ``critic_privileged``."""


class PrivilegedActorCriticEncoder(nn.Module):
    """Filtered observation ``batch[OBS]`` ``(B, D + P)`` -> ``{ENCODER_OUT: {ACTOR: (B, H),
    CRITIC: (B, H)}}`` with ``H = net_arch[-1]`` (module docstring).

    Attributes: ``mu`` (``P -> L``; absent for blind), ``actor`` and ``critic`` (trunks,
    ``nn.Sequential`` of Linear/Tanh as :func:`robodistill.policies.privileged.mlp` builds
    them). An inference-only module has no ``critic`` (and, asymmetric, no ``mu``).
    """

    def __init__(self, net_arch: list[int], robot_idx: list[int], priv_idx: list[int],
                 latent_dim: int, encoder_arch: list[int], actor_privileged: bool,
                 critic_privileged: bool, inference_only: bool = False):  # fmt: skip
        super().__init__()
        if not net_arch:
            raise ValueError("an RLlib privileged teacher needs at least one hidden layer "
                             "(teach.net_arch)")  # fmt: skip
        # Constants of the layout, not state: non-persistent, so no checkpoint carries them.
        self.register_buffer("robot_idx", torch.as_tensor(robot_idx, dtype=torch.long),
                             persistent=False)  # fmt: skip
        self.register_buffer("priv_idx", torch.as_tensor(priv_idx, dtype=torch.long),
                             persistent=False)  # fmt: skip
        self.actor_privileged, self.critic_privileged = actor_privileged, critic_privileged
        self.latent_dim = int(latent_dim) if (actor_privileged or critic_privileged) else 0
        self.encoder_arch, self.net_arch = list(encoder_arch), list(net_arch)
        d = len(robot_idx)
        # An inference-only module (env runners) builds only what the actor reads, as RLlib's
        # own actor-critic encoder does; the learner's weights sync into it by name.
        if self.latent_dim and (actor_privileged or not inference_only):
            self.mu = mlp([len(priv_idx), *encoder_arch, self.latent_dim], last_act=False)
        self.actor = mlp([d + (self.latent_dim if actor_privileged else 0), *net_arch])
        if not inference_only:
            self.critic = mlp([d + (self.latent_dim if critic_privileged else 0), *net_arch])

    @property
    def has_mu(self) -> bool:
        return getattr(self, "mu", None) is not None

    def latent(self, obs: torch.Tensor) -> torch.Tensor:
        """Filtered ``(B, D + P)`` -> ``z = mu(e)`` ``(B, L)``."""
        return self.mu(obs[:, self.priv_idx])

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        obs = batch[Columns.OBS].float()
        obs = obs.reshape(obs.shape[0], -1)
        robot = obs[:, self.robot_idx]
        critic = getattr(self, "critic", None)  # absent in inference-only modules
        needs_z = self.actor_privileged or (critic is not None and self.critic_privileged)
        z = self.latent(obs) if needs_z else None
        with_z = torch.cat([robot, z], dim=-1) if z is not None else None
        out = {ACTOR: self.actor(with_z if self.actor_privileged else robot)}
        if critic is not None:
            out[CRITIC] = critic(with_z if self.critic_privileged else robot)
        return {ENCODER_OUT: out}


class PrivilegedPPOCatalog(PPOCatalog):
    """``PPOCatalog`` whose actor-critic encoder is :class:`PrivilegedActorCriticEncoder`
    (settings in ``model_config[PRIVILEGED_KEY]``); its heads are PPO's own, on the
    trunks' width (``fcnet_hiddens`` = ``teach.net_arch``, so ``latent_dims`` fits)."""

    def build_actor_critic_encoder(self, framework: str) -> nn.Module:
        if framework != "torch":
            raise ValueError(f"privileged RLlib teachers are torch only, not {framework}")
        p = self._model_config_dict[PRIVILEGED_KEY]
        return PrivilegedActorCriticEncoder(
            list(self._model_config_dict["fcnet_hiddens"]), list(p["robot_idx"]),
            list(p["priv_idx"]), int(p["latent_dim"]), list(p["encoder_arch"]),
            bool(p["actor_privileged"]), bool(p["critic_privileged"]),
            inference_only=bool(self.actor_critic_encoder_config.inference_only),
        )  # fmt: skip


class PrivilegedPPOTorchRLModule(DefaultPPOTorchRLModule):
    """RLlib's default PPO module on :class:`PrivilegedPPOCatalog`'s encoder. The value is
    ``vf(critic trunk)``; ``vf``, the critic trunk and, when the actor does not read ``z``,
    ``mu`` are learner-only (``get_non_inference_attributes``)."""

    def __init__(self, *args, **kwargs):
        kwargs["catalog_class"] = kwargs.get("catalog_class") or PrivilegedPPOCatalog
        super().__init__(*args, **kwargs)

    def get_non_inference_attributes(self) -> list[str]:
        attrs = ["vf", "encoder.critic"]
        if not self.model_config[PRIVILEGED_KEY]["actor_privileged"]:
            attrs.append("encoder.mu")
        return attrs

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        """Values ``(B,)`` of ``batch[OBS]`` (or of the critic trunk's ``embeddings``)."""
        if embeddings is None:
            embeddings = self.encoder(batch)[ENCODER_OUT][CRITIC]
        return self.vf(embeddings).squeeze(-1)


def privileged_settings(layout: list[dict[str, Any]] | None, obs_dim: int, mode: str,
                        latent_dim: int, encoder_arch: list[int]) -> dict[str, Any]:  # fmt: skip
    """``model_config[PRIVILEGED_KEY]`` for ``mode`` from the env's observation layout."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    robot = robot_indices(layout, obs_dim)
    priv = np.setdiff1d(np.arange(obs_dim), robot)
    if len(priv) == 0:
        raise ValueError("the env's observation has no privileged entries: set "
                         "env.randomization.privileged_obs: true")  # fmt: skip
    actor_p, critic_p = MODES[mode]
    return {"robot_idx": robot.tolist(), "priv_idx": priv.tolist(),
            "latent_dim": int(latent_dim), "encoder_arch": list(encoder_arch),
            "actor_privileged": actor_p, "critic_privileged": critic_p}  # fmt: skip


def add_privileged(config, settings: dict[str, Any], net_arch: list[int]):
    """Swap :class:`PrivilegedPPOTorchRLModule` (with ``settings``, see
    :func:`privileged_settings`) into a ``PPOConfig``; returns it."""
    model = DefaultModelConfig(fcnet_hiddens=list(net_arch), free_log_std=True,
                               vf_share_layers=False)  # fmt: skip
    return config.rl_module(
        model_config=model,
        rl_module_spec=RLModuleSpec(
            module_class=PrivilegedPPOTorchRLModule,
            catalog_class=PrivilegedPPOCatalog,
            model_config={PRIVILEGED_KEY: settings},
        ),
    )


def learner_module(algo, obs_space: gym.Space, act_space: gym.Space) -> PrivilegedPPOTorchRLModule:
    """The learner's full module (with the critic and ``mu``): a fresh copy built from the
    algorithm's spec, on torch's RNG forked (building it draws initial weights), holding
    the learner's weights."""
    spec = algo.config.get_rl_module_spec(spaces={DEFAULT_MODULE_ID: (obs_space, act_space)},
                                          inference_only=False)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        module = spec.build()
    module.set_state(algo.learner_group.get_weights([DEFAULT_MODULE_ID])[DEFAULT_MODULE_ID])
    return module.eval()


def teacher_from_module(module: PrivilegedPPOTorchRLModule, obs_space: gym.spaces.Box,
                        act_space: gym.spaces.Box,
                        filter_state: dict[str, Any] | None = None) -> PrivilegedTeacher:  # fmt: skip
    """Copy the actor of ``module`` (a full or, unless asymmetric, inference-only
    :class:`PrivilegedPPOTorchRLModule`) and the ``MeanStdFilter`` state (one agent's entry
    of its ``get_state()``, or None) into a :class:`PrivilegedTeacher` (module docstring)."""
    module = module.unwrapped() if hasattr(module, "unwrapped") else module
    enc, pi = module.encoder, module.pi
    mu = enc.mu if enc.has_mu else None
    config = {"net_arch": list(enc.net_arch), "latent_dim": enc.latent_dim if mu else 0,
              "encoder_arch": list(enc.encoder_arch), "robot_idx": enc.robot_idx.tolist(),
              "priv_idx": enc.priv_idx.tolist(),
              "actor_privileged": bool(enc.actor_privileged)}  # fmt: skip
    if enc.actor_privileged and mu is None:
        raise ValueError("the module has no privileged encoder mu, but its actor reads z")
    (linear,) = [m for m in pi.net.modules() if isinstance(m, nn.Linear)]
    net = PrivilegedTeacher._build(config, int(np.prod(act_space.shape)))
    with torch.no_grad():
        if mu is not None:
            net.encoder.load_state_dict(mu.state_dict())
        net.policy_net.load_state_dict(enc.actor.state_dict())
        net.action_net.load_state_dict(linear.state_dict())
        net.log_std.copy_(pi.log_std.detach())
        net.eps = 0.0
        if filter_state is not None:
            mean, std = filter_arrays(filter_state)
            if not filter_state.get("de_mean_to_zero", True):
                mean = np.zeros_like(mean)
            if not filter_state.get("de_std_to_one", True):
                std = np.ones_like(std) - FILTER_EPSILON
            scale = std.astype(np.float32) + np.float32(FILTER_EPSILON)  # float32, as RLlib
            net.obs_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            net.obs_var.copy_(torch.as_tensor(scale.astype(np.float64) ** 2, dtype=torch.float32))
            clip = filter_state.get("clip_by_value")
            net.clip_obs = float(clip) if clip else 1e30
        else:  # raw observations into the module: nothing to normalize or clip
            net.clip_obs = 1e30
    config.update(clip_obs=net.clip_obs, eps=net.eps)
    return PrivilegedTeacher(net.cpu(), obs_space, act_space, config)


def to_privileged_teacher(algo, obs_space: gym.spaces.Box, act_space: gym.spaces.Box,
                          filter_state: dict[str, Any] | None) -> PrivilegedTeacher:  # fmt: skip
    """The algorithm's current privileged teacher: the learner's module and the env
    runners' merged ``MeanStdFilter`` state (``teach.normalize_obs``;
    :func:`robodistill.teach.rl.rllib.filter_state`, or None) as a
    :class:`PrivilegedTeacher` (what ``<run>/teach/policy`` holds)."""
    return teacher_from_module(learner_module(algo, obs_space, act_space), obs_space,
                               act_space, filter_state)  # fmt: skip


__all__ = [
    "PRIVILEGED_KEY",
    "PrivilegedActorCriticEncoder",
    "PrivilegedPPOCatalog",
    "PrivilegedPPOTorchRLModule",
    "add_privileged",
    "learner_module",
    "privileged_settings",
    "teacher_from_module",
    "to_privileged_teacher",
]
