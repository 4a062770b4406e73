"""What ``export`` and ``control`` work on when not told: ``export.policy: auto`` takes the
run's student of any kind (or says which to choose), and both stages run on the run's env
(``export --env`` / ``control --env`` choose another; a bare ``.onnx`` runs on the env in its
metadata)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from robodistill.cli import EXIT_USAGE, main
from robodistill.config import ConfigError, load_config
from robodistill.export import auto_student, export_policy_dir
from robodistill.policies import RandomPolicy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUN_ENV = ["env.id=Pendulum-v1", "env.max_episode_steps=12"]
"""The run's env: given to teach and distill only; export and control must find it."""


def _sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def _stage_free(tiny_overrides):
    """``tiny_overrides`` without the env: what a user types for export and control."""
    return [o for o in tiny_overrides if not o.startswith("env.")]


def test_export_and_control_take_the_dagger_student_and_the_runs_env(tiny_overrides, tmp_path,
                                                                      capsys):  # fmt: skip
    teach = ["teach.algo=ppo", "teach.total_timesteps=128", "teach.n_steps=64",
             "teach.eval_every=128", "teach.eval_episodes=1", "teach.checkpoint_every=128",
             "teach.net_arch=[8, 8]"]  # fmt: skip
    assert main(["teach", *_sets(tiny_overrides + teach)]) == 0
    dagger = ["distill.students=[dagger]", "distill.dagger.rounds=1",
              "distill.dagger.episodes_per_round=1", "distill.dagger.epochs=1",
              "distill.dagger.hidden=[8]", "distill.dagger.eval_episodes=1"]  # fmt: skip
    assert main(["distill", *_sets(tiny_overrides + dagger)]) == 0
    run = tmp_path / "runs/default"
    student = run / "distill/dagger/policy"
    assert student.is_dir()
    # Without --env, distill.students at its default [consistency, streaming]: today's bug
    # exported the teacher (and against Nav-v0 it failed on the observation size).
    plain = _stage_free(tiny_overrides)
    cfg = load_config(None, plain)
    assert cfg.distill.students == ["consistency", "streaming"] and cfg.env.id != "Pendulum-v1"
    assert export_policy_dir(cfg) == student
    capsys.readouterr()
    assert main(["export", *_sets(plain)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["policy_kind"] == json.loads((student / "config.json").read_text())["kind"]
    manifest = json.loads((run / "export/manifest.json").read_text())
    assert manifest["config"]["env"]["id"] == "Pendulum-v1"
    assert manifest["config"]["env"]["max_episode_steps"] == 12  # the whole env section
    assert manifest["config_sections"]["inputs"]["env_id"] == "Pendulum-v1"
    assert main(["export", *_sets(plain)]) == 0  # the same env again: skipped, not refused
    # control: the run's export on the run's env, without --env.
    assert main(["control", *_sets(plain)]) == 0
    control = json.loads((run / "control/manifest.json").read_text())
    assert control["status"] == "done" and control["config"]["env"]["id"] == "Pendulum-v1"
    assert control["config"]["env"]["max_episode_steps"] == 12
    # A bare .onnx elsewhere, for another run with no records: the env id in its metadata.
    bare = tmp_path / "elsewhere" / "model.onnx"
    bare.parent.mkdir()
    shutil.copy(run / "export/policy.onnx", bare)
    assert main(["control", str(bare), "--name", "bare", *_sets(plain)]) == 0
    control = json.loads((tmp_path / "runs/bare/control/manifest.json").read_text())
    assert control["config"]["env"]["id"] == "Pendulum-v1"
    assert control["config"]["env"]["max_episode_steps"] is None  # metadata: the id only
    # --env still chooses: the Nav env does not fit this policy, and the error says so.
    capsys.readouterr()
    args = ["export", "--env", "robodistill/Nav-v0", "--name", "other",
            "--policy", str(student), *_sets(plain)]  # fmt: skip
    assert main(args) == EXIT_USAGE
    assert "env.id: robodistill/Nav-v0 observations have shape" in capsys.readouterr().err
    # export --env exists and, given the run's env, exports the named policy there.
    args = ["export", "--env", "Pendulum-v1", "--name", "other", "--policy", str(student),
            *_sets(plain)]  # fmt: skip
    assert main(args) == 0


def _student(root, name, seed=0):
    path = root / "distill" / name / "policy"
    RandomPolicy(np.array([-1.0]), np.array([1.0]), seed=seed).save(path)
    return path


def test_auto_prefers_the_distill_stages_order_then_the_newest(tmp_path):
    run = tmp_path / "runs/default"
    a, b = _student(run, "consistency"), _student(run, "dagger")
    for path, t in ((a, 2_000_000_000), (b, 1_000_000_000)):
        for f in path.iterdir():
            os.utime(f, ns=(t, t))
    assert auto_student(run / "distill") == a  # no manifest: the newest
    # The distill stage's own order decides between students it made together.
    doc = {"stage": "distill", "config": {"distill": {"students": ["dagger", "consistency"]}}}
    (run / "distill/manifest.json").write_text(json.dumps(doc))
    assert auto_student(run / "distill") == b
    cfg = load_config(None, [f"runs_dir={tmp_path / 'runs'}"])
    assert export_policy_dir(cfg) == b


def test_auto_refuses_to_guess_between_equally_new_students(tmp_path, capsys):
    run = tmp_path / "runs/default"
    paths = [_student(run, "dagger"), _student(run, "rti", seed=1)]
    for path in paths:
        for f in path.iterdir():
            os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    cfg = load_config(None, [f"runs_dir={tmp_path / 'runs'}"])
    with pytest.raises(ConfigError) as err:
        export_policy_dir(cfg)
    text = str(err.value)
    assert all(str(p) in text for p in paths) and "export.policy: <path>" in text
    assert "--policy" in text and "(random)" in text
    assert main(["export", "--runs-dir", str(tmp_path / "runs")]) == EXIT_USAGE
    assert "cannot choose between 2 students" in capsys.readouterr().err
    assert not (run / "export").exists()  # refused before any work


def test_without_a_student_auto_is_the_teacher(tmp_path):
    run = tmp_path / "runs/default"
    teacher = run / "teach/policy"
    RandomPolicy(np.array([-1.0]), np.array([1.0]), seed=0).save(teacher)
    (run / "distill").mkdir()
    cfg = load_config(None, [f"runs_dir={tmp_path / 'runs'}"])
    assert export_policy_dir(cfg) == teacher
