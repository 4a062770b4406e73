"""Both task metrics: each episode's max score (``info["score"]``, else the reward) is
recorded, stored and aggregated; checkpoint selection orders by success or by max score."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import zarr

from robodistill.config import ConfigError, load_config
from robodistill.core.rollout import rollout
from robodistill.core.rundir import _diff
from robodistill.core.summaries import summarize_episode_list, summarize_episodes
from robodistill.data.store import TrajectoryStore
from robodistill.policies import Policy
from robodistill.training.selection import BestPolicyKeeper, is_better, selection_key

SCORES = [0.2, 0.9, 0.5, 0.1]
REWARDS = [0.1, 0.7, 0.3, -1.0]


class ScoredEnv(gym.Env):
    """Four steps; ``info["score"]`` peaks at 0.9 while the reward peaks at 0.7. The reset's
    score (5.0) must not count: the max is over the steps, as Diffusion Policy takes it."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    report_score = True

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), ({"score": 5.0} if self.report_score else {})

    def step(self, action):
        t, self.t = self.t, self.t + 1
        info = {"is_success": t == 3}
        if self.report_score:
            info["score"] = SCORES[t]
        return np.zeros(1, np.float32), REWARDS[t], t == 3, False, info


class UnscoredEnv(ScoredEnv):
    """The same episode without ``info["score"]``: the max score falls back to the reward."""

    report_score = False


class ZeroPolicy(Policy):
    kind = "test-zero"

    def act(self, obs):
        return np.zeros((len(obs), 1), np.float32)


@pytest.fixture(scope="module")
def env_ids():
    ids = {"scored": "robodistill-test/Scored-v0", "unscored": "robodistill-test/Unscored-v0"}
    gym.register(ids["scored"], entry_point=ScoredEnv, max_episode_steps=10)
    gym.register(ids["unscored"], entry_point=UnscoredEnv, max_episode_steps=10)
    yield ids
    for env_id in ids.values():
        del gym.registry[env_id]


def test_max_score_is_recorded_per_episode_from_info_score_else_reward(env_ids):
    scored = rollout(env_ids["scored"], ZeroPolicy(), [1, 2], num_envs=2)
    assert [e.max_score for e in scored] == [0.9, 0.9]
    assert {e.score_source for e in scored} == {"info.score"}
    (unscored,) = rollout(env_ids["unscored"], ZeroPolicy(), [3])
    assert unscored.max_score == pytest.approx(0.7) and unscored.score_source == "reward"


def test_max_scores_are_aggregated(env_ids):
    episodes = rollout(env_ids["scored"], ZeroPolicy(), [1, 2, 3])
    summary = summarize_episode_list(episodes)
    assert summary["max_score_mean"] == pytest.approx(0.9)
    assert summary["score_source"] == "info.score"
    assert summary["success_rate"] == 1.0
    # Episodes without a score (None / NaN: recorded before max scores existed) are skipped.
    mixed = summarize_episodes([0, 0, 0, 0], [1, 1, 1, 1], [True, False, None, True],
                               [0.5, None, np.nan, 1.0], ["reward", "", None, "info.score"])  # fmt: skip
    assert mixed["max_score_mean"] == pytest.approx(0.75)
    assert mixed["score_source"] == "info.score+reward"
    plain = summarize_episodes([1.0], [3], [None])
    assert plain["max_score_mean"] is None and plain["score_source"] is None


def test_pusht_reports_the_score_as_its_reward():
    from robodistill.envs.pusht import PushTEnv

    env = PushTEnv()
    _, info = env.reset(seed=0)
    assert info["score"] == pytest.approx(min(info["coverage"] / 0.95, 1.0))
    _, reward, *_, info = env.step(np.zeros(2, np.float32))
    assert info["score"] == reward == pytest.approx(min(info["coverage"] / 0.95, 1.0))
    env.close()


def test_max_score_is_stored_and_old_stores_still_load(env_ids, tmp_path):
    episodes = rollout(env_ids["scored"], ZeroPolicy(), [1, 2])
    path = tmp_path / "s.zarr"
    # Format 1 (no digests): deleting meta arrays from a format-2 store is damage, and the
    # digests say so; stores from before max scores were format 1.
    with TrajectoryStore.create(path, flush_every=100, integrity=False) as store:
        store.add_episodes(episodes[:1])
        store.flush()
        store.add_episodes(episodes[1:])  # stays in the journal
        assert store.episode(1).max_score == 0.9  # journaled
    with TrajectoryStore.open(path) as store:
        assert store.episode(0).max_score == 0.9 and store.episode(0).score_source == "info.score"
        np.testing.assert_array_equal(store.episode_meta()["max_score"], [0.9, 0.9])
    # A store from before max scores: no such meta arrays. It reads as "none recorded", and
    # appending back-fills them.
    root = zarr.open_group(path, mode="r+")
    for name in ("episode_max_score", "episode_score_source"):
        del root["meta"][name]
    with TrajectoryStore.open(path) as store:
        assert store.episode(1).max_score is None and store.episode(1).score_source == ""
        assert np.isnan(store.episode_meta()["max_score"]).all()
    unscored = rollout(env_ids["unscored"], ZeroPolicy(), [3])
    with TrajectoryStore.open(path, mode="a") as store:
        store.add_episodes(unscored)
    with TrajectoryStore.open(path) as store:
        meta = store.episode_meta()
        assert np.isnan(meta["max_score"][:2]).all() and meta["max_score"][2] == pytest.approx(0.7)
        assert meta["score_source"].tolist() == ["", "", "reward"]
        assert store.episode(2).max_score == pytest.approx(0.7)


# -- selection ------------------------------------------------------------------------------
SURE = {
    "success_rate": 0.6,
    "max_score_mean": 0.80,
    "return_mean": 1.0,
    "score_source": "info.score",
}
CLOSE = {
    "success_rate": 0.5,
    "max_score_mean": 0.95,
    "return_mean": 0.0,
    "score_source": "info.score",
}


def test_is_better_orders_by_the_selection():
    assert is_better(CLOSE, SURE, "max_score") and not is_better(SURE, CLOSE, "max_score")
    assert is_better(SURE, CLOSE, "success") and not is_better(CLOSE, SURE, "success")
    assert is_better(SURE, CLOSE)  # success is the default
    # Ties fall through: success -> max score -> return, and max score -> success -> return.
    higher_score = SURE | {"max_score_mean": 0.9}
    assert is_better(higher_score, SURE, "success")
    assert is_better(SURE | {"return_mean": 2.0}, SURE, "max_score")
    assert selection_key(CLOSE, "max_score") == (0.95, 0.5, 0.0)
    # Under success, a max of the *reward* (no info["score"]) does not come before the return.
    by_reward = {"score_source": "reward"}
    assert not is_better(higher_score | by_reward | {"return_mean": 0.5}, SURE | by_reward)
    assert is_better(higher_score | by_reward | {"return_mean": 0.5}, SURE | by_reward, "max_score")
    # A best.json from before max scores is compared on success and return alone.
    old = {"success_rate": 0.6, "return_mean": 1.0}
    assert not is_better(SURE | {"return_mean": 0.5}, old, "max_score")
    assert is_better(SURE | {"return_mean": 1.5}, old, "max_score")
    with pytest.raises(ValueError, match="selection must be one of"):
        selection_key(SURE, "best")


class FakePolicy:
    """What the keeper needs of a policy: ``save``."""

    def __init__(self, name: str):
        self.name = name

    def save(self, directory: Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "name.txt").write_text(self.name)


def _keep(cfg, out: Path, summaries: list[dict], **kwargs) -> BestPolicyKeeper:
    results = iter(summaries)
    keeper = BestPolicyKeeper(cfg, out, validate=lambda policy, seeds: dict(next(results)),
                              **kwargs)  # fmt: skip
    for step, _ in enumerate(summaries):
        keeper.evaluate(FakePolicy(f"step-{step}"), step)
    return keeper


def _cfg(tmp_path, *overrides):
    return load_config(None, [f"runs_dir={tmp_path / 'runs'}", "env.id=Pendulum-v1", *overrides])


def test_keeper_with_max_score_keeps_the_higher_score_even_at_lower_success(tmp_path):
    cfg = _cfg(tmp_path, "teach.selection=max_score")
    keeper = _keep(cfg, tmp_path / "a", [SURE, CLOSE])
    assert keeper.selection == "max_score"
    assert (tmp_path / "a/policy/name.txt").read_text() == "step-1"
    assert json.loads((tmp_path / "a/best.json").read_text())["max_score_mean"] == 0.95
    # The other order keeps the same checkpoint.
    assert _keep(cfg, tmp_path / "b", [CLOSE, SURE]).best["step"] == 0


def test_keeper_with_success_keeps_the_higher_success(tmp_path):
    cfg = _cfg(tmp_path)  # teach.selection defaults to success
    keeper = _keep(cfg, tmp_path / "a", [SURE, CLOSE])
    assert keeper.selection == "success" and keeper.best["step"] == 0
    assert (tmp_path / "a/policy/name.txt").read_text() == "step-0"
    # A student's own section overrides teach.selection.
    student = _keep(_cfg(tmp_path), tmp_path / "b", [SURE, CLOSE], selection="max_score")
    assert student.best["step"] == 1


def test_keeper_resumes_from_a_best_json_without_max_score(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "best.json").write_text(json.dumps({"success_rate": 0.6, "return_mean": 1.0,
                                               "step": 0}))  # fmt: skip
    keeper = _keep(_cfg(tmp_path, "teach.selection=max_score"), out,
                   [SURE | {"return_mean": 0.5}])  # fmt: skip
    assert keeper.best["step"] == 0  # same success, lower return: the old best stays


def test_generalist_selection_by_max_score():
    from robodistill.distill.generalist import selection_key as generalist_key

    specialists = {"per_embodiment": {"a": {"success_rate": 1.0}}}
    sure = SURE | {"per_embodiment": {"a": {"success_rate": 0.6}}}
    close = CLOSE | {"per_embodiment": {"a": {"success_rate": 0.5}}}
    assert generalist_key(close, specialists, "max_score") > generalist_key(
        sure, specialists, "max_score"
    )
    assert generalist_key(sure, specialists, "mean_success") > generalist_key(
        close, specialists, "mean_success"
    )


@pytest.mark.parametrize("key", ["teach.selection", "distill.consistency.selection",
                                 "distill.streaming.selection", "distill.dagger.selection"])  # fmt: skip
def test_selection_keys_validate(key):
    section, field = key.rsplit(".", 1)
    cfg = load_config(None, [f"{key}=max_score"])
    obj = cfg
    for part in section.split("."):
        obj = getattr(obj, part)
    assert getattr(obj, field) == "max_score"
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}=best_return"])
    assert key in str(e.value) and "'success'" in str(e.value) and "'max_score'" in str(e.value)


def test_a_new_selection_key_at_its_default_does_not_refuse_old_runs():
    old = {"teach": {"algo": "ppo", "eval_episodes": 10}}
    default = {"teach": {"algo": "rl100", "eval_episodes": 10, "selection": "success"}}
    same = {"teach": {"algo": "ppo", "eval_episodes": 10, "selection": "success"}}
    assert _diff(old, same, default) == []
    changed = {"teach": {"algo": "ppo", "eval_episodes": 10, "selection": "max_score"}}
    assert _diff(old, changed, default) == ["teach.selection: (not set) -> 'max_score'"]


def test_sim_robot_records_the_max_score(env_ids):
    from robodistill.deploy.robot import SimRobot

    robot = SimRobot(env_ids["scored"], episodes=1)
    while not robot.done:
        robot.observe()
        robot.apply(np.zeros(1, np.float32))
    (result,) = robot.results
    assert result["max_score"] == 0.9 and result["score_source"] == "info.score"
    robot.close()


def test_policy_table_shows_both_metrics():
    from robodistill.evaluate import add_ratios
    from robodistill.report import policy_table

    table = {"teacher": {"episodes": 4, "success_rate": 0.5, "max_score_mean": 0.8,
                         "score_source": "info.score", "return_mean": 1.0, "return_std": 0.0},
             "student": {"episodes": 4, "success_rate": 0.25, "max_score_mean": 0.6,
                         "score_source": "info.score", "return_mean": 1.0, "return_std": 0.0}}  # fmt: skip
    add_ratios(table, "teacher")
    assert table["student"]["max_score_ratio"] == pytest.approx(0.75)
    lines = policy_table(table)
    assert "mean max score" in lines[0]
    assert lines[3].startswith("| student | 4 | 25 % | 0.600 |")
    assert 'info["score"]' in lines[-1]
