"""docs/reference_runner.py (numpy + onnxruntime, reading nothing but the file's metadata)
drives every exported kind exactly as OnnxPolicy does: difference 0 over several steps,
an episode reset included."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from robodistill.deploy.export import export_policy
from robodistill.deploy.runtime import OnnxPolicy
from robodistill.envs import make_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "docs" / "reference_runner.py"
PENDULUM = {"obs_dim": 3, "action_dim": 1, "action_low": [-2.0], "action_high": [2.0],
            "obs_horizon": 2, "down_dims": (8, 16), "n_groups": 4, "step_embed_dim": 8}  # fmt: skip


def reference_runner():
    spec = importlib.util.spec_from_file_location("reference_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ReferenceRunner


def _sb3(algo: str):
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from robodistill.policies.sb3_policy import SB3Policy

    venv = VecNormalize(DummyVecEnv([lambda: make_env("Pendulum-v1")]))
    venv.obs_rms.mean = np.array([0.1, -0.2, 0.5])
    cls = PPO if algo == "ppo" else SAC
    model = cls("MlpPolicy", venv, seed=0, device="cpu", policy_kwargs={"net_arch": [16]})
    return SB3Policy.from_model(model, venv)


def _rllib():
    from robodistill.policies.rllib_policy import RLlibPolicy, build_layers

    spec = [{"type": "Linear", "in": 3, "out": 16}, {"type": "Tanh"},
            {"type": "Linear", "in": 16, "out": 2}]  # fmt: skip
    torch.manual_seed(1)
    env = make_env("Pendulum-v1")
    return RLlibPolicy(build_layers(spec), spec, env.observation_space, env.action_space,
                       torch.zeros(3, dtype=torch.float64), torch.ones(3), clip_obs=5.0)  # fmt: skip


def _stats(n: int, seed: int = 0) -> dict:
    from robodistill.policies.mlp_student import array_stats

    x = np.random.default_rng(seed).normal(size=(64, n))
    return array_stats(x)


def _mlp_student():
    from robodistill.policies.mlp_student import MLPStudent

    env = make_env("Pendulum-v1")
    return MLPStudent.build(env.observation_space, env.action_space, _stats(3), _stats(1),
                            hidden=[16], log_std_stats=_stats(1, 1), seed=0)  # fmt: skip


def _compass_base():
    from robodistill.policies.compass import CompassBase

    env = make_env("robodistill/Nav-v0")
    return CompassBase.build(env.observation_space, env.action_space, _stats(27), _stats(3),
                             hidden=[16], latent_dim=8, seed=0)  # fmt: skip


def _generalist():
    from robodistill.envs.embodiments import EMBODIMENTS
    from robodistill.policies.generalist import EmbodimentTable, Generalist

    table = EmbodimentTable.from_specs([EMBODIMENTS[n] for n in ("holonomic", "diffdrive")], 4)
    stats = {"obs": _stats(27), "action": _stats(3, 1), "log_std": _stats(3, 2)}
    return Generalist.build(table, make_env("robodistill/Nav-v0").action_space, stats,
                            hidden=[16], embedding="onehot", embed_dim=4, seed=0)  # fmt: skip


def _diffusion(**kw):
    from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig

    torch.manual_seed(0)
    config = DiffusionPolicyConfig(pred_horizon=4, action_horizon=2, num_inference_steps=3,
                                   **PENDULUM, **kw)  # fmt: skip
    return DiffusionPolicy(config)


def _consistency(**kw):
    from robodistill.policies.consistency import ConsistencyStudent, ConsistencyStudentConfig

    torch.manual_seed(0)
    return ConsistencyStudent(ConsistencyStudentConfig(pred_horizon=4, action_horizon=2,
                                                       ode_steps=4, **PENDULUM, **kw))  # fmt: skip


def _streaming():
    from robodistill.policies.streaming import StreamingStudent, StreamingStudentConfig

    torch.manual_seed(0)
    return StreamingStudent(StreamingStudentConfig(buffer_horizon=4, **PENDULUM))


KINDS = {
    # name: (builder, observation size, embodiment)
    "sb3-ppo": (lambda: _sb3("ppo"), 3, None),
    "sb3-sac": (lambda: _sb3("sac"), 3, None),
    "rllib": (_rllib, 3, None),
    "mlp_student": (_mlp_student, 3, None),
    "compass_base": (_compass_base, 27, None),
    "generalist": (_generalist, 27, "diffdrive"),
    "diffusion": (_diffusion, 3, None),
    # DDIM with eta 1: a noise draw at every denoising step, and RTI's warm start.
    "diffusion-eta-rti": (lambda: _diffusion(inference_eta=1.0, rti_steps=2), 3, None),
    "diffusion-ensemble": (lambda: _diffusion(temporal_ensemble=0.3), 3, None),
    "consistency": (_consistency, 3, None),
    "consistency-ensemble": (lambda: _consistency(temporal_ensemble=0.1), 3, None),
    "streaming": (_streaming, 3, None),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_reference_runner_matches_onnx_policy_exactly(kind, tmp_path):
    build, obs_dim, embodiment = KINDS[kind]
    path = tmp_path / "policy.onnx"
    doc = export_policy(build(), path, exporter="torchscript")
    runtime = OnnxPolicy(path, seed=3, embodiment=embodiment)
    runner = reference_runner()(path, seed=3, embodiment=embodiment)
    obs = np.random.default_rng(0).uniform(-1, 1, size=(11, obs_dim)).astype(np.float32)
    got, expected = [], []
    for t, o in enumerate(obs):
        if t == 5:  # a new episode, in the middle of an executed chunk for chunked kinds
            runtime.reset()
            runner.reset()
        expected.append(runtime.act(o[None])[0])
        got.append(runner.act(o))
    got, expected = np.stack(got), np.stack(expected)
    assert got.dtype == expected.dtype == np.float32 and got.shape == (11, doc["action"]["dim"])
    assert np.abs(got - expected).max() == 0.0, kind
    assert len(np.unique(expected, axis=0)) > 1  # the actions really change over the steps


def test_the_reset_starts_an_episode_afresh(tmp_path):
    """After reset() the runner (history, chunk queue, state and its draws) behaves as a new
    runner whose generator is where the old one's was."""
    path = tmp_path / "streaming.onnx"
    export_policy(_streaming(), path, exporter="torchscript")
    runner = reference_runner()(path, seed=1)
    obs = np.random.default_rng(2).uniform(-1, 1, size=(4, 3)).astype(np.float32)
    for o in obs:
        runner.act(o)
    state = runner.rng.bit_generator.state
    runner.reset()
    fresh = reference_runner()(path, seed=1)
    fresh.rng.bit_generator.state = state
    fresh.reset()
    assert all(np.array_equal(runner.act(o), fresh.act(o)) for o in obs[::-1])


def test_the_deploy_page_shows_the_runner_as_it_is():
    page = (ROOT / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert RUNNER.read_text() in blocks
    code = RUNNER.read_text()
    imports = set(re.findall(r"^(?:import|from) (\w+)", code, re.M))
    assert imports == {"json", "numpy", "onnxruntime"}
