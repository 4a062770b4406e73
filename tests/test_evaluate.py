"""``eval.policy: auto``: the teacher and its students on the same seeds, with decision
latency, ratios to the teacher, the success-vs-latency plot and the report's table; the
``rti`` student end to end; decision latency itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robodistill.collect import run_collect
from robodistill.config import ConfigError, load_config
from robodistill.core.latency import decision_latency
from robodistill.distill.stage import run_distill
from robodistill.evaluate import add_ratios, eval_targets, run_eval
from robodistill.policies import load_policy
from robodistill.report import policy_table
from robodistill.teach.stage import run_teach


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(overrides, *extra):
    return load_config(None, [*overrides, *extra])


def test_auto_evaluates_teacher_and_students_side_by_side(tiny_overrides, tmp_path):
    base = [*tiny_overrides, "eval.policy=auto", "distill.students=[rti, consistency]",
            "distill.rti.steps=1", "distill.rti.eval_episodes=2", "eval.latency_decisions=5"]  # fmt: skip
    cfg = _cfg(base)
    assert eval_targets(cfg) == {"expert": "expert"}  # no teacher yet
    run_collect(cfg)
    run_teach(cfg)
    run = tmp_path / "runs/default"
    # Only the students this run distilled are evaluated (consistency was not).
    rti = run_distill(_cfg(base[:-4], "distill.students=[rti]", "distill.rti.steps=1",
                           "distill.rti.eval_episodes=2"))["rti"]  # fmt: skip
    assert rti["rti_steps"] == 1 and rti["episodes"] == 2
    student = load_policy(run / "distill/rti/policy")
    assert student.config.rti_steps == 1 and student.kind == "diffusion"
    assert eval_targets(cfg) == {"teacher": str(run / "teach/policy"),
                                 "rti": str(run / "distill/rti/policy")}  # fmt: skip

    metrics = run_eval(cfg)
    table = metrics["policies"]
    assert list(table) == ["teacher", "rti"] and metrics["reference"] == "teacher"
    for label in table:
        rows = (run / "eval" / label / "episodes.jsonl").read_text().splitlines()
        assert len(rows) == 3
        assert table[label]["latency"]["kind"] == "plan"
        assert table[label]["latency"]["median_ms"] > 0
    assert table["teacher"]["speedup"] == pytest.approx(1.0)
    saved = json.loads((run / "eval/table.json").read_text())
    assert saved["rti"]["policy"] == str(run / "distill/rti/policy")
    assert run_eval(cfg) == metrics  # done: skipped


def test_ratios_and_table_rows():
    table = {"teacher": {"success_rate": 0.8, "latency": {"median_ms": 40.0, "p99_ms": 50.0},
                         "episodes": 10, "return_mean": 1.0, "return_std": 0.5,
                         "length_mean": 50.0},
             "fast": {"success_rate": 0.6, "latency": {"median_ms": 2.0, "p99_ms": 3.0},
                      "episodes": 10, "return_mean": 0.5, "return_std": 0.1,
                      "length_mean": 60.0},
             "unknown": {"success_rate": None, "episodes": 10, "return_mean": None}}  # fmt: skip
    add_ratios(table, "teacher")
    assert table["fast"]["speedup"] == pytest.approx(20.0)
    assert table["fast"]["success_ratio"] == pytest.approx(0.75)
    assert table["unknown"]["speedup"] is None and table["unknown"]["success_ratio"] is None
    lines = policy_table(table)
    assert lines[2].startswith("| teacher | 10 | 80 % |")
    assert "| 20.0× | 0.75 |" in lines[3] and "2 / 3" in lines[3]


def test_decision_latency_times_plans_of_chunked_policies_and_acts_of_others():
    from robodistill.policies import RandomPolicy
    from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig

    config = DiffusionPolicyConfig(obs_dim=3, action_dim=1, pred_horizon=4, action_horizon=2,
                                   down_dims=(8, 16), n_groups=4, step_embed_dim=8,
                                   num_inference_steps=2)  # fmt: skip
    diffusion = DiffusionPolicy(config)
    result = decision_latency(diffusion, np.zeros(3, np.float32), decisions=4, warmup=1)
    assert result["kind"] == "plan" and result["decisions"] == 4
    assert 0 < result["median_ms"] <= result["p99_ms"]
    assert diffusion._state is None  # reset afterwards
    import gymnasium as gym

    rand = RandomPolicy.for_space(gym.spaces.Box(-1, 1, (2,)), seed=0)
    assert decision_latency(rand, np.zeros(3), decisions=3, warmup=0)["kind"] == "act"


def test_rti_student_needs_a_diffusion_teacher_and_a_short_enough_chain(tiny_overrides, tmp_path):
    cfg = _cfg(tiny_overrides, "distill.students=[rti]", "distill.rti.steps=5")
    run_collect(cfg)
    run_teach(cfg)
    with pytest.raises(ConfigError, match=r"distill.rti.steps=5 exceeds the teacher's 2 DDIM"):
        run_distill(cfg)
