"""``eval.policy: auto``: the teacher and its students on the same seeds, with control-tick
latency (worst tick and compute per control step, measured network calls), like-with-like
ratios to the teacher, the success-vs-latency plot and the report's table; the ``rti``
student end to end; decision latency itself."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from robodistill.collect import run_collect
from robodistill.config import ConfigError, load_config
from robodistill.core.latency import decision_latency
from robodistill.distill.stage import run_distill
from robodistill.evaluate import (
    add_ratios,
    eval_targets,
    plot_success_latency,
    run_eval,
    tick_latency,
)
from robodistill.policies import load_policy
from robodistill.report import policy_table
from robodistill.teach.stage import run_teach

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    # A student distilled under another distill.students (e.g. a DAgger run) is found too,
    # after the configured ones.
    shutil.copytree(run / "distill/rti/policy", run / "distill/another/policy")
    assert list(eval_targets(cfg)) == ["teacher", "rti", "another"]
    shutil.rmtree(run / "distill/another")

    metrics = run_eval(cfg)
    table = metrics["policies"]
    assert list(table) == ["teacher", "rti"] and metrics["reference"] == "teacher"
    teacher = load_policy(run / "teach/policy").config
    for label in table:
        rows = (run / "eval" / label / "episodes.jsonl").read_text().splitlines()
        assert len(rows) == 3
        row = table[label]
        assert row["latency"]["plans"] == 5 and row["latency"]["measure"] == "worst_tick"
        assert row["latency"]["median_ms"] == row["worst_tick"]["median_ms"] > 0
        assert 0 < row["per_step"]["median_ms"] < row["worst_tick"]["median_ms"]
        assert row["steps_per_plan"] == teacher.action_horizon
    # Measured calls: the teacher's full DDIM chain, RTI's warm-started 1 step.
    assert table["teacher"]["network_calls"]["per_plan"] == teacher.num_inference_steps
    assert table["rti"]["network_calls"]["per_plan"] == 1
    assert table["rti"]["network_calls"]["per_step"] == pytest.approx(1 / teacher.action_horizon)
    assert table["teacher"]["worst_tick_speedup"] == pytest.approx(1.0)
    assert table["teacher"]["per_step_speedup"] == pytest.approx(1.0)
    assert "speedup" not in table["rti"]  # no unlabelled ratio
    saved = json.loads((run / "eval/table.json").read_text())
    assert saved["rti"]["policy"] == str(run / "distill/rti/policy")
    assert run_eval(cfg) == metrics  # done: skipped


def _row(success, worst, worst_p99, per_step, per_plan, calls_per_step):
    return {"success_rate": success, "episodes": 10, "return_mean": 1.0, "return_std": 0.5,
            "length_mean": 50.0, "worst_tick": {"median_ms": worst, "p99_ms": worst_p99},
            "per_step": {"median_ms": per_step}, "latency": {"median_ms": worst,
                                                             "p99_ms": worst_p99},
            "network_calls": {"per_plan": per_plan, "per_step": calls_per_step}}  # fmt: skip


def test_streaming_row_compares_per_step_with_per_step(tmp_path):
    """The issue's Nav numbers: DDIM-10 plans a chunk in 19.6 ms and executes 8 of it
    (2.45 ms per control step); streaming runs 2.26 ms every step. Worst tick 8.7x, per
    step 1.1x; the old per-decision "speed-up" of 8.7x was the worst tick ratio."""
    table = {"teacher": _row(0.84, 19.6, 23.0, 2.45, 10, 1.25),
             "streaming": _row(0.85, 2.26, 2.48, 2.26, 1, 1),
             "consistency": _row(0.80, 1.99, 2.24, 0.25, 1, 0.125)}  # fmt: skip
    add_ratios(table, "teacher")
    stream = table["streaming"]
    assert stream["worst_tick_speedup"] == pytest.approx(19.6 / 2.26)
    assert stream["per_step_speedup"] == pytest.approx(2.45 / 2.26)  # ~1.1x, not 8.7x
    assert table["consistency"]["per_step_speedup"] == pytest.approx(2.45 / 0.25)
    assert "speedup" not in stream
    lines = policy_table(table)
    assert "worst-tick speed-up vs teacher" in lines[0]
    assert "per-step speed-up vs teacher" in lines[0]
    assert lines[3] == ("| streaming | 10 | 85 % | — | 1 ± 0.5 | 50 | 2.26 / 2.48 | 2.26 | "
                        "1 / 1 | 8.7× | 1.1× | 1.01 |")  # fmt: skip
    assert "| 19.6 / 23 | 2.45 | 10 / 1.25 | 1.0× | 1.0× | 1.00 |" in lines[2]
    assert any("worst tick with worst tick" in line for line in lines)
    plot = plot_success_latency(table, tmp_path / "plot.png")
    assert plot is not None and plot.stat().st_size > 1000


def test_ratios_and_table_rows_of_an_older_table():
    """An older table timed one decision per policy (``latency``: a planning tick) and had
    no per-step compute: its decision time reads as the worst tick, per step is unknown."""
    table = {"teacher": {"success_rate": 0.8, "latency": {"median_ms": 40.0, "p99_ms": 50.0},
                         "episodes": 10, "return_mean": 1.0, "return_std": 0.5,
                         "length_mean": 50.0, "speedup": 1.0},
             "fast": {"success_rate": 0.6, "latency": {"median_ms": 2.0, "p99_ms": 3.0},
                      "episodes": 10, "return_mean": 0.5, "return_std": 0.1,
                      "length_mean": 60.0, "speedup": 20.0},
             "unknown": {"success_rate": None, "episodes": 10, "return_mean": None}}  # fmt: skip
    add_ratios(table, "teacher")
    assert table["fast"]["worst_tick_speedup"] == pytest.approx(20.0)
    assert table["fast"]["per_step_speedup"] is None
    assert table["fast"]["success_ratio"] == pytest.approx(0.75)
    assert table["unknown"]["worst_tick_speedup"] is None
    assert table["unknown"]["success_ratio"] is None
    lines = policy_table(table)
    assert lines[2].startswith("| teacher | 10 | 80 % |")
    assert lines[3].endswith("| 2 / 3 | — | — | 20.0× | — | 0.75 |")
    assert lines[4].endswith("| — | — | — | — | — | — |")


def test_tick_latency_of_a_chunked_teacher_and_a_streaming_student():
    """Measured on real policies: the teacher's per-step compute is its plan cycle over its
    2 executed actions; every streaming tick plans, so its worst tick is its per-step cost."""
    from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
    from robodistill.policies.streaming import StreamingStudent, StreamingStudentConfig

    torch.manual_seed(0)
    nets = {"down_dims": (8, 16), "n_groups": 4, "step_embed_dim": 8}
    teacher = DiffusionPolicy(DiffusionPolicyConfig(obs_dim=3, action_dim=1, pred_horizon=4,
                                                    action_horizon=2, num_inference_steps=3,
                                                    **nets))  # fmt: skip
    student = StreamingStudent(StreamingStudentConfig(obs_dim=3, action_dim=1,
                                                      buffer_horizon=4, **nets))  # fmt: skip
    obs = np.zeros(3, np.float32)
    table = {"teacher": {"success_rate": 1.0} | tick_latency(teacher, obs, plans=4),
             "streaming": {"success_rate": 1.0} | tick_latency(student, obs, plans=4)}  # fmt: skip
    t, s = table["teacher"], table["streaming"]
    assert t["steps_per_plan"] == 2 and s["steps_per_plan"] == 1
    assert t["network_calls"] == {"per_plan": 3, "per_plan_max": 3, "per_step": 1.5}
    assert s["network_calls"] == {"per_plan": 1, "per_plan_max": 1, "per_step": 1}
    assert s["per_step"]["median_ms"] == s["worst_tick"]["median_ms"]
    assert t["per_step"]["median_ms"] < t["worst_tick"]["median_ms"]
    assert t["latency"]["median_ms"] == t["worst_tick"]["median_ms"]  # older readers
    add_ratios(table, "teacher")
    assert s["per_step_speedup"] == pytest.approx(
        t["per_step"]["median_ms"] / s["per_step"]["median_ms"])  # fmt: skip
    assert s["worst_tick_speedup"] == pytest.approx(
        t["worst_tick"]["median_ms"] / s["worst_tick"]["median_ms"])  # fmt: skip


def test_tick_latency_of_a_policy_without_a_denoiser():
    import gymnasium as gym

    from robodistill.policies import RandomPolicy

    rand = RandomPolicy.for_space(gym.spaces.Box(-1, 1, (2,)), seed=0)
    row = tick_latency(rand, np.zeros(3, np.float32), plans=3)
    assert row["steps_per_plan"] == 1 and row["latency"]["plans"] == 3
    assert row["network_calls"]["per_step"] is None  # not counted, not configured


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
