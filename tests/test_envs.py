import gymnasium as gym
import numpy as np
import pytest

from robodistill.envs import (
    EnvIdError,
    FlattenDictObservation,
    control_rate_hz,
    flat_layout,
    make_env,
    space_from_json,
    space_to_json,
)


class DictObsEnv(gym.Env):
    """A tiny env with a Dict observation, to exercise the shared flattening wrapper."""

    observation_space = gym.spaces.Dict(
        {"goal": gym.spaces.Box(-1, 1, (2,)), "ranges": gym.spaces.Box(0, 5, (4,))}
    )
    action_space = gym.spaces.Box(-1, 1, (2,), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


@pytest.mark.parametrize(
    "space",
    [
        gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        gym.spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, np.inf]), dtype=np.float64),
        gym.spaces.Discrete(5, start=1),
        gym.spaces.MultiDiscrete([3, 4]),
        gym.spaces.MultiBinary(3),
        DictObsEnv.observation_space,
    ],
)
def test_space_json_round_trip(space):
    import json

    doc = json.loads(json.dumps(space_to_json(space)))  # must survive real JSON
    assert space_from_json(doc) == space


def test_dict_observations_are_flattened_with_a_layout():
    gym.register("robodistill-test/DictObs-v0", entry_point=DictObsEnv, max_episode_steps=5)
    try:
        env = make_env("robodistill-test/DictObs-v0")
        assert isinstance(env, FlattenDictObservation)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (6,) and obs.dtype == np.float32
        assert env.observation_space.contains(obs)
        layout = env.get_wrapper_attr("observation_layout")
        assert [(p["key"], p["start"], p["stop"]) for p in layout] == [
            ("goal", 0, 2),
            ("ranges", 2, 6),
        ]
    finally:
        del gym.registry["robodistill-test/DictObs-v0"]


def test_flat_layout_of_a_box():
    assert flat_layout(gym.spaces.Box(-1, 1, (2, 3))) == [
        {"key": "", "start": 0, "stop": 6, "shape": [2, 3]}
    ]


def test_unknown_id_suggests_close_matches():
    with pytest.raises(EnvIdError, match="'Hoper-v5' is not registered.*did you mean Hopper-v5"):
        make_env("Hoper-v5")


def test_any_gymnasium_id_and_its_control_rate():
    env = make_env("InvertedPendulum-v5", max_episode_steps=7)
    assert control_rate_hz(env) == pytest.approx(1 / env.unwrapped.dt)
    env.reset(seed=0)
    steps = 0
    while True:
        steps += 1
        *_, term, trunc, _ = env.step(np.zeros(1, np.float32))
        if term or trunc:
            break
    assert steps <= 7
    env.close()
