"""RND / RDD bonus networks and their stable-baselines3 integration."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from robodistill.config import ExplorationConfig
from robodistill.policies.exploration import RDDBonus, RNDBonus, RunningMeanStd
from robodistill.teach.rl.exploration_sb3 import (
    ExplorationCallback,
    IntrinsicRewardVecEnv,
    exploration_state,
    find_exploration_env,
    load_exploration_state,
    wrap_exploration,
)

OBS_DIM = 6
CLASSES = [RNDBonus, RDDBonus]
SMALL_NET = {"net_arch": [32, 32]}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: a second intra-op thread only adds contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bonus(cls, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"embedding_dim": 16, "hidden": 32, "learning_rate": 1e-3, **kwargs}
    return cls(OBS_DIM, update_proportion=1.0, **kwargs)


def _data(seed=1, n=512):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, OBS_DIM, generator=g)


def test_running_mean_std_matches_numpy():
    rms = RunningMeanStd((3,))
    rng = np.random.default_rng(0)
    chunks = [rng.normal(2.0, 3.0, size=(n, 3)) for n in (5, 100, 37)]
    for c in chunks:
        rms.update(c)
    full = np.concatenate(chunks)
    np.testing.assert_allclose(rms.mean.numpy(), full.mean(0), rtol=1e-5)
    np.testing.assert_allclose(rms.var.numpy(), full.var(0), rtol=1e-4)
    restored = RunningMeanStd((3,))
    restored.load_state_dict(rms.state_dict())
    assert torch.equal(restored.var, rms.var) and torch.equal(restored.count, rms.count)


@pytest.mark.parametrize("cls", CLASSES)
def test_loss_decreases_and_trained_states_less_novel(cls):
    m = _bonus(cls)
    data = _data()
    m.update_obs_stats(data)
    seen, novel = data[:32], _data(seed=7, n=32)
    before = m.loss(seen)
    losses = [m.update(seen.repeat(4, 1))["predictor_loss"] for _ in range(150)]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert m.loss(seen) < before
    assert m.bonus(seen).mean() < m.bonus(novel).mean()
    out = m.bonus(seen.numpy())  # numpy input too
    assert out.shape == (32,) and torch.isfinite(out).all()


@pytest.mark.parametrize("cls", CLASSES)
def test_target_is_frozen(cls):
    m = _bonus(cls)
    frozen = [m.target] + ([m.noise_prior] if cls is RDDBonus else [])
    before = [p.clone() for net in frozen for p in net.parameters()]
    assert all(not p.requires_grad for net in frozen for p in net.parameters())
    m.update(_data(n=64))
    after = [p for net in frozen for p in net.parameters()]
    assert all(p.grad is None for p in after)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("cls", CLASSES)
def test_state_dict_round_trip_and_determinism(cls):
    data = _data()
    m = _bonus(cls)
    m.update_obs_stats(data)
    m.update(data)
    clone = _bonus(cls, seed=123)  # different weights until loaded
    assert not torch.allclose(clone.bonus(data), m.bonus(data))
    clone.load_state_dict(m.state_dict())
    assert torch.equal(clone.bonus(data), m.bonus(data))
    assert torch.equal(clone.obs_rms.mean, m.obs_rms.mean)
    # Same seed, same data -> identical module.
    again = _bonus(cls)
    again.update_obs_stats(data)
    again.update(data)
    assert torch.equal(again.bonus(data), m.bonus(data))


@pytest.mark.parametrize("cls", CLASSES)
def test_bonus_decays_with_visits_novel_stays_high(cls):
    m = _bonus(cls)
    data = _data(n=2048)
    m.update_obs_stats(data)
    visited, unvisited = data[:16], data[-16:]
    curve, novel0 = [], m.bonus(unvisited).mean().item()
    for visits in range(1, 201):
        m.update(visited)
        if visits in (1, 10, 50, 200):
            curve.append(m.bonus(visited).mean().item())
    assert all(a > b for a, b in zip(curve, curve[1:], strict=False)), curve
    novel = m.bonus(unvisited).mean().item()
    assert curve[-1] < 0.2 * curve[0]
    assert novel > 3 * curve[-1] and novel > 0.2 * novel0


def test_rdd_pseudo_count_term_decays_with_visits():
    """RDD's visitation term: sigma^2 * mean(u^2) ~ sigma^2 / n at visited states; the
    frozen prior keeps it near its initial value (n ~ 1) where nothing was trained."""
    m = _bonus(RDDBonus, sigma=0.5)
    data = _data(n=2048)
    m.update_obs_stats(data)
    visited, unvisited = data[:16], data[-16:]
    start = m.bonus_terms(visited)["pseudo_count"].mean().item()
    assert 0.25 * 0.3 < start < 0.25 * 3  # ~ sigma^2: "seen about once"
    counts = []
    for visits in range(1, 201):
        m.update(visited)
        if visits in (10, 50, 200):
            counts.append(m.bonus_terms(visited)["pseudo_count"].mean().item())
    assert counts[0] > counts[1] > counts[2]
    assert counts[-1] < 0.1 * start
    novel = m.bonus_terms(unvisited)["pseudo_count"].mean().item()
    assert novel > 3 * counts[-1]


# -- stable-baselines3 -----------------------------------------------------------------------


def _venv(n=2):
    # Seeded, so that warm-up and training see the same states every run (no flaky margins).
    venv = DummyVecEnv([lambda: gym.make("Pendulum-v1") for _ in range(n)])
    venv.seed(0)
    venv.action_space.seed(0)
    return venv


@pytest.mark.parametrize("method", ["rnd", "rdd"])
def test_ppo_with_exploration(method):
    cfg = ExplorationConfig(method=method, learning_rate=1e-3, embedding_dim=16, hidden=32)
    venv, callback = wrap_exploration(_venv(), cfg, gamma=0.99, seed=0, warmup_steps=16)
    assert isinstance(venv, IntrinsicRewardVecEnv) and isinstance(callback, ExplorationCallback)
    assert venv.bonus.obs_rms.count > 30  # warmed up
    probe = _pendulum_obs(64)
    loss_before = venv.bonus.loss(probe)
    model = PPO(
        "MlpPolicy",
        VecNormalize(venv),
        n_steps=32,
        batch_size=64,
        n_epochs=1,
        policy_kwargs=SMALL_NET,
        seed=0,
    )
    model.learn(320, callback=callback)
    assert model.num_timesteps >= 320
    assert "predictor_loss" in callback.last_stats
    assert np.isfinite(callback.last_stats["r_int_mean"])
    loss_after = venv.bonus.loss(probe)
    assert loss_after < loss_before
    # One step by hand: the info keys and the mixed reward.
    venv.reset()
    _, rew, _, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
    for i, info in enumerate(infos):
        assert np.isfinite(info["r_int"]) and info["r_int"] >= 0
        expected = cfg.extrinsic_coef * info["r_ext"] + cfg.intrinsic_coef * info["r_int"]
        assert rew[i] == pytest.approx(expected, rel=1e-5, abs=1e-5)


def _pendulum_obs(n):
    env = gym.make("Pendulum-v1")
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    out = []
    for _ in range(n):
        out.append(obs)
        obs, *_ = env.step(env.action_space.sample())
    return np.asarray(out, dtype=np.float32)


def test_method_none_returns_env_unchanged():
    raw = _venv()
    venv, callback = wrap_exploration(raw, ExplorationConfig(), gamma=0.99, seed=0)
    assert venv is raw and callback is None
    assert exploration_state(raw) == {}


def test_sac_with_exploration():
    cfg = ExplorationConfig(method="rdd", embedding_dim=16, hidden=32)
    venv, callback = wrap_exploration(_venv(), cfg, 0.99, seed=1, warmup_steps=8, train_every=50)
    model = SAC(
        "MlpPolicy",
        venv,
        learning_starts=100,
        batch_size=32,
        buffer_size=1000,
        train_freq=4,
        policy_kwargs=SMALL_NET,
        seed=0,
    )
    model.learn(300, callback=callback)
    assert "predictor_loss" in callback.last_stats
    assert np.isfinite(callback.last_stats["predictor_loss"])


def test_exploration_state_round_trip():
    cfg = ExplorationConfig(method="rnd", embedding_dim=16, hidden=32)
    venv, _ = wrap_exploration(_venv(), cfg, 0.99, seed=0, warmup_steps=8)
    venv.reset()
    for _ in range(20):
        venv.step(np.ones((2, 1), dtype=np.float32))
    venv.train_predictor()
    outer = VecNormalize(venv)
    tensors = exploration_state(outer)  # found under VecNormalize
    assert {"bonus.obs_rms.mean", "bonus.target.0.weight", "return_rms.var"} <= set(tensors)
    other, _ = wrap_exploration(_venv(), cfg, 0.99, seed=5, warmup_steps=4)
    load_exploration_state(VecNormalize(other), tensors)
    probe = _pendulum_obs(32)
    assert torch.equal(other.bonus.bonus(probe), venv.bonus.bonus(probe))
    assert float(other.return_rms.var) == float(venv.return_rms.var)
    np.testing.assert_array_equal(other.intrinsic_return, venv.intrinsic_return)
    assert find_exploration_env(other) is other


def test_multidimensional_box_observations_are_flattened():
    def make():
        return gym.wrappers.ReshapeObservation(gym.make("Pendulum-v1"), (3, 1))

    cfg = ExplorationConfig(method="rdd", embedding_dim=16, hidden=32)
    venv, callback = wrap_exploration(DummyVecEnv([make, make]), cfg, 0.99, seed=0, warmup_steps=4)
    assert venv.bonus.obs_dim == 3
    obs = venv.reset()
    assert obs.shape == (2, 3, 1)
    _, rew, _, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
    assert rew.shape == (2,) and all(np.isfinite(i["r_int"]) for i in infos)
    assert venv.pop_buffer().shape == (2, 3)


def test_bonus_uses_terminal_observation_at_episode_end():
    raw = DummyVecEnv([lambda: gym.make("Pendulum-v1", max_episode_steps=3)] * 2)
    cfg = ExplorationConfig(method="rnd", embedding_dim=16, hidden=32)
    venv, _ = wrap_exploration(raw, cfg, 0.99, seed=0, warmup_steps=0)
    venv.reset()
    for _ in range(3):
        obs, _, dones, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
    assert dones.all()
    last = venv.pop_buffer()[-2:]
    np.testing.assert_allclose(last, np.stack([i["terminal_observation"] for i in infos]))
    assert not np.allclose(last, obs)  # obs is already the next episode's first one
    assert np.all(venv.intrinsic_return > 0)  # not reset at the episode end
