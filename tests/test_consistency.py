"""Consistency student: the boundary condition, the distillation signal, sampling and acting,
checkpoints, ONNX export, and the distill stage end to end with resume. Tiny networks."""

from __future__ import annotations

import copy
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robodistill.collect import run_collect
from robodistill.config import ConfigError, load_config
from robodistill.core.seeds import STUDENT_ROLLOUT_SEED_OFFSET, episode_seeds
from robodistill.deploy.export import check_parity, export_policy
from robodistill.deploy.runtime import OnnxPolicy
from robodistill.distill import stage as distill
from robodistill.distill.consistency import _build, observation_windows, run_distill_consistency
from robodistill.distill.teachers import load_diffusion_teacher
from robodistill.policies import load_policy
from robodistill.policies.consistency import ConsistencyStudent, update_target
from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from robodistill.policies.normalizer import Normalizer
from robodistill.teach.stage import run_teach
from robodistill.training import loop as training_loop

OBS, ACT, TO, H, TA = 3, 2, 2, 8, 4
LOW, HIGH = [-2.0, -1.5], [2.0, 1.5]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _windows(n: int, seed: int) -> dict[str, np.ndarray]:
    """Windows whose actions are a smooth function of the last observation: learnable."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, size=(n, TO, OBS)).astype(np.float32)
    ramp = np.linspace(0, 1, H, dtype=np.float32)[None, :, None]
    action = (np.tanh(2 * obs[:, -1:, :ACT]) * (1 - ramp) + 0.5 * ramp) * np.float32([1.8, 1.2])
    return {"obs": obs, "action": action}


@pytest.fixture(scope="module")
def teacher() -> DiffusionPolicy:
    """A tiny diffusion teacher imitating :func:`_windows` for a few dozen steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the function-scoped one_torch_thread
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = DiffusionPolicyConfig(
            obs_dim=OBS, action_dim=ACT, obs_horizon=TO, pred_horizon=H, action_horizon=TA,
            down_dims=(8, 16), n_groups=4, step_embed_dim=16, num_inference_steps=4,
            action_low=LOW, action_high=HIGH,
        )  # fmt: skip
        stats = {"obs": {"min": [-1.0] * OBS, "max": [1.0] * OBS},
                 "action": {"min": [-1.8, -1.2], "max": [1.8, 1.2]}}  # fmt: skip
        policy = DiffusionPolicy(config, Normalizer.from_stats(stats))
        optimizer = torch.optim.AdamW(policy.net.parameters(), lr=3e-3)
        gen, batch = torch.Generator().manual_seed(0), _windows(32, 0)
        for _ in range(40):
            loss, _ = policy.compute_loss(batch, gen)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        policy.ema_net.load_state_dict(policy.net.state_dict())
    torch.set_num_threads(threads)
    return policy


def _student(teacher, **kw) -> ConsistencyStudent:
    return ConsistencyStudent.from_teacher(teacher, ode_steps=kw.pop("ode_steps", 10), **kw)


def _obs_hist(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(batch, TO, OBS)).astype(np.float32)


# -- the parametrization -------------------------------------------------------------------------


def test_boundary_condition_is_exact(teacher):
    student = _student(teacher)
    table = student.table
    assert table["c_skip"][0].item() == 1.0 and table["c_out"][0].item() == 0.0
    x = torch.randn(5, H, ACT, generator=torch.Generator().manual_seed(1)) * 3
    cond = student.condition(_obs_hist(5))
    scaled = x / table["sqrt_alpha"][0]
    for t in (0, torch.zeros(5, dtype=torch.long)):
        with torch.no_grad():
            assert torch.equal(student.consistency_fn(x, t, cond), scaled)
    a0 = float(student.schedules.ddpm.alphas_cumprod[0])
    torch.testing.assert_close(scaled, x / a0**0.5, rtol=1e-6, atol=0)
    # Far from the boundary the skip path vanishes and the network carries ~sigma_data.
    assert table["c_skip"][-1] < 1e-6 and abs(table["c_out"][-1] - 0.5) < 1e-3
    assert torch.all(table["c_skip"][1:] < table["c_skip"][:-1])
    # Both networks start as the teacher's EMA network; the normalizer is a copy.
    for net in (student.net, student.ema_net):
        for k, v in teacher.ema_net.state_dict().items():
            assert torch.equal(net.state_dict()[k], v), k
    assert student.normalizer is not teacher.normalizer
    assert torch.equal(student.normalizer.action_scale, teacher.normalizer.action_scale)
    assert student.config.inference_timesteps == [99]
    assert student.grid.tolist() == [0, 10, 20, 30, 40, 50, 59, 69, 79, 89, 99]


def test_distillation_reduces_the_consistency_loss(teacher):
    student = _student(teacher)
    target = copy.deepcopy(student.net).requires_grad_(False)
    frozen = copy.deepcopy(teacher.ema_net.state_dict())
    optimizer = torch.optim.AdamW(student.net.parameters(), lr=3e-3, betas=(0.95, 0.999))
    gen, batch = torch.Generator().manual_seed(0), _windows(32, 1)
    losses = []
    for _ in range(40):
        loss, logs = student.compute_loss(batch, teacher.ema_net, target, gen, loss="mse",
                                          dsm_weight=0.1)  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        update_target(target, student.net, 0.9)
        assert logs["loss"] == pytest.approx(logs["consistency"] + 0.1 * logs["dsm"], rel=1e-5)
        losses.append(logs["consistency"])
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.8 * first, (first, last)
    # Neither the teacher nor the target net trained.
    assert all(p.grad is None for p in teacher.ema_net.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.ema_net.state_dict().items())
    assert all(p.grad is None for p in target.parameters())
    huber, _ = student.compute_loss(batch, teacher.ema_net, target, gen)
    assert torch.isfinite(huber) and huber > 0
    with pytest.raises(ValueError, match="loss must be one of"):
        student.compute_loss(batch, teacher.ema_net, target, gen, loss="l1")


def test_the_trajectory_term_pulls_the_one_step_sample_onto_the_teachers_sampler(teacher):
    """The student's 1-step chunk from noise z approaches the teacher's DDIM chunk from the
    same z; the teacher's sampler is the target (its own map from noise to chunks)."""
    student = _student(teacher)
    obs = _obs_hist(16, 3)
    z = torch.randn(16, H, ACT, generator=torch.Generator().manual_seed(5))

    def gap() -> float:
        with torch.no_grad():
            mine = student.predict_action_chunk(obs, noise=z, use_ema=False)
            theirs = teacher.predict_action_chunk(obs, noise=z)
        return float((mine - theirs).pow(2).mean())

    # ddim_from is predict_action_chunk's chain in normalized units, not clipped.
    cond = teacher.condition(obs)
    torch.testing.assert_close(
        teacher.normalizer.unnormalize("action", teacher.ddim_from(cond, z).clamp(-1, 1)),
        teacher.predict_action_chunk(obs, noise=z))  # fmt: skip
    before = gap()
    frozen = copy.deepcopy(teacher.ema_net.state_dict())
    optimizer = torch.optim.AdamW(student.net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(200):
        loss = student.trajectory_loss(_windows(32, step)["obs"], teacher, gen, loss="mse")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert gap() < 0.4 * before, (before, gap())
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.ema_net.state_dict().items())
    with pytest.raises(ValueError, match="loss must be one of"):
        student.trajectory_loss(obs, teacher, gen, loss="l1")


# -- sampling and acting -------------------------------------------------------------------------


def test_chunks_are_bounded_repeatable_and_act_through_the_queue(teacher):
    student = _student(teacher)
    obs = _obs_hist(3)
    noise = torch.randn(3, 1, H, ACT, generator=torch.Generator().manual_seed(2))
    chunk = student.predict_action_chunk(obs, noise=noise)
    assert chunk.shape == (3, H, ACT)
    lo, hi = torch.tensor([-1.8, -1.2]), torch.tensor([1.8, 1.2])  # the normalizer's range
    assert torch.all(chunk >= lo - 1e-5) and torch.all(chunk <= hi + 1e-5)
    assert torch.equal(student.predict_action_chunk(obs, noise=noise), chunk)
    assert torch.equal(student.predict_action_chunk(obs, noise=noise[:, 0]), chunk)  # S = 1
    assert not torch.equal(student.predict_action_chunk(obs, noise=-noise), chunk)
    with pytest.raises(ValueError, match=r"noise must have shape \(3, 1, 8, 2\)"):
        student.predict_action_chunk(obs, noise=torch.zeros(3, 2, H, ACT))

    two = _student(teacher, inference_steps=2)
    assert two.config.inference_timesteps == [99, 50] and two.inference_steps == 2
    z = torch.randn(3, 2, H, ACT, generator=torch.Generator().manual_seed(3))
    out = two.predict_action_chunk(obs, noise=z)
    assert out.shape == (3, H, ACT) and torch.equal(two.predict_action_chunk(obs, noise=z), out)
    assert not torch.equal(out, two.predict_action_chunk(obs, noise=z[:, [0, 0]]))

    def episode() -> np.ndarray:
        student.reset()
        steps = np.random.default_rng(4).uniform(-1, 1, size=(2 * TA + 1, 4, OBS))
        return np.stack([student.act(o.astype(np.float32)) for o in steps])

    actions = episode()
    assert actions.shape == (2 * TA + 1, 4, ACT) and actions.dtype == np.float32
    assert np.all(actions >= np.float32(LOW)) and np.all(actions <= np.float32(HIGH))
    np.testing.assert_array_equal(episode(), actions)  # reset reseeds the noise generator
    student.reset(env_ids=[1])
    assert student.act(np.zeros((4, OBS), np.float32)).shape == (4, ACT)


def test_save_load_round_trip(teacher, tmp_path):
    student = _student(teacher, inference_steps=2, sigma_data=0.7)
    with torch.no_grad():  # make net, ema_net and the normalizer all differ from the defaults
        for p in student.ema_net.parameters():
            p.add_(0.05 * torch.randn_like(p))
        student.normalizer.obs_offset.add_(0.25)
    loaded = load_policy(student.save(tmp_path / "student"))
    assert isinstance(loaded, ConsistencyStudent)
    assert loaded.config.to_dict() == student.config.to_dict()
    for name in ("net", "ema_net", "normalizer"):
        a, b = getattr(student, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    obs, z = _obs_hist(4), torch.randn(4, 2, H, ACT)
    for use_ema in (True, False):
        torch.testing.assert_close(loaded.predict_action_chunk(obs, noise=z, use_ema=use_ema),
                                   student.predict_action_chunk(obs, noise=z, use_ema=use_ema),
                                   rtol=0, atol=0)  # fmt: skip
    config = json.loads((tmp_path / "student/config.json").read_text())
    assert config["kind"] == "consistency" and config["policy"]["sigma_data"] == 0.7


def test_onnx_export_matches_torch(teacher, tmp_path):
    student = _student(teacher, inference_steps=2)
    with torch.no_grad():  # the export must use the EMA network
        for p in student.ema_net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "consistency.onnx"
    doc = export_policy(student, path, exporter="torchscript")
    assert doc["mode"] == "direct" and doc["policy_kind"] == "consistency"
    assert doc["horizons"] == {"observation": TO, "prediction": H, "execute": TA, "start": TO - 1}
    assert [(e["name"], e["role"], e["shape"]) for e in doc["inputs"]] == [
        ("obs", "observation", ["batch", TO, OBS]), ("noise", "noise", ["batch", 2, H, ACT])]  # fmt: skip
    assert doc["outputs"][0]["shape"] == ["batch", H, ACT] and doc["noise_std"] == 1.0
    assert check_parity(student, path, tol=1e-4, n_random=16)["graph_random"] <= 1e-4

    # The runtime draws noise (B, S, H, A) from rng(seed) per inference: feed torch the same.
    obs = _obs_hist(4, seed=5) * 1.5
    got = OnnxPolicy(path, seed=7).predict(obs)
    z = np.random.default_rng(7).standard_normal((4, 2, H, ACT)).astype(np.float32)
    expected = student.predict_action_chunk(obs, noise=z).clamp(torch.tensor(LOW),
                                                                torch.tensor(HIGH))  # fmt: skip
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)
    runtime = OnnxPolicy(path)
    runtime.reset()
    actions = [runtime.act(o) for o in np.random.default_rng(6).uniform(-1, 1, (TA + 1, 3, OBS))]
    assert actions[-1].shape == (3, ACT) and runtime.inferences == 2


# -- the distill stage ---------------------------------------------------------------------------

DISTILL = [
    "distill.students=[consistency]",
    "distill.consistency.steps=4",
    "distill.consistency.batch_size=8",
    "distill.consistency.warmup_steps=1",
    "distill.consistency.ode_steps=10",
    "distill.consistency.eval_every=2",
    "distill.consistency.checkpoint_every=2",
    "distill.consistency.log_every=2",
    "distill.consistency.eval_episodes=2",
]


def test_distill_stage_end_to_end_with_resume(tiny_overrides, tmp_path, monkeypatch):
    run_collect(load_config(None, tiny_overrides))
    run_teach(load_config(None, tiny_overrides))
    runs = tmp_path / "runs"
    shared = [*tiny_overrides, *DISTILL, f"distill.teacher={runs / 'default/teach/policy'}",
              f"teach.rl100.demos={runs / 'default/collect/demos.zarr'}"]  # fmt: skip
    metrics = distill.run_distill(load_config(None, [*shared, "name=straight"]))["consistency"]
    out = runs / "straight/distill/consistency"
    assert metrics["steps"] == 4 and [e["step"] for e in metrics["evals"]] == [2, 4]
    assert metrics["best_step"] in (2, 4) and metrics["policy"] == str(out / "policy")
    assert metrics["inference_steps"] == 1 and metrics["num_parameters"] > 0
    assert metrics["final_loss"] > 0 and metrics["resumed_from_step"] == 0
    assert json.loads((out / "result.json").read_text()) == metrics
    assert json.loads((out / "best.json").read_text())["step"] == metrics["best_step"]
    student = load_policy(out / "policy")
    assert isinstance(student, ConsistencyStudent) and student.config.pred_horizon == 4
    rows = [
        json.loads(x) for x in (runs / "straight/distill/metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows if "consistency" in r] == [2, 4]

    class Stage:  # a finished student returns its stored result without training
        dir = runs / "straight/distill"

    cfg = load_config(None, [*shared, "name=straight"])
    assert run_distill_consistency(cfg, Stage(), runs / "default/teach/policy") == metrics

    original = training_loop.save_checkpoint

    def save_then_crash(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt  # as if Ctrl-C arrived right after the first checkpoint

    monkeypatch.setattr(training_loop, "save_checkpoint", save_then_crash)
    resumed_cfg = load_config(None, [*shared, "name=resumed"])
    with pytest.raises(KeyboardInterrupt):
        distill.run_distill(resumed_cfg)
    resumed_dir = runs / "resumed/distill/consistency"
    assert json.loads((resumed_dir / "checkpoint/state.json").read_text())["step"] == 2
    assert not (resumed_dir / "result.json").exists()
    monkeypatch.setattr(training_loop, "save_checkpoint", original)
    again = distill.run_distill(resumed_cfg)["consistency"]
    assert again["resumed_from_step"] == 2 and again["steps"] == 4
    # Optimizer, schedule, target, EMA and RNG states were restored: the same weights.
    a = load_policy(out / "checkpoint/policy")
    b = load_policy(resumed_dir / "checkpoint/policy")
    for name in ("net", "ema_net"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_a_teacher_that_is_not_a_diffusion_policy_is_refused(teacher, tmp_path):
    path = _student(teacher).save(tmp_path / "not-a-teacher")
    with pytest.raises(ConfigError, match=r"distill\.teacher: .* 'consistency' policy"):
        load_diffusion_teacher(path, "consistency")


def test_observation_windows_pad_with_the_first_observation():
    obs = np.arange(8, dtype=np.float32).reshape(4, 2)
    w = observation_windows(obs, 3)
    assert w.shape == (4, 3, 2)
    np.testing.assert_array_equal(w[0], obs[[0, 0, 0]])
    np.testing.assert_array_equal(w[1], obs[[0, 0, 1]])
    np.testing.assert_array_equal(w[3], obs[[1, 2, 3]])


def test_the_student_trains_on_the_states_it_visits_and_resumes_them(tiny_overrides, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    run_collect(load_config(None, tiny_overrides))
    run_teach(load_config(None, tiny_overrides))
    runs = tmp_path / "runs"
    shared = [*tiny_overrides, *DISTILL, f"distill.teacher={runs / 'default/teach/policy'}",
              f"teach.rl100.demos={runs / 'default/collect/demos.zarr'}",
              "distill.consistency.trajectory_weight=1", "distill.consistency.visited_every=1",
              "distill.consistency.visited_episodes=2"]  # fmt: skip
    cfg = load_config(None, [*shared, "name=visited"])
    metrics = distill.run_distill(cfg)["consistency"]
    # Rounds after steps 1, 2 and 3 (none after the last): 3 rounds x 2 episodes x 12 steps.
    assert metrics["visited_rounds"] == 3 and metrics["visited_windows"] == 72
    tensors = load_file(runs / "visited/distill/consistency/checkpoint/optimizer.safetensors")
    pool = tensors["visited.windows"].numpy()
    assert pool.shape == (72, 2, 3)
    # The pool's first window is the first rollout seed's reset observation, padded.
    env = gym.make("Pendulum-v1")
    first, _ = env.reset(seed=episode_seeds(cfg, 1, STUDENT_ROLLOUT_SEED_OFFSET)[0])
    np.testing.assert_allclose(pool[0], np.stack([first, first]), atol=1e-6)

    original = training_loop.save_checkpoint

    def save_then_crash(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training_loop, "save_checkpoint", save_then_crash)
    resumed_cfg = load_config(None, [*shared, "name=visited-resumed"])
    with pytest.raises(KeyboardInterrupt):
        distill.run_distill(resumed_cfg)
    monkeypatch.setattr(training_loop, "save_checkpoint", original)
    again = distill.run_distill(resumed_cfg)["consistency"]
    assert again["resumed_from_step"] == 2
    assert again["visited_rounds"] == 3 and again["visited_windows"] == 72
    a = load_policy(runs / "visited/distill/consistency/checkpoint/policy")
    b = load_policy(runs / "visited-resumed/distill/consistency/checkpoint/policy")
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_visited_states_need_the_trajectory_term(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, *DISTILL, "distill.consistency.visited_every=1"])
    with pytest.raises(ConfigError, match=r"distill\.consistency\.trajectory_weight"):
        _build(cfg, tmp_path / "unused")
