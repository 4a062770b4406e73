"""The environment residual RL trains on: PPO's action is a residual on a frozen base policy
and its observation is :func:`robodistill.policies.residual.base_features`.

Two adapters of the same rule: :func:`residual_env` wraps one gymnasium env (COMPASS's
specialists: a stateless base, one call per env; what SB3 or RLlib workers step), and
:class:`ResidualVecEnv` wraps a whole SB3 vector env so that one base call serves every env
(RL-100's residual online stage: a chunked diffusion base plans ~10x faster in one batch than
env by env, and keeps its per-row history and action queue).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from robodistill.policies import Policy
from robodistill.policies.residual import base_features


def feature_sizes(base: Policy, obs_shape: tuple[int, ...], include_obs: bool, rows: int = 1
                  ) -> tuple[int, int]:  # fmt: skip
    """``(F, L)``: the size of :func:`base_features`' vector and of the base's latent in it,
    from one call on zero observations; the base is then fully reset, so the probe leaves no
    trace in a stateful base (history, sampler)."""
    probe = np.zeros((rows, *obs_shape), np.float32)
    features, action = base_features(base, probe, include_obs)
    base.reset()
    size = features.shape[1]
    return size, size - action.shape[1] - (int(np.prod(obs_shape)) if include_obs else 0)


class ResidualActionWrapper(gym.ActionWrapper):
    """The agent's action is a residual: ``env action = clip(base(o) + residual, low, high)``.

    ``base`` is frozen and acts on the latest raw observation, as batch row 0 of its own
    state: a stateful base (a chunked diffusion policy) needs one instance per env, and is
    reset (row 0, without reseeding its sampler) at every episode start. After every
    reset/step the wrapper keeps the features (F,) and ``base_action`` (A,) of that
    observation (one base call) for :class:`BaseFeaturesWrapper`. The action space becomes
    ``±residual_limit``.
    """

    def __init__(self, env: gym.Env, base: Policy, residual_limit: float,
                 include_obs: bool = False):  # fmt: skip
        super().__init__(env)
        self.base, self.include_obs = base, include_obs
        base.attach([env])  # a generalist base reads the embodiment from the env
        shape = env.action_space.shape
        self.low, self.high = env.action_space.low, env.action_space.high
        self.action_space = gym.spaces.Box(-residual_limit, residual_limit, shape, np.float32)
        self.base_action = np.zeros(shape, np.float32)
        self.features = np.zeros(0, np.float32)

    def _observe(self, obs: np.ndarray) -> None:
        features, action = base_features(self.base, np.asarray(obs, np.float32)[None],
                                         self.include_obs)  # fmt: skip
        self.features, self.base_action = features[0], action[0]

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.base.reset([0])
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
    """PPO's observation: the :func:`base_features` vector ``[z, base action (, obs)]`` of
    the wrapped :class:`ResidualActionWrapper` (it reuses that wrapper's base call)."""

    def __init__(self, env: ResidualActionWrapper):
        if not isinstance(env, ResidualActionWrapper):
            raise TypeError("BaseFeaturesWrapper must wrap a ResidualActionWrapper")
        super().__init__(env)
        dim, _ = feature_sizes(env.base, env.env.observation_space.shape, env.include_obs)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        return self.env.features.astype(np.float32)


def residual_env(env: gym.Env, base: Policy, residual_limit: float,
                 include_obs: bool) -> BaseFeaturesWrapper:  # fmt: skip
    """``env`` wrapped for residual RL on ``base`` (what SB3 or RLlib trains on)."""
    return BaseFeaturesWrapper(ResidualActionWrapper(env, base, residual_limit, include_obs))


class ResidualVecEnv(VecEnvWrapper):
    """An SB3 vector env whose actions are residuals on ``base`` (one batch row per env):
    ``action_i = clip(base(o_i) + residual_i, low, high)``; observations are
    :func:`base_features` ``[z, base action, obs]`` (B, F).

    Row i of the base is reset when env i's episode ends (SB3 vector envs reset themselves).
    The ``terminal_observation`` of such an episode (what PPO bootstraps a time-limit cut
    from) gets the features ``[z, base action of its last step, terminal obs]``: calling the
    base on it would advance every row's state, and the last base action is what the
    base's queue holds next unless a new plan was due.
    """

    def __init__(self, venv: VecEnv, base: Policy, residual_limit: float, include_obs: bool):
        self.base, self.include_obs = base, include_obs
        space = venv.action_space
        self.low, self.high = space.low, space.high
        dim, self.z_dim = feature_sizes(base, venv.observation_space.shape, include_obs,
                                        rows=venv.num_envs)  # fmt: skip
        super().__init__(
            venv,
            observation_space=gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32),
            action_space=gym.spaces.Box(-residual_limit, residual_limit, space.shape, np.float32),
        )
        self.base_action = np.zeros((venv.num_envs, *space.shape), np.float32)
        self.features = np.zeros((venv.num_envs, dim), np.float32)

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        self.features, self.base_action = base_features(self.base, obs, self.include_obs)
        return self.features

    def reset(self) -> np.ndarray:
        obs = self.venv.reset()
        self.base.reset(list(range(self.num_envs)))  # every row, without reseeding its sampler
        return self._observe(obs)

    def step_async(self, actions: np.ndarray) -> None:
        residual = np.asarray(actions, np.float32).reshape(self.base_action.shape)
        self.venv.step_async(np.clip(self.base_action + residual, self.low, self.high))

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        for i in np.flatnonzero(dones):
            if "terminal_observation" in infos[i]:
                terminal = np.asarray(infos[i]["terminal_observation"], np.float32).reshape(-1)
                parts = [self.features[i, : self.z_dim], self.base_action[i]]
                parts += [terminal] if self.include_obs else []
                infos[i]["terminal_observation"] = np.concatenate(parts).astype(np.float32)
        if dones.any():
            self.base.reset(np.flatnonzero(dones))
        return self._observe(obs), rewards, dones, infos
