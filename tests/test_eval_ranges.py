"""``eval.randomization_ranges``: the eval stage in and out of the training ranges of
``env.randomization``, for every policy, in its metrics, tables and the report; the error
without ``env.randomization``. Tiny budgets: Nav-v0 diffdrive without obstacles, 30-step
episodes, a random privileged teacher and a fresh history student."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from robodistill import evaluate
from robodistill.cli import EXIT_USAGE, main
from robodistill.config import ConfigError, load_config
from robodistill.envs import make_env
from robodistill.evaluate import run_eval
from robodistill.policies.history_student import HistoryStudent
from robodistill.policies.privileged import PrivilegedTeacher
from robodistill.report import write_report
from robodistill.teach.rl.privileged import layout_indices

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RANDOMIZATION = ("env.randomization={mass: [0.8, 1.2], friction: [0.7, 1.3], "
                 "actuator_gain: null, speed: [0.8, 1.2], privileged_obs: true, "
                 "ood: {mass: [1.5, 1.8], friction: [0.3, 0.5], speed: [0.3, 0.5]}}")  # fmt: skip


def _overrides(tmp_path, *extra):
    return [
        f"runs_dir={tmp_path / 'runs'}", "name=ranges", "env.id=robodistill/Nav-v0",
        "env.kwargs={embodiment: diffdrive, n_obstacles: 0}", "env.max_episode_steps=30",
        "env.num_envs=2", RANDOMIZATION, "distill.students=[history]", "eval.episodes=3",
        "eval.video_episodes=0", "eval.latency_decisions=2", *extra,
    ]  # fmt: skip


def _policies(cfg, run):
    """A random oracle-shaped teacher in ``<run>/teach/policy`` and a fresh history student
    of it in ``<run>/distill/history/policy`` (what ``eval.policy: auto`` finds)."""
    env = make_env(cfg.env.id, **cfg.env.make_kwargs())
    robot, priv = layout_indices(env)
    config = {"net_arch": [16], "latent_dim": 4, "encoder_arch": [8], "robot_idx": robot.tolist(),
              "priv_idx": priv.tolist(), "actor_privileged": True}  # fmt: skip
    torch.manual_seed(0)
    net = PrivilegedTeacher._build(config, int(env.action_space.shape[0]))
    teacher = PrivilegedTeacher(net, env.observation_space, env.action_space, config)
    teacher.save(run / "teach/policy")
    full = env.observation_space
    space = gym.spaces.Box(full.low[robot], full.high[robot], dtype=np.float32)
    student = HistoryStudent.build("history", teacher, space, env.action_space, history_len=4,
                                   encoder_arch=[8], hidden=[8], seed=0)  # fmt: skip
    student.arch.update(robot_idx=robot.tolist(), env_obs_dim=int(full.shape[0]))
    student.save(run / "distill/history/policy")
    env.close()


def test_both_ranges_for_every_policy_in_metrics_tables_and_report(tmp_path, monkeypatch):
    cfg = load_config(None, _overrides(tmp_path, "eval.randomization_ranges=both"))
    run = tmp_path / "runs/ranges"
    _policies(cfg, run)
    drawn = []  # (policy spec, the ranges its episodes were drawn from)
    original = evaluate.run_episodes

    def spy(cfg_, policy, spec, seeds, **kwargs):
        if seeds:
            drawn.append((spec, kwargs["env_kwargs"]["randomization"]["ranges"]))
        return original(cfg_, policy, spec, seeds, **kwargs)

    monkeypatch.setattr(evaluate, "run_episodes", spy)
    metrics = run_eval(cfg)
    r = cfg.env.randomization
    assert metrics["randomization"] == {"ranges": "both", "train": r.ranges(),
                                        "ood": r.ood_ranges()}  # fmt: skip
    inside, outside = metrics["policies"], metrics["ood"]["policies"]
    assert list(inside) == list(outside) == ["teacher", "history"]
    for label in inside:
        assert inside[label]["randomization"] == "train" and inside[label]["episodes"] == 3
        assert outside[label]["randomization"] == "ood" and outside[label]["episodes"] == 3
        assert outside[label]["worst_tick"] == inside[label]["worst_tick"]  # measured once
        rows = (run / f"eval/ood/{label}/episodes.jsonl").read_text().splitlines()
        assert len(rows) == 3
        spec = inside[label]["policy"]
        assert sorted(json.dumps(x) for s, x in drawn if s == spec) == sorted(
            [json.dumps(r.ranges()), json.dumps(r.ood_ranges())]
        )
    assert json.loads((run / "eval/ood/table.json").read_text()).keys() == {"teacher", "history"}
    # Same seeds, other dynamics: the out-of-range episodes went differently.
    ins = [json.loads(x)["return"] for x in (run / "eval/teacher/episodes.jsonl").open()]
    outs = [json.loads(x)["return"] for x in (run / "eval/ood/teacher/episodes.jsonl").open()]
    assert ins != outs

    report = write_report(cfg, {"eval": {"status": "done", "metrics": metrics, "seconds": 1.0}})
    text = report.read_text()
    assert "## Teacher vs students" in text  # the in-range table as without ranges
    text = text.split("## In and out of the training ranges")[1].split("\n## ")[0]
    for label in ("teacher", "history"):
        (line,) = [x for x in text.splitlines() if x.startswith(f"| {label} | 3 |")]
        assert line.count("±") == 2  # a return in range and one out of range
    assert "friction [0.3, 0.5]" in text


def test_ood_only_and_the_error_without_randomization(tmp_path, capsys):
    for which in ("ood", "both"):
        with pytest.raises(ConfigError, match=rf"eval\.randomization_ranges={which}.*"
                                              r"env\.randomization is not set"):  # fmt: skip
            load_config(None, [f"eval.randomization_ranges={which}"])
    assert main(["eval", "--set", f"runs_dir={tmp_path}", "--set",
                 "eval.randomization_ranges=both"]) == EXIT_USAGE  # fmt: skip
    assert "env.randomization" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written

    run = tmp_path / "runs/ranges"
    base = _overrides(tmp_path, "eval.randomization_ranges=ood")
    _policies(load_config(None, base), run)
    cfg = load_config(None, [*base, f"eval.policy={run / 'teach/policy'}"])
    metrics = run_eval(cfg)
    assert set(metrics) == {"ood", "randomization"}  # nothing was evaluated in range
    assert metrics["ood"]["randomization"] == "ood" and metrics["ood"]["episodes"] == 3
    assert len((run / "eval/ood/episodes.jsonl").read_text().splitlines()) == 3
    assert not (run / "eval/episodes.jsonl").exists()
    report = write_report(cfg, {"eval": {"status": "done", "metrics": metrics}}).read_text()
    report = report.split("## In and out of the training ranges")[1].split("\n## ")[0]
    (line,) = [x for x in report.splitlines() if x.startswith("| policy | 3 |")]
    assert line.count("±") == 1 and "| — |" in line
