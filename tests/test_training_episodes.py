"""The per-episode training record: rows, resume (rows past the checkpoint dropped, wall
time continued) and the report's plot of it."""

from __future__ import annotations

import json

import pytest

from robodistill.report import _rolling_mean, plot_training_episodes
from robodistill.training.episodes import EpisodeLog


def _rows(path):
    return [json.loads(x) for x in path.open()]


def test_rows_and_a_resume_that_drops_the_steps_run_again(tmp_path):
    path = tmp_path / "teach" / "episodes.jsonl"
    log = EpisodeLog(path)
    for i in range(4):
        log.add(
            ret=float(i), length=10, success=[None, True, False, 1.0][i], env_steps=10 * (i + 1)
        )
    log.close()
    rows = _rows(path)
    assert [r["episode"] for r in rows] == [0, 1, 2, 3]
    assert [r["success"] for r in rows] == [None, True, False, True]
    assert set(rows[0]) == {"episode", "return", "length", "success", "env_steps", "wall_s"}
    with path.open("a") as out:
        out.write('{"episode": 4, "ret')  # a line cut short by a crash
    # Resumed from the checkpoint at step 20: episodes 2 and 3 run again.
    log = EpisodeLog(path, resume_step=20)
    row = log.add(ret=5.0, length=10, success=None, env_steps=30)
    log.close()
    rows = _rows(path)
    assert [r["episode"] for r in rows] == [0, 1, 2] and rows[-1] == row
    assert row["wall_s"] >= rows[1]["wall_s"]
    # A fresh start (no resume step) empties the record.
    EpisodeLog(path).close()
    assert path.read_text() == ""


def test_the_report_plots_returns_and_success_rate(tmp_path):
    assert plot_training_episodes(tmp_path) is None
    log = EpisodeLog(tmp_path / "teach" / "episodes.jsonl")
    for i in range(50):
        log.add(ret=i * 0.1, length=5, success=i % 3 == 0, env_steps=5 * (i + 1))
    log.close()
    image = plot_training_episodes(tmp_path)
    assert image == tmp_path / "training_episodes.png" and image.stat().st_size > 1000
    assert _rolling_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_the_report_shows_the_plot(tmp_path):
    from robodistill.config import load_config
    from robodistill.report import write_report

    cfg = load_config(None, [f"runs_dir={tmp_path}"])
    log = EpisodeLog(tmp_path / "default" / "teach" / "episodes.jsonl")
    log.add(ret=1.0, length=5, success=None, env_steps=5)
    log.close()
    report = write_report(cfg, {}).read_text()
    assert "](training_episodes.png)" in report


def test_rllib_records_every_training_episode(tmp_path):
    """RLlib reports finished episodes per iteration from its env runners; episodes that
    span two iterations (10 steps per env per iteration, 3 per episode) count whole."""
    ray = pytest.importorskip("ray")
    from test_success_keys import ENV, STEPS  # registers the test env (tests/ is on sys.path)

    from robodistill.cli import main

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        args = ["teach", "--runs-dir", str(tmp_path), "--env", ENV, "--backend", "rllib",
                "--algo", "ppo", "--steps", "80", "--set", "teach.n_steps=10",
                "--set", "teach.batch_size=20", "--set", "teach.n_epochs=1",
                "--set", "teach.num_env_runners=0",  # the driver samples: it knows ENV
                "--set", "teach.eval_every=80", "--set", "teach.eval_episodes=2",
                "--set", "teach.checkpoint_every=80", "--set", "teach.net_arch=[8]",
                "--set", "env.num_envs=2"]  # fmt: skip
        assert main(args) == 0
    finally:
        ray.shutdown()
    metrics = json.loads((tmp_path / "default/teach/manifest.json").read_text())["metrics"]
    rows = _rows(tmp_path / "default/teach/episodes.jsonl")
    assert len(rows) == metrics["train_episodes"] > 0
    assert sum(r["success"] for r in rows) == metrics["train_successes"]
    assert {r["length"] for r in rows} == {STEPS} and {r["return"] for r in rows} == {3.0}
    steps = [r["env_steps"] for r in rows]
    assert steps == sorted(steps) and steps[-1] <= metrics["timesteps"]
