"""Privileged PPO teachers on stable-baselines3: who sees the domain-randomization draw.

::

    model, vecnorm = train_privileged_ppo(make_env, mode="oracle", total_timesteps=100_000)
    teacher = PrivilegedTeacher.from_model(model, vecnorm)   # robodistill.policies.privileged

The env is wrapped by :class:`~robodistill.envs.randomization.DomainRandomization` with
``privileged_obs=True``: its flat observation is the robot's D entries followed by the
normalized draw ``e`` (P entries, layout key ``privileged``). Three modes, one policy class:

* ``oracle``: actor and critic read ``[obs, z]`` with ``z = mu(e)`` (RMA's privileged
  encoder, trained end to end by PPO's loss);
* ``asymmetric``: only the critic reads ``z``; the actor sees the robot entries alone (a
  deployable policy whose value baseline knew the dynamics);
* ``blind``: nobody reads ``e``: the domain-randomized policy without privileged
  information, at the same env-step budget.

SB3 has no asymmetric actor-critic of its own; :class:`PrivilegedActorCriticPolicy`
subclasses ``ActorCriticPolicy`` and replaces only the MLP extractor, whose actor branch
takes the first D features when the actor is not privileged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, MlpExtractor

from robodistill.envs.randomization import robot_indices
from robodistill.policies.privileged import mlp

Mode = Literal["oracle", "asymmetric", "blind"]


class PrivilegedExtractor(BaseFeaturesExtractor):
    """Flat ``[robot (D), e (P)]`` -> features ``[robot (D), z = mu(e) (L)]`` (B, D + L).

    Args:
        robot_idx, priv_idx: where the robot's and the privileged entries are.
        latent_dim: L; encoder_arch: the encoder's hidden widths.
    """

    def __init__(self, observation_space: gym.spaces.Box, robot_idx: list[int],
                 priv_idx: list[int], latent_dim: int = 8, encoder_arch: list[int] = (64,)):  # fmt: skip
        super().__init__(observation_space, len(robot_idx) + latent_dim)
        self.register_buffer("robot_idx", torch.as_tensor(robot_idx, dtype=torch.long))
        self.register_buffer("priv_idx", torch.as_tensor(priv_idx, dtype=torch.long))
        self.latent_dim, self.encoder_arch = int(latent_dim), list(encoder_arch)
        self.encoder = mlp([len(priv_idx), *encoder_arch, latent_dim], last_act=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.cat([obs[:, self.robot_idx], self.encoder(obs[:, self.priv_idx])], dim=-1)


class PrivilegedMlpExtractor(MlpExtractor):
    """SB3's MLP extractor whose actor (and/or critic) branch may drop ``z``: a branch that
    is not privileged reads the first ``robot_dim`` features only."""

    def __init__(self, feature_dim: int, net_arch, activation_fn, device, robot_dim: int,
                 actor_privileged: bool, critic_privileged: bool):  # fmt: skip
        super().__init__(feature_dim, net_arch, activation_fn, device)
        self.robot_dim = int(robot_dim)
        self.actor_privileged, self.critic_privileged = actor_privileged, critic_privileged
        arch = net_arch if isinstance(net_arch, dict) else {"pi": net_arch, "vf": net_arch}
        self.net_arch_pi = list(arch["pi"])
        act = activation_fn
        if not actor_privileged:
            self.policy_net = mlp([robot_dim, *arch["pi"]], act).to(device)
        if not critic_privileged:
            self.value_net = mlp([robot_dim, *arch["vf"]], act).to(device)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return self.policy_net(features if self.actor_privileged else features[:, : self.robot_dim])

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.value_net(features if self.critic_privileged else features[:, : self.robot_dim])


class PrivilegedActorCriticPolicy(ActorCriticPolicy):
    """``ActorCriticPolicy`` with :class:`PrivilegedExtractor` features and the
    :class:`PrivilegedMlpExtractor`; ``actor_privileged`` / ``critic_privileged`` choose who
    reads ``z`` (see the module doc)."""

    def __init__(self, *args, actor_privileged: bool = True, critic_privileged: bool = True,
                 **kwargs):  # fmt: skip
        self.actor_privileged, self.critic_privileged = actor_privileged, critic_privileged
        super().__init__(*args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = PrivilegedMlpExtractor(
            self.features_dim, self.net_arch, self.activation_fn, self.device,
            robot_dim=len(self.features_extractor.robot_idx),
            actor_privileged=self.actor_privileged, critic_privileged=self.critic_privileged,
        )  # fmt: skip


MODES: dict[str, tuple[bool, bool]] = {
    "oracle": (True, True),
    "asymmetric": (False, True),
    "blind": (False, False),
}
"""mode -> (actor reads z, critic reads z)."""


def layout_indices(env: gym.Env) -> tuple[np.ndarray, np.ndarray]:
    """(robot indices, privileged indices) of an env's flat observation, from its layout."""
    dim = int(env.observation_space.shape[0])
    layout = env.get_wrapper_attr("observation_layout")
    robot = robot_indices(layout, dim)
    priv = np.setdiff1d(np.arange(dim), robot)
    if len(priv) == 0:
        raise ValueError("the env's observation has no privileged entries: wrap it in "
                         "DomainRandomization(privileged_obs=True)")  # fmt: skip
    return robot, priv


def train_privileged_ppo(
    make_env: Callable[[], gym.Env],
    mode: Mode = "oracle",
    total_timesteps: int = 100_000,
    n_envs: int = 4,
    seed: int = 0,
    net_arch: list[int] = (64, 64),
    latent_dim: int = 8,
    encoder_arch: list[int] = (64,),
    ppo_kwargs: dict[str, Any] | None = None,
):
    """Train a PPO teacher in ``mode`` on ``n_envs`` copies of ``make_env()`` (each a
    ``DomainRandomization(..., privileged_obs=True)`` env); returns ``(model, vec_normalize)``.

    Observations are normalized by ``VecNormalize`` (privileged entries too). Episode
    seeds come from SB3's ``seed`` (env ``i`` of the vector env: ``seed + i`` then its own
    stream), so each training run sees a reproducible sequence of draws.
    """
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor, VecNormalize

    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    probe = make_env()
    robot, priv = layout_indices(probe)
    probe.close()
    venv = VecNormalize(VecMonitor(DummyVecEnv([make_env] * n_envs)), norm_reward=True)
    actor_p, critic_p = MODES[mode]
    policy_kwargs = {
        "features_extractor_class": PrivilegedExtractor,
        "features_extractor_kwargs": {
            "robot_idx": robot.tolist(),
            "priv_idx": priv.tolist(),
            "latent_dim": latent_dim,
            "encoder_arch": list(encoder_arch),
        },  # fmt: skip
        "net_arch": list(net_arch),
        "actor_privileged": actor_p,
        "critic_privileged": critic_p,
    }
    kwargs = {"n_steps": 256, "batch_size": 64, "learning_rate": 3e-4, "verbose": 0}
    kwargs.update(ppo_kwargs or {})
    model = PPO(PrivilegedActorCriticPolicy, venv, seed=seed, device="cpu",
                policy_kwargs=policy_kwargs, **kwargs)  # fmt: skip
    model.learn(total_timesteps=total_timesteps)
    venv.training = False
    return model, venv


__all__ = [
    "MODES",
    "PrivilegedActorCriticPolicy",
    "PrivilegedExtractor",
    "PrivilegedMlpExtractor",
    "layout_indices",
    "train_privileged_ppo",
]
