"""The residual-MLP denoiser backbone: shapes and errors, a training signal, checkpoints, the
consistency and streaming students built on it, and ONNX parity. Tiny networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robodistill.config import ConfigError, load_config
from robodistill.deploy.export import check_parity, export_policy
from robodistill.deploy.runtime import OnnxPolicy
from robodistill.policies import load_policy
from robodistill.policies.consistency import ConsistencyStudent
from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from robodistill.policies.diffusion_nets import MlpDenoiser, MlpDenoiserConfig, build_denoiser
from robodistill.policies.normalizer import Normalizer
from robodistill.policies.streaming import StreamingStudent, StreamingStudentConfig

OBS, ACT, TO, H, TA = 3, 2, 2, 6, 4  # H = 6: no power-of-two constraint without a UNet
LOW, HIGH = [-2.0, -1.5], [2.0, 1.5]
STATS = {"obs": {"min": [-1.0, 0.0, 2.0], "max": [1.0, 4.0, 3.0]},
         "action": {"min": [-1.8, -1.2], "max": [1.8, 1.2]}}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _policy(**kw) -> DiffusionPolicy:
    torch.manual_seed(0)
    config = DiffusionPolicyConfig(**{
        "obs_dim": OBS, "action_dim": ACT, "obs_horizon": TO, "pred_horizon": H,
        "action_horizon": TA, "backbone": "mlp", "mlp_width": 32, "mlp_blocks": 2,
        "step_embed_dim": 16, "num_inference_steps": 4, "action_low": LOW,
        "action_high": HIGH, **kw})  # fmt: skip
    return DiffusionPolicy(config, Normalizer.from_stats(STATS))


def _windows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, size=(n, TO, OBS)).astype(np.float32)
    ramp = np.linspace(0, 1, H, dtype=np.float32)[None, :, None]
    action = (np.tanh(2 * obs[:, -1:, :ACT]) * (1 - ramp) + 0.5 * ramp) * np.float32([1.8, 1.2])
    return {"obs": obs, "action": action}


def test_mlp_shapes_scalar_and_per_row_timesteps_and_errors():
    net = MlpDenoiser(MlpDenoiserConfig(ACT, global_cond_dim=TO * OBS, horizon=H, width=32,
                                        blocks=2, step_embed_dim=16, local_cond_dim=3))  # fmt: skip
    x, cond, local = torch.randn(5, H, ACT), torch.randn(5, TO * OBS), torch.randn(5, H, 3)
    assert net(x, torch.arange(5), cond, local).shape == (5, H, ACT)
    assert net(x, 7, cond, local).shape == (5, H, ACT)
    with pytest.raises(ValueError, match=rf"sample must be \(B, {H}, {ACT}\)"):
        net(torch.randn(5, H + 2, ACT), 0, cond, local)
    with pytest.raises(ValueError, match="global_cond must be"):
        net(x, 0, torch.randn(5, 1), local)
    with pytest.raises(ValueError, match="local_cond must be"):
        net(x, 0, cond, None)
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_denoiser("transformer", action_dim=ACT, global_cond_dim=1, horizon=H)
    with pytest.raises(ValueError, match="width must be >= 1"):
        MlpDenoiserConfig(ACT, 1, H, width=0)


def test_mlp_teacher_learns_and_round_trips(tmp_path):
    policy = _policy()
    batch = _windows(32, 0)

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(policy.compute_loss(batch, torch.Generator().manual_seed(1))[0])

    before = fixed_loss()
    optimizer = torch.optim.AdamW(policy.net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        loss, _ = policy.compute_loss(batch, gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert fixed_loss() < 0.6 * before
    policy.ema_net.load_state_dict(policy.net.state_dict())

    loaded = load_policy(policy.save(tmp_path / "teacher"))
    assert loaded.config.backbone == "mlp" and isinstance(loaded.net, MlpDenoiser)
    obs, noise = _windows(4, 1)["obs"], torch.randn(4, H, ACT)
    torch.testing.assert_close(loaded.predict_action_chunk(obs, noise=noise),
                               policy.predict_action_chunk(obs, noise=noise), rtol=0, atol=0)  # fmt: skip

    # The exported denoise step runs the same chain in onnxruntime.
    path = tmp_path / "teacher.onnx"
    export_policy(policy, path, exporter="torchscript")
    assert check_parity(policy, path, tol=1e-4, n_random=16)["graph_random"] <= 1e-4
    got = OnnxPolicy(path, seed=5).predict(obs)
    z = np.random.default_rng(5).standard_normal((4, H, ACT)).astype(np.float32)
    expected = policy.predict_action_chunk(obs, noise=z).clamp(torch.tensor(LOW),
                                                               torch.tensor(HIGH))  # fmt: skip
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)


def test_students_of_an_mlp_teacher_share_its_backbone(tmp_path):
    teacher = _policy()
    student = ConsistencyStudent.from_teacher(teacher, ode_steps=10)
    assert isinstance(student.net, MlpDenoiser) and student.config.backbone == "mlp"
    for a, b in zip(student.net.parameters(), teacher.ema_net.parameters(), strict=True):
        assert torch.equal(a, b)  # initialized from the teacher's EMA weights
    assert student.predict_action_chunk(_windows(3, 2)["obs"]).shape == (3, H, ACT)
    path = tmp_path / "consistency.onnx"
    export_policy(student, path, exporter="torchscript")
    assert check_parity(student, path, tol=1e-4, n_random=8)["graph_random"] <= 1e-4

    torch.manual_seed(0)
    streaming = StreamingStudent(StreamingStudentConfig(
        obs_dim=OBS, action_dim=ACT, obs_horizon=TO, buffer_horizon=H, backbone="mlp",
        mlp_width=32, mlp_blocks=1, step_embed_dim=16, action_low=LOW, action_high=HIGH,
    ), Normalizer.from_stats(STATS))  # fmt: skip
    assert isinstance(streaming.net, MlpDenoiser)
    obs = np.random.default_rng(3).uniform(-1, 1, size=(2, OBS)).astype(np.float32)
    assert streaming.act(obs).shape == (2, ACT)
    loaded = load_policy(streaming.save(tmp_path / "streaming"))
    assert loaded.config.to_dict() == streaming.config.to_dict()


def test_backbone_key_is_validated():
    cfg = load_config(None, ["teach.diffusion.backbone=mlp", "teach.diffusion.pred_horizon=12"])
    assert cfg.teach.diffusion.backbone == "mlp"  # 12 is fine: no UNet halvings
    with pytest.raises(ConfigError, match="backbone"):
        load_config(None, ["teach.diffusion.backbone=resnet"])
