"""The command line, in-process, with budgets of a few episodes of a dozen steps."""

import json
import re

import numpy as np
import pytest

from robodistill.cli import EXIT_NOT_BUILT, EXIT_USAGE, main
from robodistill.data.store import TrajectoryStore


def _sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def test_collect_writes_store_and_manifest_then_skips(tiny_overrides, tmp_path, capsys):
    assert main(["collect", *_sets(tiny_overrides)]) == 0
    run = tmp_path / "runs/default/collect"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["metrics"]["episodes"] == 5
    with TrajectoryStore.open(run / "demos.zarr") as store:
        assert store.n_episodes == 5 and store.n_steps == 5 * 12
        assert sorted(store.episode_meta()["seed"].tolist()) == list(range(5))
        assert store.attrs["env_id"] == "Pendulum-v1"
        assert store.attrs["action_space"]["type"] == "Box"
        assert "obs" in store.attrs["normalizer"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 5
    capsys.readouterr()
    assert main(["collect", *_sets(tiny_overrides)]) == 0  # done: skipped, same metrics
    assert json.loads(capsys.readouterr().out)["episodes"] == 5


def test_interrupted_collect_resumes_with_the_missing_seeds(tiny_overrides, tmp_path, monkeypatch):
    # The collect stage runs its episodes through core.parallel.run_episodes, which calls
    # that module's rollout: patching it there reaches it.
    from robodistill.core import parallel as rollout_mod

    original = rollout_mod.rollout
    calls = {"n": 0}

    def interrupted(*args, on_episode, **kwargs):
        def stop_after_three(ep):
            on_episode(ep)
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt

        return original(*args, on_episode=stop_after_three, **kwargs)

    monkeypatch.setattr(rollout_mod, "rollout", interrupted)
    assert main(["collect", *_sets(tiny_overrides)]) == 130
    run = tmp_path / "runs/default/collect"
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    with TrajectoryStore.open(run / "demos.zarr") as store:
        assert store.n_episodes == 3
    monkeypatch.setattr(rollout_mod, "rollout", original)
    assert main(["collect", *_sets(tiny_overrides)]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["attempts"] == 2
    with TrajectoryStore.open(run / "demos.zarr") as store:
        seeds = store.episode_meta()["seed"].tolist()
    assert sorted(seeds) == list(range(5))


def test_eval_writes_per_episode_results(tiny_overrides, tmp_path, capsys):
    assert main(["eval", *_sets(tiny_overrides), "--episodes", "4"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["episodes"] == 4 and metrics["success_rate"] is None
    rows = [json.loads(x) for x in (tmp_path / "runs/default/eval/episodes.jsonl").open()]
    assert sorted(r["seed"] for r in rows) == [900_000 + i for i in range(4)]
    assert np.isclose(np.mean([r["return"] for r in rows]), metrics["return_mean"])


def test_eval_of_a_saved_policy(tiny_overrides, tmp_path, capsys):
    from robodistill.policies import RandomPolicy

    RandomPolicy(np.array([-0.1]), np.array([0.1]), seed=0).save(tmp_path / "tiny")
    assert main(["eval", *_sets(tiny_overrides), "--policy", str(tmp_path / "tiny")]) == 0
    assert json.loads(capsys.readouterr().out)["policy"] == str(tmp_path / "tiny")
    # Same config, retrained policy: the old results do not pass for the new policy.
    RandomPolicy(np.array([-0.2]), np.array([0.2]), seed=0).save(tmp_path / "tiny")
    assert main(["eval", *_sets(tiny_overrides), "--policy", str(tmp_path / "tiny")]) == EXIT_USAGE
    assert "inputs.policy_digest" in capsys.readouterr().err
    assert main(["eval", *_sets(tiny_overrides), "--policy", str(tmp_path / "tiny"),
                 "--overwrite"]) == 0  # fmt: skip
    assert main(["eval", *_sets(tiny_overrides), "--policy", str(tmp_path / "nope"),
                 "--name", "other"]) == EXIT_USAGE  # fmt: skip
    assert "does not exist" in capsys.readouterr().err


def test_pipeline_runs_built_stages_and_reports_the_rest(tiny_overrides, tmp_path, capsys):
    assert main(["pipeline", *_sets(tiny_overrides)]) == 0
    out = capsys.readouterr().out
    # The default teacher (RL-100, imitation stage) trains on the collected demonstrations.
    assert re.search(r"^teach\s+done", out, re.M)
    report = (tmp_path / "runs/default/report.md").read_text()
    assert "| collect | done |" in report and "| eval | done |" in report
    assert "| teach | done |" in report and (tmp_path / "runs/default/teach/policy").is_dir()
    # The diffusion teacher exports (denoiser step + DDIM coefficients) and drives the controller.
    assert "| export | done |" in report and "| control | done |" in report
    assert (tmp_path / "runs/default/export/policy.onnx").is_file()
    # The default students of that teacher, then the exported consistency student.
    assert "| distill | done |" in report
    distill = json.loads((tmp_path / "runs/default/distill/manifest.json").read_text())["metrics"]
    assert set(distill) == {"consistency", "streaming"}
    export = json.loads((tmp_path / "runs/default/export/manifest.json").read_text())["metrics"]
    assert export["policy_kind"] == "consistency"
    assert (
        json.loads((tmp_path / "runs/default/config.json").read_text())["env"]["id"]
        == "Pendulum-v1"
    )


def test_distill_without_a_teacher_says_what_to_do(tmp_path, capsys):
    assert main(["distill", "--runs-dir", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "distill.teacher: there is no teacher policy" in err and "robodistill teach" in err


@pytest.mark.parametrize("command", ["export", "control"])
def test_deploy_stages_without_inputs_say_what_is_missing(command, tmp_path, capsys):
    assert main([command, "--runs-dir", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "error:" in err and ("teach" in err or "export" in err)
    assert not (tmp_path / "default" / command / "manifest.json").exists()


def test_config_errors_exit_before_work(tmp_path, capsys):
    assert (
        main(["collect", "--runs-dir", str(tmp_path), "--set", "collect.epsiodes=2"]) == EXIT_USAGE
    )
    err = capsys.readouterr().err
    assert "collect.epsiodes: unknown key; did you mean 'episodes'" in err
    assert not any(tmp_path.iterdir())
    assert main(["collect", "--runs-dir", str(tmp_path), "--env", "Hoper-v5"]) == EXIT_USAGE
    assert "did you mean Hopper-v5" in capsys.readouterr().err


def test_config_and_envs_commands(capsys):
    assert main(["config", "--set", "collect.episodes=9"]) == 0
    assert "episodes: 9" in capsys.readouterr().out
    assert main(["config", "--keys"]) == 0
    assert "env.num_envs = 4" in capsys.readouterr().out
    assert main(["envs", "Pendulum-v1"]) == 0
    assert "Box(3,) float32" in capsys.readouterr().out
    assert main(["envs"]) == 0
    table = capsys.readouterr().out
    assert re.search(
        r"robodistill/Nav-v0 .*10Hz .*yes .*holonomic, diffdrive, ackermann, heavy", table
    )
    assert main(["envs", "--all", "--json"]) == 0
    assert "Hopper-v5" in json.loads(capsys.readouterr().out)


def test_eval_video_writes_playable_files(tmp_path):
    args = ["eval", "--runs-dir", str(tmp_path), "--env", "InvertedPendulum-v5",
            "--policy", "random", "--episodes", "3", "--video", "2", "--set", "env.max_episode_steps=6",
            "--set", "env.num_envs=2"]  # fmt: skip
    assert main(args) == 0
    videos = sorted((tmp_path / "default/eval/videos").iterdir())
    assert [v.name for v in videos] == ["seed-900000.mp4", "seed-900001.mp4"]
    import imageio.v3 as iio

    frames = iio.imread(videos[0], plugin="FFMPEG")
    assert frames.ndim == 4 and frames.shape[-1] == 3 and 2 <= len(frames) <= 7


def test_expert_for_an_env_without_one(tiny_overrides, capsys):
    assert main(["collect", *_sets(tiny_overrides), "--policy", "expert"]) == EXIT_USAGE
    assert "no expert for env id 'Pendulum-v1'" in capsys.readouterr().err


def test_default_pipeline_teacher_students_export_control(tmp_path, tiny_rl100, capsys):
    budget = ["collect.episodes=2", "eval.episodes=1", "eval.video_episodes=1", "env.num_envs=2",
              "env.max_episode_steps=30", *tiny_rl100, "teach.eval_episodes=1",
              "export.parity_random=8", "export.parity_real_steps=8", "export.latency_calls=10",
              "control.episodes=1", "control.max_ticks=20"]  # fmt: skip
    assert main(["pipeline", "--runs-dir", str(tmp_path), *_sets(budget)]) == 0
    run = tmp_path / "default"
    collect = json.loads((run / "collect/manifest.json").read_text())["metrics"]
    assert collect["episodes"] == 2
    teach = json.loads((run / "teach/manifest.json").read_text())["metrics"]
    assert teach["algo"] == "rl100" and teach["il"]["demo_episodes"] == 2
    with TrajectoryStore.open(run / "collect/demos.zarr") as store:
        assert store.attrs["env_id"] == "robodistill/Nav-v0"
        assert set(store.episode_meta()["source_policy"]) == {"expert"}
    # The evaluation table: teacher and both students on the same seed, with latencies.
    table = json.loads((run / "eval/table.json").read_text())
    assert list(table) == ["teacher", "consistency", "streaming"]
    assert all(row["episodes"] == 1 and row["latency"]["median_ms"] > 0 for row in table.values())
    # Like with like: the streaming student's every tick plans, its per-step cost is its
    # tick, and it is compared per step with the teacher's chunk spread over its steps.
    stream, teacher = table["streaming"], table["teacher"]
    assert stream["steps_per_plan"] == 1 and stream["network_calls"]["per_step"] == 1
    assert stream["per_step"]["median_ms"] == stream["worst_tick"]["median_ms"]
    assert teacher["steps_per_plan"] > 1
    assert stream["per_step_speedup"] == pytest.approx(
        teacher["per_step"]["median_ms"] / stream["per_step"]["median_ms"])  # fmt: skip
    report = (run / "report.md").read_text()
    assert "## Teacher vs students" in report and "| consistency | 1 |" in report
    assert "[seed-900000](eval/teacher/videos/seed-900000.mp4)" in report
    assert "| export | done |" in report and "| control | done |" in report
    export = json.loads((run / "export/manifest.json").read_text())["metrics"]
    assert export["policy_kind"] == "consistency"
    for image in ("returns.png", "learning_curves.png", "eval/success_latency.png"):
        assert (run / image).stat().st_size > 1000, image


def test_teach_ppo_then_eval_the_teacher(tiny_overrides, tmp_path, capsys):
    budget = ["teach.algo=ppo", "teach.total_timesteps=256", "teach.n_steps=64",
              "teach.eval_every=128", "teach.eval_episodes=2", "teach.checkpoint_every=128"]  # fmt: skip
    assert main(["teach", *_sets(tiny_overrides + budget)]) == 0
    teacher = tmp_path / "runs/default/teach/policy"
    assert (teacher / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", *_sets(tiny_overrides), "--policy", str(teacher)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["episodes"] == 3 and metrics["policy"] == str(teacher)


def test_rl100_teacher_needs_demos_then_trains_and_is_evaluated(tiny_overrides, tmp_path, capsys):
    assert main(["teach", "--algo", "rl100", *_sets(tiny_overrides)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "collect/demos.zarr does not exist" in err and "robodistill collect" in err
    assert not (tmp_path / "runs/default/teach").exists()  # refused before any work
    assert main(["collect", *_sets(tiny_overrides)]) == 0
    capsys.readouterr()
    assert main(["teach", "--algo", "rl100", *_sets(tiny_overrides)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["algo"] == "rl100" and metrics["il"]["steps"] == 4
    teacher = tmp_path / "runs/default/teach/policy"
    assert json.loads((teacher / "config.json").read_text())["kind"] == "diffusion"
    assert main(["eval", *_sets(tiny_overrides), "--policy", str(teacher)]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 3


def test_teach_shortcuts_map_to_config_keys(tmp_path, capsys):
    assert main(["teach", "--algo", "sac", "--backend", "rlib", "--runs-dir", str(tmp_path)]) == 2
    assert "teach.backend: Input should be 'sb3' or 'rllib'" in capsys.readouterr().err


def test_pipeline_exits_non_zero_when_a_stage_did_not_run(tmp_path, capsys):
    # Nothing upstream: export is skipped, and the exit code says so (as `robodistill export`'s).
    code = main(["pipeline", "--runs-dir", str(tmp_path), "--set", "pipeline.stages=[export]"])
    assert code == EXIT_NOT_BUILT
    captured = capsys.readouterr()
    assert re.search(r"^export\s+skipped", captured.out, re.M)
    assert "stages that did not run: export" in captured.err
