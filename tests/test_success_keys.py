"""Success from ``info["is_success"]``, else ``info["success"]`` (gymnasium-robotics), else
``env.success_key``: set by ``make_env``'s ``SuccessInfo`` wrapper, so evaluation, SB3
training's success counts, RLlib's and the controller all see it."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from robodistill.cli import main
from robodistill.config import load_config
from robodistill.envs import make_env
from robodistill.teach.rl.rllib import create_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENV = "robodistill_test/ReportsSuccess-v0"
STEPS = 3


class ReportsSuccess(gym.Env):
    """Three steps of reward 1 per episode; every step's ``info[key]`` says whether this
    episode succeeds: seeded episodes on even seeds, unseeded ones on a coin flip."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, key: str = "success", extra: dict | None = None):
        self.key, self.extra, self.t, self.succeeds = key, dict(extra or {}), 0, False

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.succeeds = seed % 2 == 0 if seed is not None else bool(self.np_random.integers(2))
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= STEPS
        info = {self.key: float(self.succeeds and done), **self.extra}
        return np.zeros(1, np.float32), 1.0, done, False, info


if ENV not in gym.registry:
    gym.register(ENV, entry_point=ReportsSuccess)


def _last_info(env, seed):
    env.reset(seed=seed)
    for _ in range(STEPS):
        *_, info = env.step(np.zeros(1, np.float32))
    return info


def test_make_env_reads_is_success_then_success_then_the_configured_key():
    assert _last_info(make_env(ENV), 0)["is_success"] is True  # from info["success"]
    assert _last_info(make_env(ENV), 1)["is_success"] is False
    custom = make_env(ENV, key="goal_reached")
    assert "is_success" not in _last_info(custom, 0)  # unknown key: success unknown
    custom = make_env(ENV, key="goal_reached", success_key="goal_reached")
    assert _last_info(custom, 0)["is_success"] is True
    # is_success first, then success, then the configured key; None counts as not reported.
    env = make_env(ENV, extra={"is_success": False}, success_key="success")
    assert _last_info(env, 0)["is_success"] is False
    env = make_env(ENV, key="goal_reached", extra={"success": None}, success_key="goal_reached")
    assert _last_info(env, 0)["is_success"] is True
    env = make_env(ENV, key="goal_reached", extra={"success": False}, success_key="goal_reached")
    assert _last_info(env, 0)["is_success"] is False
    # Through RLlib's env creator, with the run's kwargs.
    cfg = load_config(None, [f"env.id={ENV}", "env.kwargs={key: goal_reached}",
                             "env.success_key=goal_reached"])  # fmt: skip
    env = create_env({"id": cfg.env.id, "kwargs": cfg.env.make_kwargs()})
    assert _last_info(env, 2)["is_success"] is True


def _eval(tmp_path, capsys, *extra):
    args = ["eval", "--runs-dir", str(tmp_path), "--env", ENV, "--policy", "random",
            "--episodes", "6", "--set", "env.num_envs=2", "--set", "eval.video_episodes=0",
            *extra]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_sees_info_success_and_a_configured_key(tmp_path, capsys):
    # Evaluation seeds 900000..900005: the even half succeed.
    assert _eval(tmp_path, capsys, "--name", "a")["success_rate"] == 0.5
    custom = ["--set", "env.kwargs={key: goal_reached}"]
    assert _eval(tmp_path, capsys, "--name", "b", *custom)["success_rate"] is None
    metrics = _eval(tmp_path, capsys, "--name", "c", *custom,
                    "--set", "env.success_key=goal_reached")  # fmt: skip
    assert metrics["success_rate"] == 0.5
    rows = [json.loads(x) for x in (tmp_path / "c/eval/episodes.jsonl").open()]
    assert {r["seed"]: r["success"] for r in rows} == {900_000 + i: i % 2 == 0 for i in range(6)}


@pytest.mark.parametrize("custom", [False, True])
def test_sb3_training_counts_successes_from_info_success(tmp_path, capsys, custom):
    args = ["teach", "--runs-dir", str(tmp_path), "--env", ENV, "--algo", "ppo",
            "--steps", "96", "--set", "teach.n_steps=24", "--set", "teach.batch_size=24",
            "--set", "teach.eval_every=96", "--set", "teach.eval_episodes=2",
            "--set", "teach.checkpoint_every=96", "--set", "teach.net_arch=[8]",
            "--set", "env.num_envs=2"]  # fmt: skip
    if custom:
        args += ["--set", "env.kwargs={key: goal_reached}", "--set", "env.success_key=goal_reached"]
    assert main(args) == 0
    metrics = json.loads(capsys.readouterr().out)
    # 96 steps of 3-step episodes: 32 episodes, about half of them successes.
    assert metrics["train_episodes"] == 32
    assert 0 < metrics["train_successes"] < 32
    assert metrics["first_success_step"] is not None
    assert metrics["final_success_rate"] == 0.5  # validation seeds: one even, one odd
    rows = [json.loads(x) for x in (tmp_path / "default/teach/metrics.jsonl").open()]
    assert sum(r.get("train_success", 0) for r in rows) == metrics["train_successes"]
    # The per-episode record agrees with the counts, episode by episode.
    episodes = [json.loads(x) for x in (tmp_path / "default/teach/episodes.jsonl").open()]
    assert [e["episode"] for e in episodes] == list(range(32))
    assert sum(e["success"] for e in episodes) == metrics["train_successes"]
    assert {e["length"] for e in episodes} == {STEPS} and {e["return"] for e in episodes} == {3.0}
    steps = [e["env_steps"] for e in episodes]
    assert steps == sorted(steps) and steps[-1] == 96 and steps[0] >= STEPS
    walls = [e["wall_s"] for e in episodes]
    assert walls == sorted(walls)
