"""COMPASS stage 2's environment: PPO acts as a residual on the frozen base and sees the
base's latent and action (:mod:`robodistill.training.residual_env`)."""

from __future__ import annotations

import gymnasium as gym

from robodistill.config import RunConfig
from robodistill.envs import make_env
from robodistill.policies import Policy
from robodistill.teach.compass.evaluation import embodiment_kwargs
from robodistill.training.residual_env import residual_env


def make_residual_env(cfg: RunConfig, base: Policy, embodiment: str) -> gym.Env:
    """``env.id`` on ``embodiment``, wrapped for residual RL (what SB3 or RLlib trains on)."""
    c = cfg.teach.compass
    env = make_env(cfg.env.id, max_episode_steps=cfg.env.max_episode_steps,
                   **embodiment_kwargs(cfg, embodiment))  # fmt: skip
    return residual_env(env, base, c.residual_limit, c.residual_obs)
