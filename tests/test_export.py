"""ONNX export: parity (SB3 PPO/SAC, RLlib), checker, metadata, dynamic batch, the chunked,
stateful and denoise-loop modes of OnnxPolicy, int8 quantization."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from torch import nn

from robodistill.deploy.export import (
    DenoiserStep,
    ExportError,
    ParityError,
    check_model,
    check_parity,
    ddim_steps,
    export_policy,
    quantize_int8,
    random_observations,
    read_model_metadata,
)
from robodistill.deploy.metadata import METADATA_KEY, MetadataError, read_metadata
from robodistill.deploy.runtime import OnnxPolicy
from robodistill.envs import make_env
from robodistill.policies.rllib_policy import RLlibPolicy, build_layers
from robodistill.policies.sb3_policy import SB3Policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = "torchscript"  # ~0.3 s per export; the default dynamo exporter is tested once below


def pendulum_observations(n: int = 60) -> np.ndarray:
    env = make_env("Pendulum-v1")
    obs, _ = env.reset(seed=3)
    out = []
    for _ in range(n):
        out.append(obs)
        obs, *_ = env.step(env.action_space.sample())
    return np.asarray(out, np.float32)


def sb3_policy(algo: str):
    venv = VecNormalize(DummyVecEnv([lambda: make_env("Pendulum-v1")]))
    rng = np.random.default_rng(0)
    # Statistics far from the identity, and small variances so that clip_obs is reached.
    venv.obs_rms.mean = rng.normal(size=3)
    venv.obs_rms.var = rng.uniform(0.01, 4.0, size=3)
    cls = PPO if algo == "ppo" else SAC
    model = cls("MlpPolicy", venv, seed=0, device="cpu", policy_kwargs={"net_arch": [32, 32]})
    if algo == "ppo":  # PPO's head starts tiny (gain 0.01): scale it so the clip matters
        with torch.no_grad():
            model.policy.action_net.weight.mul_(300.0)
    return model, venv, SB3Policy.from_model(model, venv)


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_sb3_export_matches_sb3_predict(algo, tmp_path):
    model, venv, policy = sb3_policy(algo)
    path = tmp_path / "policy.onnx"
    doc = export_policy(policy, path, exporter=FAST, metadata={"env_id": "Pendulum-v1"})
    assert doc["policy_kind"] == "sb3" and doc["policy"]["algo"] == algo
    real = pendulum_observations()
    report = check_parity(policy, path, real, n_random=128, tol=1e-4)
    assert set(report) == {"graph_random", "graph_real", "policy_random", "policy_real"}
    # End to end against SB3 itself: normalization, clip or tanh un-scaling all in the file.
    obs = np.concatenate([real, real * 10.0]).astype(np.float32)  # * 10 reaches clip_obs
    expected, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
    runtime = OnnxPolicy(path)
    actions = runtime.act(obs)
    np.testing.assert_allclose(actions, expected, atol=1e-4)
    assert np.all(np.abs(actions) <= 2.0)
    if algo == "ppo":
        assert np.any(np.abs(actions) == 2.0)  # the clip is really exercised


def rllib_policy() -> RLlibPolicy:
    spec = [{"type": "Linear", "in": 3, "out": 32}, {"type": "Tanh"},
            {"type": "Linear", "in": 32, "out": 2}]  # fmt: skip
    torch.manual_seed(1)
    layers = build_layers(spec)
    env = make_env("Pendulum-v1")
    mean = torch.tensor([0.2, -0.1, 0.5], dtype=torch.float64)
    std = torch.tensor([0.5, 0.7, 2.0])
    return RLlibPolicy(layers, spec, env.observation_space, env.action_space, mean, std,
                       clip_obs=5.0, log_std_clip=20.0)  # fmt: skip


def test_rllib_export_parity_with_the_default_dynamo_exporter(tmp_path):
    policy = rllib_policy()
    path = tmp_path / "rllib.onnx"
    doc = export_policy(policy, path)  # dynamo, opset 18
    assert doc["export"]["exporter"] == "dynamo" and doc["export"]["opset"] >= 17
    report = check_parity(policy, path, pendulum_observations(), n_random=128)
    assert max(report.values()) <= 1e-4
    # The filter's clip is inside the graph: far-out observations give the clipped answer.
    far = np.array([[100.0, -100.0, 100.0]], np.float32)
    clipped = policy.obs_mean.numpy() + np.array([5, -5, 5]) * (policy.obs_std.numpy() + 1e-6)
    np.testing.assert_allclose(OnnxPolicy(path).act(far),
                               policy.act(clipped[None].astype(np.float32)), atol=1e-4)  # fmt: skip


def test_checker_metadata_round_trip_and_dynamic_batch(tmp_path):
    _, _, policy = sb3_policy("ppo")
    path = tmp_path / "p.onnx"
    extra = {"env_id": "Pendulum-v1", "control_rate_hz": 20.0, "source": {"run": "r1"}}
    doc = export_policy(policy, path, exporter=FAST, opset=17, metadata=extra)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [p.key for p in model.metadata_props] == [METADATA_KEY]  # one JSON document
    assert json.loads(model.metadata_props[0].value) == doc
    assert read_metadata(str(path)) == doc == read_model_metadata(path) == check_model(path)
    assert doc["control_rate_hz"] == 20.0 and doc["source"] == {"run": "r1"}
    assert doc["observation"]["shape"] == [3] and doc["action"]["low"] == [-2.0]
    assert doc["inputs"] == [{"name": "obs", "role": "observation", "dtype": "float32",
                              "shape": ["batch", 3]}]  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5, 64):
        obs = np.random.default_rng(batch).normal(size=(batch, 3)).astype(np.float32)
        (out,) = session.run(None, {"obs": obs})
        np.testing.assert_allclose(out, policy.act(obs), atol=1e-4)

    # A file without our metadata, or of another format version, is refused clearly.
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    with pytest.raises(MetadataError, match="not exported by robodistill"):
        OnnxPolicy(tmp_path / "bare.onnx")
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({**doc, "format_version": 99})
    onnx.save(model, str(tmp_path / "future.onnx"))
    with pytest.raises(MetadataError, match="format_version"):
        OnnxPolicy(tmp_path / "future.onnx")


def test_parity_check_catches_a_graph_without_normalization(tmp_path):
    _, _, policy = sb3_policy("sac")
    spec = policy.onnx_spec()
    spec["module"].normalize = False  # a broken export: raw observations into the MLP
    export_policy(policy, tmp_path / "bad.onnx", exporter=FAST, spec=spec)
    with pytest.raises(ParityError, match="policy_random"):
        check_parity(policy, tmp_path / "bad.onnx", spec=spec, n_random=32)


class IgnoresSecondInput(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, obs, unused):
        return self.inner(obs)


def test_observation_errors_and_spec_errors(tmp_path):
    _, _, policy = sb3_policy("ppo")
    path = tmp_path / "p.onnx"
    export_policy(policy, path, exporter=FAST)
    runtime = OnnxPolicy(path)
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        runtime.act(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        runtime.act(np.array([[0.0, np.nan, 0.0]], np.float32))
    with pytest.raises(TypeError, match="real number"):
        runtime.act(np.array([["a", "b", "c"]]))
    with pytest.raises(ExportError, match="opset"):
        export_policy(policy, tmp_path / "x.onnx", opset=16)
    spec = policy.onnx_spec()
    spec["inputs"].append({"name": "unused", "role": "noise", "example": torch.zeros(2, 1)})
    spec["module"] = IgnoresSecondInput(spec["module"])
    with pytest.raises(ExportError, match="unused"):
        export_policy(policy, tmp_path / "y.onnx", exporter=FAST, spec=spec)
    spec = policy.onnx_spec()
    spec["outputs"][0]["role"] = "velocity"
    with pytest.raises(ExportError, match=r"\['outputs'\]\[0\]\['role'\]"):
        export_policy(policy, tmp_path / "z.onnx", exporter=FAST, spec=spec)


def test_int8_quantized_model_runs(tmp_path):
    _, _, policy = sb3_policy("ppo")
    path, qpath = tmp_path / "p.onnx", tmp_path / "p.int8.onnx"
    export_policy(policy, path, exporter=FAST)
    doc = quantize_int8(path, qpath)
    assert doc["export"]["quantized"] == "int8-dynamic"
    ops = {n.op_type for n in onnx.load(str(qpath)).graph.node}
    assert "DynamicQuantizeLinear" in ops  # the weights really are int8 now
    check_model(qpath)
    obs = pendulum_observations(40)
    full, quant = OnnxPolicy(path).act(obs), OnnxPolicy(qpath).act(obs)
    assert np.all(np.isfinite(quant)) and np.all(np.abs(quant) <= 2.0)
    assert np.abs(full - quant).max() < 0.1  # close (int8 error), not equal
    assert doc["policy_kind"] == read_metadata(str(qpath))["policy_kind"]


# -- modes for the policies to come: chunks with history, state + noise + embodiment, denoise --
H, D, T, A = 2, 3, 6, 2


class ToyChunk(nn.Module):
    """Deterministic (B, H, D) history -> (B, T, A) chunk, un-scaled inside."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(H * D, 32), nn.Tanh(), nn.Linear(32, T * A))

    def forward(self, obs):
        return 2.0 * torch.tanh(self.net(obs.reshape(obs.shape[0], -1))).reshape(-1, T, A)


def chunk_spec(execute: int = 3, start: int = 1) -> dict:
    return {
        "module": ToyChunk().eval(),
        "inputs": [{"name": "obs", "role": "observation", "example": torch.zeros(2, H, D)}],
        "outputs": [{"name": "chunk", "role": "chunk"}],
        "metadata": {"policy_kind": "toy-chunk", "mode": "direct", "deterministic": True,
                     "observation": {"shape": [D]}, "action": {"shape": [A]},
                     "horizons": {"observation": H, "prediction": T, "execute": execute,
                                  "start": start}},
    }  # fmt: skip


def test_chunk_queue_receding_horizon_and_temporal_ensembling(tmp_path):
    spec = chunk_spec()
    path = tmp_path / "chunk.onnx"
    export_policy(None, path, exporter=FAST, spec=spec)
    assert check_parity(None, path, spec=spec, n_random=64)["graph_random"] <= 1e-4
    obs = np.random.default_rng(0).normal(size=(7, 2, D)).astype(np.float32)  # 7 steps, B=2

    def chunk_at(t: int, rows=slice(None)) -> np.ndarray:
        window = [obs[max(s, 0)] for s in range(t - H + 1, t + 1)]  # first obs repeated
        with torch.no_grad():
            return spec["module"](torch.from_numpy(np.stack(window, 1)[rows])).numpy()

    receding = OnnxPolicy(path)
    got = np.stack([receding.act(o) for o in obs])
    assert receding.inferences == 3  # steps 0, 3, 6: one chunk per 3 executed actions
    for t in range(7):
        expected = chunk_at(t - t % 3)[:, 1 + t % 3]  # start=1, then the queue
        np.testing.assert_allclose(got[t], expected, atol=1e-5)

    # Row 1 starts a new episode at step 2: only it re-plans and restarts its history.
    policy = OnnxPolicy(path)
    policy.act(obs[0]), policy.act(obs[1])
    policy.reset(env_ids=[1])
    a2 = policy.act(obs[2])
    np.testing.assert_allclose(a2[0], chunk_at(0)[0, 3], atol=1e-5)  # row 0 still queued
    with torch.no_grad():
        fresh = spec["module"](torch.from_numpy(np.stack([obs[2, 1:]] * H, 1))).numpy()
    np.testing.assert_allclose(a2[1], fresh[0, 1], atol=1e-5)

    decay = 0.5
    ensemble = OnnxPolicy(path, execution="ensemble", ensemble_decay=decay)
    chunks = [chunk_at(t)[:, 1:] for t in range(7)]  # chunk made at t, from the start index
    for t in range(7):
        got = ensemble.act(obs[t])
        preds = [chunks[s][:, t - s] for s in range(max(0, t - (T - 1) + 1), t + 1)]
        w = np.exp(-decay * np.arange(len(preds)))  # oldest prediction first, weight 1
        expected = sum(wi * p for wi, p in zip(w, preds, strict=True)) / w.sum()
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert ensemble.inferences == 7


class ToyStreaming(nn.Module):
    """A streaming-style graph: a buffer (state) shifted each call, noise, embodiment code."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.enc = nn.Linear(D + 2, A)

    def forward(self, obs, buffer, noise, code):
        fresh = self.enc(torch.cat([obs, code], 1)) + 0.1 * noise
        nxt = torch.cat([buffer[:, 1:], fresh[:, None]], 1)
        return buffer[:, 0] + fresh, nxt


def test_state_noise_and_embodiment_inputs(tmp_path):
    module = ToyStreaming().eval()
    codes = {"diffdrive": [1.0, 0.0], "holonomic": [0.0, 1.0]}
    spec = {
        "module": module,
        "inputs": [{"name": "obs", "role": "observation", "example": torch.zeros(2, D)},
                   {"name": "buffer", "role": "state", "example": torch.zeros(2, 4, A)},
                   {"name": "noise", "role": "noise", "example": torch.zeros(2, A)},
                   {"name": "code", "role": "embodiment", "example": torch.zeros(2, 2)}],
        "outputs": [{"name": "action", "role": "action"},
                    {"name": "buffer_next", "role": "state"}],
        "metadata": {"policy_kind": "toy-stream", "observation": {"shape": [D]},
                     "action": {"shape": [A]}, "noise_std": 0.5,
                     "state": [{"input": "buffer", "output": "buffer_next", "init": "zeros"}],
                     "embodiments": {"names": list(codes), "codes": list(codes.values()),
                                     "default": "diffdrive"}},
    }  # fmt: skip
    path = tmp_path / "stream.onnx"
    export_policy(None, path, exporter=FAST, spec=spec)
    assert check_parity(None, path, spec=spec, n_random=32)["graph_random"] <= 1e-4
    policy = OnnxPolicy(path, embodiment="holonomic", seed=7)
    rng = np.random.default_rng(7)  # the runtime's draws, in its documented order
    obs = np.random.default_rng(1).normal(size=(6, 3, D)).astype(np.float32)
    buffer = torch.zeros(3, 4, A)
    code = torch.tensor([codes["holonomic"]] * 3)
    for t in range(6):
        if t == 3:
            policy.reset(env_ids=[2])
            buffer[2] = 0.0
        noise = torch.from_numpy((rng.standard_normal((3, A)) * 0.5).astype(np.float32))
        with torch.no_grad():
            expected, buffer = module(torch.from_numpy(obs[t]), buffer, noise, code)
        np.testing.assert_allclose(policy.act(obs[t]), expected.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="embodiment table"):
        OnnxPolicy(path, embodiment="quadruped")
    with pytest.raises(RuntimeError, match="state"):
        policy.predict(obs[0])


class ToyDenoiser(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Linear(T * A + 1 + H * D, 64), nn.Mish(), nn.Linear(64, T * A))

    def forward(self, sample, timestep, cond):
        b = sample.shape[0]
        t = timestep.to(sample.dtype).reshape(b, 1) / 100.0
        return self.net(torch.cat([sample.reshape(b, -1), t, cond.reshape(b, -1)], 1)).reshape(
            b, T, A
        )


class Affine(nn.Module):
    def __init__(self, scale, offset):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale))
        self.register_buffer("offset", torch.tensor(offset))

    def forward(self, x):
        return x * self.scale + self.offset


def squaredcos_alphas_cumprod(n: int = 100) -> np.ndarray:
    """The ``squaredcos_cap_v2`` schedule (Nichol & Dhariwal), betas capped at 0.999."""
    f = [math.cos((i / n + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(n + 1)]
    betas = np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(n)])
    return np.cumprod(1.0 - betas)


def test_denoise_mode_runs_the_sampling_loop_in_the_runtime(tmp_path):
    """A toy denoiser exported as one DDIM step; the runtime's loop (coefficients from the
    metadata) must match the same loop written in torch."""
    ac = squaredcos_alphas_cumprod()
    timesteps = list(range(90, -1, -10))
    steps = ddim_steps(ac, timesteps, num_train_timesteps=100)
    denoiser = ToyDenoiser().eval()
    obs_norm, act_unnorm = Affine([0.5] * D, [0.1] * D), Affine([2.0, 3.0], [0.5, -1.0])
    step = DenoiserStep(denoiser, prediction_type="epsilon", clip_sample=1.0,
                        obs_normalize=obs_norm, action_unnormalize=act_unnorm,
                        action_low=torch.tensor([-2.0, -4.0]),
                        action_high=torch.tensor([2.0, 4.0]))  # fmt: skip
    spec = {
        "module": step.eval(),
        "inputs": [{"name": "obs", "role": "observation", "example": torch.zeros(2, H, D)},
                   {"name": "sample", "role": "sample", "example": torch.zeros(2, T, A)},
                   {"name": "timestep", "role": "timestep",
                    "example": torch.zeros(2, dtype=torch.int64)},
                   {"name": "step_coef", "role": "step_coef", "example": torch.zeros(6)},
                   {"name": "noise", "role": "noise", "example": torch.zeros(2, T, A)}],
        "outputs": [{"name": "next_sample", "role": "sample"}, {"name": "chunk", "role": "chunk"}],
        "metadata": {"policy_kind": "toy-diffusion", "mode": "denoise",
                     "observation": {"shape": [D]},
                     "action": {"shape": [A], "low": [-2.0, -4.0], "high": [2.0, 4.0]},
                     "horizons": {"observation": H, "prediction": T, "execute": 4, "start": 1},
                     "denoise": {"steps": steps, "scheduler": "DDIM", "init_std": 1.0}},
    }  # fmt: skip
    path = tmp_path / "denoise.onnx"
    doc = export_policy(None, path, exporter=FAST, spec=spec)
    assert doc["denoise"]["steps"][0]["timestep"] == 90
    assert check_parity(None, path, spec=spec, n_random=32)["graph_random"] <= 1e-4

    obs = np.random.default_rng(4).normal(size=(3, H, D)).astype(np.float32)
    policy = OnnxPolicy(path, seed=11)
    got = policy.predict(obs)
    x = torch.from_numpy(np.random.default_rng(11).standard_normal((3, T, A)).astype(np.float32))
    cond = obs_norm(torch.from_numpy(obs))
    with torch.no_grad():
        for i, t in enumerate(timesteps):  # DDIM, eta 0, epsilon prediction, clipped x0
            a_t, a_prev = ac[t], (ac[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0)
            eps = denoiser(x, torch.full((3,), t), cond)
            x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        expected = torch.clamp(act_unnorm(x), torch.tensor([-2.0, -4.0]), torch.tensor([2.0, 4.0]))
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)
    assert policy.inferences == 1  # one loop of 10 graph calls per inference

    # act(): the loop runs once per 4 executed actions (receding horizon from index 1).
    policy = OnnxPolicy(path, seed=11)
    first = [policy.act(obs[:, -1]) for _ in range(4)]
    assert policy.inferences == 1
    policy.act(obs[:, -1])
    assert policy.inferences == 2
    history = np.repeat(obs[:, -1:], H, axis=1)  # an episode's first obs fills the history
    chunk = OnnxPolicy(path, seed=11).predict(history)
    np.testing.assert_allclose(np.stack(first, 1), chunk[:, 1:5], atol=1e-6)


# -- the export and control stages ------------------------------------------------------------
def test_export_and_control_stages(tmp_path):
    from robodistill.config import ConfigError, load_config
    from robodistill.control import run_control
    from robodistill.export import run_export

    overrides = [
        f"runs_dir={tmp_path / 'runs'}", "name=deploy", "env.id=Pendulum-v1",
        "env.max_episode_steps=10", "export.exporter=torchscript", "export.quantize=true",
        "export.parity_random=32", "export.parity_real_steps=20", "export.latency_calls=20",
        "control.hz=200", "control.episodes=2",
    ]  # fmt: skip
    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError, match="export.policy: auto found no policy"):
        run_export(cfg)
    with pytest.raises(ConfigError, match="control.model"):
        run_control(cfg)
    _, _, policy = sb3_policy("ppo")
    policy.save(tmp_path / "runs" / "deploy" / "teach" / "policy")

    metrics = run_export(cfg)
    assert max(metrics["parity"].values()) <= 1e-4 and metrics["real_observations"] == 20
    int8 = metrics["int8"]
    assert metrics["latency_ms"]["median"] > 0 and int8["latency_ms"]["median"] > 0
    # Really quantized (the actions differ), yet close: within 5 % of Pendulum's action
    # range of 4 (0.8 % measured), on the stage's observations and on fresh ones here.
    assert int8["max_abs_diff"] > 0.0 and int8["max_diff_of_range"] <= 0.05
    assert int8["max_abs_diff"] == pytest.approx(4.0 * int8["max_diff_of_range"])
    full, q = OnnxPolicy(metrics["model"]), OnnxPolicy(int8["model"])
    assert full.integrity == "verified" and q.integrity == "verified"
    fresh = random_observations(full.metadata, 256, np.random.default_rng(1))
    assert 0.0 < np.abs(full.predict(fresh) - q.predict(fresh)).max() <= 0.05 * 4.0
    doc = read_metadata(metrics["model"])
    assert doc["env_id"] == "Pendulum-v1" and doc["control_rate_hz"] == 20.0
    assert doc["source"]["run"] == "deploy" and doc["observation"]["layout"] is None
    assert run_export(cfg) == metrics  # done: skipped, same metrics

    result = run_control(cfg)
    assert result["episodes"] == 2 and result["ticks"] == 20 and result["reason"] == "robot done"
    assert result["hz"] == 200 and "p99" in result["latency_ms"]
    # Pendulum's observations lie within the bounds the file declares: no bounds (or any
    # other) fault; only lateness depends on this machine's load.
    assert doc["observation"]["low"] == [-1.0, -1.0, -8.0]
    assert {k: v for k, v in result["faults"].items() if k != "late"} == dict.fromkeys(
        set(result["faults"]) - {"late"}, 0
    )
    ticks = (tmp_path / "runs" / "deploy" / "control" / "ticks.jsonl").read_text().splitlines()
    assert len(ticks) == 21 and json.loads(ticks[-1])["event"] == "stop"
