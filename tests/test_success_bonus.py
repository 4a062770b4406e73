"""The online RL stages' training rewards: SuccessBonus (teach.online.success_bonus) and
ProgressReward (teach.online.reward: progress)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from robodistill.envs.make import ProgressReward, SuccessBonus


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


class Rising(gym.Env):
    """Score 0.2 at reset, then 0.4, 0.4 (idle), 1.0 (success, terminates)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    scores = (0.4, 0.4, 1.0)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {"score": 0.2}

    def step(self, action):
        score = self.scores[self.t]
        self.t += 1
        done = score >= 1.0
        return np.zeros(1, np.float32), score, done, False, {"is_success": done, "score": score}


def run_episode(env) -> tuple[list[float], list[float]]:
    env.reset(seed=0)
    rewards, scores, done = [], [], False
    while not done:
        _, reward, done, _, info = env.step(np.zeros(1, np.float32))
        rewards.append(reward)
        scores.append(info["score"])
    return rewards, scores


def test_progress_reward_is_the_discounted_change_in_score_and_telescopes():
    gamma = 0.9
    rewards, scores = run_episode(ProgressReward(Rising(), gamma))
    np.testing.assert_allclose(rewards, [0.9 * 0.4 - 0.2, 0.9 * 0.4 - 0.4, 0.9 * 1.0 - 0.4])
    assert rewards[1] < 0  # an idle step below success costs (1 - gamma) * score
    assert scores == [0.4, 0.4, 1.0]  # the env's score is untouched
    discounted = sum(gamma**t * r for t, r in enumerate(rewards))
    np.testing.assert_allclose(discounted, gamma**3 * 1.0 - 0.2)


def test_training_reward_composes_progress_and_the_bonus():
    from types import SimpleNamespace

    from robodistill.teach.rl100.chunk_envs import training_reward

    online = SimpleNamespace(reward="progress", gamma=1.0, success_bonus=5.0)
    rewards, _ = run_episode(training_reward(Rising(), online))
    np.testing.assert_allclose(rewards, [0.2, 0.0, 0.6 + 5.0])
    env_reward = SimpleNamespace(reward="env", gamma=1.0, success_bonus=0.0)
    rewards, _ = run_episode(training_reward(Rising(), env_reward))
    assert rewards == [0.4, 0.4, 1.0]


def test_progress_reward_without_a_score_names_the_fix():
    env = ProgressReward(gym.make("Pendulum-v1"), 0.99)
    with pytest.raises(ValueError, match="teach.online.reward: env"):
        env.reset(seed=0)
