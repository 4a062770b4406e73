"""Parallel collection and evaluation in Ray actors: every seed lands exactly once, with the
same data as in-process, also when a worker dies mid-run. One local Ray for the module."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control.pendulum import PendulumEnv

ray = pytest.importorskip("ray")

from robodistill.cli import main  # noqa: E402
from robodistill.collect import run_collect  # noqa: E402
from robodistill.config import load_config  # noqa: E402
from robodistill.core.parallel import ParallelRollout, RolloutWorker, WorkerLostError  # noqa: E402
from robodistill.data.store import TrajectoryStore  # noqa: E402
from robodistill.policies.checkpoint import CheckpointError  # noqa: E402

# Actors import this module by name to build the crashing env (see ray_session's PYTHONPATH).
CRASH_ID = "robodistill-test/CrashingPendulum-v0"
CRASH_ENV = f"test_parallel:{CRASH_ID}"


class CrashingPendulum(PendulumEnv):
    """Pendulum whose *process* dies (``os._exit``) when it resets to ``crash_seed``: once,
    claimed through the ``marker`` file, or every time when ``marker`` is empty."""

    def __init__(self, crash_seed: int = -1, marker: str = ""):
        super().__init__()
        self.crash_seed, self.marker = crash_seed, marker

    def reset(self, *, seed=None, options=None):
        if seed == self.crash_seed:
            if not self.marker:
                os._exit(1)
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass  # crashed once already: behave
            else:
                os._exit(1)
        return super().reset(seed=seed, options=options)


if CRASH_ID not in gym.registry:  # also runs in the actors, which import this module
    gym.register(CRASH_ID, entry_point="test_parallel:CrashingPendulum")


@pytest.fixture(scope="module")
def ray_session():
    # Actor processes get this directory on their path, so they can import this module.
    here = str(Path(__file__).resolve().parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": here}})  # fmt: skip
    yield
    ray.shutdown()  # tests/test_teach_rllib.py starts its own Ray in the same process
    gym.registry.pop(CRASH_ID, None)


def _sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def _pusht(tmp_path, *extra):
    return [f"runs_dir={tmp_path / 'runs'}", "env.id=robodistill/PushT-v0", "env.num_envs=2",
            "env.max_episode_steps=8", "collect.policy=expert", "collect.episodes=6",
            "collect.flush_every=2", "eval.policy=expert", "eval.episodes=5",
            "eval.video_episodes=0", *extra]  # fmt: skip


def _episodes(path):
    with TrajectoryStore.open(path) as store:
        seeds = store.episode_meta()["seed"].tolist()
        return seeds, {ep.seed: ep for ep in (store.episode(i) for i in range(len(seeds)))}


def test_collect_with_two_workers_stores_the_same_episodes_once(ray_session, tmp_path, capsys):
    overrides = _sets(_pusht(tmp_path))
    assert main(["collect", "--name", "one", *overrides]) == 0
    assert main(["collect", "--name", "two", "--workers", "2", *overrides]) == 0
    runs = tmp_path / "runs"
    manifest = json.loads((runs / "two/collect/manifest.json").read_text())
    assert manifest["config"]["collect"]["workers"] == 2 and manifest["status"] == "done"
    assert manifest["metrics"]["episodes"] == 6
    assert len((runs / "two/collect/metrics.jsonl").read_text().splitlines()) == 6
    seeds_one, one = _episodes(runs / "one/collect/demos.zarr")
    seeds_two, two = _episodes(runs / "two/collect/demos.zarr")
    assert sorted(seeds_two) == sorted(seeds_one) == list(range(6))  # each seed exactly once
    for seed in seeds_one:  # the expert is deterministic per seed: same data wherever it ran
        for key in one[seed].data:
            np.testing.assert_array_equal(one[seed].data[key], two[seed].data[key])
        np.testing.assert_array_equal(one[seed].final["obs"], two[seed].final["obs"])
        assert one[seed].success == two[seed].success
    assert ray.is_initialized()  # the stage used the session's Ray and left it running


def test_worker_process_crash_mid_collect_loses_and_duplicates_nothing(ray_session, tmp_path):
    marker = tmp_path / "crashed"
    cfg = load_config(None, [f"runs_dir={tmp_path / 'runs'}", f"env.id={CRASH_ENV}",
                             "env.num_envs=2", "env.max_episode_steps=10",
                             "collect.policy=random", "collect.episodes=8",
                             "collect.workers=2", "collect.flush_every=3",
                             f"env.kwargs={{crash_seed: 5, marker: '{marker}'}}"])  # fmt: skip
    metrics = run_collect(cfg)
    assert marker.exists()  # seed 5's reset did take its worker's process down, once
    assert metrics["episodes"] == 8 and metrics["steps"] == 80
    seeds, stored = _episodes(Path(metrics["store"]))
    assert sorted(seeds) == list(range(8))  # none lost, none twice
    stage = Path(metrics["store"]).parent
    assert len((stage / "metrics.jsonl").read_text().splitlines()) == 8
    # The random policy is re-seeded per batch of env.num_envs seeds, so the batch that was
    # re-run after the crash repeats its actions: the data is what the same batches give
    # when run here, in-process, with nothing dying (the marker now exists).
    kwargs = {"num_envs": 2, "max_episode_steps": 10, "source_policy": "random",
              "env_kwargs": dict(cfg.env.kwargs)}  # fmt: skip
    for batch in ([0, 1], [2, 3], [4, 5], [6, 7]):
        for ep in RolloutWorker(CRASH_ENV, "random", cfg.seed, kwargs).run(batch):
            np.testing.assert_array_equal(ep.data["action"], stored[ep.seed].data["action"])
            np.testing.assert_array_equal(ep.data["obs"], stored[ep.seed].data["obs"])


def test_seeds_that_always_crash_their_worker_stop_the_run(ray_session):
    # One actor runs [0] with [1] queued behind it; seed 0 kills it every time. Only the
    # running batch is blamed, so the error names seed 0 after max_attempts deaths.
    runner = ParallelRollout(CRASH_ENV, "random", workers=1, max_episode_steps=5,
                             env_kwargs={"crash_seed": 0}, max_attempts=2)  # fmt: skip
    with runner, pytest.raises(WorkerLostError, match=r"seeds \[0\] lost their worker 2 times"):
        runner.run(range(3))
    assert runner.lost == 1 and runner.requeued == [0, 1]


def test_an_error_inside_a_worker_arrives_as_itself(ray_session, tmp_path):
    # The CLI maps CheckpointError, RolloutError, ... to one clear line, as with workers=1.
    runner = ParallelRollout("Pendulum-v1", str(tmp_path / "missing"), workers=1)
    with runner, pytest.raises(CheckpointError, match="does not exist"):
        runner.run([1, 2])


def test_eval_with_two_workers_writes_each_seed_once(ray_session, tmp_path, capsys):
    overrides = _sets(_pusht(tmp_path, "eval.video_episodes=1"))
    assert main(["eval", "--name", "one", *overrides]) == 0
    assert main(["eval", "--name", "two", "--workers", "2", *overrides]) == 0
    rows = {}
    for name in ("one", "two"):
        stage = tmp_path / "runs" / name / "eval"
        lines = (stage / "episodes.jsonl").read_text().splitlines()
        rows[name] = {r["seed"]: r for r in map(json.loads, lines)}
        assert len(lines) == len(rows[name]) == 5
        assert [v.name for v in (stage / "videos").iterdir()] == ["seed-900000.mp4"]
    assert rows["one"] == rows["two"]
