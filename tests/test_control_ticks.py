"""Measured network calls and control-tick latency (``robodistill.core.latency``): a DDIM-k
evaluation makes exactly k denoiser calls per plan, the streaming student its configured
calls per control step, and the worst tick / per-step split of a plan cycle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robodistill.core.latency import (
    control_tick_latency,
    count_network_calls,
    policy_tick_latency,
)
from robodistill.core.rollout import rollout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _diffusion(**changes):
    from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig

    torch.manual_seed(0)
    config = DiffusionPolicyConfig(obs_dim=3, action_dim=1, pred_horizon=4, action_horizon=2,
                                   down_dims=(8, 16), n_groups=4, step_embed_dim=8,
                                   action_low=[-2.0], action_high=[2.0], **changes)  # fmt: skip
    return DiffusionPolicy(config)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_ddim_k_evaluation_makes_exactly_k_denoiser_calls_per_plan(k):
    policy = _diffusion(num_inference_steps=k)
    # 4 episodes of 8 steps (Pendulum never ends early) on 2 env rows, 2 actions per plan.
    with count_network_calls(policy) as calls:
        episodes = rollout("Pendulum-v1", policy, [0, 1, 2, 3], num_envs=2, max_episode_steps=8)
    assert [e.length for e in episodes] == [8] * 4
    assert calls.act_rows == 32 and calls.plan_rows == 16
    assert calls.rows == 16 * k  # every plan ran k denoiser evaluations
    assert calls.per_plan == k and calls.per_step == k / 2
    assert calls.calls == 8 * k  # the 2 rows plan together: k batched calls per plan tick
    assert "act" not in policy.__dict__ and "plan" not in policy.__dict__  # unwrapped again

    ticks = policy_tick_latency(policy, np.zeros(3, np.float32), plans=3, warmup=1)
    assert ticks["calls_per_plan"] == k and ticks["calls_per_plan_max"] == k
    assert ticks["steps_per_plan"] == 2 and ticks["calls_per_step"] == k / 2
    assert ticks["plans"] == 3 and ticks["steps"] == 6
    assert policy._state is None  # reset afterwards


def test_rti_and_ddpm_calls_are_measured_not_configured():
    rti = _diffusion(num_inference_steps=4, rti_steps=1)
    ticks = policy_tick_latency(rti, np.zeros(3, np.float32), plans=3, warmup=1)
    assert ticks["calls_per_plan"] == 1  # warm-started plans after the cold first one
    with count_network_calls(rti) as calls:  # a fresh episode: the first plan runs all 4
        for _ in range(4):
            rti.act(np.zeros((1, 3), np.float32))
    assert calls.plan_rows == 2 and calls.rows == 4 + 1
    rti.reset()

    ddpm = _diffusion(num_inference_steps=100, inference_eta=1.0)
    with count_network_calls(ddpm) as calls:
        ddpm.act(np.zeros((1, 3), np.float32))
    assert calls.per_plan == 100


@pytest.mark.parametrize("calls_per_step", [1, 2])
def test_streaming_student_calls_per_control_step(calls_per_step):
    from robodistill.policies.streaming import StreamingStudent, StreamingStudentConfig

    torch.manual_seed(0)
    student = StreamingStudent(StreamingStudentConfig(
        obs_dim=3, action_dim=1, buffer_horizon=4, calls_per_step=calls_per_step,
        down_dims=(8, 16), n_groups=4, step_embed_dim=8))  # fmt: skip
    ticks = policy_tick_latency(student, np.zeros(3, np.float32), plans=4, warmup=1)
    assert ticks["steps_per_plan"] == 1 and ticks["plans"] == 4
    assert ticks["calls_per_step"] == calls_per_step == ticks["calls_per_plan"]
    # Every tick plans: the worst tick is the tick, and nothing else happens.
    assert ticks["other_tick"]["median_ms"] is None


def test_control_tick_latency_splits_worst_tick_from_per_step_compute():
    """A fake 4-step plan cycle: the planning tick takes 8 ms and 3 network calls, the three
    ticks that pop queued actions 1 ms each."""
    state = {"now": 0.0, "tick": 0, "calls": 0}

    def act():
        plans = state["tick"] % 4 == 0
        state["now"] += 0.008 if plans else 0.001
        state["calls"] += 3 if plans else 0
        state["tick"] += 1

    result = control_tick_latency(act, lambda: state["calls"], plans=5, warmup=2,
                                  clock=lambda: state["now"])  # fmt: skip
    assert result["plans"] == 5 and result["steps"] == 20 and result["steps_per_plan"] == 4
    assert result["worst_tick"]["median_ms"] == pytest.approx(8.0)
    assert result["worst_tick"]["p99_ms"] == pytest.approx(8.0)
    assert result["other_tick"]["median_ms"] == pytest.approx(1.0)
    assert result["per_step"]["median_ms"] == pytest.approx((8 + 3) / 4)
    assert result["per_step"]["mean_ms"] == pytest.approx((8 + 3) / 4)
    assert result["calls_per_plan"] == 3 and result["calls_per_step"] == pytest.approx(0.75)
    # Warm-up: two untimed cycles, then five timed, then the plan that closes the fifth.
    assert state["tick"] == 2 * 4 + 5 * 4 + 1

    every = control_tick_latency(act, None, plans=3, warmup=0, clock=lambda: state["now"])
    assert every["plans"] == 3 and every["steps_per_plan"] == 1 and every["calls_per_step"] is None

    with pytest.raises(RuntimeError, match="fewer than"):
        control_tick_latency(lambda: None, lambda: 0, plans=1, max_steps=10)
