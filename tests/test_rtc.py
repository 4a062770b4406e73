"""Real-time chunking (``robodistill.deploy.rtc``) on a tiny exported diffusion teacher
(``denoise`` mode, 3 DDIM steps) and a fake 1-step chunk file."""

from __future__ import annotations

import numpy as np
import pytest

from robodistill.deploy.rtc import ChunkPlanner, RtcSettings, blend, prefix_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    import torch

    from robodistill.deploy.export import export_policy
    from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
    from robodistill.policies.normalizer import Normalizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = DiffusionPolicyConfig(
        obs_dim=4, action_dim=2, obs_horizon=2, pred_horizon=8, action_horizon=4,
        down_dims=(16, 32), n_groups=4, step_embed_dim=16, num_inference_steps=3,
        action_low=[-2.0, -1.0], action_high=[2.0, 1.0],
    )  # fmt: skip
    stats = {"obs": {"min": -np.ones(4), "max": np.ones(4)},
             "action": {"min": np.array([-1.5, -0.5]), "max": np.array([1.5, 1.0])}}  # fmt: skip
    path = tmp_path_factory.mktemp("rtc") / "teacher.onnx"
    export_policy(DiffusionPolicy(config, Normalizer.from_stats(stats)), path,
                  exporter="torchscript")  # fmt: skip
    torch.set_num_threads(threads)
    return path


def _runtime(path, seed=3):
    from robodistill.deploy.runtime import OnnxPolicy

    return OnnxPolicy(path, seed=seed)


def _case(policy, r=5):
    rng = np.random.default_rng(7)
    hist = rng.normal(size=(policy.history, policy.observation_dim)).astype(np.float32)
    leftover = rng.uniform(-0.4, 0.4, size=(r, policy.action_dim)).astype(np.float32)
    return hist, leftover


def test_prefix_weights_follow_the_rtc_schedule():
    w = prefix_weights(10, 3, 8, "exp")
    assert w.shape == (10,) and w.dtype == np.float32
    assert (w[:3] == 1).all() and (w[8:] == 0).all()
    assert (np.diff(w[3:8]) < 0).all() and (w[3:8] > 0).all() and (w[3:8] < 1).all()
    lin = prefix_weights(10, 3, 8, "linear")
    np.testing.assert_allclose(lin[3:8], [5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6], rtol=1e-6)
    assert (lin[3:8] >= w[3:8]).all()  # exp decays faster (c (e^c - 1) / (e - 1) <= c)
    assert (prefix_weights(6, 2, 6, "zeros") == [1, 1, 0, 0, 0, 0]).all()
    assert (prefix_weights(6, 2, 4, "ones") == [1, 1, 1, 1, 0, 0]).all()
    assert (prefix_weights(6, 9, 4, "exp")[:4] == 1).all()  # d past the overlap: all frozen
    with pytest.raises(ValueError, match="schedule"):
        prefix_weights(4, 1, 2, "cosine")


def test_rtc_with_zero_delay_equals_the_plain_sampler(teacher_file):
    plain = _runtime(teacher_file)
    planner = ChunkPlanner(_runtime(teacher_file), RtcSettings(schedule="zeros"))
    hist, leftover = _case(plain)
    for _ in range(2):  # the same draws call after call
        expected = plain.predict(hist[None])[0, plain.start :]
        got = planner.plan(hist, leftover, delay=0)
        np.testing.assert_array_equal(got, expected)
    # No leftover (an episode's first chunk): the default schedule is the plain sampler too.
    planner = ChunkPlanner(_runtime(teacher_file), RtcSettings())
    plain = _runtime(teacher_file)
    np.testing.assert_array_equal(planner.plan(hist, None, delay=0),
                                  plain.predict(hist[None])[0, plain.start :])  # fmt: skip


@pytest.mark.parametrize("delay", [1, 3, 5])
def test_inpainting_pins_the_first_d_actions(teacher_file, delay):
    policy = _runtime(teacher_file)
    hist, leftover = _case(policy)
    planner = ChunkPlanner(policy, RtcSettings(schedule="exp"))
    got = planner.plan(hist, leftover, delay=delay)
    # Stated tolerance: 1e-6 (float32 rounding of the final replacement, as in RePaint).
    np.testing.assert_allclose(got[:delay], leftover[:delay], atol=1e-6)
    # Guidance acted inside the loop: beyond the overlap (weight 0) the chunk differs from
    # the unguided one of the same draws.
    plain = _runtime(teacher_file).predict(hist[None])[0, policy.start :]
    assert np.abs(got[len(leftover) :] - plain[len(leftover) :]).max() > 1e-4


def test_action_map_is_read_off_the_graph(teacher_file):
    scale, offset = _runtime(teacher_file).action_map()
    # min-max statistics [-1.5, 1.5] and [-0.5, 1.0]: x in [-1, 1] -> (x + 1) / 2 * span + min
    np.testing.assert_allclose(scale, [1.5, 0.75], atol=1e-5)
    np.testing.assert_allclose(offset, [0.0, 0.25], atol=1e-5)


def test_rti_warm_start_runs_the_last_steps_from_the_shifted_plan(teacher_file):
    policy = _runtime(teacher_file)
    policy._warm = {"steps": 1, "shift": 4}  # as an RTI file records it
    planner = ChunkPlanner(policy)
    planner._warm = True
    hist, _ = _case(policy)
    calls = []
    first = planner.plan(hist)
    policy._guide = None
    inner = policy._run_steps

    def spy(feed, x, start):
        calls.append(start)
        return inner(feed, x, start)

    policy._run_steps = spy
    planner.plan(hist, steps_since=4)
    assert calls == [len(policy._steps) - 1] and first.shape == (7, 2)


class OneStepFake:
    """A direct-mode chunk file (the consistency student's shape of metadata)."""

    history, observation_dim, action_dim, prediction, start = 1, 2, 1, 6, 1
    mode, metadata, _chunked, _state, _obs_rank = "direct", {}, True, [], 2

    def reset(self):
        pass

    def predict(self, obs):
        return np.full((1, 6, 1), 5.0, np.float32)


def test_one_step_student_blends_with_the_soft_prefix_schedule():
    leftover = np.zeros((4, 1), np.float32)
    hist = np.zeros((1, 2), np.float32)
    got = ChunkPlanner(OneStepFake(), RtcSettings()).plan(hist, leftover, delay=2)[:, 0]
    w = prefix_weights(4, 2, 4, "exp")
    np.testing.assert_allclose(got[:4], 5.0 * (1 - w), rtol=1e-6)
    assert (got[:2] == 0).all() and (got[4:] == 5).all()
    # The fallback: a constant blend of the overlap (0.3 old + 0.7 new), frozen prefix kept.
    fallback = ChunkPlanner(OneStepFake(), None, aggregate="blend").plan(hist, leftover, 1)
    np.testing.assert_allclose(fallback[:, 0], [0, 3.5, 3.5, 3.5, 5], rtol=1e-6)
    assert (ChunkPlanner(OneStepFake()).plan(hist, leftover, 2) == 5).all()  # replace
    np.testing.assert_array_equal(blend(np.ones((3, 1)), np.zeros((0, 1)), np.zeros(0)),
                                  np.ones((3, 1)))  # fmt: skip


def test_blend_steps_shorten_the_one_step_ramp():
    leftover = np.zeros((6, 1), np.float32)
    hist = np.zeros((1, 2), np.float32)
    planner = ChunkPlanner(OneStepFake(), RtcSettings(blend_steps=2))
    got = planner.plan(hist, leftover[:5], delay=1)[:, 0]
    w = prefix_weights(5, 1, 3, "exp")  # frozen 1, soft 2 steps, then the new chunk
    np.testing.assert_allclose(got, 5.0 * (1 - w), rtol=1e-6)
    assert got[0] == 0 and (got[3:] == 5).all() and 0 < got[1] < got[2] < 5
    with pytest.raises(ValueError, match="blend_steps"):
        RtcSettings(blend_steps=-1)
