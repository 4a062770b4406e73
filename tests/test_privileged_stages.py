"""Issue 24 in the stages: `robodistill teach` with teach.privileged, `robodistill distill`
with the history / rma / hib students, their export, control and eval, and the config
errors. Tiny budgets: Nav-v0 diffdrive without obstacles, 30-step episodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robodistill.cli import EXIT_USAGE, main
from robodistill.config import ConfigError, load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
RANDOMIZATION = ("env.randomization={mass: [0.8, 1.2], friction: [0.7, 1.3], "
                 "actuator_gain: null, speed: [0.7, 1.1], privileged_obs: true}")  # fmt: skip


def _sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def _run(tmp_path, name="priv", privileged="oracle", *extra):
    return [
        f"runs_dir={tmp_path / 'runs'}", f"name={name}", "env.id=robodistill/Nav-v0",
        "env.kwargs={embodiment: diffdrive, n_obstacles: 0}", "env.max_episode_steps=30",
        "env.num_envs=2", RANDOMIZATION, "teach.algo=ppo", f"teach.privileged={privileged}",
        "teach.n_steps=64", "teach.n_epochs=2", "teach.batch_size=64",
        "teach.total_timesteps=256", "teach.eval_every=128", "teach.checkpoint_every=128",
        "teach.eval_episodes=2", "teach.net_arch=[32, 32]",
        "distill.history.rounds=2", "distill.history.episodes_per_round=2",
        "distill.history.epochs=2", "distill.history.eval_episodes=2", "distill.history.k=4",
        "distill.history.encoder_arch=[32]", "distill.history.hidden=[32]",
        "eval.episodes=2", "eval.video_episodes=0", "eval.latency_decisions=2",
        "export.parity_real_steps=20", "export.latency_calls=10",
        "control.episodes=1", "control.hz=1000", *extra,
    ]  # fmt: skip


def test_privileged_teacher_to_history_students_to_onnx(tmp_path, capsys):
    run = _run(tmp_path)
    assert main(["teach", *_sets(run)]) == 0
    runs = tmp_path / "runs/priv"
    teacher = json.loads((runs / "teach/policy/config.json").read_text())
    assert teacher["kind"] == "privileged_teacher" and teacher["actor_privileged"]
    assert len(teacher["priv_idx"]) == 3  # mass, friction, speed

    assert main(["distill", *_sets([*run, "distill.students=[history, rma]"])]) == 0
    metrics = json.loads((runs / "distill/manifest.json").read_text())["metrics"]
    for name in ("history", "rma"):
        result = json.loads((runs / f"distill/{name}/result.json").read_text())
        assert result == metrics[name] and result["rounds"] == 2
        student = json.loads((runs / f"distill/{name}/policy/config.json").read_text())
        assert student["kind"] == "history_student" and student["variant"] == name
        # The network takes the robot's entries only; the privileged ones are never inside.
        assert student["obs_dim"] == student["env_obs_dim"] - 3
        assert not set(student["robot_idx"]) & set(teacher["priv_idx"])
    assert metrics["rma"]["final_latent_mse"] is not None

    # eval: the teacher and both students on the randomized env, side by side.
    assert main(["eval", *_sets([*run, "distill.students=[history, rma]"])]) == 0
    table = json.loads((runs / "eval/table.json").read_text())
    assert set(table) == {"teacher", "history", "rma"}

    # export: the history window is an ONNX state tensor, reset per episode.
    policy = runs / "distill/history/policy"
    assert main(["export", *_sets([*run, f"export.policy={policy}"])]) == 0
    export = json.loads((runs / "export/manifest.json").read_text())["metrics"]
    assert export["policy_kind"] == "history_student"
    assert max(export["parity"].values()) <= 1e-4
    from robodistill.deploy.metadata import read_metadata

    doc = read_metadata(str(runs / "export/policy.onnx"))
    (state,) = doc["state"]
    assert state["input"] == "history" and state["reset"] == "episode"
    assert doc["observation"]["shape"] == [student_dim(runs)]

    # control: the robot meets the randomized env without the privileged draw.
    assert main(["control", *_sets(run)]) == 0
    control = json.loads((runs / "control/manifest.json").read_text())["metrics"]
    assert control["episodes"] == 1


def student_dim(runs: Path) -> int:
    return json.loads((runs / "distill/history/policy/config.json").read_text())["obs_dim"]


def test_errors_name_the_keys(tmp_path, capsys):
    # teach.privileged without the privileged observation
    with pytest.raises(ConfigError, match=r"env\.randomization\.privileged_obs"):
        load_config(None, ["teach.algo=ppo", "teach.privileged=oracle"])
    with pytest.raises(ConfigError, match=r"env\.randomization\.privileged_obs is false"):
        load_config(None, ["teach.algo=ppo", "teach.privileged=oracle",
                           "env.randomization={privileged_obs: false}"])  # fmt: skip
    base = ["teach.algo=ppo", "teach.privileged=oracle", "env.randomization={privileged_obs: true}"]
    # RLlib privileged teachers are built (tests/test_privileged_rllib.py)
    assert load_config(None, [*base, "teach.backend=rllib"]).teach.backend == "rllib"
    with pytest.raises(ConfigError, match=r"teach\.algo=sac"):
        load_config(None, [*base, "teach.algo=sac"])
    with pytest.raises(ConfigError, match=r"teach\.exploration\.method=rnd"):
        load_config(None, [*base, "teach.exploration.method=rnd"])
    with pytest.raises(ConfigError, match=r"distill\.training\.workers=2.*'rma'"):
        load_config(None, ["distill.students=[rma]", "distill.training.workers=2"])

    # rma / hib need an oracle teacher: a blind one is a clear error naming distill.teacher,
    # before the distill stage directory exists.
    run = _run(tmp_path, "blind", "blind", "teach.total_timesteps=64", "teach.eval_every=64")
    assert main(["teach", *_sets(run)]) == 0
    capsys.readouterr()
    for student in ("rma", "hib"):
        assert main(["distill", *_sets([*run, f"distill.students=[{student}]"])]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert "distill.teacher" in err and "oracle" in err
    assert not (tmp_path / "runs/blind/distill").exists()
    # a teacher that is no privileged teacher at all
    sb3 = [f"runs_dir={tmp_path / 'runs'}", "name=plain", "env.id=Pendulum-v1",
           "env.max_episode_steps=20", "teach.algo=ppo", "teach.n_steps=32",
           "teach.batch_size=32", "teach.n_epochs=1", "teach.total_timesteps=32",
           "teach.eval_every=32", "teach.eval_episodes=1", "env.num_envs=1"]  # fmt: skip
    assert main(["teach", *_sets(sb3)]) == 0
    capsys.readouterr()
    assert main(["distill", *_sets([*sb3, "distill.students=[history]"])]) == EXIT_USAGE
    assert "privileged teacher" in capsys.readouterr().err
    # the students' env must carry the draw (the teacher reads it)
    blind_teacher = tmp_path / "runs/blind/teach/policy"
    no_draw = [*run, "env.randomization=null", "teach.privileged=none",
               f"distill.teacher={blind_teacher}", "distill.students=[history]"]  # fmt: skip
    assert main(["distill", *_sets(no_draw)]) == EXIT_USAGE
    assert "env.randomization" in capsys.readouterr().err


def test_privileged_teacher_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from robodistill.core.rundir import StageRun
    from robodistill.teach.rl import sb3 as teach_sb3
    from robodistill.training import sb3 as sb3_training

    cfg = load_config(None, _run(tmp_path, "resumed", "asymmetric", "teach.eval_every=1000"))
    original = sb3_training.save_checkpoint
    saved = {}

    def save_then_crash(directory, model, vec_normalize, explore_venv, extra):
        original(directory, model, vec_normalize, explore_venv, extra)
        saved.update({k: v.detach().clone() for k, v in model.policy.state_dict().items()})
        raise KeyboardInterrupt

    monkeypatch.setattr(sb3_training, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt), StageRun(cfg, "teach") as stage:
        teach_sb3.run_teach_sb3(cfg, stage)
    monkeypatch.setattr(sb3_training, "save_checkpoint", original)
    assert saved

    restored = {}

    def spy(directory, model, vec_normalize, explore_venv):
        state = sb3_training.restore_checkpoint(directory, model, vec_normalize, explore_venv)
        restored.update({k: v.detach().clone() for k, v in model.policy.state_dict().items()})
        return state

    monkeypatch.setattr(teach_sb3, "restore_checkpoint", spy)
    with StageRun(cfg, "teach") as stage:
        metrics = teach_sb3.run_teach_sb3(cfg, stage)
        stage.finish(metrics)
    assert metrics["resumed_from_timesteps"] == 128 and metrics["timesteps"] == 256
    assert saved.keys() == restored.keys()
    assert all(np.array_equal(saved[k].numpy(), restored[k].numpy()) for k in saved)
    assert any("features_extractor.encoder" in k for k in saved)  # the privileged policy
    from robodistill.policies import load_policy

    teacher = load_policy(tmp_path / "runs/resumed/teach/policy")
    assert teacher.kind == "privileged_teacher" and not teacher.net.actor_privileged


def test_privileged_nav_pipeline_config_loads():
    cfg = load_config(ROOT / "configs/pipelines/privileged_nav.yaml", [])
    assert cfg.teach.privileged == "oracle" and cfg.env.randomization.privileged_obs
    assert cfg.distill.students == ["history", "rma", "hib"]
    assert set(cfg.env.randomization.ranges()) == {"mass", "friction", "speed"}
