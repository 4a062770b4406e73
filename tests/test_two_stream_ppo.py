"""PPO with an intrinsic value head (RND's recipe) on stable-baselines3."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from pydantic import ValidationError
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from robodistill.config import ConfigError, ExplorationConfig, load_config
from robodistill.core.rundir import StageRun
from robodistill.policies.exploration import bonus_from_config, make_bonus
from robodistill.teach.rl.episodic import EpisodicNovelty
from robodistill.teach.rl.exploration_sb3 import (
    IntrinsicRewardVecEnv,
    bonus_columns,
    find_exploration_env,
    wrap_exploration,
)
from robodistill.teach.rl.sb3 import run_teach_sb3
from robodistill.teach.rl.two_stream_ppo import TwoStreamPPO, TwoStreamRolloutBuffer
from robodistill.training import sb3 as sb3_training

PPO_ARGS = dict(n_steps=32, batch_size=32, n_epochs=2, seed=0, device="cpu", verbose=0)


def _venv(n: int = 2) -> DummyVecEnv:
    venv = DummyVecEnv([lambda: gym.make("Pendulum-v1") for _ in range(n)])
    venv.seed(0)
    return venv


def _two_stream(intrinsic_coef: float, extrinsic_coef: float = 1.0, warmup: int = 0):
    cfg = ExplorationConfig(method="rnd", intrinsic_coef=intrinsic_coef,
                            extrinsic_coef=extrinsic_coef, predictor_minibatches=2)  # fmt: skip
    venv, callback = wrap_exploration(_venv(), cfg, 0.99, seed=0, two_stream=True,
                                      warmup_steps=warmup)  # fmt: skip
    model = TwoStreamPPO("MlpPolicy", venv, intrinsic_coef=intrinsic_coef,
                         extrinsic_coef=extrinsic_coef, **PPO_ARGS)  # fmt: skip
    return model, callback


def test_with_intrinsic_coef_zero_it_learns_exactly_what_plain_ppo_learns():
    plain = PPO("MlpPolicy", _venv(), **PPO_ARGS)
    plain.learn(128)
    model, callback = _two_stream(intrinsic_coef=0.0)
    model.learn(128, callback=callback)
    assert callback.last_stats["r_int_mean"] > 0  # the bonus ran, its weight is zero
    a, b = plain.policy.state_dict(), model.policy.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # ... while the intrinsic head learned its own returns.
    assert np.abs(model.rollout_buffer.returns_int).sum() > 0


def _buffer(gamma_int: float = 0.5) -> TwoStreamRolloutBuffer:
    box = spaces.Box(-1.0, 1.0, (1,), np.float32)
    return TwoStreamRolloutBuffer(4, box, box, device="cpu", gamma=0.9, gae_lambda=1.0,
                                  n_envs=1, gamma_int=gamma_int, extrinsic_coef=2.0,
                                  intrinsic_coef=1.0)  # fmt: skip


def test_the_intrinsic_return_runs_across_episode_ends_the_extrinsic_one_does_not():
    buf = _buffer()
    ext, intr, starts = [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]
    for r, ri, start in zip(ext, intr, starts, strict=True):
        buf.stage_intrinsic(np.array([ri]))
        buf.add(np.zeros((1, 1)), np.zeros((1, 1)), np.array([r]), np.array([start]),
                torch.zeros(1), torch.zeros(1))  # fmt: skip
    buf.compute_returns_and_advantage(torch.zeros(1), np.array([0.0]))
    ext_adv = buf.advantages.copy()
    buf.compute_intrinsic(np.zeros((4, 1), np.float32), np.zeros(1, np.float32))
    # An episode starts at step 2: the extrinsic reward of step 3 does not reach step 1.
    np.testing.assert_allclose(buf.returns[:, 0], [0.0, 0.0, 0.9, 1.0])
    # The intrinsic one does, discounted by gamma_int = 0.5.
    np.testing.assert_allclose(buf.returns_int[:, 0], [0.125, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(buf.advantages, 2.0 * ext_adv + 1.0 * buf.advantages_int)


def test_a_step_without_a_staged_intrinsic_reward_is_refused():
    buf = _buffer()
    with pytest.raises(RuntimeError, match="no intrinsic reward was staged"):
        buf.add(np.zeros((1, 1)), np.zeros((1, 1)), np.array([0.0]), np.array([1.0]),
                torch.zeros(1), torch.zeros(1))  # fmt: skip


def test_the_predictor_learns_visited_states_and_the_bonus_stays_high_on_novel_ones():
    cfg = ExplorationConfig(method="rnd", predictor_epochs=4, predictor_minibatches=4,
                            learning_rate=1e-3)  # fmt: skip
    venv, callback = wrap_exploration(_venv(), cfg, 0.99, seed=0, two_stream=True,
                                      warmup_steps=50)  # fmt: skip
    env: IntrinsicRewardVecEnv = venv
    visited = np.random.default_rng(0).normal(0.0, 0.3, (512, 3)).astype(np.float32)
    losses, ratios = [], []
    for _ in range(10):
        env._push(visited)
        stats = env.train_predictor(cfg.predictor_epochs, cfg.predictor_minibatches)
        losses.append(stats["predictor_loss"])
        ratios.append(stats["novelty_ratio"])
    assert losses[-1] < 0.5 * losses[0]
    assert ratios[-1] > 1.5 and ratios[-1] > ratios[0]
    assert stats["intrinsic_return_std"] >= 0


def test_resume_restores_both_heads_the_predictor_the_normalizers_and_the_rng(tmp_path):
    model, callback = _two_stream(intrinsic_coef=1.0, warmup=8)
    model.learn(128, callback=callback)
    ckpt = tmp_path / "checkpoint"
    sb3_training.save_checkpoint(ckpt, model, None, model.get_env(), {"best": None})
    fresh, _ = _two_stream(intrinsic_coef=1.0, warmup=3)
    state = sb3_training.restore_checkpoint(ckpt, fresh, None, fresh.get_env())
    assert state["num_timesteps"] == model.num_timesteps
    for name in ("policy", "critic_int"):
        a, b = getattr(model, name).state_dict(), getattr(fresh, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    a, b = model.get_env().state_tensors(), fresh.get_env().state_tensors()
    assert all(torch.equal(a[k], b[k]) for k in a)  # predictor, target, both normalizers
    sa = model.critic_int_optimizer.state_dict()["state"]
    sb = fresh.critic_int_optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert fresh._int_rng.bit_generator.state == model._int_rng.bit_generator.state


@pytest.mark.parametrize(
    "override, key",
    [({"gamma_int": 1.0}, "gamma_int"), ({"intrinsic_coef": -1.0}, "intrinsic_coef"),
     ({"extrinsic_coef": -0.5}, "extrinsic_coef"), ({"predictor_epochs": 0}, "predictor_epochs")],
)  # fmt: skip
def test_bad_exploration_settings_name_the_key(override, key):
    with pytest.raises(ValidationError, match=key):
        ExplorationConfig(method="rnd", **override)
    with pytest.raises(ConfigError, match=f"teach.exploration.{key}"):
        load_config(None, [f"teach.exploration.{key}={next(iter(override.values()))}"])


def test_the_bonus_sees_the_layout_fields_it_names():
    layout = [{"key": "goal", "start": 0, "stop": 3}, {"key": "position", "start": 27, "stop": 29}]
    assert bonus_columns([], layout) is None
    np.testing.assert_array_equal(bonus_columns(["position"], layout), [27, 28])
    with pytest.raises(ConfigError, match=r"teach.exploration.bonus_input: \['pose'\]"):
        bonus_columns(["pose"], layout)
    bonus = bonus_from_config(ExplorationConfig(method="rnd"), 2, seed=0)
    env = IntrinsicRewardVecEnv(_venv(), bonus, columns=np.array([0, 2]), mix_rewards=False)
    obs = env.reset()
    env.step_async(np.zeros((2, 1), np.float32))
    _, _, _, infos = env.step_wait()
    assert env.pop_buffer().shape == (2, 2) and obs.shape == (2, 3)
    assert all("r_int" in info for info in infos)


def test_teach_ppo_with_rnd_logs_the_bonus_and_trains_both_heads(tmp_path):
    cfg = load_config(None, [
        f"runs_dir={tmp_path}", "env.id=Pendulum-v1", "env.num_envs=2", "teach.algo=ppo",
        "teach.total_timesteps=256", "teach.n_steps=64", "teach.batch_size=64",
        "teach.n_epochs=2", "teach.eval_every=256", "teach.checkpoint_every=256",
        "teach.eval_episodes=1", "env.max_episode_steps=50", "teach.exploration.method=rdd",
        "teach.exploration.obs_norm_warmup_steps=16",
    ])  # fmt: skip
    with StageRun(cfg, "teach") as stage:
        run_teach_sb3(cfg, stage)
        stage.finish({})
    rows = [json.loads(line) for line in (stage.dir / "metrics.jsonl").read_text().splitlines()]
    bonus = [r for r in rows if r.get("stage") == "exploration"]
    assert len(bonus) == 2  # one per rollout of 128 steps
    assert {"r_int_mean", "predictor_loss", "novelty_ratio", "intrinsic_return_std"} <= set(
        bonus[-1]
    )
    state = json.loads((stage.dir / "checkpoint" / "state.json").read_text())
    assert "critic_int" in state["optimizers"] and "int_rng" in state


def _strip_and_beyond(bounds):
    """A bonus trained on a 3 m strip of an 8 x 12 m hall: (bonus, visited, beyond) where
    ``beyond`` are places 3.5-7.5 m from the strip's far edge."""
    rng = np.random.default_rng(0)
    visited = np.stack([rng.uniform(0.3, 3.2, 4000), rng.uniform(1.5, 10.5, 4000)], 1)
    beyond = np.stack([np.linspace(4.5, 7.5, 4).repeat(3), np.tile([2.0, 6.0, 10.0], 4)], 1)
    cfg = ExplorationConfig(method="rnd", input_scaling="bounds" if bounds else "running")
    bonus = bonus_from_config(cfg, 2, seed=0, input_bounds=([0, 0], [8, 12]) if bounds else None)
    bonus.update_obs_stats(visited)
    for _ in range(20):
        bonus.update(visited[rng.integers(0, len(visited), 1024)], epochs=4, minibatches=4)
    return bonus, visited.astype(np.float32), beyond.astype(np.float32)


def test_running_scaling_clips_the_unvisited_hall_to_one_input_bounds_scaling_does_not():
    running, _, beyond = _strip_and_beyond(bounds=False)
    # Beyond obs_clip standard deviations of the strip (here from ~6 m on) every x looks
    # the same to the bonus: 6.5 m and 7.5 m are one input.
    assert torch.equal(running.normalize(beyond[6:9]), running.normalize(beyond[9:]))
    scaled, visited, beyond = _strip_and_beyond(bounds=True)
    x = scaled.normalize(beyond)[:, 0]
    assert torch.allclose(x, torch.as_tensor(beyond[:, 0] / 4 - 1))  # [0, 8] m -> [-1, 1]
    novel, seen = scaled.bonus(beyond), scaled.bonus(visited)
    assert float(novel.min()) > 5 * float(seen.mean())
    # The further from the visited strip, the higher the bonus: a gradient to follow.
    far, near = novel.reshape(4, 3).mean(1)[[-1, 0]]
    assert float(far) > float(near)


def test_bounds_scaling_round_trips_and_refuses_unbounded_inputs():
    cfg = ExplorationConfig(method="rdd", input_scaling="bounds")
    bonus = bonus_from_config(cfg, 2, seed=1, input_bounds=([0, 0], [8, 12]))
    again = make_bonus("rdd", **bonus.config())
    again.load_state_dict(bonus.state_dict())
    obs = np.array([[1.0, 2.0], [7.0, 11.0]], np.float32)
    assert torch.equal(bonus.bonus(obs), again.bonus(obs))
    with pytest.raises(ValueError, match="input_bounds must be finite"):
        make_bonus("rnd", 2, input_bounds=([0, 0], [np.inf, 1]))
    venv = DummyVecEnv([lambda: gym.make("CartPole-v1")])  # two velocities are unbounded
    with pytest.raises(ConfigError, match="teach.exploration.input_scaling"):
        wrap_exploration(venv, cfg, gamma=0.99, seed=0, two_stream=True, warmup_steps=0)


def test_centred_on_visited_the_first_bonus_grows_with_the_distance_from_the_visits():
    cfg = ExplorationConfig(method="rnd", input_scaling="bounds_running_mean")
    bonus = bonus_from_config(cfg, 2, seed=0, input_bounds=([0, 0], [8, 12]))
    start = np.array([1.2, 2.5])
    bonus.update_obs_stats(np.random.default_rng(0).normal(start, 0.3, (5000, 2)))
    mean = bonus.obs_rms.mean.numpy()
    # Zero biases at init: target and predictor vanish at the centre, the bonus with them.
    assert float(bonus.bonus(mean[None].astype(np.float32))) < 1e-8
    ray = mean + np.linspace(0.5, 5.0, 10)[:, None] * np.array([0.8, 0.6])
    values = bonus.bonus(ray.astype(np.float32)).numpy()
    assert (np.diff(values) > 0).all()
    box = bonus_from_config(ExplorationConfig(method="rnd", input_scaling="bounds"), 2, seed=0,
                            input_bounds=([0, 0], [8, 12]))  # fmt: skip
    # Centred on the box instead, the hall's centre is the least novel place.
    centre, visited = box.bonus(np.array([[4.0, 6.0], start], np.float32)).numpy()
    assert centre < 1e-8 < visited


def test_episodic_novelty_falls_with_revisits_in_an_episode_and_resets_after_it():
    episodic = EpisodicNovelty(num_envs=2, cell=0.1)
    same = np.array([[0.52, 0.31], [0.05, 0.05]])
    flat = np.ones(2)  # equal lifelong bonuses: modulation 1
    rewards = [episodic.reward(same, flat) for _ in range(4)]
    np.testing.assert_allclose([r[0] for r in rewards], 1 / np.sqrt([1, 2, 3, 4]))
    moved = episodic.reward(same + [0.2, 0.0], flat)  # a new cell for both envs
    np.testing.assert_allclose(moved, [1.0, 1.0])
    episodic.end_episodes(np.array([True, False]))
    again = episodic.reward(same, flat)
    np.testing.assert_allclose(again, [1.0, 1 / np.sqrt(5)])  # env 0 forgot, env 1 did not
    # The lifelong bonus scales it between 1x and 5x: far above its running mean -> 5x.
    for _ in range(50):
        episodic.reward(np.random.default_rng(0).uniform(0, 9, (2, 2)), np.array([1.0, 1.1]))
    high = episodic.reward(np.array([[30.0, 3.0], [40.0, 4.0]]), np.array([1e3, 1.0]))
    assert high[0] == pytest.approx(5.0) and high[1] == pytest.approx(1.0)
    restored = EpisodicNovelty(num_envs=2, cell=0.1)
    restored.load_state(episodic.state())
    np.testing.assert_array_equal(restored.state(), episodic.state())


def test_the_episodic_bonus_reaches_the_rewards_and_the_checkpoint():
    cfg = ExplorationConfig(method="rnd", episodic_cell=0.1)
    venv, _ = wrap_exploration(_venv(), cfg, 0.99, seed=0, two_stream=True, warmup_steps=8)
    env = find_exploration_env(venv)
    venv.reset()
    for _ in range(3):
        venv.step_async(np.zeros((2, 1), np.float32))
        _, _, _, infos = venv.step_wait()
        assert all(info["r_int"] > 0 for info in infos)
    state = env.state_tensors()
    assert state["episodic"].shape == (3,) and float(state["episodic"][2]) == 6
    with pytest.raises(ConfigError, match="teach.exploration.episodic_cell"):
        load_config(None, ["teach.exploration.episodic_cell=-1"])
