"""Intrinsic rewards on the RLlib backend: the learner connector, its state, two-stream PPO
(intrinsic GAE, combined advantages, the intrinsic value head), the teach loop."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from ray.rllib.connectors.learner import (  # noqa: E402
    AddOneTsToEpisodesAndTruncate,
    GeneralAdvantageEstimation,
)
from ray.rllib.core.columns import Columns  # noqa: E402
from ray.rllib.env.single_agent_episode import SingleAgentEpisode  # noqa: E402
from ray.rllib.utils.postprocessing.value_predictions import compute_value_targets  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import robodistill.policies.rllib_policy  # noqa: E402, F401  (registers the "rllib" kind)
from robodistill.config import ConfigError, ExplorationConfig, load_config  # noqa: E402
from robodistill.core.rundir import StageRun  # noqa: E402
from robodistill.policies import load_policy  # noqa: E402
from robodistill.policies.exploration import GAMMA_INT  # noqa: E402
from robodistill.policies.rllib_policy import RLlibPolicy  # noqa: E402
from robodistill.teach.rl.exploration_rllib import (  # noqa: E402
    CONFIG_NAME,
    TENSORS_NAME,
    IntrinsicRewardConnector,
    _on_learner,
    add_exploration,
    exploration_stats,
)
from robodistill.teach.rl.rllib import build_config, create_env, run_teach_rllib  # noqa: E402
from robodistill.teach.rl.two_stream_rllib import (  # noqa: E402
    INTRINSIC_OPTIMIZER,
    REWARDS_INT,
    VALUE_TARGETS_INT,
    TwoStreamAdvantages,
    intrinsic_value_targets,
)

OBS_DIM = 3


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks trained in this process (the local learner): a second intra-op thread
    only adds contention on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the connector on hand-made episodes (no Ray session needed) ----------------------------
def _connector(method="rnd", seed=0, **extra) -> IntrinsicRewardConnector:
    cfg = ExplorationConfig(method=method, embedding_dim=16, hidden=32, learning_rate=1e-3,
                            **extra)  # fmt: skip
    return IntrinsicRewardConnector(exploration=cfg.model_dump(), obs_dim=OBS_DIM, seed=seed)


def _episode(id_, obs, rewards, done=False, t_started=0) -> SingleAgentEpisode:
    ep = SingleAgentEpisode(
        id_=id_, observations=list(obs), actions=[np.zeros(1, np.float32)] * len(rewards),
        rewards=list(rewards), terminated=done, t_started=t_started, len_lookback_buffer=0,
    )  # fmt: skip
    ep.to_numpy()
    return ep


def _trajectory(seed, n):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n + 1, OBS_DIM)).astype(np.float32)
    return obs, rng.normal(size=n).astype(np.float32)


def test_connector_shares_bonus_of_next_obs_and_keeps_rewards():
    conn = _connector(intrinsic_coef=0.5, extrinsic_coef=2.0)
    obs_a, rew_a = _trajectory(0, 20)
    obs_b, rew_b = _trajectory(1, 7)
    first = [_episode("a", obs_a[:11], rew_a[:10]), _episode("b", obs_b, rew_b, done=True)]
    shared = {}
    conn(rl_module=None, batch={}, episodes=first, shared_data=shared)
    assert [len(r) for r in shared[REWARDS_INT]] == [10, 7]  # one array per chunk
    assert "a" in conn._carry and "b" not in conn._carry  # ongoing vs finished episode

    # Second call: a's next chunk. Expected bonus from a copy of the state before it.
    before = copy.deepcopy(conn)
    carried = before._carry["a"]
    chunk = _episode("a", obs_a[10:], rew_a[10:], done=True, t_started=10)
    chunk.rewards.data.flags.writeable = False  # as episodes from remote env runners arrive
    shared = {}
    conn(rl_module=None, batch={}, episodes=[chunk], shared_data=shared)
    raw = before.bonus.bonus(obs_a[11:]).double().numpy()  # next observations only
    returns = np.empty_like(raw)
    ret = carried
    for t, b in enumerate(raw):
        ret = GAMMA_INT * ret + b
        returns[t] = ret
    before.return_rms.update(torch.as_tensor(returns))
    expected = raw / float(before.return_rms.std)  # no coefficients: they weight advantages
    (r_int,) = shared[REWARDS_INT]
    np.testing.assert_allclose(r_int, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(chunk.get_rewards(), rew_a[10:])  # rewards stay extrinsic
    assert conn._carry == {}
    # The predictor trained on the batch, and the logged extrinsic mean is the raw one.
    p0, p1 = before.bonus.predictor[0].weight, conn.bonus.predictor[0].weight
    assert not torch.equal(p0, p1)
    assert conn.last_stats["r_ext_mean"] == pytest.approx(float(rew_a[10:].mean()), rel=1e-5)
    assert conn.last_stats["r_int_mean"] > 0


def test_intrinsic_gae_does_not_reset_at_episode_ends():
    """RLlib's learner layout: chunk A (a terminated episode, 3 steps) and chunk B (cut by
    the rollout, 2 steps), each followed by its extra step holding the last next obs."""
    gamma, lam = 0.9, 0.8
    values = np.array([1.0, 2.0, 3.0, 5.0, 0.5, 0.7, 4.0], np.float32)
    rewards = np.array([0.1, 0.2, 0.3, 0.0, 0.4, 0.5, 0.0], np.float32)
    term = np.array([0, 0, 1, 0, 0, 0, 0], bool)
    trunc = np.array([0, 0, 0, 0, 0, 1, 0], bool)
    mask = np.array([1, 1, 1, 0, 1, 1, 0], bool)
    ext = compute_value_targets(values, rewards, term, trunc, gamma=gamma, lambda_=lam) - values
    intr = intrinsic_value_targets(values, rewards, term, trunc, gamma, lam, loss_mask=mask)
    intr = intr - values

    def gae(v, r, bootstrap):  # one chunk by hand
        nxt = np.append(v[1:], bootstrap)
        deltas = r + gamma * nxt - v
        out, run = np.zeros_like(v), 0.0
        for t in reversed(range(len(v))):
            run = deltas[t] + gamma * lam * run
            out[t] = run
        return out

    # The extrinsic GAE stops at the termination (no bootstrap); the intrinsic one
    # bootstraps with V_int of the final observation (5.0).
    np.testing.assert_allclose(ext[:3], gae(values[:3], rewards[:3], 0.0), rtol=1e-6)
    np.testing.assert_allclose(intr[:3], gae(values[:3], rewards[:3], 5.0), rtol=1e-6)
    assert intr[2] == pytest.approx(0.3 + gamma * 5.0 - 3.0)
    assert ext[2] == pytest.approx(0.3 - 3.0)
    # At a rollout cut both bootstrap; the extra steps carry no advantage; chunks are
    # independent (chunk B's values do not reach chunk A).
    np.testing.assert_allclose(intr[4:6], gae(values[4:6], rewards[4:6], 4.0), rtol=1e-6)
    np.testing.assert_allclose(ext[4:6], intr[4:6], rtol=1e-6)
    assert intr[3] == intr[6] == 0.0
    other = values.copy()
    other[4:] += 10.0
    again = intrinsic_value_targets(other, rewards, term, trunc, gamma, lam, loss_mask=mask)
    np.testing.assert_allclose((again - other)[:3], intr[:3], rtol=1e-6)


@pytest.mark.parametrize("method", ["rnd", "rdd"])
def test_connector_state_round_trips(method, tmp_path):
    from safetensors.torch import save_file

    obs, rew = _trajectory(2, 64)
    trained = _connector(method)
    for _ in range(3):
        trained(rl_module=None, batch={}, episodes=[_episode("x", obs, rew, done=True)])
    save_file(trained.state_tensors(), str(tmp_path / "s.safetensors"))
    other = _connector(method, seed=1)  # different init: loading must overwrite all of it
    assert not torch.equal(other.bonus.predictor[0].weight, trained.bonus.predictor[0].weight)
    other.load_state_tensors(load_file(str(tmp_path / "s.safetensors")))
    for key, value in trained.state_tensors().items():
        assert torch.equal(other.state_tensors()[key], value), key
    # Adam's moments and the subset RNG came along: the next update is identical too.
    obs2, rew2 = _trajectory(3, 64)
    for conn in (trained, other):
        conn(rl_module=None, batch={}, episodes=[_episode("y", obs2, rew2, done=True)])
    assert trained.last_stats == other.last_stats
    assert torch.equal(trained.bonus.predictor[-1].weight, other.bonus.predictor[-1].weight)


def test_add_exploration_refuses_several_learners(tmp_path):
    cfg = load_config(None, _overrides(tmp_path, "teach.exploration.method=rnd"))
    config = build_config(cfg)
    assert config.learner_class.__name__ == "IntrinsicPPOTorchLearner"
    assert config.rl_module_spec.module_class.__name__ == "TwoStreamPPOTorchRLModule"
    config.learners(num_learners=2)
    with pytest.raises(ValueError, match="num_learners"):
        add_exploration(config, cfg.teach.exploration, seed=0)
    plain = load_config(None, _overrides(tmp_path))
    plain_config = build_config(plain)  # method none: plain RLlib PPO
    assert plain_config.learner_class.__name__ == "PPOTorchLearner"
    assert plain_config.rl_module_spec.module_class.__name__ == "DefaultPPOTorchRLModule"
    assert "robodistill_two_stream" not in plain_config.learner_config_dict


@pytest.mark.parametrize(
    "setting",
    [
        "bonus_input=[position]",
        "input_scaling=bounds",
        "return_norm_window=4096",
        "episodic_cell=0.1",
    ],
)
def test_sb3_only_bonus_settings_are_refused_on_rllib_naming_the_key(tmp_path, setting):
    cfg = load_config(None, _overrides(tmp_path, "teach.exploration.method=rnd",
                                       f"teach.exploration.{setting}"))  # fmt: skip
    key = setting.split("=")[0]
    with pytest.raises(ConfigError, match=f"teach.exploration.{key} is built for"):
        build_config(cfg)


def test_entropy_coef_reaches_rllib(tmp_path):
    cfg = load_config(None, _overrides(tmp_path, "teach.entropy_coef=0.001"))
    assert build_config(cfg).entropy_coeff == 0.001


# -- RLlib PPO with the connector --------------------------------------------------------------
def _overrides(tmp_path, *extra: str) -> list[str]:
    return [
        f"runs_dir={tmp_path / 'runs'}", "env.id=Pendulum-v1", "env.num_envs=2",
        "env.max_episode_steps=50", "teach.backend=rllib", "teach.algo=ppo",
        "teach.total_timesteps=512", "teach.n_steps=128", "teach.batch_size=64",
        "teach.n_epochs=2", "teach.eval_every=256", "teach.eval_episodes=2",
        "teach.checkpoint_every=256", "teach.net_arch=[32, 32]", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("method", ["rnd", "rdd"])
def test_predictor_learns_visited_states(ray_session, tmp_path, method):
    cfg = load_config(None, _overrides(
        tmp_path, "teach.num_env_runners=0", "teach.normalize_obs=false",
        f"teach.exploration.method={method}", "teach.exploration.learning_rate=3e-3",
        "teach.exploration.update_proportion=1.0", "teach.n_steps=512", "teach.n_epochs=1",
        "teach.batch_size=256",
    ))  # fmt: skip
    # Pendulum's states (cos, sin, angular velocity) are revisited every iteration.
    env = create_env({"id": "Pendulum-v1"})
    env.action_space.seed(0)
    probe, (o, _) = [], env.reset(seed=0)
    for _ in range(200):
        o, *_ = env.step(env.action_space.sample())
        probe.append(o)
    probe = np.asarray(probe, np.float32)
    algo = build_config(cfg).build_algo()
    try:
        order = [
            type(c).__name__ for c in algo.learner_group._learner._learner_connector.connectors
        ]
        assert order.index("IntrinsicRewardConnector") < order.index(
            "AddOneTsToEpisodesAndTruncate") < order.index("GeneralAdvantageEstimation")  # fmt: skip
        assert order[-2:] == ["GeneralAdvantageEstimation", "TwoStreamAdvantages"]
        assert exploration_stats(algo) == {}
        losses, probe_bonus = [], []
        for _ in range(4):  # 4 predictor steps each (1024 samples, minibatch 256)
            result = algo.train()
            stats = result["learners"]["default_policy"]
            assert (
                np.isfinite(stats["exploration_r_int_mean"]) and stats["exploration_r_int_mean"] > 0
            )
            assert ("exploration_pseudo_count_mean" in stats) == (method == "rdd")
            losses.append(stats["exploration_predictor_loss"])
            probe_bonus.append(float(_on_learner(algo, lambda c: c.bonus.bonus(probe).mean())))
        print(
            f"{method}: predictor loss {np.round(losses, 4)}, probe bonus {np.round(probe_bonus, 4)}"
        )
        assert exploration_stats(algo)["predictor_loss"] == pytest.approx(losses[-1])
        assert losses[-1] < losses[0]
        assert probe_bonus[-1] < 0.7 * probe_bonus[0]
    finally:
        algo.stop()


def _learner(algo):
    return algo.learner_group._learner  # the local learner (num_learners=0)


def test_zero_intrinsic_coef_gives_plain_ppo_advantages(ray_session, tmp_path):
    common = ("teach.num_env_runners=0", "teach.normalize_obs=false")
    cfg = load_config(None, _overrides(tmp_path, *common, "teach.exploration.method=rnd",
                                       "teach.exploration.intrinsic_coef=0"))  # fmt: skip
    plain = build_config(load_config(None, _overrides(tmp_path, *common)))
    algo = build_config(cfg).build_algo()
    try:
        # Chunks of finished and of cut episodes (50-step episodes, 2 envs).
        episodes = algo.env_runner.sample(num_timesteps=160, random_actions=True)
        assert any(ep.is_done for ep in episodes) and any(not ep.is_done for ep in episodes)
        learner = _learner(algo)

        def run(pipeline):
            batch = pipeline(rl_module=learner.module, batch={}, metrics=None,
                             episodes=copy.deepcopy(episodes), shared_data={})  # fmt: skip
            return {k: v.numpy() for k, v in batch["default_policy"].items()
                    if isinstance(v, torch.Tensor)}  # fmt: skip

        # Plain PPO's learner pipeline (as PPOLearner.build makes it), same module.
        ppo = plain.build_learner_connector(None, None, device=torch.device("cpu"))
        ppo.prepend(AddOneTsToEpisodesAndTruncate())
        ppo.append(GeneralAdvantageEstimation(gamma=plain.gamma, lambda_=plain.lambda_))
        expected = run(ppo)
        got = run(learner._learner_connector)
        for col in (Columns.REWARDS, Columns.VALUE_TARGETS, Columns.ADVANTAGES):
            # extrinsic_coef 2.0 (a power of two): bit for bit.
            np.testing.assert_array_equal(got[col], expected[col], err_msg=col)
        assert np.isfinite(got[VALUE_TARGETS_INT]).all()
        # The same batch with intrinsic_coef = 1 does move the advantages.
        (piece,) = [c for c in learner._learner_connector.connectors
                    if isinstance(c, TwoStreamAdvantages)]  # fmt: skip
        piece.intrinsic_coef = 1.0
        mixed = run(learner._learner_connector)
        assert not np.allclose(mixed[Columns.ADVANTAGES], expected[Columns.ADVANTAGES])
        np.testing.assert_array_equal(mixed[Columns.VALUE_TARGETS], expected[Columns.VALUE_TARGETS])
    finally:
        algo.stop()


def test_two_stream_trains_and_checkpoint_restores_intrinsic_head(ray_session, tmp_path):
    cfg = load_config(None, _overrides(
        tmp_path, "teach.num_env_runners=0", "teach.exploration.method=rnd",
        "teach.n_steps=64", "teach.n_epochs=1",
    ))  # fmt: skip

    def head(algo):
        module = _learner(algo).module["default_policy"]
        return {k: v.detach().clone() for k, v in module.vf_int.state_dict().items()}

    def head_adam(algo):
        state = _learner(algo).get_optimizer("default_policy", INTRINSIC_OPTIMIZER).state_dict()
        return {(i, k): torch.as_tensor(v).clone() for i, s in state["state"].items()
                for k, v in s.items()}  # fmt: skip

    algo = build_config(cfg).build_algo()
    try:
        assert not hasattr(algo.env_runner.module, "vf_int")  # learner-only
        init = head(algo)
        for _ in range(2):
            stats = algo.train()["learners"]["default_policy"]
            assert np.isfinite(stats["exploration_vf_loss_int"])
            assert np.isfinite(stats["exploration_intrinsic_return_mean"])
            assert np.isfinite(stats["vf_loss"])  # PPO's own value loss is still there
        trained, adam = head(algo), head_adam(algo)
        assert any(not torch.equal(trained[k], init[k]) for k in init)  # the head learned
        assert adam  # its own Adam took steps
        algo.save_to_path(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
    again = build_config(cfg).build_algo()
    try:
        fresh = head(again)
        assert all(torch.equal(fresh[k], init[k]) for k in init)  # seeded init, not trained
        again.restore_from_path(str(tmp_path / "ckpt"))
        restored = head(again)
        assert restored.keys() == trained.keys()
        for k in trained:
            assert torch.equal(restored[k], trained[k]), k
        restored_adam = head_adam(again)
        assert restored_adam.keys() == adam.keys()
        for k in adam:
            assert torch.equal(restored_adam[k], adam[k]), k
    finally:
        again.stop()


def test_teach_rllib_rnd_checkpoint_resume(ray_session, tmp_path):
    cfg = load_config(None, _overrides(tmp_path, "teach.exploration.method=rnd"))
    with pytest.raises(KeyboardInterrupt), StageRun(cfg, "teach") as stage:
        metrics = run_teach_rllib(cfg, stage)
        raise KeyboardInterrupt  # interrupted before finish(): the next run resumes
    assert metrics["timesteps"] >= 512 and metrics["train_episodes"] > 0
    teach_dir = tmp_path / "runs" / cfg.name / "teach"
    rows = [json.loads(line) for line in (teach_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "exploration_predictor_loss" in r]
    assert len(logged) >= 2 and all(r["exploration_r_int_mean"] > 0 for r in logged)
    assert all(np.isfinite(r["exploration_vf_loss_int"]) for r in logged)  # intrinsic head
    ckpt = teach_dir / "checkpoint"
    assert json.loads((ckpt / "robodistill_state.json").read_text())["exploration"] == "rnd"
    assert json.loads((ckpt / CONFIG_NAME).read_text())["method"] == "rnd"
    saved = load_file(str(ckpt / TENSORS_NAME))
    fresh = IntrinsicRewardConnector(
        exploration=cfg.teach.exploration.model_dump(), obs_dim=OBS_DIM, seed=cfg.seed
    ).state_tensors()
    key = "bonus.predictor.0.weight"
    assert not torch.equal(saved[key], fresh[key])  # trained away from the seeded init
    assert torch.equal(saved["bonus.target.0.weight"], fresh["bonus.target.0.weight"])
    policy = load_policy(teach_dir / "policy")
    assert isinstance(policy, RLlibPolicy)
    obs = np.random.default_rng(0).normal(size=(8, OBS_DIM)).astype(np.float32)
    assert policy.act(obs).shape == (8, 1)

    # Re-run: resumes at 512 steps with nothing left to train and saves the checkpoint
    # again from the restored learner; an unrestored predictor would be the fresh one.
    with StageRun(cfg, "teach") as stage:
        again = run_teach_rllib(cfg, stage)
        stage.finish(again)
    assert again["resumed_from_timesteps"] == metrics["timesteps"] == again["timesteps"]
    resaved = load_file(str(ckpt / TENSORS_NAME))
    assert resaved.keys() == saved.keys()
    for k in saved:
        assert torch.equal(resaved[k], saved[k]), k
