"""RTI warm start (training-free inference for a diffusion teacher): on a converged teacher
it must reproduce the teacher's actions with fewer network calls, in torch and in the
onnxruntime loop; the shift and discrete-dimension rules; and the ``rti`` student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robodistill.deploy.export import export_policy
from robodistill.deploy.runtime import OnnxPolicy
from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from robodistill.policies.normalizer import Normalizer
from robodistill.policies.rti import shift_plan, snap_discrete, warm_start

OBS, ACT, TO, H, TA, K = 3, 2, 2, 8, 4, 10


class OracleDenoiser(torch.nn.Module):
    """A perfectly converged epsilon predictor for a data distribution that is one point
    per observation, ``x0*(cond) = 0.8 * tanh(cond @ W)`` spread over the horizon: it
    returns exactly the noise that separates ``x_t`` from ``x0*``. Counts its calls."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("ab", alphas_cumprod.float().clone())
        self.register_buffer("w", torch.randn(OBS * TO, H * ACT, generator=gen))
        self.calls = 0

    def target(self, cond: torch.Tensor) -> torch.Tensor:
        return 0.8 * torch.tanh(cond @ self.w).reshape(-1, H, ACT)

    def forward(self, sample, timestep, cond):
        self.calls += 1
        t = torch.as_tensor(timestep).reshape(-1)
        ab = self.ab[t].reshape(-1, 1, 1)
        return (sample - ab.sqrt() * self.target(cond)) / (1 - ab).sqrt()


def _policy(rti_steps: int = 0, discrete=None, eta: float = 0.0) -> DiffusionPolicy:
    config = DiffusionPolicyConfig(
        obs_dim=OBS, action_dim=ACT, obs_horizon=TO, pred_horizon=H, action_horizon=TA,
        down_dims=(8, 16), n_groups=4, step_embed_dim=8, num_inference_steps=K,
        rti_steps=rti_steps, rti_discrete_dims=discrete, inference_eta=eta,
        action_low=[-1.0] * ACT, action_high=[1.0] * ACT,
    )  # fmt: skip
    stats = {"obs": {"min": [-2.0] * OBS, "max": [2.0] * OBS},
             "action": {"min": [-1.0] * ACT, "max": [1.0] * ACT}}  # fmt: skip
    policy = DiffusionPolicy(config, Normalizer.from_stats(stats))
    policy.ema_net = OracleDenoiser(policy.schedules.ddpm.alphas_cumprod)
    return policy


def _episode(policy, steps: int = 17, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    policy.reset()
    return np.stack([policy.act(rng.uniform(-2, 2, size=(2, OBS)).astype(np.float32))
                     for _ in range(steps)])  # fmt: skip


def test_shift_plan_and_snap_discrete():
    plan = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2)
    shifted = shift_plan(plan, 2)
    assert torch.equal(shifted[:, :3], plan[:, 2:])
    assert torch.equal(shifted[:, 3:], plan[:, -1:].expand(-1, 2, -1))
    assert torch.equal(shift_plan(plan, 0), plan)
    x = torch.tensor([[[0.3, -0.2], [-0.7, 0.9]]])
    snapped = snap_discrete(x, [1])
    assert torch.equal(snapped[..., 0], x[..., 0])  # continuous dims untouched
    assert snapped[..., 1].tolist() == [[-1.0, 1.0]]
    ab = torch.tensor(0.25)
    noise = torch.ones(1, 2, 2)
    assert torch.allclose(warm_start(x, 0, ab, noise), 0.5 * x + (0.75**0.5) * noise)


def test_rti_reproduces_a_converged_teacher_with_fewer_calls():
    full, rti = _policy(), _policy(rti_steps=2)
    a_full, a_rti = _episode(full), _episode(rti)
    np.testing.assert_allclose(a_rti, a_full, atol=1e-5)
    # 17 steps with Ta = 4: 5 plans; the first runs K steps, later ones 2 (batch-wide calls).
    assert full.ema_net.calls == 5 * K
    assert rti.ema_net.calls == K + 4 * 2


def test_rti_starts_each_row_fresh_after_a_reset():
    policy = _policy(rti_steps=1)
    policy.reset()
    obs = np.zeros((2, OBS), np.float32)
    for _ in range(TA):
        policy.act(obs)
    assert policy._rti["valid"].all()
    policy.reset(env_ids=[1])
    assert policy._rti["valid"].tolist() == [True, False]
    policy.reset()
    assert policy._rti is None


def test_rti_config_is_checked():
    with pytest.raises(ValueError, match=r"rti_steps must be in \[0, num_inference_steps=10\]"):
        _policy(rti_steps=11)
    with pytest.raises(ValueError, match=r"rti_discrete_dims \[5\]"):
        _policy(rti_steps=2, discrete=[5])


def test_stochastic_inference_eta_draws_from_the_generator():
    policy = _policy(eta=1.0)
    a, b = _episode(policy), _episode(policy)
    np.testing.assert_array_equal(a, b)  # reset() reseeds: evaluations repeat
    # The oracle's chain ends at x0* whatever the noise, so eta only adds draws.
    np.testing.assert_allclose(a, _episode(_policy()), atol=1e-4)


def test_onnx_runtime_runs_the_warm_start(tmp_path):
    policy = _policy(rti_steps=3)
    path = tmp_path / "rti.onnx"
    doc = export_policy(policy, path, exporter="torchscript")
    assert doc["denoise"]["warm_start"] == {"steps": 3, "shift": TA, "discrete_dims": []}
    runtime = OnnxPolicy(path, warmup=False)
    rng = np.random.default_rng(1)
    obs = rng.uniform(-2, 2, size=(9, 2, OBS)).astype(np.float32)
    policy.reset()
    got = np.stack([runtime.act(o) for o in obs])
    want = np.stack([policy.act(o) for o in obs])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert runtime.inferences == 3  # plans at steps 0, 4 and 8 (a denoising loop counts once)
    runtime.reset(env_ids=[0])
    assert runtime._planned.tolist() == [False, True]
