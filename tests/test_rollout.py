import gymnasium as gym
import numpy as np
import pytest

from robodistill.core.rollout import RolloutError, rollout
from robodistill.policies import Policy


class LinearPolicy(Policy):
    """Deterministic, so identical seeds must give identical episodes."""

    kind = "test-linear"

    def act(self, obs):
        return np.clip(obs[:, :1] * -0.5, -2, 2).astype(np.float32)


def _by_seed(episodes):
    return {e.seed: e for e in episodes}


def test_episodes_depend_on_seed_not_on_num_envs():
    seeds = [11, 12, 13, 14, 15]
    one = _by_seed(rollout("Pendulum-v1", LinearPolicy(), seeds, num_envs=1, max_episode_steps=9))
    three = _by_seed(rollout("Pendulum-v1", LinearPolicy(), seeds, num_envs=3, max_episode_steps=9))
    assert sorted(one) == seeds == sorted(three)
    for seed in seeds:
        for key in ("obs", "action", "reward", "truncated"):
            np.testing.assert_array_equal(one[seed].data[key], three[seed].data[key])
        np.testing.assert_array_equal(one[seed].final["obs"], three[seed].final["obs"])
        assert one[seed].data["truncated"][-1] and not one[seed].data["terminated"].any()
    # A different seed is a different episode.
    assert not np.array_equal(one[11].data["obs"][0], one[12].data["obs"][0])


def test_final_observation_follows_last_action():
    (ep,) = rollout("Pendulum-v1", LinearPolicy(), [3], max_episode_steps=4)
    env = gym.make("Pendulum-v1", max_episode_steps=4)
    obs, _ = env.reset(seed=3)
    for t in range(4):
        np.testing.assert_allclose(ep.data["obs"][t], obs, rtol=1e-6)
        obs, *_ = env.step(ep.data["action"][t])
    np.testing.assert_allclose(ep.final["obs"], obs, rtol=1e-6)


class NaNAfter(gym.Wrapper):
    def step(self, action):
        obs, *rest = self.env.step(action)
        return np.full_like(obs, np.nan), *rest


@pytest.mark.filterwarnings("ignore:.*not within the observation space")
def test_nan_observation_names_seed_and_step():
    gym.register("robodistill-test/NaNPendulum-v0",
                 entry_point=lambda **kw: NaNAfter(gym.make("Pendulum-v1", **kw).unwrapped),
                 max_episode_steps=10)  # fmt: skip
    try:
        with pytest.raises(RolloutError, match="observation contains NaN.*seed 7, step 1"):
            rollout("robodistill-test/NaNPendulum-v0", LinearPolicy(), [7])
    finally:
        del gym.registry["robodistill-test/NaNPendulum-v0"]


def test_wrong_action_shape_is_reported():
    class Wide(LinearPolicy):
        def act(self, obs):
            return np.zeros((len(obs), 3), np.float32)

    with pytest.raises(RolloutError, match=r"shape \(2, 3\).*expects \(2, 1\)"):
        rollout("Pendulum-v1", Wide(), [1, 2], num_envs=2, max_episode_steps=3)


def test_idle_rows_that_terminate_do_not_break_the_vector_env():
    # InvertedPendulum terminates within a few steps under random actions, so rows that ran
    # out of seeds end episodes while the last active row is still running.
    from robodistill.policies import RandomPolicy

    env = gym.make("InvertedPendulum-v5")
    policy = RandomPolicy.for_space(env.action_space, seed=0)
    episodes = rollout("InvertedPendulum-v5", policy, range(5), num_envs=4, max_episode_steps=200)
    assert sorted(e.seed for e in episodes) == list(range(5))


def test_embodiment_is_recorded_per_episode():
    from robodistill.envs import make_expert

    expert = make_expert("robodistill/Nav-v0")
    (ep,) = rollout("robodistill/Nav-v0", expert, [0], max_episode_steps=5,
                    env_kwargs={"embodiment": "heavy"})  # fmt: skip
    assert ep.embodiment == "heavy" and ep.env_id == "robodistill/Nav-v0"
