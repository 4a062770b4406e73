"""The RL-100 teach stage (imitation sub-stage) end to end on a tiny store of Pendulum
episodes: artifacts, evaluation of the teacher, exact resume, and clear input errors."""

from __future__ import annotations

import json

import pytest
import torch

from robodistill.collect import run_collect
from robodistill.config import load_config
from robodistill.core.rundir import StageConfigMismatch
from robodistill.data.store import StoreError
from robodistill.evaluate import run_eval
from robodistill.policies import load_policy
from robodistill.policies.diffusion import DiffusionPolicy
from robodistill.teach.stage import run_teach
from robodistill.training import loop as training_loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(overrides, *extra):
    return load_config(None, [*overrides, *extra])


def test_teach_on_a_tiny_store_then_eval_the_teacher(tiny_overrides, tmp_path):
    cfg = _cfg(tiny_overrides)
    run_collect(cfg)
    metrics = run_teach(cfg)
    teach = tmp_path / "runs/default/teach"
    assert metrics["algo"] == "rl100" and metrics["stages"] == ["il"]
    il = metrics["il"]
    assert il["steps"] == 4 and [e["step"] for e in il["evals"]] == [2, 4]
    assert il["resumed_from_step"] == 0 and il["final_loss"] > 0
    assert metrics["best_step"] in (2, 4) and metrics["best_stage"] == "il"
    assert metrics["episodes"] == 2 and metrics["success_rate"] is None  # Pendulum: no success
    for path in ("policy", "il/policy", "il/policy_last", "il/checkpoint/policy"):
        assert isinstance(load_policy(teach / path), DiffusionPolicy), path
    assert json.loads((teach / "il/result.json").read_text())["steps"] == 4
    teacher = load_policy(teach / "policy")
    assert teacher.config.pred_horizon == 4 and teacher.config.obs_dim == 3
    assert teacher.config.action_low == [-2.0] and teacher.config.action_high == [2.0]
    rows = [json.loads(x) for x in (teach / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    lrs = [r["lr"] for r in rows if "loss" in r]  # warm-up 1 step, then cosine to 0
    assert lrs[0] == pytest.approx(1e-3) and 0 < lrs[1] < lrs[0]

    evaluated = run_eval(_cfg(tiny_overrides, f"eval.policy={teach / 'policy'}"))
    assert evaluated["episodes"] == 3 and evaluated["policy"] == str(teach / "policy")

    assert run_teach(cfg) == metrics  # done: skipped
    # Re-collected demonstrations are not silently reused by the finished teacher.
    run_collect(_cfg(tiny_overrides, "collect.episodes=6"), overwrite=True)
    with pytest.raises(StageConfigMismatch, match="inputs.demos"):
        run_teach(cfg)


def test_interrupted_imitation_resumes_exactly(tiny_overrides, tmp_path, monkeypatch):
    run_collect(_cfg(tiny_overrides))
    demos = f"teach.rl100.demos={tmp_path / 'runs/default/collect/demos.zarr'}"
    run_teach(_cfg(tiny_overrides, demos, "name=straight"))

    original = training_loop.save_checkpoint

    def save_then_crash(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt  # as if Ctrl-C arrived right after the first checkpoint

    monkeypatch.setattr(training_loop, "save_checkpoint", save_then_crash)
    resumed_cfg = _cfg(tiny_overrides, demos, "name=resumed")
    with pytest.raises(KeyboardInterrupt):
        run_teach(resumed_cfg)
    run_dir = tmp_path / "runs/resumed/teach"
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "interrupted"
    assert json.loads((run_dir / "il/checkpoint/state.json").read_text())["step"] == 2
    assert not (run_dir / "il/result.json").exists()

    monkeypatch.setattr(training_loop, "save_checkpoint", original)
    metrics = run_teach(resumed_cfg)
    assert metrics["il"]["resumed_from_step"] == 2 and metrics["il"]["steps"] == 4
    # Optimizer, LR schedule, EMA and RNG states were restored: the same weights as a run
    # that was never interrupted.
    straight = load_policy(tmp_path / "runs/straight/teach/il/policy_last")
    resumed = load_policy(run_dir / "il/policy_last")
    for name in ("net", "ema_net"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_missing_demos_is_a_clear_error_before_any_work(tiny_overrides, tmp_path):
    with pytest.raises(StoreError, match=r"does not exist\. Run `robodistill collect`"):
        run_teach(_cfg(tiny_overrides))
    assert not (tmp_path / "runs/default/teach").exists()


def test_demos_of_another_env_are_refused(tiny_overrides, tmp_path):
    run_collect(_cfg(tiny_overrides))
    cfg = _cfg(tiny_overrides, "env.id=MountainCarContinuous-v0")
    cfg.teach.rl100.demos = str(tmp_path / "runs/default/collect/demos.zarr")
    with pytest.raises(StoreError, match="holds demonstrations of 'Pendulum-v1' but env.id is"):
        run_teach(cfg)
