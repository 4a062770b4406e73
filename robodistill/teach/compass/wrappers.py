"""COMPASS stage 2's environment: PPO acts as a residual on the frozen base and sees the
base's latent and action."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from robodistill.config import RunConfig
from robodistill.envs import make_env
from robodistill.policies import Policy
from robodistill.policies.compass import base_features
from robodistill.teach.compass.evaluation import embodiment_kwargs


class ResidualActionWrapper(gym.ActionWrapper):
    """The agent's action is a residual: ``env action = clip(base(o) + residual, low, high)``.

    ``base`` is frozen and acts on the latest raw observation; after every reset/step the
    wrapper keeps ``base_action`` (A,) and ``latent`` (L,) of that observation (one encoder
    pass) for :class:`BaseFeaturesWrapper`. The action space becomes ``±residual_limit``.
    """

    def __init__(self, env: gym.Env, base: Policy, residual_limit: float):
        super().__init__(env)
        self.base = base
        base.attach([env])  # a generalist base reads the embodiment from the env
        shape = env.action_space.shape
        self.low, self.high = env.action_space.low, env.action_space.high
        self.action_space = gym.spaces.Box(-residual_limit, residual_limit, shape, np.float32)
        self.base_action = np.zeros(shape, np.float32)
        self.latent = np.zeros(0, np.float32)

    def _observe(self, obs: np.ndarray) -> None:
        action, z = self.base.act_and_latent(np.asarray(obs, np.float32)[None])
        self.base_action, self.latent = action[0], z[0]

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._observe(obs)
        return obs, info

    def step(self, residual):
        obs, reward, terminated, truncated, info = self.env.step(self.action(residual))
        self._observe(obs)
        return obs, reward, terminated, truncated, info

    def action(self, residual: np.ndarray) -> np.ndarray:
        residual = np.asarray(residual, np.float32).reshape(self.base_action.shape)
        return np.clip(self.base_action + residual, self.low, self.high).astype(np.float32)


class BaseFeaturesWrapper(gym.ObservationWrapper):
    """PPO's observation: ``[z (L), base action (A)]`` (+ the raw obs with ``include_obs``),
    the same vector as :func:`robodistill.policies.compass.base_features`. Must wrap a
    :class:`ResidualActionWrapper` directly (it reuses that wrapper's encoder pass)."""

    def __init__(self, env: ResidualActionWrapper, include_obs: bool = False):
        if not isinstance(env, ResidualActionWrapper):
            raise TypeError("BaseFeaturesWrapper must wrap a ResidualActionWrapper")
        super().__init__(env)
        self.include_obs = include_obs
        probe = np.zeros((1, *env.env.observation_space.shape), np.float32)
        dim = base_features(env.base, probe, include_obs)[0].shape[1]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        parts = [self.env.latent, self.env.base_action]
        if self.include_obs:
            parts.append(np.asarray(obs, np.float32).reshape(-1))
        return np.concatenate(parts).astype(np.float32)


def make_residual_env(cfg: RunConfig, base: Policy, embodiment: str) -> gym.Env:
    """``env.id`` on ``embodiment``, wrapped for residual RL (what SB3 or RLlib trains on)."""
    c = cfg.teach.compass
    env = make_env(cfg.env.id, max_episode_steps=cfg.env.max_episode_steps,
                   **embodiment_kwargs(cfg, embodiment))  # fmt: skip
    return BaseFeaturesWrapper(ResidualActionWrapper(env, base, c.residual_limit), c.residual_obs)
