"""Conformance of every ``robodistill/...`` id: gymnasium's checker, seeding, metadata.

Parametrized over the registry, so an id added later is covered without a new test.
"""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from robodistill.envs import ROBODISTILL_ENV_IDS, control_rate_hz, make_env

IDS = list(ROBODISTILL_ENV_IDS)


def test_the_three_tasks_are_registered():
    assert {"robodistill/PushT-v0", "robodistill/Nav-v0", "robodistill/AGVMaze-v0"} <= set(IDS)


@pytest.mark.parametrize("env_id", IDS)
def test_check_env_without_warnings(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_spaces_rate_and_success_flag(env_id):
    env = make_env(env_id)
    space = env.action_space
    assert isinstance(space, gym.spaces.Box) and space.dtype == np.float32
    np.testing.assert_array_equal(space.low, -1)
    np.testing.assert_array_equal(space.high, 1)
    assert control_rate_hz(env) and control_rate_hz(env) > 0
    space.seed(0)
    _, info = env.reset(seed=0)
    assert info.get("is_success", False) is False  # nothing is reached before acting
    for _ in range(10):
        *_, terminated, truncated, info = env.step(space.sample())
        # A real bool every step (not any truthy value), and a success ends the episode.
        assert type(info["is_success"]) is bool, type(info["is_success"])
        assert terminated or not info["is_success"]
        if terminated or truncated:
            break
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_trajectory(env_id):
    def run(seed):
        env = make_env(env_id)
        actions = np.random.default_rng(123).uniform(-1, 1, (25, *env.action_space.shape))
        obs, _ = env.reset(seed=seed)
        trajectory = [obs]
        for a in actions.astype(np.float32):
            obs, reward, terminated, truncated, _ = env.step(a)
            trajectory.append(np.append(obs, reward))
            if terminated or truncated:
                break
        env.close()
        return trajectory

    a, b, c = run(5), run(5), run(6)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
