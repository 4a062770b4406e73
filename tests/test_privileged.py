"""Privileged teachers and history students: who sees what, RMA's latent, history state,
export with the window as a state tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robodistill.distill.history import HistoryDAgger, distill_history, robot_view
from robodistill.envs.make import make_env
from robodistill.envs.randomization import DomainRandomization
from robodistill.policies.privileged import PrivilegedTeacher
from robodistill.teach.rl.privileged import train_privileged_ppo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = {"mass": [0.6, 1.4], "friction": [0.5, 1.5]}
PPO = {"n_steps": 64, "batch_size": 64, "n_epochs": 2}


def make(ranges=TRAIN, reference=None):
    def f():
        env = make_env("Hopper-v5", max_episode_steps=40)
        return DomainRandomization(env, ranges, reference=reference, privileged_obs=True)

    return f


@pytest.fixture(scope="module")
def oracle():
    torch.set_num_threads(1)
    model, vn = train_privileged_ppo(make(), "oracle", total_timesteps=256, n_envs=2,
                                     ppo_kwargs=PPO)  # fmt: skip
    return model, vn, PrivilegedTeacher.from_model(model, vn)


def test_teacher_copy_matches_sb3_and_who_reads_privileged(oracle, tmp_path):
    model, vn, teacher = oracle
    obs = vn.venv.reset()
    expected, _ = model.predict(vn.normalize_obs(obs), deterministic=True)
    np.testing.assert_allclose(teacher.act(obs), expected, atol=1e-5)
    moved = obs.copy()
    moved[:, -2:] += 1.0
    assert np.abs(teacher.act(moved) - teacher.act(obs)).max() > 0  # the oracle's actor reads e
    teacher.save(tmp_path / "t")
    from robodistill.policies import load_policy

    np.testing.assert_array_equal(load_policy(tmp_path / "t").act(obs), teacher.act(obs))
    for mode, critic_reads in (("asymmetric", True), ("blind", False)):
        m, v = train_privileged_ppo(make(), mode, total_timesteps=64, n_envs=2, ppo_kwargs=PPO)
        t = PrivilegedTeacher.from_model(m, v)
        np.testing.assert_array_equal(t.act(moved), t.act(obs))  # its actor never reads e
        feats = m.policy.extract_features(torch.as_tensor(v.normalize_obs(obs)).float())
        value = m.policy.mlp_extractor.forward_critic(
            feats[0] if isinstance(feats, tuple) else feats
        )
        feats2 = m.policy.extract_features(torch.as_tensor(v.normalize_obs(moved)).float())
        value2 = m.policy.mlp_extractor.forward_critic(
            feats2[0] if isinstance(feats2, tuple) else feats2
        )
        assert bool((value != value2).any()) is critic_reads


def test_privileged_observation_never_reaches_a_student(oracle, monkeypatch):
    """Constructed check: the training ranges are a sliver around 1 and the draw lies far
    outside, so every privileged entry is >= 1000 while the robot's entries stay small; no
    array any student reads (observation or window) may hold such a value."""
    _, _, teacher = oracle
    from robodistill.policies.history_student import HistoryStudent

    seen: list[np.ndarray] = []
    act = HistoryStudent.act

    def spy(self, obs):
        seen.append(np.asarray(obs).copy())
        if self._hist is not None:
            seen.append(self._hist.numpy().copy())
        return act(self, obs)

    monkeypatch.setattr(HistoryStudent, "act", spy)
    far = make({"mass": [1.5, 1.6], "friction": [1.5, 1.6]},
               reference={"mass": [0.999, 1.0], "friction": [0.999, 1.0]})  # fmt: skip
    env = far()
    full = env.reset(seed=0)[0]
    assert np.all(full[-2:] >= 1000) and np.all(np.abs(full[:-2]) < 100)
    robot = robot_view(env)
    for variant in ("history", "rma", "hib"):
        student, _ = distill_history(far, teacher, variant,
                                     HistoryDAgger(rounds=1, episodes_per_round=2, epochs=1,
                                                   n_envs=2))  # fmt: skip
        assert student.observation_space.shape == (len(robot),) == (full.shape[0] - 2,)
    assert seen and max(float(np.abs(x).max()) for x in seen) < 100


def test_rma_latent_error_falls(oracle):
    _, _, teacher = oracle
    _, log = distill_history(make(), teacher, "rma",
                             HistoryDAgger(rounds=3, episodes_per_round=4, epochs=8, n_envs=2))  # fmt: skip
    errors = [r["latent_mse_before"] for r in log]
    assert errors[-1] < errors[0]
    assert all(r["latent_mse_after"] <= r["latent_mse_before"] for r in log)


def test_history_resets_per_episode_torch_and_runtime(oracle, tmp_path):
    _, _, teacher = oracle
    from robodistill.deploy.export import check_parity, export_policy
    from robodistill.deploy.runtime import OnnxPolicy
    from robodistill.policies.history_student import HistoryStudent

    env = make()()
    robot = robot_view(env)
    space = env.observation_space
    import gymnasium as gym

    obs_space = gym.spaces.Box(space.low[robot], space.high[robot], dtype=np.float32)
    student = HistoryStudent.build("hib", teacher, obs_space, env.action_space, history_len=3,
                                   seed=0)  # fmt: skip
    rng = np.random.default_rng(0)
    first = rng.normal(size=(2, len(robot))).astype(np.float32)
    fresh = student.act(first)
    for _ in range(4):
        student.act(rng.normal(size=(2, len(robot))).astype(np.float32))
    student.reset([0])
    h = student.history
    assert not h[0].any() and h[1].any()  # row 0 starts over, row 1 keeps its window
    again = student.act(first)
    np.testing.assert_array_equal(again[0], fresh[0])
    assert not np.array_equal(again[1], fresh[1])

    path = tmp_path / "hib.onnx"
    doc = export_policy(student, path)
    assert doc["state"][0]["input"] == "history" and doc["state"][0]["reset"] == "episode"
    assert doc["state"][0]["shape"] == [3, len(robot) + 3]
    assert max(check_parity(student, path).values()) <= 1e-4
    runtime = OnnxPolicy(path, threads=1)
    student.reset()
    worst = 0.0
    for t in range(8):
        o = rng.normal(size=(2, len(robot))).astype(np.float32)
        if t == 5:
            student.reset([1])
            runtime.reset([1])
        worst = max(worst, float(np.abs(student.act(o) - runtime.act(o)).max()))
    assert worst <= 1e-4
    student.save(tmp_path / "s")
    from robodistill.policies import load_policy

    loaded = load_policy(tmp_path / "s")
    o = rng.normal(size=(2, len(robot))).astype(np.float32)
    student.reset()
    np.testing.assert_allclose(loaded.act(o), student.act(o), atol=1e-6)


def test_hib_bounds():
    from robodistill.distill.hib import gaussian_kl_standard, info_nce

    z = torch.randn(16, 4)
    assert float(info_nce(z, z)) < float(info_nce(z, torch.randn(16, 4)))
    assert float(gaussian_kl_standard(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max()) == 0.0
