"""SuccessBonus: the online RL stages' reward for finishing (teach.online.success_bonus)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from robodistill.envs.make import SuccessBonus


class Scripted(gym.Env):
    """Reward 0.5 per step; succeeds from step 3 on (without terminating, so a wrapper
    that paid on every success step would be caught)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        success = self.t >= 3
        return np.zeros(1, np.float32), 0.5, False, False, {"is_success": success, "score": 0.5}


def test_the_bonus_is_paid_once_per_episode_on_the_first_success_step():
    env = SuccessBonus(Scripted(), bonus=10.0)
    for _ in range(2):  # and again after a reset
        env.reset(seed=0)
        rewards, scores = [], []
        for _ in range(5):
            _, reward, _, _, info = env.step(np.zeros(1, np.float32))
            rewards.append(reward)
            scores.append(info["score"])
        assert rewards == [0.5, 0.5, 10.5, 0.5, 0.5]
        assert scores == [0.5] * 5


def test_a_bad_bonus_is_an_error():
    with pytest.raises(ValueError, match="success bonus"):
        SuccessBonus(Scripted(), bonus=-1.0)
