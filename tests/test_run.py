import json

import pytest

from robodistill.config import load_config
from robodistill.core.rundir import StageConfigMismatch, StageRun


def _cfg(tmp_path, *extra):
    return load_config(None, [f"runs_dir={tmp_path}", *extra])


def test_manifest_records_what_reproduces_the_stage(tmp_path):
    cfg = _cfg(tmp_path, "seed=3")
    with StageRun(cfg, "collect") as stage:
        stage.log_metrics(1, {"return": 1.5, "success": None})
        stage.log_metrics(2, {"return": 2.5, "success": True})
        stage.finish({"return_mean": 2.0})
    manifest = json.loads((tmp_path / "default/collect/manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["seed"] == 3
    assert manifest["config"]["seed"] == 3 and manifest["metrics"] == {"return_mean": 2.0}
    assert manifest["versions"]["numpy"] and manifest["started"] and manifest["ended"]
    assert "git" in manifest
    rows = [json.loads(line) for line in (tmp_path / "default/collect/metrics.jsonl").open()]
    assert [r["return"] for r in rows] == [1.5, 2.5]
    assert list((tmp_path / "default/collect/tb").iterdir())


def test_done_stage_is_skipped_and_failed_stage_resumed(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(RuntimeError), StageRun(cfg, "eval") as stage:
        (stage.dir / "episodes.json").write_text("[]")  # some work to resume from
        raise RuntimeError("boom")
    manifest = json.loads((tmp_path / "default/eval/manifest.json").read_text())
    assert manifest["status"] == "failed" and "boom" in manifest["error"]
    with StageRun(cfg, "eval") as stage:
        assert stage.resumed and not stage.skipped
        assert stage.manifest["attempts"] == 2
        stage.finish({"x": 1})
    with StageRun(cfg, "eval") as stage:
        assert stage.skipped and stage.manifest["metrics"] == {"x": 1}


def test_interrupt_is_recorded(tmp_path):
    with pytest.raises(KeyboardInterrupt), StageRun(_cfg(tmp_path), "collect"):
        raise KeyboardInterrupt
    manifest = json.loads((tmp_path / "default/collect/manifest.json").read_text())
    assert manifest["status"] == "interrupted"


def test_other_config_is_refused_unless_overwrite(tmp_path):
    with StageRun(_cfg(tmp_path, "collect.episodes=5"), "collect") as stage:
        (stage.dir / "artifact").write_text("keep me")
        stage.finish({})
    # eval settings do not concern the collect stage
    with StageRun(_cfg(tmp_path, "collect.episodes=5", "eval.episodes=9"), "collect") as stage:
        assert stage.skipped
    # nor does the worker count: it changes the speed, not the episodes
    with StageRun(_cfg(tmp_path, "collect.episodes=5", "collect.workers=3"), "collect") as stage:
        assert stage.skipped
    with pytest.raises(StageConfigMismatch, match=r"collect.episodes: 5 -> 6.*--overwrite"):
        StageRun(_cfg(tmp_path, "collect.episodes=6"), "collect").__enter__()
    with StageRun(_cfg(tmp_path, "collect.episodes=6"), "collect", overwrite=True) as stage:
        assert not stage.skipped
        stage.finish({})
    (aside,) = tmp_path.glob("default/collect.old-*")
    assert (aside / "artifact").read_text() == "keep me"


def test_rl_teachers_ignore_the_diffusion_teachers_settings(tmp_path):
    ppo = ("teach.algo=ppo",)
    with StageRun(_cfg(tmp_path, *ppo), "teach") as stage:
        stage.finish({})
    with StageRun(_cfg(tmp_path, *ppo, "teach.rl100.il_steps=7"), "teach") as stage:
        assert stage.skipped
    with pytest.raises(StageConfigMismatch, match="teach.learning_rate"):
        StageRun(_cfg(tmp_path, *ppo, "teach.learning_rate=0.1"), "teach").__enter__()
    # The diffusion teacher does read them.
    with StageRun(_cfg(tmp_path, "name=rl100"), "teach") as stage:
        stage.finish({})
    with pytest.raises(StageConfigMismatch, match="teach.rl100.il_steps"):
        StageRun(_cfg(tmp_path, "name=rl100", "teach.rl100.il_steps=7"), "teach").__enter__()


def test_compass_worker_count_is_speed_only_and_its_other_settings_are_not(tmp_path):
    compass = ("name=compass", "teach.algo=compass")
    with StageRun(_cfg(tmp_path, *compass), "teach") as stage:
        stage.finish({})
    # A finished stage from before `workers` existed: its fingerprint has no such key.
    manifest = json.loads((tmp_path / "compass/teach/manifest.json").read_text())
    assert "workers" not in manifest["config_sections"]["teach"]["compass"]
    with StageRun(_cfg(tmp_path, *compass, "teach.compass.workers=4"), "teach") as stage:
        assert stage.skipped
    with pytest.raises(StageConfigMismatch, match="teach.compass.latent_dim"):
        StageRun(_cfg(tmp_path, *compass, "teach.compass.latent_dim=7"), "teach").__enter__()


def test_replace_dir_and_a_crash_between_its_renames(tmp_path):
    from robodistill.core.rundir import committed_dir, replace_dir

    ckpt = tmp_path / "checkpoint"
    assert committed_dir(ckpt, "state.json") is None
    for step in (1, 2):
        tmp = tmp_path / f".checkpoint.tmp-{step}"
        tmp.mkdir()
        (tmp / "state.json").write_text(str(step))
        replace_dir(tmp, ckpt)
        assert (ckpt / "state.json").read_text() == str(step) and not tmp.exists()
    assert committed_dir(ckpt, "state.json") == ckpt
    # A crash after the old checkpoint moved aside, before the new one moved in: the aside
    # copy is what a resume reads, so no finished checkpoint is lost.
    ckpt.rename(tmp_path / ".checkpoint.old")
    assert committed_dir(ckpt, "state.json") == tmp_path / ".checkpoint.old"
    # A half-written directory (no marker) is never taken for a checkpoint.
    ckpt.mkdir()
    assert committed_dir(ckpt, "state.json") == tmp_path / ".checkpoint.old"


def test_a_setting_added_after_a_run_refuses_it_only_when_not_at_its_default(tmp_path):
    ppo = ("teach.algo=ppo",)
    with StageRun(_cfg(tmp_path, *ppo), "teach") as stage:
        stage.finish({})
    # Rewrite the finished run as an older release wrote it: without the newer settings.
    path = tmp_path / "default/teach/manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["config_sections"]["teach"]["entropy_coef"]
    path.write_text(json.dumps(manifest))
    with StageRun(_cfg(tmp_path, *ppo), "teach") as stage:
        assert stage.skipped
    with pytest.raises(StageConfigMismatch, match=r"teach.entropy_coef: \(not set\) -> 0.01"):
        StageRun(_cfg(tmp_path, *ppo, "teach.entropy_coef=0.01"), "teach").__enter__()


def test_the_bonus_settings_of_a_run_without_a_bonus_are_not_part_of_its_fingerprint(tmp_path):
    ppo = ("teach.algo=ppo", "teach.exploration.method=none")
    with StageRun(_cfg(tmp_path, *ppo, "teach.exploration.hidden=32"), "teach") as stage:
        stage.finish({})
    with StageRun(_cfg(tmp_path, *ppo, "teach.exploration.hidden=64"), "teach") as stage:
        assert stage.skipped
    with pytest.raises(StageConfigMismatch, match="teach.exploration.method: 'none' -> 'rnd'"):
        StageRun(
            _cfg(tmp_path, "teach.algo=ppo", "teach.exploration.method=rnd"), "teach"
        ).__enter__()


def test_a_stage_that_fails_before_any_work_leaves_nothing_that_refuses_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError), StageRun(_cfg(tmp_path), "eval"):
        raise FileNotFoundError("no policy at runs/x/teach/policy")
    assert not (tmp_path / "default/eval").exists()
    with StageRun(_cfg(tmp_path, "eval.episodes=3"), "eval") as stage:  # the corrected command
        assert not stage.resumed
        stage.finish({})


def test_sigterm_ends_a_stage_like_ctrl_c(tmp_path):
    import os
    import signal

    before = signal.getsignal(signal.SIGTERM)  # Ray, once imported, installs its own
    with pytest.raises(KeyboardInterrupt), StageRun(_cfg(tmp_path), "collect") as stage:
        stage.log_metrics(1, {"r": 1.0})
        os.kill(os.getpid(), signal.SIGTERM)
    manifest = json.loads((tmp_path / "default/collect/manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is before  # restored after the stage


def test_a_resume_drops_the_rows_the_interrupted_attempt_logged_past_its_checkpoint(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(KeyboardInterrupt), StageRun(cfg, "teach") as stage:
        for step in (1, 2, 3, 4):  # checkpoint at 2; rows 3 and 4 are logged again below
            stage.log_metrics(step, {"stage": "il", "loss": float(step)})
        stage.log_metrics(9, {"stage": "other", "x": 0.0})
        raise KeyboardInterrupt
    with StageRun(cfg, "teach") as stage:
        for step in (3, 4, 5):
            stage.log_metrics(step, {"stage": "il", "loss": 10.0 + step})
        stage.finish({})
    rows = [json.loads(line) for line in (tmp_path / "default/teach/metrics.jsonl").open()]
    il = [(r["step"], r["loss"]) for r in rows if r.get("stage") == "il"]
    assert il == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0)]
    assert [r["step"] for r in rows if r.get("stage") == "other"] == [9]  # another series
