"""RL-100's residual online stage (issue 21, ``teach.online.method: residual``): the batched
residual vector env reproduces its base with a zero residual, the residual policy round-trips
through save / load, and the stage reports its own iterates like DPPO does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import Recorder
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from robodistill.config import load_config
from robodistill.envs import make_env
from robodistill.policies import load_policy
from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from robodistill.policies.residual import ResidualPolicy
from robodistill.policies.sb3_policy import SB3Policy
from robodistill.teach.rl100.residual_online import run_residual_online
from robodistill.training.residual_env import ResidualVecEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PUSHT = "robodistill/PushT-v0"


def _base(tmp_path) -> DiffusionPolicy:
    torch.manual_seed(0)
    policy = DiffusionPolicy(DiffusionPolicyConfig(
        obs_dim=5, action_dim=2, obs_horizon=2, pred_horizon=4, action_horizon=2,
        num_inference_steps=3, backbone="mlp", mlp_width=32, mlp_blocks=2, step_embed_dim=16,
        action_low=[0.0, 0.0], action_high=[512.0, 512.0]))  # fmt: skip
    policy.save(tmp_path / "base")
    return policy


def _venv(n: int, seed: int) -> DummyVecEnv:
    venv = DummyVecEnv([lambda: make_env(PUSHT, max_episode_steps=5) for _ in range(n)])
    venv.seed(seed)
    return venv


def test_a_zero_residual_reproduces_the_base_in_every_env_across_episode_ends(tmp_path):
    base = _base(tmp_path)
    venv = ResidualVecEnv(_venv(3, 11), base, residual_limit=5.0, include_obs=True)
    assert venv.observation_space.shape == (2 + 5,) and venv.action_space.high.tolist() == [5, 5]
    plain, twin = _venv(3, 11), load_policy(tmp_path / "base")  # the base alone, same seeds
    features, obs = venv.reset(), plain.reset()
    ends = 0
    for _ in range(12):  # episodes of 5 steps: two ends per env
        action = twin.act(obs)
        np.testing.assert_allclose(features, np.concatenate([action, obs], axis=1), atol=1e-4)
        features, _, dones, infos = venv.step(np.zeros((3, 2), np.float32))
        obs, _, plain_dones, plain_infos = plain.step(action)
        np.testing.assert_array_equal(dones, plain_dones)
        for i in np.flatnonzero(dones):
            terminal = plain_infos[i]["terminal_observation"]
            # PPO bootstraps a cut from features of the terminal observation.
            np.testing.assert_allclose(infos[i]["terminal_observation"],
                                       np.concatenate([action[i], terminal]), atol=1e-4)  # fmt: skip
            ends += 1
        if dones.any():
            twin.reset(np.flatnonzero(dones))
    assert ends == 6


def test_the_residual_policy_round_trips_and_adds_the_residual_to_the_base(tmp_path):
    base = _base(tmp_path)
    venv = ResidualVecEnv(_venv(2, 0), base, residual_limit=5.0, include_obs=True)
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=8, n_epochs=1, seed=0,
                policy_kwargs={"net_arch": [8]}, device="cpu")  # fmt: skip
    with torch.no_grad():  # a residual far from zero, so that adding it shows
        model.policy.action_net.bias.fill_(3.0)
    policy = ResidualPolicy(load_policy(tmp_path / "base"), SB3Policy.from_model(model), True)
    loaded = load_policy(policy.save(tmp_path / "residual"))
    assert isinstance(loaded, ResidualPolicy) and loaded.include_obs
    twin = load_policy(tmp_path / "base")
    obs = np.random.default_rng(0).uniform(100, 400, size=(6, 2, 5)).astype(np.float32)
    for policy_ in (policy, loaded, twin):
        policy_.reset()
    for o in obs:
        a, b, base_action = policy.act(o), loaded.act(o), twin.act(o)
        np.testing.assert_allclose(a, b, atol=1e-5)
        residual = policy.residual.act(np.concatenate([base_action, o], axis=1))
        np.testing.assert_allclose(a, np.clip(base_action + residual, 0, 512), atol=1e-4)
        assert np.abs(a - base_action).max() > 1.0


def _cfg(tmp_path, *extra):
    return load_config(None, [
        f"runs_dir={tmp_path / 'runs'}", f"env.id={PUSHT}", "env.num_envs=2",
        "env.max_episode_steps=6", "teach.rl100.rl_eval_episodes=2",
        "teach.diffusion.num_inference_steps=3", "teach.diffusion.backbone=mlp",
        "teach.online.method=residual", "teach.online.num_envs=2",
        "teach.online.residual_timesteps=64", "teach.online.residual_limit=5",
        "teach.n_steps=16", "teach.batch_size=16", "teach.n_epochs=1", "teach.net_arch=[8]",
        "teach.eval_every=32", "teach.checkpoint_every=32", *extra,
    ])  # fmt: skip


def test_the_residual_stage_reports_its_own_iterates_and_keeps_the_best(tmp_path):
    _base(tmp_path)
    stage = Recorder(tmp_path / "teach")
    out = tmp_path / "teach/online"
    result = run_residual_online(_cfg(tmp_path), stage, tmp_path / "base", out)
    assert result["method"] == "residual" and result["env_steps"] == 64
    assert [e["env_steps"] for e in result["evals"]] == [0, 32, 64]
    assert result["best_iterate"]["iteration"] in (32, 64)  # iterates only, not the start
    assert result["last_iterate"]["env_steps"] == 64 and result["validation_episodes"] == 2
    assert result["started_from"] == str(tmp_path / "base") and not result["stopped_by_budget"]
    for name in ("policy", "policy_last"):
        assert isinstance(load_policy(out / name), ResidualPolicy)
    kept = load_policy(tmp_path / "teach/policy")  # the one keeper saw every evaluation
    assert isinstance(kept, ResidualPolicy)
    assert result["kept"]["stage"] == "online" and result["kept"]["step"] in (0, 32, 64)
    rows = [r for r in stage.rows if "eval_success_rate" in r]
    assert [r["online_env_steps"] for r in rows] == [0, 32, 64]
    # The per-episode training record: 2 envs x 64 steps / 6-step episodes.
    record = [json.loads(line) for line in (tmp_path / "teach/episodes.jsonl").open()]
    assert len(record) == 10 and all(r["length"] == 6 for r in record)
    assert [r["episode"] for r in record] == list(range(10))
    assert all(0 < r["env_steps"] <= 64 for r in record)
    # Done: a second call returns the result without training.
    assert run_residual_online(_cfg(tmp_path), stage, tmp_path / "base", out) == result


def test_the_residual_stage_stops_on_its_time_budget_and_refuses_another_chain(tmp_path):
    _base(tmp_path)
    cfg = _cfg(tmp_path, "teach.online.max_minutes=0.00001", "teach.online.residual_timesteps=512")
    result = run_residual_online(cfg, Recorder(tmp_path / "teach"), tmp_path / "base",
                                 tmp_path / "teach/online")  # fmt: skip
    assert result["stopped_by_budget"] and result["env_steps"] < 512
    other = _cfg(tmp_path, "teach.diffusion.num_inference_steps=5")
    with pytest.raises(Exception, match="denoising chain differs"):
        run_residual_online(other, Recorder(tmp_path / "t2"), tmp_path / "base", tmp_path / "o2")


def test_a_diffusion_student_asked_to_distill_a_residual_teacher_names_its_base(tmp_path):
    from robodistill.config import ConfigError
    from robodistill.distill.teachers import load_diffusion_teacher

    base = _base(tmp_path)
    venv = ResidualVecEnv(_venv(1, 0), base, residual_limit=1.0, include_obs=True)
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=8, policy_kwargs={"net_arch": [8]},
                device="cpu")  # fmt: skip
    path = ResidualPolicy(base, SB3Policy.from_model(model), True).save(tmp_path / "teacher")
    with pytest.raises(ConfigError, match="residual") as e:
        load_diffusion_teacher(path, "consistency")
    assert str(path / "base") in str(e.value)
    assert isinstance(load_diffusion_teacher(path / "base", "consistency"), DiffusionPolicy)


def test_an_interrupted_residual_stage_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from robodistill.training import sb3 as sb3_training

    _base(tmp_path)
    cfg, out = _cfg(tmp_path), tmp_path / "teach/online"
    real_save = sb3_training.save_checkpoint

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # right after the first checkpoint (32 env steps)

    monkeypatch.setattr(sb3_training, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_residual_online(cfg, Recorder(tmp_path / "teach"), tmp_path / "base", out)
    assert not (out / "result.json").exists()
    saved = json.loads((out / "checkpoint/state.json").read_text())
    assert saved["num_timesteps"] == 32 and [e["env_steps"] for e in saved["evals"]] == [0, 32]
    monkeypatch.setattr(sb3_training, "save_checkpoint", real_save)
    result = run_residual_online(cfg, Recorder(tmp_path / "teach"), tmp_path / "base", out)
    assert result["env_steps"] == 64  # 32 before the crash, 32 after: none run twice
    assert [e["env_steps"] for e in result["evals"]] == [0, 32, 64]
