"""Domain randomization: ranges, seeding, measured dynamics, privileged observation, errors."""

from __future__ import annotations

import numpy as np
import pytest

from robodistill.envs.make import make_env
from robodistill.envs.randomization import (
    DomainRandomization,
    RandomizationError,
    check_ranges,
    robot_indices,
)

NAV = {"embodiment": "diffdrive", "n_obstacles": 0}


def hopper(ranges, **kw):
    return DomainRandomization(make_env("Hopper-v5"), ranges, **kw)


def nav(ranges, **kw):
    return DomainRandomization(make_env("robodistill/Nav-v0", **NAV), ranges, **kw)


def test_samples_within_ranges_and_integer_delay():
    ranges = {"mass": [0.5, 1.5], "friction": [0.7, 1.3], "speed": [0.6, 1.2],
              "action_delay": [0, 2], "obs_noise": [0.0, 0.01]}  # fmt: skip
    env = nav(ranges)
    delays = set()
    for seed in range(30):
        _, info = env.reset(seed=seed)
        for key, (low, high) in ranges.items():
            assert low <= env.params[key] <= high, key
        assert np.all(np.abs(info["privileged"]) <= 1.0)
        delays.add(env.params["action_delay"])
    assert delays <= {0.0, 1.0, 2.0} and len(delays) > 1


def test_same_seed_same_parameters_and_nominal_restored():
    env = hopper({"mass": [0.5, 2.0], "friction": [0.5, 1.5], "actuator_gain": [0.5, 1.5]})
    nominal = env.model.body_mass.copy(), env.model.actuator_gear.copy()
    env.reset(seed=7)
    first, mass = dict(env.params), env.model.body_mass.copy()
    env.reset(seed=8)
    assert env.params != first
    for _ in range(3):  # draws never compound: the same seed writes the same model
        env.reset(seed=7)
        assert env.params == first
        np.testing.assert_allclose(env.model.body_mass, mass)
    env.apply({})
    np.testing.assert_allclose(env.model.body_mass, nominal[0])


def _hopper_speed(ranges) -> float:
    """Joint speed after 5 steps of a constant full action from the same start."""
    env = hopper(ranges)
    env.reset(seed=0)
    for _ in range(5):
        obs, *_ = env.step(np.ones(3, dtype=np.float32))
    return float(np.abs(obs[8:]).sum())


def test_mass_and_gain_change_measured_dynamics():
    nominal = _hopper_speed({"mass": [1.0, 1.0]})
    # Joint armature (rotor inertia, not scaled) damps the mass effect: ~10 % here.
    assert (
        _hopper_speed({"mass": [2.0, 2.0]}) < 0.95 * nominal < _hopper_speed({"mass": [0.5, 0.5]})
    )
    assert _hopper_speed({"actuator_gain": [1.5, 1.5]}) > 1.1 * nominal


def _nav_travel(ranges) -> float:
    env = nav(ranges)
    env.reset(seed=1)  # 4 m of free space ahead
    start = env.unwrapped.robot_pose()[:2]
    for _ in range(10):
        env.step(np.array([1.0, 0.0, 0.0], dtype=np.float32))
    return float(np.hypot(*(env.unwrapped.robot_pose()[:2] - start)))


def test_nav_speed_limit_friction_and_delay_change_motion():
    nominal = _nav_travel({"speed": [1.0, 1.0]})
    assert _nav_travel({"speed": [0.5, 0.5]}) < 0.75 * nominal
    assert _nav_travel({"action_delay": [2, 2]}) < nominal
    # On ice the wheels slip: the diffdrive covers less ground.
    assert _nav_travel({"friction": [0.02, 0.02]}) < 0.75 * nominal


def test_privileged_observation_layout_and_ood_values():
    train = {"mass": [0.8, 1.2], "speed": [0.8, 1.2]}
    env = nav({"mass": [1.3, 1.5], "speed": [0.5, 0.7]}, reference=train, privileged_obs=True)
    obs, info = env.reset(seed=1)
    layout = env.observation_layout
    assert layout[-1]["key"] == "privileged" and layout[-1]["privileged"]
    robot = robot_indices(layout, obs.shape[0])
    assert len(robot) == obs.shape[0] - 2 and env.observation_space.contains(obs)
    np.testing.assert_array_equal(obs[-2:], info["privileged"])
    assert info["privileged"][0] > 1.0 and info["privileged"][1] < -1.0  # out of the ranges
    # The drawn speed limit never reaches the robot's entries: the descriptor stays nominal.
    plain = make_env("robodistill/Nav-v0", **NAV).reset(seed=1)[0]
    desc = next(p for p in layout if p["key"] == "embodiment")
    np.testing.assert_array_equal(obs[desc["start"] : desc["stop"]],
                                  plain[desc["start"] : desc["stop"]])  # fmt: skip


def test_make_env_and_config_wrap():
    from robodistill.config import RunConfig

    cfg = RunConfig.model_validate({"env": {"id": "Hopper-v5", "randomization": {}}})
    env = make_env("Hopper-v5", **cfg.env.make_kwargs())
    _, info = env.reset(seed=0)
    assert set(env.get_wrapper_attr("params")) == {"mass", "friction", "actuator_gain"}
    assert info["privileged"].shape == (3,)
    ood = cfg.env.randomization.make_kwargs(ood=True)
    assert ood["ranges"]["mass"] == [1.2, 1.6] and ood["reference"]["mass"] == [0.8, 1.2]


@pytest.mark.parametrize(
    "ranges, words",
    [
        ({"mass": [1.2, 0.8]}, ["mass", "min 1.2 > max 0.8"]),
        ({"mass": [-0.5, 1.0]}, ["mass", "> 0"]),
        ({"friction": [0.5]}, ["friction", "[low, high]"]),
        ({"action_delay": [0, 1.5]}, ["action_delay", "integers"]),
        ({"obs_noise": [-1, 0]}, ["obs_noise", ">= 0"]),
        ({"gravity": [1, 2]}, ["gravity", "unknown"]),
    ],
)
def test_bad_ranges_name_the_key(ranges, words):
    with pytest.raises(RandomizationError) as e:
        check_ranges(ranges)
    assert all(w in str(e.value) for w in words)


def test_bad_ranges_in_config_and_wrong_env():
    from robodistill.config import RunConfig

    with pytest.raises(ValueError, match=r"env\.randomization\.mass: min 2"):
        RunConfig.model_validate({"env": {"randomization": {"mass": [2, 1]}}})
    with pytest.raises(ValueError, match=r"env\.randomization\.ood\.friction"):
        RunConfig.model_validate({"env": {"randomization": {"ood": {"friction": [0, 1]}}}})
    with pytest.raises(RandomizationError, match="speed"):
        hopper({"speed": [0.5, 1.0]})
