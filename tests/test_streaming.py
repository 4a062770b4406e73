"""Streaming Diffusion Policy student: the noise staircase and the buffer shift, training
signal, per-row acting, checkpoints, ONNX export with the runtime, the UNet's optional
``local_cond`` and the distill trainer end to end (with resume). Tiny networks."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from robodistill.collect import run_collect
from robodistill.config import ConfigError, load_config
from robodistill.core.latency import count_network_calls
from robodistill.core.rundir import StageRun
from robodistill.data.demos import load_demos
from robodistill.deploy.export import check_parity, export_policy
from robodistill.deploy.runtime import OnnxPolicy
from robodistill.distill.streaming import run_distill_streaming
from robodistill.distill.teachers import load_diffusion_teacher
from robodistill.policies import load_policy
from robodistill.policies.diffusion_nets import ConditionalUnet1D, UnetConfig
from robodistill.policies.normalizer import Normalizer
from robodistill.policies.streaming import StreamingStudent, StreamingStudentConfig
from robodistill.teach.rl100.imitation import build_policy
from robodistill.training import loop as training_loop
from robodistill.training.selection import selection_key

OBS, ACT, TO, HB, T = 3, 2, 2, 8, 100
LOW, HIGH = [-2.0, -1.5], [2.0, 1.5]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _student(**kw) -> StreamingStudent:
    torch.manual_seed(0)
    config = StreamingStudentConfig(**{
        "obs_dim": OBS, "action_dim": ACT, "obs_horizon": TO, "buffer_horizon": HB,
        "down_dims": (16, 32), "n_groups": 4, "step_embed_dim": 16, "action_low": LOW,
        "action_high": HIGH, **kw})  # fmt: skip
    stats = {"obs": {"min": [-1.0, 0.0, 2.0], "max": [1.0, 4.0, 3.0]},
             "action": {"min": [-2.5, -1.0], "max": [2.5, 1.0]}}  # fmt: skip
    policy = StreamingStudent(config, Normalizer.from_stats(stats))
    with torch.no_grad():  # the EMA network differs from net: acting and export must use it
        for p in policy.ema_net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy


class Oracle(nn.Module):
    """A perfect noise predictor: returns the noise the buffer was made with."""

    def __init__(self, eps: torch.Tensor):
        super().__init__()
        self.eps, self.calls = eps, []

    def forward(self, sample, timestep, global_cond, local_cond):
        self.calls.append((timestep.clone(), local_cond.clone()))
        return self.eps


@pytest.mark.parametrize("calls", [1, 3])
def test_staircase_and_buffer_shift(calls):
    policy = _student(calls_per_step=calls)
    stair = policy.staircase
    assert stair.shape == (HB,) and stair[0] == -1 and (stair.diff() > 0).all()
    assert stair[-1] >= (T - 1) - 1.5 * T / HB and policy.levels[-1] == T - 1
    alpha = policy.alpha_at
    assert alpha(torch.tensor([-1.0])).item() == 1.0
    ints = torch.arange(T, dtype=torch.float64)  # integer levels: diffusers' own alphas
    torch.testing.assert_close(alpha(ints), policy.schedules.ddpm.alphas_cumprod.double())

    # A perfect network takes every element exactly one slot down: element i, made at
    # level L_{i+1}, ends at L_i (element 0 clean), then the buffer shifts left by one.
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, HB, ACT, generator=g) * 1.6 - 0.8
    eps = torch.randn(3, HB, ACT, generator=g)
    noise = torch.randn(3, 1, ACT, generator=g)
    obs = torch.randn(3, TO, OBS, generator=g)

    def noised(levels):
        a = alpha(levels.float())[None, :, None]
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    oracle = Oracle(eps)
    step = policy.step_module(oracle, policy.normalizer)
    steady = torch.ones(3, 1)
    action, nxt, age = step(obs, noised(policy.levels[1:]), steady, noise)
    # (float32: x0 from the top level divides by sqrt(alpha_{T-1}) ~ 5e-4)
    torch.testing.assert_close(nxt[:, :-1], noised(policy.levels[:-1])[:, 1:], atol=2e-3, rtol=0)
    torch.testing.assert_close(nxt[:, :-2], noised(policy.levels[:-1])[:, 1:-1], atol=1e-5, rtol=0)
    assert torch.equal(nxt[:, -1:], noise) and torch.equal(age, torch.full((3, 1), 2.0))
    expected = policy.normalizer.unnormalize("action", x0[:, 0])
    torch.testing.assert_close(action, expected.clamp(torch.tensor(LOW), torch.tensor(HIGH)))
    assert len(oracle.calls) == calls
    t, local = oracle.calls[0]  # each element's level reaches the network via local_cond
    torch.testing.assert_close(local[0, :, 0].double() * T - 1, policy.levels[1:], atol=1e-5,
                               rtol=0)  # fmt: skip
    torch.testing.assert_close(t, torch.full((3,), float(policy.levels[1:].mean())))

    # A fresh episode: every element at the top level, the same number of calls.
    fresh = torch.zeros(3, 1)
    _, nxt, age = step(obs, noised(policy.levels[-1].expand(HB)), fresh, noise)
    torch.testing.assert_close(nxt[:, :-1], noised(policy.levels[:-1])[:, 1:], atol=2e-3, rtol=0)
    assert len(oracle.calls) == 2 * calls and torch.equal(age, torch.ones(3, 1))

    # The policy's pure step is that graph with the EMA network.
    buffer = torch.randn(3, HB, ACT, generator=g)
    action, nxt = policy.step(obs, buffer, [False, True, False], noise[:, 0])
    assert action.shape == (3, ACT) and torch.equal(nxt[:, -1], noise[:, 0])
    ages = torch.tensor([[1.0], [0.0], [1.0]])
    ref = policy.step_module(policy.ema_net, policy.normalizer)(obs, buffer, ages, noise)
    torch.testing.assert_close(nxt, ref[1])


def test_loss_decreases_on_a_tiny_dataset():
    policy = _student(fresh_prob=0.2)
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, size=(16, TO, OBS)).astype(np.float32)
    ramp = np.linspace(0, 1, TO - 1 + HB, dtype=np.float32)[None, :, None]
    action = np.tanh(obs[:, -1:, :ACT]) * (1 - ramp) + 0.5 * ramp  # a whole window
    batch = {"obs": obs, "action": action}

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(policy.compute_loss(batch, torch.Generator().manual_seed(123))[0])

    before = fixed_loss()
    optimizer = torch.optim.AdamW(policy.net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss, logs = policy.compute_loss(batch, gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert logs["loss"] == pytest.approx(float(loss.detach()))
    assert fixed_loss() < 0.6 * before


def test_act_bounds_per_row_reset_and_measured_calls_per_step():
    policy = _student(calls_per_step=2)
    obs = np.random.default_rng(0).normal(size=(3, OBS)).astype(np.float32)
    policy.reset()
    with count_network_calls(policy) as calls:  # the denoiser's forward calls (a hook)
        first = [policy.act(obs) for _ in range(5)]
    for a in first:
        assert a.shape == (3, ACT) and a.dtype == np.float32
        assert (a >= np.float32(LOW)).all() and (a <= np.float32(HIGH)).all()
    assert calls.calls == 10 and calls.act_rows == 15 and calls.per_step == 2
    assert policy.configured_calls_per_step == 2

    state = {k: v.clone() for k, v in policy._state.items()}
    policy.reset(env_ids=[1])
    s = policy._state
    assert s["age"].flatten().tolist() == [5.0, 0.0, 5.0] and s["hist_len"].tolist() == [5, 0, 5]
    assert torch.equal(s["buffer"][[0, 2]], state["buffer"][[0, 2]])
    assert not torch.equal(s["buffer"][1], state["buffer"][1])
    # Row 1's next action is a fresh episode's: its first observation repeated, the new
    # all-noise buffer at the top level; the others go on from their own buffers.
    buffer, noise = s["buffer"].clone(), copy.deepcopy(policy._rng).standard_normal((3, 1, ACT))
    hist = np.repeat(obs[1:2, None], TO, axis=1)
    fresh, _ = policy.step(hist, buffer[1:2], [True], noise[1:2].astype(np.float32))
    steady, _ = policy.step(hist, buffer[1:2], [False], noise[1:2].astype(np.float32))
    got = policy.act(obs)
    np.testing.assert_allclose(got[1], np.clip(fresh[0].numpy(), LOW, HIGH), atol=1e-6)
    assert np.abs(fresh.numpy() - steady.numpy()).max() > 1e-4  # the flag matters
    assert s["age"].flatten().tolist() == [6.0, 1.0, 6.0]

    policy.reset()  # a full reset reseeds: the evaluation repeats
    np.testing.assert_array_equal(np.stack([policy.act(obs) for _ in range(5)]), np.stack(first))
    with pytest.raises(ValueError, match="call reset"):
        policy.act(obs[:2])


def test_save_load_round_trip(tmp_path):
    policy = _student(calls_per_step=2)
    path = policy.save(tmp_path / "student")
    loaded = load_policy(path)
    assert isinstance(loaded, StreamingStudent)
    assert loaded.config.to_dict() == policy.config.to_dict()
    for name in ("net", "ema_net", "normalizer"):
        a, b = getattr(policy, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    obs = np.random.default_rng(1).normal(size=(2, OBS)).astype(np.float32)
    policy.reset()
    loaded.reset()
    for _ in range(3):
        np.testing.assert_array_equal(policy.act(obs), loaded.act(obs))
    assert json.loads((path / "config.json").read_text())["kind"] == "streaming"


def test_onnx_export_parity_and_runtime(tmp_path):
    policy = _student()
    path = tmp_path / "streaming.onnx"
    doc = export_policy(policy, path, exporter="torchscript")
    assert doc["mode"] == "direct" and doc["policy_kind"] == "streaming"
    assert doc["horizons"] == {"observation": TO, "prediction": HB, "execute": 1, "start": 0}
    assert [(s["input"], s["init"]) for s in doc["state"]] == [("buffer", "normal"),
                                                               ("age", "zeros")]  # fmt: skip
    assert doc["network_calls_per_decision"] == 1 and doc["deterministic"] is False
    report = check_parity(policy, path, tol=1e-4, n_random=16)
    assert report["graph_random"] <= 1e-4

    # The runtime draws the buffer init and each step's noise in the policy's order, so with
    # the same seed it acts as the policy does, per-row reset included.
    runtime = OnnxPolicy(path, seed=policy.config.seed)
    policy.reset()
    obs = np.random.default_rng(4).normal(1.0, 1.0, size=(8, 3, OBS)).astype(np.float32)
    for t in range(len(obs)):
        if t == 4:
            policy.reset(env_ids=[1])
            runtime.reset(env_ids=[1])
        np.testing.assert_allclose(runtime.act(obs[t]), policy.act(obs[t]), atol=1e-4)
    assert runtime.inferences == len(obs)


def test_unet_without_local_cond_is_unchanged():
    kw = dict(action_dim=ACT, global_cond_dim=6, down_dims=(16, 32), n_groups=4,
              step_embed_dim=16)  # fmt: skip
    assert "local_cond_dim" not in UnetConfig(**kw).to_dict()
    torch.manual_seed(0)
    plain = ConditionalUnet1D(UnetConfig(**kw))
    torch.manual_seed(0)
    local = ConditionalUnet1D(UnetConfig(**kw, local_cond_dim=3))
    a, b = plain.state_dict(), local.state_dict()
    assert list(a) == list(b)  # same names; only the input convolutions see more channels
    widened = {k for k in a if a[k].shape != b[k].shape}
    assert widened == {"down.0.0.block1.0.weight", "down.0.0.residual.weight"}
    assert all(a[k].shape[1] == ACT and b[k].shape[1] == ACT + 3 for k in widened)
    x, cond = torch.randn(2, 8, ACT), torch.randn(2, 6)
    assert local(x, torch.tensor([3, 50]), cond, torch.rand(2, 8, 3)).shape == (2, 8, ACT)
    with pytest.raises(ValueError, match="local_cond must be"):
        local(x, 3, cond)
    with pytest.raises(ValueError, match="local_cond_dim is 0"):
        plain(x, 3, cond, torch.rand(2, 8, 3))


# -- the trainer -------------------------------------------------------------------------------


def _cfg(tiny_overrides, teacher, *extra):
    return load_config(None, [
        *tiny_overrides, "distill.students=[streaming]", f"distill.teacher={teacher}",
        "distill.streaming.buffer_horizon=4", "distill.streaming.steps=6",
        "distill.streaming.batch_size=8", "distill.streaming.warmup_steps=1",
        "distill.streaming.eval_every=3", "distill.streaming.checkpoint_every=3",
        "distill.streaming.log_every=3", "distill.streaming.eval_episodes=2", *extra,
    ])  # fmt: skip


def _distill(cfg):
    with StageRun(cfg, "distill") as stage:
        metrics = run_distill_streaming(cfg, stage, cfg.distill.teacher)
        stage.finish({"streaming": metrics})
    return metrics


def test_distill_streaming_end_to_end_and_resume(tiny_overrides, tmp_path, monkeypatch):
    base = load_config(None, tiny_overrides)
    run_collect(base)
    data, stats, attrs = load_demos(base)
    teacher = tmp_path / "teacher"
    torch.manual_seed(0)
    build_policy(base, OBS, 1, stats, attrs["action_low"], attrs["action_high"]).save(teacher)
    demos = f"teach.rl100.demos={tmp_path / 'runs/default/collect/demos.zarr'}"

    cfg = _cfg(tiny_overrides, teacher, demos, "name=straight", "distill.streaming.targets=teacher")
    metrics = _distill(cfg)
    out = tmp_path / "runs/straight/distill/streaming"
    assert metrics["steps"] == 6 and [e["step"] for e in metrics["evals"]] == [3, 6]
    assert metrics["calls_per_step"] == 1  # configured
    assert metrics["network_calls_per_step_measured"] == 1.0  # measured by a forward hook
    assert metrics["network_calls_per_step_measured_max"] == 1.0
    assert all(e["network_calls_per_step"] == 1.0 for e in metrics["evals"])
    assert metrics["final_loss"] > 0
    # The kept student is the first validation with the highest (success rate, return);
    # Pendulum has no info["score"], so max scores are not compared.
    key = lambda e: selection_key(e, metrics["selection"], with_score=False)  # noqa: E731
    chosen = next(e for e in metrics["evals"] if key(e) == max(map(key, metrics["evals"])))
    assert metrics["best_step"] == chosen["step"], metrics["evals"]
    assert metrics["best_success_rate"] == chosen["success_rate"]
    assert metrics["best_return_mean"] == chosen["return_mean"]
    # Teacher weights: all but the input convolutions' local_cond channels.
    assert metrics["init_from_teacher"] == {"copied": metrics["init_from_teacher"]["copied"],
                                            "partial": 2, "kept": 0}  # fmt: skip
    student = load_policy(metrics["policy"])
    assert isinstance(student, StreamingStudent) and student.config.buffer_horizon == 4
    assert student.config.obs_horizon == 2 and student.config.action_low == [-2.0]
    assert json.loads((out / "result.json").read_text()) == metrics
    rows = [json.loads(x) for x in (out.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [3, 6]
    with StageRun(cfg, "distill") as stage:  # done: result.json is returned, nothing runs
        assert run_distill_streaming(cfg, stage, teacher) == metrics

    # Interrupted right after the first checkpoint, then resumed: the same weights.
    original = training_loop.save_checkpoint

    def save_then_crash(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training_loop, "save_checkpoint", save_then_crash)
    resumed_cfg = _cfg(tiny_overrides, teacher, demos, "name=resumed",
                       "distill.streaming.targets=teacher")  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        _distill(resumed_cfg)
    monkeypatch.setattr(training_loop, "save_checkpoint", original)
    resumed = _distill(resumed_cfg)
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == 6
    a = load_policy(out / "policy_last")
    b = load_policy(tmp_path / "runs/resumed/distill/streaming/policy_last")
    for name in ("net", "ema_net"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name

    # Demonstration targets, and a teacher that is not a diffusion policy.
    demo_metrics = _distill(_cfg(tiny_overrides, teacher, demos, "name=demos"))
    assert demo_metrics["targets"] == "demos" and demo_metrics["steps"] == 6
    with pytest.raises(ConfigError, match="distill.teacher"):
        load_diffusion_teacher(metrics["policy"], "streaming")


def test_the_noise_mixture_draws_constant_levels_in_its_share():
    policy = _student(fresh_prob=0.1, constant_prob=0.2)
    levels = policy.sample_levels(4000, torch.Generator().manual_seed(0))
    top = policy.levels[-1].float()
    # Staircase rows rise along the buffer; fresh rows (one call per step) sit at the top.
    constant = (levels == levels[:, :1]).all(1) & (levels[:, 0] != top)
    assert constant.float().mean().item() == pytest.approx(0.2 * 0.99, abs=0.03)
    t = levels[constant, 0]
    assert t.min() >= 0 and t.max() <= policy.config.num_train_timesteps - 1
    assert len(t.unique()) > policy.config.num_train_timesteps // 2  # spread over the range
    # Off, no buffer is at one level and the draws are the ones a run without the key made.
    plain = _student(fresh_prob=0.1).sample_levels(4000, torch.Generator().manual_seed(0))
    assert not ((plain == plain[:, :1]).all(1) & (plain[:, 0] != top)).any()
    with pytest.raises(ValueError, match="constant_prob"):
        _student(fresh_prob=0.5, constant_prob=0.6)
