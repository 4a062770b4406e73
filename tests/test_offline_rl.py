"""Stage-2 building blocks: decision transitions, IQL critics, dynamics-ensemble OPE, the gate.

The end-to-end tests use a point mass that a decent behaviour policy steers to the origin
(reward = minus the distance), small enough to train critics and an ensemble in seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robodistill.data.store import Episode, TrajectoryStore
from robodistill.teach.rl100.critics import IQLConfig, IQLCritics, expectile_loss, train_iql
from robodistill.teach.rl100.decisions import (
    DecisionConfig,
    Decisions,
    build_decisions,
    decisions_from_store,
)
from robodistill.teach.rl100.ope import (
    DynamicsConfig,
    DynamicsEnsemble,
    OffPolicyEvaluator,
    OPEConfig,
    OPEGate,
    train_dynamics,
)

# ----------------------------------------------------------------------------- point mass
SPEED, T_EP, TO, TA, GAMMA = 0.15, 24, 2, 4, 0.95


def point_step(pos: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 2) positions and actions -> next positions, rewards (B,)."""
    nxt = pos + SPEED * np.clip(action, -1.0, 1.0)
    return nxt, -np.linalg.norm(nxt, axis=-1)


def behaviour(pos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Decent but noisy: head for the origin."""
    return np.clip(-2.0 * pos + rng.normal(0.0, 0.6, pos.shape), -1.0, 1.0)


def point_episode(seed: int) -> Episode:
    rng = np.random.default_rng(seed)
    pos = rng.uniform(-1.0, 1.0, (1, 2))
    obs, acts, rews = [], [], []
    for _ in range(T_EP):
        a = behaviour(pos, rng)
        obs.append(pos[0])
        acts.append(a[0])
        pos, r = point_step(pos, a)
        rews.append(r[0])
    trunc = np.zeros(T_EP, bool)
    trunc[-1] = True  # a time limit, not a termination: critics must bootstrap through it
    return Episode(
        data={
            "obs": np.array(obs, np.float32),
            "action": np.array(acts, np.float32),
            "reward": np.array(rews, np.float32),
            "terminated": np.zeros(T_EP, bool),
            "truncated": trunc,
        },
        final={"obs": pos[0].astype(np.float32)},
        seed=seed,
        env_id="point",
    )


def true_value(chunk_policy, starts: np.ndarray, steps: int = 60) -> float:
    """Discounted return of a chunk policy from (S, To*2) start histories, simulated."""
    pos = starts[:, -2:].astype(np.float64)
    total, disc = np.zeros(len(pos)), 1.0
    for _ in range(steps // TA):
        hist = np.concatenate([pos, pos], axis=1)  # only the newest frame matters here
        chunk = chunk_policy(torch.as_tensor(hist, dtype=torch.float32)).numpy()
        for k in range(TA):
            pos, r = point_step(pos, chunk[:, 2 * k : 2 * k + 2])
            total += disc * r
            disc *= GAMMA
    return float(total.mean())


def good_policy(obs: torch.Tensor) -> torch.Tensor:
    """Noise-free behaviour: every action of the chunk points home."""
    return (-2.0 * obs[:, -2:]).clamp(-1, 1).repeat(1, TA)


def reversed_policy(obs: torch.Tensor) -> torch.Tensor:
    """The corrupted update: the same policy with its sign flipped (runs away)."""
    return -good_policy(obs)


def point_config() -> DecisionConfig:
    return DecisionConfig(obs_horizon=TO, action_horizon=TA, gamma=GAMMA)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Tiny MLPs gain nothing from intra-op threads, and on a busy 2-core machine the thread
    # pool's spin-waiting made these tests ten times slower; restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def point_data(tmp_path_factory) -> Decisions:
    path = tmp_path_factory.mktemp("offline") / "point.zarr"
    with TrajectoryStore.create(path, flush_every=16) as store:
        store.add_episodes([point_episode(s) for s in range(60)])
    return decisions_from_store(
        path, DecisionConfig(obs_horizon=TO, action_horizon=TA, gamma=GAMMA)
    )


@pytest.fixture(scope="module")
def critics(point_data):
    cfg = IQLConfig(hidden=(64, 64), steps=600, batch_size=128, lr=1e-3, log_every=150)
    return train_iql(point_data, cfg)


@pytest.fixture(scope="module")
def dynamics(point_data):
    cfg = DynamicsConfig(hidden=(64, 64), lr=3e-3, steps=600, batch_size=128, eval_every=100)
    return train_dynamics(point_data, cfg)


# ----------------------------------------------------------------------------- decisions
def hand_episode(length: int, terminated: bool, base: float) -> Episode:
    """obs[t] = (base + t, -t); action[t] = (t, 10 t); reward[t] = t + 1."""
    t = np.arange(length, dtype=np.float32)
    term, trunc = np.zeros(length, bool), np.zeros(length, bool)
    (term if terminated else trunc)[-1] = True
    return Episode(
        data={
            "obs": np.stack([base + t, -t], 1),
            "action": np.stack([t, 10 * t], 1),
            "reward": t + 1,
            "terminated": term,
            "truncated": trunc,
        },
        final={"obs": np.array([base + length, -length], np.float32)},
        seed=0,
        env_id="hand",
    )


def test_decisions_pad_and_discount_exactly(tmp_path):
    path = tmp_path / "hand.zarr"
    with TrajectoryStore.create(path) as store:
        store.add_episodes([hand_episode(3, True, 0.0), hand_episode(5, False, 100.0)])
    d = decisions_from_store(path, DecisionConfig(obs_horizon=2, action_horizon=3, gamma=0.5))
    assert len(d) == 8 and d.obs_flat.shape == (8, 4) and d.chunk_flat.shape == (8, 6)
    assert d.episode.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert d.step.tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    # Episode start: the history repeats the first observation.
    assert d.obs[0].tolist() == [[0, 0], [0, 0]] and d.obs[1].tolist() == [[0, 0], [1, -1]]
    # t=0 of the terminated 3-step episode: whole chunk real, ends exactly at the end.
    assert d.chunk[0].tolist() == [[0, 0], [1, 10], [2, 20]] and d.chunk_mask[0].all()
    assert d.reward[0] == pytest.approx(1 + 0.5 * 2 + 0.25 * 3)
    assert d.discount[0] == pytest.approx(0.125) and d.done[0] == 1.0
    assert d.next_obs[0].tolist() == [[2, -2], [3, -3]]  # newest frame = Episode.final
    # t=2: one real step, then the last action repeats under a False mask.
    assert d.chunk[2].tolist() == [[2, 20], [2, 20], [2, 20]]
    assert d.chunk_mask[2].tolist() == [True, False, False]
    assert d.reward[2] == pytest.approx(3.0) and d.discount[2] == pytest.approx(0.5)
    assert d.done[2] == 1.0 and d.next_obs[2].tolist() == [[2, -2], [3, -3]]
    # The truncated episode never sets done, even where its chunk reaches the end.
    assert d.done[3:].sum() == 0
    last = 7  # t=4 of the 5-step episode
    assert d.reward[last] == pytest.approx(5.0) and d.discount[last] == pytest.approx(0.5)
    assert d.next_obs[last].tolist() == [[104, -4], [105, -5]]
    # Mid-episode: t=1 of episode 1 has three real steps and bootstraps from t=4.
    assert d.reward[4] == pytest.approx(2 + 0.5 * 3 + 0.25 * 4)
    assert d.next_obs[4].tolist() == [[103, -3], [104, -4]] and d.done[4] == 0


def test_decisions_stride_split_concat_and_errors():
    eps = [hand_episode(6, False, 0.0), hand_episode(4, True, 50.0), hand_episode(5, True, 9.0)]
    d = build_decisions(eps, DecisionConfig(obs_horizon=1, action_horizon=2, stride=2))
    assert d.step.tolist() == [0, 2, 4, 0, 2, 0, 2, 4]
    train, val = d.split_episodes(0.34, seed=1)
    assert set(train.episode.tolist()).isdisjoint(val.episode.tolist())
    assert len(train) + len(val) == len(d)
    both = Decisions.concat([d, d])
    assert len(both) == 2 * len(d) and both.n_episodes == 6
    with pytest.raises(ValueError, match="obs_key"):
        build_decisions(eps, DecisionConfig(obs_key="state"))
    with pytest.raises(ValueError, match="gamma must be in"):
        DecisionConfig(gamma=0.0)
    with pytest.raises(ValueError, match="same DecisionConfig"):
        Decisions.concat([d, build_decisions(eps, DecisionConfig(action_horizon=3))])


# ----------------------------------------------------------------------------- IQL
def test_expectile_loss_matches_hand_computation():
    diff = torch.tensor([1.0, -2.0, 0.5])
    hand = (0.7 * 1.0 + 0.3 * 4.0 + 0.7 * 0.25) / 3
    assert float(expectile_loss(diff, 0.7)) == pytest.approx(hand)
    assert float(expectile_loss(diff, 0.5)) == pytest.approx(0.5 * float(diff.pow(2).mean()))


def test_iql_loss_decreases_and_advantage_ranks_actions(critics, point_data):
    model, history = critics
    assert history[-1]["q_loss"] < 0.5 * history[0]["q_loss"]
    obs = point_data.obs_flat[:200]
    adv_good = model.advantage(obs, good_policy(obs))
    adv_bad = model.advantage(obs, reversed_policy(obs))
    # Only states away from the origin distinguish the two directions clearly.
    far = obs[:, -2:].norm(dim=1) > 0.3
    assert far.sum() > 20
    assert (adv_good[far] > adv_bad[far]).float().mean() > 0.9


def test_iql_save_load_round_trip(critics, point_data, tmp_path):
    model, _ = critics
    model.save(tmp_path / "critics", extra={"note": "test"})
    again = IQLCritics.load(tmp_path / "critics")
    obs, chunk = point_data.obs[:7], point_data.chunk[:7]  # (B, To, O) inputs are accepted
    assert torch.equal(model.q(obs, chunk), again.q(obs, chunk))
    assert torch.equal(model.value(obs), again.value(obs))
    with pytest.raises(ValueError, match=r"expected \(B, 4\)"):
        model.value(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="IQLConfig.expectile"):
        IQLConfig(expectile=1.0)


# ----------------------------------------------------------------------------- dynamics
def test_dynamics_learns_the_point_mass(dynamics, point_data):
    model, history = dynamics
    assert history[-1]["val_best"] < 0.2 * min(history[0]["val_loss"])
    assert len(model.elites) == 5 and len(set(model.elites.tolist())) == 5
    # Known dynamics on fresh behaviour episodes (seeds the model never saw): a chunk moves
    # the point by SPEED * the sum of its actions, and the reward is minus the distance.
    fresh = build_decisions([point_episode(s) for s in range(1000, 1010)], point_config())
    fresh = fresh.select(fresh.chunk_mask.all(dim=1))  # the model imagines whole chunks only
    # Baselines a model that learned nothing would reach: no motion, the mean reward.
    moved = (fresh.next_obs[:, -1] - fresh.obs[:, -1]).norm(dim=1).mean()
    spread = (fresh.reward - fresh.reward.mean()).abs().mean()
    for m in model.elites:
        nxt, r, p_done, _ = model.predict(fresh.obs_flat, fresh.chunk_flat, m.repeat(len(fresh)))
        assert (nxt[:, -2:] - fresh.next_obs[:, -1]).norm(dim=1).mean() < 0.1 * moved
        assert (r - fresh.reward).abs().mean() < 0.3 * spread
        assert float(p_done.max()) < 0.05  # the data never terminates


def test_dynamics_wraps_angles():
    # One frame = (x, angle in [0, 2 pi)); the angle crosses 2 pi -> 0 during the chunk.
    obs = torch.tensor([[[0.0, 6.20], [1.0, 6.25]], [[2.0, 0.5], [3.0, 1.0]]])
    nxt = torch.tensor([[[1.5, 0.05], [2.0, 0.10]], [[3.5, 1.2], [4.0, 1.5]]])
    d = Decisions(
        obs=obs,
        chunk=torch.zeros(2, 1, 1),
        chunk_mask=torch.ones(2, 1, dtype=torch.bool),
        reward=torch.tensor([1.0, 2.0]),
        next_obs=nxt,
        done=torch.zeros(2),
        discount=torch.full((2,), 0.9),
        episode=torch.arange(2),
        step=torch.zeros(2, dtype=torch.long),
        gamma=0.9,
    )
    model = DynamicsEnsemble(2, 2, 1, 0.9, members=2, elites=1, hidden=(4,), angle_dims=(1,))
    model.fit_normalizers(d)
    wrapped = model.targets(d)[0]  # next frames minus the newest frame, then reward
    assert wrapped.tolist() == pytest.approx(
        [0.5, 0.05 + 2 * np.pi - 6.25, 1.0, 0.10 + 2 * np.pi - 6.25, 1.0], abs=1e-5
    )
    assert model.features(d.obs_flat).shape == (2, 4 + 2 * 2)  # + sin and cos of 2 angles
    # A head that always predicts "x + 5, angle + 0.2" must wrap the angle and clip x to
    # the largest x in the data (4).
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[..., :-1] = model.target_norm(torch.tensor([5.0, 0.2, 5.0, 0.2, 0.0]))
    pred, _, _, spread = model.predict(d.obs_flat[:1], d.chunk_flat[:1], torch.tensor([0]))
    assert pred[0].tolist() == pytest.approx(
        [4.0, 6.45 - 2 * np.pi, 4.0, 6.45 - 2 * np.pi], abs=1e-5
    )
    assert float(spread[0]) == 0.0  # a single elite cannot disagree with itself


def test_dynamics_save_load_round_trip(dynamics, point_data, tmp_path):
    model, _ = dynamics
    model.save(tmp_path / "dyn")
    again = DynamicsEnsemble.load(tmp_path / "dyn")
    member = torch.zeros(5, dtype=torch.long)
    a, b = (
        model.predict(point_data.obs[:5], point_data.chunk[:5], member),
        again.predict(point_data.obs[:5], point_data.chunk[:5], member),
    )
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert torch.equal(model.elites, again.elites)


# ----------------------------------------------------------------------------- OPE + gate
def test_ope_gate_rejects_an_update_that_makes_the_policy_worse(critics, dynamics, point_data):
    ope = OffPolicyEvaluator(
        dynamics[0],
        critics[0],
        point_data,
        OPEConfig(horizon=5, n_starts=128, action_low=-1, action_high=1),
    )
    good, bad = ope.evaluate(good_policy), ope.evaluate(reversed_policy)
    starts = ope.start_obs.numpy()
    # Ground truth from the simulator agrees that the reversed update is worse...
    assert true_value(good_policy, starts) > true_value(reversed_policy, starts)
    # ... and so does the estimate, by a wide margin.
    assert good.value > bad.value + 1.0
    assert ope.evaluate(good_policy).value == good.value  # common random numbers
    written: list[dict] = []
    gate = OPEGate(on_decision=written.append)
    assert gate.consider(good.value, step=0) is True  # the reference
    assert gate.consider(bad.value, step=50) is False  # the corrupted update is discarded
    assert gate.best == good.value
    assert [w["accepted"] for w in written] == [True, False]
    assert written[1] == {
        "step": 50,
        "estimate": bad.value,
        "best_before": good.value,
        "accepted": False,
        "margin": 0.0,
        "stderr": None,
    }


def test_ope_checks_policy_output(critics, dynamics, point_data):
    ope = OffPolicyEvaluator(dynamics[0], critics[0], point_data, OPEConfig(n_starts=8))
    with pytest.raises(ValueError, match=r"\(B, Ta\*A\) = \(8, 8\)"):
        ope.evaluate(lambda obs: torch.zeros(len(obs), 3))
    with pytest.raises(ValueError, match="NaN"):
        ope.evaluate(lambda obs: torch.full((len(obs), 8), float("nan")))
    with pytest.raises(ValueError, match="needs critics"):
        OffPolicyEvaluator(dynamics[0], None, point_data)
    other = build_decisions([point_episode(0)], DecisionConfig(obs_horizon=3, action_horizon=TA))
    with pytest.raises(ValueError, match="same DecisionConfig"):
        OffPolicyEvaluator(dynamics[0], critics[0], other)


def test_ope_by_horizon_bootstraps_with_q(critics, dynamics, point_data):
    ope = OffPolicyEvaluator(dynamics[0], critics[0], point_data, OPEConfig(horizon=3, n_starts=16))
    est = ope.evaluate(good_policy)
    assert len(est.by_horizon) == 4 and est.by_horizon[-1] == pytest.approx(est.value)
    with torch.no_grad():
        q0 = critics[0].q(ope.start_obs, good_policy(ope.start_obs)).mean()
    assert est.by_horizon[0] == pytest.approx(float(q0))  # H = 0 is plain Q(s, pi(s))
    assert est.value == pytest.approx(est.reward_part + est.terminal_part)


def test_gate_margin_history_and_resume():
    gate = OPEGate(margin=0.5)
    verdicts = [gate.consider(v, s) for s, v in enumerate([1.0, 1.4, 1.6, -3.0, 2.2])]
    assert verdicts == [True, False, True, False, True] and gate.best == 2.2
    again = OPEGate.from_state(gate.state())
    assert again.best == 2.2 and again.history == gate.history
    with pytest.raises(ValueError, match="diverged"):
        gate.consider(float("nan"), 9)


def test_gate_paired_z_rejects_noise_and_accepts_a_consistent_gain():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(256, generator=gen)
    noise = base + 0.01 + torch.randn(256, generator=gen)  # +0.01 on average, noisy per start
    gain = base + 0.2 + 0.1 * torch.randn(256, generator=gen)  # +0.2 on nearly every start
    plain, paired = OPEGate(), OPEGate(z=2.0)
    for gate in (plain, paired):
        assert gate.consider(base.mean(), 0, base)
    assert plain.consider(noise.mean(), 1, noise) is (float(noise.mean()) > float(base.mean()))
    assert paired.consider(noise.mean(), 1, noise) is False
    d = paired.history[-1]
    assert d.stderr == pytest.approx(float((noise - base).std() / 16), rel=1e-5)
    assert paired.consider(gain.mean(), 2, gain) is True
    assert paired.best_per_start == pytest.approx(gain.tolist())
    again = OPEGate.from_state(json.loads(json.dumps(paired.state())))
    assert again.z == 2.0 and again.best_per_start == paired.best_per_start
    assert again.history == paired.history
    again.rebase(0.0, torch.zeros(256))
    assert again.best == 0.0 and again.best_per_start == [0.0] * 256
    with pytest.raises(ValueError, match="needs per_start"):
        paired.consider(1.0, 3)
    with pytest.raises(ValueError, match="same start states"):
        paired.consider(1.0, 3, torch.zeros(8))
