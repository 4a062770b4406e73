"""DAgger student: MLPStudent policy, the KL/MSE losses, rounds, aggregation, resume, eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from robodistill.config import ConfigError, load_config
from robodistill.core.rollout import rollout
from robodistill.distill import dagger as distill_dagger
from robodistill.distill.aggregation import beta_for_round
from robodistill.distill.dagger import dagger_loss, label, resolve_loss
from robodistill.distill.stage import run_distill
from robodistill.envs import make_env
from robodistill.evaluate import run_eval
from robodistill.policies import RandomPolicy, load_policy
from robodistill.policies.mlp_student import MLPStudent, array_stats, gaussian_kl
from robodistill.policies.sb3_policy import SB3Policy

ENV = "Pendulum-v1"
STEPS = 20  # episode length: every episode is exactly 20 steps (Pendulum never terminates)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny SB3 PPO teacher (a few updates: the labels are what matter, not its skill)."""
    venv = VecNormalize(DummyVecEnv([lambda: make_env(ENV)]))
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=32, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16, 16]})  # fmt: skip
    model.learn(128)
    return SB3Policy.from_model(model, venv).save(tmp_path_factory.mktemp("teacher") / "policy")


def _cfg(tmp_path, teacher, *extra):
    return load_config(None, [
        f"runs_dir={tmp_path / 'runs'}", f"env.id={ENV}", "env.num_envs=2",
        f"env.max_episode_steps={STEPS}", f"distill.teacher={teacher}",
        "distill.students=[dagger]", "distill.dagger.rounds=3",
        "distill.dagger.episodes_per_round=2", "distill.dagger.epochs=5",
        "distill.dagger.batch_size=16", "distill.dagger.hidden=[32, 32]",
        "distill.dagger.eval_episodes=2", "distill.dagger.beta_decay=0", *extra,
    ])  # fmt: skip


def _obs(n=17, seed=0):
    return (np.random.default_rng(seed).normal(size=(n, 3)) * 2).astype(np.float32)


def _student(head="gaussian", squash="clip", seed=0):
    env = make_env(ENV)
    obs = _obs(200, seed)
    acts = np.random.default_rng(seed + 1).normal(size=(200, 1)) * 0.5
    stats = array_stats(acts)
    return MLPStudent.build(env.observation_space, env.action_space, array_stats(obs), stats,
                            hidden=[8, 8], head=head, squash=squash, seed=seed,
                            log_std_stats=array_stats(acts - 1.0))  # fmt: skip


def _rows(data, round_index, seed):
    keep = (data["round"] == round_index) & (data["seed"] == seed)
    return data["obs"][keep]


# -- MLPStudent and the losses -----------------------------------------------------------------


def test_gaussian_kl_is_analytic_kl_and_zero_for_equal_gaussians():
    g = torch.Generator().manual_seed(0)
    mp, lp, mq, lq = (torch.randn(5, 3, generator=g) for _ in range(4))
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mp, lp.exp()), torch.distributions.Normal(mq, lq.exp())
    ).sum(-1)
    torch.testing.assert_close(gaussian_kl(mp, lp, mq, lq), expected)
    assert torch.all(gaussian_kl(mp, lp, mq, lq) > 0)
    assert torch.all(gaussian_kl(mp, lp, mp, lp).abs() < 1e-6)


def test_kl_loss_is_zero_when_the_student_equals_the_teacher():
    teacher, other = _student(seed=0), _student(seed=3)
    obs = _obs()
    targets = {k: torch.from_numpy(v) for k, v in label(teacher, obs, "kl").items()}
    with torch.no_grad():
        assert float(dagger_loss(teacher, torch.from_numpy(obs), targets, "kl")) < 1e-6
        assert float(dagger_loss(other, torch.from_numpy(obs), targets, "kl")) > 1e-3


@pytest.mark.parametrize(("head", "squash"), [("gaussian", "clip"), ("deterministic", "tanh")])
def test_mlp_student_save_load_round_trip(tmp_path, head, squash):
    student = _student(head, squash)
    obs = _obs()
    actions = student.act(obs)
    assert actions.shape == (17, 1) and actions.dtype == np.float32
    assert np.all(actions >= -2.0) and np.all(actions <= 2.0)
    loaded = load_policy(student.save(tmp_path / "student"))
    assert isinstance(loaded, MLPStudent)
    np.testing.assert_array_equal(loaded.act(obs), actions)
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["kind"] == "mlp_student" and config["head"] == head
    assert config["observation_space"]["shape"] == [3] and config["action_space"]["high"] == [2.0]
    if head == "gaussian":
        for a, b in zip(student.distribution(obs), loaded.distribution(obs), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    else:
        with pytest.raises(ValueError, match="deterministic head"):
            loaded.distribution(obs)
    with pytest.raises(ValueError, match=r"expects observations \(B, 3\)"):
        loaded.act(np.zeros((2, 4), np.float32))


def test_loss_and_squash_follow_the_teacher():
    venv = DummyVecEnv([lambda: make_env(ENV)])
    sac = SB3Policy.from_model(SAC("MlpPolicy", venv, device="cpu", seed=0))
    ppo = SB3Policy.from_model(PPO("MlpPolicy", venv, device="cpu", seed=0))
    auto = load_config(None, []).distill.dagger
    mse = load_config(None, ["distill.dagger.loss=mse"]).distill.dagger
    kl = load_config(None, ["distill.dagger.loss=kl"]).distill.dagger
    assert resolve_loss(auto, sac) == ("kl", "tanh")  # SAC's Gaussian is over pre-tanh actions
    assert resolve_loss(auto, ppo) == ("kl", "clip")
    assert resolve_loss(mse, sac) == ("mse", "clip")  # MSE on SAC's env-unit actions
    deterministic = _student("deterministic")
    assert resolve_loss(auto, deterministic) == ("mse", "clip")
    with pytest.raises(ConfigError, match="distill.dagger.loss"):
        resolve_loss(kl, deterministic)


def test_beta_schedules():
    cfg = load_config(None, ["distill.dagger.beta_decay=0.25"]).distill.dagger
    assert [beta_for_round(cfg, i) for i in range(3)] == [1.0, 0.25, 0.0625]
    cfg = load_config(
        None, ["distill.dagger.beta_decay=0.4", "distill.dagger.beta_schedule=linear"]
    )
    assert [beta_for_round(cfg.distill.dagger, i) for i in range(4)] == pytest.approx(
        [1.0, 0.6, 0.2, 0.0]
    )


# -- DAgger rounds -------------------------------------------------------------------------------


def test_dagger_aggregates_student_visited_states_and_loss_goes_down(tmp_path, teacher_dir):
    cfg = _cfg(tmp_path, teacher_dir)
    metrics = run_distill(cfg)["dagger"]
    out = tmp_path / "runs" / "default" / "distill" / "dagger"
    state = json.loads((out / "state.json").read_text())
    history = state["history"]
    assert metrics["rounds"] == 3 and metrics["loss"] == "kl"
    # The dataset grows by one round's states each round and keeps all earlier rounds.
    assert [h["dataset_states"] for h in history] == [40, 80, 120]
    for h in history:
        assert h["loss_after"] < h["loss_before"]
        assert h["loss_last_epoch"] < h["loss_first_epoch"]
    with np.load(out / "dataset.npz") as z:
        data = {k: z[k] for k in z.files}
    assert np.bincount(data["round"]).tolist() == [40, 40, 40]

    teacher = load_policy(teacher_dir)
    # Every state is labeled by the teacher, whoever acted there.
    mean, log_std = teacher.distribution(data["obs"])
    np.testing.assert_allclose(data["target_mean"], mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(data["target_log_std"], log_std.numpy(), atol=1e-6)
    # Round 0: the teacher's own states. Round 1 (β = 0): the states the student after round
    # 0 visits, which are not the teacher's on the same seeds.
    round0_seeds = sorted(set(data["seed"][data["round"] == 0].tolist()))
    round1_seeds = sorted(set(data["seed"][data["round"] == 1].tolist()))
    assert round0_seeds == [100_000, 100_001] and round1_seeds == [100_002, 100_003]
    for ep in rollout(ENV, teacher, round0_seeds, num_envs=2, max_episode_steps=STEPS):
        np.testing.assert_array_equal(_rows(data, 0, ep.seed), ep.data["obs"])
    after_round0 = load_policy(out / "rounds" / "round-000")
    by_teacher = {e.seed: e for e in rollout(ENV, teacher, round1_seeds, max_episode_steps=STEPS)}
    for ep in rollout(ENV, after_round0, round1_seeds, num_envs=2, max_episode_steps=STEPS):
        np.testing.assert_array_equal(_rows(data, 1, ep.seed), ep.data["obs"])
        assert not np.allclose(ep.data["obs"][1:], by_teacher[ep.seed].data["obs"][1:])

    # The best student is a robodistill policy that `robodistill eval` takes.
    assert isinstance(load_policy(metrics["policy"]), MLPStudent)
    ev = load_config(None, [*_cfg_list(cfg), f"eval.policy={metrics['policy']}",
                            "eval.episodes=3", "eval.video_episodes=0"])  # fmt: skip
    assert run_eval(ev)["episodes"] == 3
    assert run_distill(cfg)["dagger"] == metrics  # done: skipped, same metrics


def _cfg_list(cfg):
    return [f"runs_dir={cfg.runs_dir}", f"env.id={cfg.env.id}", "env.num_envs=2",
            f"env.max_episode_steps={STEPS}"]  # fmt: skip


def test_dagger_resumes_at_the_interrupted_round(tmp_path, teacher_dir, monkeypatch):
    extra = ("distill.dagger.beta_decay=0.5", "distill.dagger.rounds=2")
    reference = run_distill(_cfg(tmp_path / "a", teacher_dir, *extra))
    cfg = _cfg(tmp_path / "b", teacher_dir, *extra)
    real, calls = distill_dagger.train_epochs, []

    def crash_in_round_1(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(distill_dagger, "train_epochs", crash_in_round_1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_distill(cfg)
    monkeypatch.setattr(distill_dagger, "train_epochs", real)
    out = tmp_path / "b" / "runs" / "default" / "distill"
    assert json.loads((out / "dagger" / "state.json").read_text())["rounds_done"] == 1
    resumed = run_distill(cfg)["dagger"]
    assert json.loads((out / "manifest.json").read_text())["attempts"] == 2
    with np.load(out / "dagger" / "dataset.npz") as z:
        assert np.bincount(z["round"]).tolist() == [40, 40]  # round 1 not duplicated
    # Seeded rollouts, coin flips and shuffles: the resumed run equals an uninterrupted one.
    obs = _obs()
    np.testing.assert_allclose(
        load_policy(resumed["policy"]).act(obs),
        load_policy(reference["dagger"]["policy"]).act(obs),
        atol=1e-6,
    )
    assert resumed["final_loss"] == pytest.approx(reference["dagger"]["final_loss"], rel=1e-5)


def test_mse_student_of_a_deterministic_teacher(tmp_path):
    teacher = _student("deterministic").save(tmp_path / "teacher")
    cfg = _cfg(tmp_path, teacher, "distill.dagger.rounds=2")
    metrics = run_distill(cfg)["dagger"]
    assert metrics["loss"] == "mse"
    student = load_policy(metrics["policy"])
    assert student.net.head == "deterministic"
    history = json.loads((tmp_path / "runs/default/distill/dagger/state.json").read_text())
    assert all(h["loss_after"] < h["loss_before"] for h in history["history"])


def test_distill_errors_name_the_field(tmp_path, teacher_dir):
    with pytest.raises(ConfigError, match="distill.teacher: there is no teacher policy"):
        run_distill(load_config(None, [f"runs_dir={tmp_path}", "distill.students=[dagger]"]))
    # The default students (consistency, streaming) distill diffusion teachers only.
    with pytest.raises(ConfigError, match="distill.teacher.*diffusion"):
        run_distill(_cfg(tmp_path, teacher_dir, "distill.students=[rti]"))
    with pytest.raises(ConfigError, match="more than once"):
        run_distill(_cfg(tmp_path, teacher_dir, "distill.students=[dagger, dagger]"))
    random_dir = RandomPolicy(np.array([-2.0]), np.array([2.0])).save(tmp_path / "random")
    with pytest.raises(ConfigError, match="stateless teacher"):
        run_distill(_cfg(tmp_path, random_dir))
    with pytest.raises(ConfigError, match="distill.dagger.loss"):
        load_config(None, ["distill.dagger.loss=l1"])


def test_mlp_student_exports_to_onnx_with_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    from robodistill.deploy.export import check_parity, export_policy

    student = _student("gaussian", "clip")  # the graph holds normalizers, MLP and the clip
    doc = export_policy(student, tmp_path / "student.onnx")
    assert doc["policy_kind"] == "mlp_student" and doc["mode"] == "direct"
    report = check_parity(student, tmp_path / "student.onnx", observations=_obs(50) * 10)
    assert max(report.values()) <= 1e-4
