"""Nav-v0 / AGVMaze-v0 options for exploration: ``layout_seed`` (one fixed layout for every
episode) and ``privileged_position`` (world-frame pose appended to the observation, named
in the layout)."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from robodistill.core.rollout import env_spaces
from robodistill.envs import make_env
from robodistill.envs.agv_maze import AGVMazeEnv
from robodistill.envs.nav import NavEnv
from robodistill.envs.nav_expert import NavPlannerExpert

CLASSES = {"robodistill/Nav-v0": NavEnv, "robodistill/AGVMaze-v0": AGVMazeEnv}
ENV_IDS = list(CLASSES)
BASE_DIM = 27


def _layout_state(env) -> tuple:
    """Everything a reset fixes: the Layout's fields and where the geoms ended up."""
    lay = env.unwrapped.layout
    m = env.unwrapped.model
    return (
        (lay.width, lay.height),
        lay.boxes.copy(),
        lay.cylinders.copy(),
        lay.start.copy(),
        lay.goal.copy(),
        m.geom_pos.copy(),
        m.geom_size.copy(),
        m.geom_quat.copy(),
    )


def _same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a[1:], b[1:], strict=True)
    )


# --- layout_seed ---------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_layout_seed_keeps_one_layout_across_episode_seeds(env_id):
    env = gym.make(env_id, layout_seed=3)
    obs0, _ = env.reset(seed=0)
    first = _layout_state(env)
    obs1, _ = env.reset(seed=1)
    assert _same(first, _layout_state(env))
    np.testing.assert_array_equal(obs0, obs1)  # same start pose, goal and obstacles
    env.reset()  # no seed: still the same layout
    assert _same(first, _layout_state(env))
    # It is the layout that reset(seed=3) draws without the option ...
    plain = gym.make(env_id)
    plain.reset(seed=3)
    assert _same(first, _layout_state(plain))
    # ... and another layout_seed gives another layout.
    other = gym.make(env_id, layout_seed=4)
    other.reset(seed=0)
    assert not _same(first, _layout_state(other))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_without_layout_seed_each_seed_draws_a_new_layout(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    first = _layout_state(env)
    env.reset(seed=1)
    assert not _same(first, _layout_state(env))
    assert env.unwrapped.layout_seed is None


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_layout_seed_none_is_the_default_bit_for_bit(env_id):
    actions = np.random.default_rng(0).uniform(-1, 1, (20, 3)).astype(np.float32)
    runs = []
    for kwargs in ({}, {"layout_seed": None, "privileged_position": False}):
        env = gym.make(env_id, **kwargs)
        obs, _ = env.reset(seed=7)
        runs.append(np.stack([obs] + [env.step(a)[0] for a in actions]))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_fixed_layout_is_not_shared_with_the_episode():
    env = NavEnv(layout_seed=5)
    env.reset(seed=0)
    boxes = env.layout.boxes.copy()
    env.layout.boxes[:] = 0.0  # a caller scribbling on the episode's layout
    env.reset(seed=1)
    np.testing.assert_array_equal(env.layout.boxes, boxes)


# --- privileged_position -------------------------------------------------------------------
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_privileged_position_appends_the_true_pose_named_in_the_layout(env_id):
    actions = np.random.default_rng(1).uniform(-1, 1, (15, 3)).astype(np.float32)
    actions[:, 0] = np.abs(actions[:, 0])  # drive forward so the pose really changes
    priv = gym.make(env_id, privileged_position=True)
    plain = gym.make(env_id)
    space = priv.observation_space
    assert space.shape == (BASE_DIM + 4,) and space.dtype == np.float32
    layout = {p["key"]: p for p in priv.unwrapped.observation_layout}
    assert list(layout) == ["goal", "ranges", "velocity", "embodiment", "position", "heading"]
    assert (layout["position"]["start"], layout["position"]["stop"]) == (BASE_DIM, BASE_DIM + 2)
    assert (layout["heading"]["start"], layout["heading"]["stop"]) == (BASE_DIM + 2, BASE_DIM + 4)
    assert layout["position"]["privileged"] and layout["heading"]["privileged"]
    assert not any(layout[k].get("privileged") for k in ("goal", "ranges", "velocity"))
    assert plain.unwrapped.observation_layout == [
        p for p in priv.unwrapped.observation_layout if not p.get("privileged")
    ]
    w, h = priv.unwrapped._arena_size()
    np.testing.assert_array_equal(space.low[BASE_DIM:], [0, 0, -1, -1])
    np.testing.assert_array_equal(space.high[BASE_DIM:], np.float32([w, h, 1, 1]))

    obs_p, _ = priv.reset(seed=5)
    obs_q, _ = plain.reset(seed=5)
    traj_p, traj_q = [obs_p], [obs_q]
    for a in actions:
        traj_p.append(priv.step(a)[0])
        traj_q.append(plain.step(a)[0])
    traj_p, traj_q = np.stack(traj_p), np.stack(traj_q)
    np.testing.assert_array_equal(traj_p[:, :BASE_DIM], traj_q)  # the rest is untouched
    assert all(space.contains(o) for o in traj_p)

    env = priv.unwrapped
    body = env.model.body("robot").id
    x, y = env.data.xpos[body, :2]  # the truth, from the MuJoCo data
    xmat = env.data.xmat[body].reshape(3, 3)
    yaw = np.arctan2(xmat[1, 0], xmat[0, 0])
    p0, p1 = layout["position"]["start"], layout["position"]["stop"]
    h0, h1 = layout["heading"]["start"], layout["heading"]["stop"]
    np.testing.assert_allclose(traj_p[-1, p0:p1], [x, y], rtol=0, atol=1e-5)
    np.testing.assert_allclose(traj_p[-1, h0:h1], [np.cos(yaw), np.sin(yaw)], atol=1e-5)
    assert np.hypot(*(traj_p[-1, p0:p1] - traj_p[0, p0:p1])) > 0.05  # it moved


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_options_pass_through_make_env_and_env_spaces(env_id):
    kwargs = {"layout_seed": 2, "privileged_position": True}
    env = make_env(env_id, **kwargs)
    assert env.unwrapped.layout_seed == 2 and env.unwrapped.privileged_position
    keys = [p["key"] for p in env.get_wrapper_attr("observation_layout")]
    assert keys[-2:] == ["position", "heading"]
    env.close()
    space, _, doc = env_spaces(env_id, kwargs)
    assert space.shape == (BASE_DIM + 4,)
    assert [p["key"] for p in doc["observation_layout"]][-2:] == ["position", "heading"]
    assert doc["observation_space"]["shape"] == [BASE_DIM + 4]


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("kwargs", [
    {"layout_seed": 3},
    {"privileged_position": True},
    {"layout_seed": 0, "privileged_position": True},
])  # fmt: skip
def test_check_env_with_options(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_expert_acts_the_same_with_privileged_position(env_id):
    """The planner reads the layout and pose from the env and only the ``ranges`` slice
    (indices 3..18) of the observation; the appended fields do not move it."""
    runs = []
    for priv in (False, True):
        env = gym.make(env_id, privileged_position=priv, layout_seed=1)
        expert = NavPlannerExpert()
        expert.attach([env])
        obs, _ = env.reset(seed=0)
        actions = []
        for _ in range(30):
            a = expert.act(obs[None])[0]
            actions.append(a)
            obs = env.step(a)[0]
        runs.append((np.stack(actions), obs[:BASE_DIM]))
        if priv:
            np.testing.assert_array_equal(
                NavPlannerExpert._backoff(obs), NavPlannerExpert._backoff(obs[:BASE_DIM])
            )
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert np.abs(runs[0][0]).max() > 0.1  # the expert actually drove


# --- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [NavEnv, AGVMazeEnv])
@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, [3]])
def test_bad_layout_seed_is_a_clear_error(cls, bad):
    with pytest.raises(ValueError, match="layout_seed must be an int >= 0 or None"):
        cls(layout_seed=bad)


@pytest.mark.parametrize("cls", [NavEnv, AGVMazeEnv])
@pytest.mark.parametrize("bad", [1, 0, "yes", None])
def test_bad_privileged_position_is_a_clear_error(cls, bad):
    with pytest.raises(ValueError, match="privileged_position must be True or False"):
        cls(privileged_position=bad)


def test_numpy_ints_and_bools_are_accepted():
    env = NavEnv(layout_seed=np.int64(3), privileged_position=np.bool_(True))
    assert env.layout_seed == 3 and type(env.layout_seed) is int
    assert env.privileged_position is True
    assert env.observation_space.shape == (BASE_DIM + 4,)
