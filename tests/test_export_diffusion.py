"""The diffusion teacher exported in ``denoise`` mode: one DDIM step of the EMA network in
the graph, the loop in :class:`OnnxPolicy`; chunks and receding-horizon actions must match
:class:`DiffusionPolicy` given the same initial noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robodistill.deploy.export import check_parity, export_policy
from robodistill.deploy.runtime import OnnxPolicy
from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from robodistill.policies.normalizer import Normalizer

OBS, ACT, TO, H, TA = 5, 2, 2, 8, 4
LOW, HIGH = [-2.0, -1.5], [2.0, 1.5]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _policy() -> DiffusionPolicy:
    torch.manual_seed(0)
    config = DiffusionPolicyConfig(
        obs_dim=OBS, action_dim=ACT, obs_horizon=TO, pred_horizon=H, action_horizon=TA,
        down_dims=(16, 32), n_groups=4, step_embed_dim=16, num_inference_steps=3,
        action_low=LOW, action_high=HIGH,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(200, OBS)) * 2.0 + 1.0
    act = rng.uniform(-2.5, 2.5, size=(200, ACT))  # wider than the limits: clipping matters
    stats = {"obs": {"min": obs.min(0), "max": obs.max(0)},
             "action": {"min": act.min(0), "max": act.max(0)}}  # fmt: skip
    policy = DiffusionPolicy(config, Normalizer.from_stats(stats))
    # Make the EMA network differ from ``net`` so that the export must use the EMA one.
    with torch.no_grad():
        for p in policy.ema_net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy


def test_diffusion_policy_exports_in_denoise_mode(tmp_path):
    policy = _policy()
    path = tmp_path / "diffusion.onnx"
    doc = export_policy(policy, path, exporter="torchscript")
    assert doc["mode"] == "denoise" and doc["policy_kind"] == "diffusion"
    assert doc["horizons"] == {"observation": TO, "prediction": H, "execute": TA, "start": TO - 1}
    sched = policy.schedule()
    assert [s["timestep"] for s in doc["denoise"]["steps"]] == sched["timesteps"].tolist()
    assert all(s["coef"][-1] == 0.0 for s in doc["denoise"]["steps"])  # deterministic DDIM
    report = check_parity(policy, path, tol=1e-4, n_random=32)
    assert report["graph_random"] <= 1e-4

    # The whole loop: the runtime's initial draw is rng(seed).standard_normal((B, H, A)).
    obs_hist = np.random.default_rng(3).normal(1.0, 2.0, size=(4, TO, OBS)).astype(np.float32)
    got = OnnxPolicy(path, seed=5).predict(obs_hist)
    noise = np.random.default_rng(5).standard_normal((4, H, ACT)).astype(np.float32)
    expected = policy.predict_action_chunk(obs_hist, noise=noise)
    expected = torch.clamp(expected, torch.tensor(LOW), torch.tensor(HIGH)).numpy()
    assert got.shape == (4, H, ACT)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    other = policy.predict_action_chunk(obs_hist, noise=noise, use_ema=False)
    assert np.abs(np.clip(other.numpy(), LOW, HIGH) - got).max() > 1e-3  # EMA, not net


def test_onnx_act_matches_diffusion_act(tmp_path):
    policy = _policy()
    path = tmp_path / "diffusion.onnx"
    export_policy(policy, path, exporter="torchscript")
    runtime = OnnxPolicy(path, seed=9)
    # DiffusionPolicy.act draws x_K from a torch generator, the runtime from numpy: feed the
    # torch policy the runtime's draws (one (b, H, A) per inference, in the same order).
    rng = np.random.default_rng(9)
    plan = policy.predict_action_chunk

    def same_noise(obs_hist):
        noise = rng.standard_normal((len(obs_hist), H, ACT)).astype(np.float32)
        return plan(obs_hist, noise=noise)

    policy.predict_action_chunk = same_noise
    policy.reset()
    runtime.reset()
    obs = np.random.default_rng(4).normal(1.0, 2.0, size=(11, 3, OBS)).astype(np.float32)
    for t in range(len(obs)):
        if t == 6:  # row 1 starts a new episode mid-way (fresh history, empty queue)
            policy.reset(env_ids=[1])
            runtime.reset(env_ids=[1])
        np.testing.assert_allclose(runtime.act(obs[t]), policy.act(obs[t]), atol=1e-4)
    # Ta = 4: rows 0 and 2 plan at steps 0, 4, 8; row 1 also at 6 and 10 after its reset.
    assert runtime.inferences == 5


def test_chunked_kinds_state_null_observation_bounds_and_the_stage_fills_in_the_envs(tmp_path):
    from robodistill.config import load_config
    from robodistill.export import run_export
    from robodistill.policies.consistency import ConsistencyStudent, ConsistencyStudentConfig
    from robodistill.policies.streaming import StreamingStudent, StreamingStudentConfig

    torch.manual_seed(0)
    pendulum = {"obs_dim": 3, "action_dim": 1, "action_low": [-2.0], "action_high": [2.0],
                "obs_horizon": 2, "down_dims": (8, 16), "n_groups": 4, "step_embed_dim": 8}  # fmt: skip
    diffusion = DiffusionPolicy(DiffusionPolicyConfig(pred_horizon=4, action_horizon=2,
                                                      num_inference_steps=2, **pendulum))  # fmt: skip
    consistency = ConsistencyStudent(ConsistencyStudentConfig(pred_horizon=4, action_horizon=2,
                                                              ode_steps=4, **pendulum))  # fmt: skip
    streaming = StreamingStudent(StreamingStudentConfig(buffer_horizon=4, **pendulum))
    for policy in (diffusion, consistency, streaming):
        # Their configs record no observation bounds: stated as null, not left out.
        observation = policy.onnx_spec()["metadata"]["observation"]
        assert observation["low"] is None and observation["high"] is None, policy.kind
        assert {"low", "high"} <= set(observation), policy.kind

    # The export stage fills in the env's observation space, which the runtime exposes and
    # the controller checks observations against.
    diffusion.save(tmp_path / "runs" / "bounds" / "teach" / "policy")
    cfg = load_config(None, [
        f"runs_dir={tmp_path / 'runs'}", "name=bounds", "env.id=Pendulum-v1",
        "env.max_episode_steps=5", "export.exporter=torchscript", "export.parity_random=8",
        "export.parity_real_steps=4", "export.latency_calls=10",
    ])  # fmt: skip
    runtime = OnnxPolicy(run_export(cfg)["model"])
    np.testing.assert_array_equal(runtime.observation_low, [-1.0, -1.0, -8.0])
    np.testing.assert_array_equal(runtime.observation_high, [1.0, 1.0, 8.0])
    assert runtime.integrity == "verified"


def test_the_export_latency_times_one_real_inference_per_call(tmp_path):
    from robodistill.deploy.runtime import time_act

    path = tmp_path / "diffusion.onnx"
    export_policy(_policy(), path, exporter="torchscript")
    runtime = OnnxPolicy(path, seed=0)
    obs = np.random.default_rng(0).normal(size=OBS).astype(np.float32)
    before = runtime.inferences
    latency = time_act(runtime, obs, calls=6, warmup=2)
    # Every call plans (Ta = 4 would otherwise pop 3 queued actions out of 4).
    assert runtime.inferences - before == 8 and latency["median"] > 0
