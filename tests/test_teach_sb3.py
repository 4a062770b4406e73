"""SB3 teachers: SB3Policy parity with ``model.predict``, the teach loop, resume, learning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import robodistill.policies.sb3_policy  # noqa: F401  (registers the "sb3" kind)
from robodistill.config import load_config
from robodistill.core.rundir import StageRun
from robodistill.envs import make_env
from robodistill.policies import load_policy
from robodistill.policies.sb3_policy import SB3Policy
from robodistill.teach.rl import sb3 as teach_sb3
from robodistill.teach.rl.exploration_sb3 import IntrinsicRewardVecEnv
from robodistill.teach.rl.sb3 import run_teach_sb3
from robodistill.training import sb3 as sb3_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _teach(overrides: list[str]):
    cfg = load_config(None, overrides)
    with StageRun(cfg, "teach") as stage:
        metrics = run_teach_sb3(cfg, stage)
        stage.finish(metrics)
    return cfg, metrics


def _pendulum(tmp_path, algo: str, steps: int, *extra: str) -> list[str]:
    return [
        f"runs_dir={tmp_path / 'runs'}", "env.id=Pendulum-v1", "env.num_envs=2",
        "env.max_episode_steps=50", f"teach.algo={algo}", f"teach.total_timesteps={steps}",
        "teach.n_steps=64", "teach.eval_every=256", "teach.eval_episodes=2",
        "teach.net_arch=[32, 32]", *extra,
    ]  # fmt: skip


# -- SB3Policy -------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_sb3_policy_matches_predict(algo, tmp_path):
    venv = VecNormalize(DummyVecEnv([lambda: Monitor(make_env("Pendulum-v1"))] * 2))
    kwargs = {"n_steps": 64} if algo == "ppo" else {"learning_starts": 32}
    cls = PPO if algo == "ppo" else SAC
    model = cls("MlpPolicy", venv, seed=0, device="cpu", policy_kwargs={"net_arch": [32, 32]},
                **kwargs)  # fmt: skip
    model.learn(256)  # trains the weights and VecNormalize's statistics away from their init
    obs = (np.random.default_rng(0).normal(size=(9, 3)) * 3).astype(np.float32)
    expected, _ = model.predict(venv.normalize_obs(obs), deterministic=True)

    policy = SB3Policy.from_model(model, venv)
    actions = policy.act(obs)
    assert actions.dtype == np.float32 and actions.shape == (9, 1)
    np.testing.assert_allclose(actions, expected, atol=1e-5)
    assert np.all(actions >= -2.0) and np.all(actions <= 2.0)

    # distribution(): PPO's Gaussian over env-unit actions; SAC's over the pre-tanh variable.
    mean, log_std = policy.distribution(obs)
    obs_t = torch.as_tensor(venv.normalize_obs(obs))
    with torch.no_grad():
        if algo == "ppo":
            dist = model.policy.get_distribution(obs_t).distribution
            ref_mean, ref_log_std = dist.mean, dist.stddev.log()
        else:
            ref_mean, ref_log_std, _ = model.actor.get_action_dist_params(obs_t)
    np.testing.assert_allclose(mean.numpy(), ref_mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(log_std.numpy(), ref_log_std.numpy(), atol=1e-5)

    loaded = load_policy(policy.save(tmp_path / "policy"))
    assert isinstance(loaded, SB3Policy) and loaded.algo == algo
    np.testing.assert_allclose(loaded.act(obs), expected, atol=1e-5)
    config = json.loads((tmp_path / "policy" / "config.json").read_text())
    assert config["kind"] == "sb3" and config["net_arch"] == [32, 32]
    assert config["activation"] == ("Tanh" if algo == "ppo" else "ReLU")


# -- the teach loop --------------------------------------------------------------------------


@pytest.mark.parametrize(("algo", "steps"), [("ppo", 512), ("sac", 300)])
def test_teach_stage_finishes(algo, steps, tmp_path):
    cfg, metrics = _teach(_pendulum(tmp_path, algo, steps, "teach.learning_starts=50"))
    stage_dir = tmp_path / "runs" / "default" / "teach"
    assert metrics["timesteps"] >= steps
    assert json.loads((stage_dir / "manifest.json").read_text())["status"] == "done"
    policy = load_policy(metrics["policy"])
    assert isinstance(policy, SB3Policy) and policy.algo == algo
    obs = np.stack([make_env("Pendulum-v1").observation_space.sample() for _ in range(4)])
    actions = policy.act(obs)
    assert actions.shape == (4, 1) and np.all(np.abs(actions) <= 2.0)
    assert isinstance(load_policy(stage_dir / "policy_last"), SB3Policy)
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_return_mean" in r]
    assert [r["step"] for r in evals][0] == 256 and evals[-1]["step"] == metrics["timesteps"]
    assert metrics["best_return_mean"] == max(r["eval_return_mean"] for r in evals)
    assert metrics["final_return_mean"] == evals[-1]["eval_return_mean"]
    assert (stage_dir / "tb").is_dir()


@pytest.mark.parametrize("exploration", ["none", "rnd"])
def test_teach_resumes_from_checkpoint(exploration, tmp_path, monkeypatch):
    overrides = _pendulum(
        tmp_path,
        "ppo",
        512,
        "teach.checkpoint_every=128",
        f"teach.exploration.method={exploration}",
    )
    ckpt = tmp_path / "runs" / "default" / "teach" / "checkpoint"
    original_save = sb3_training.save_checkpoint  # the checkpoint callback's

    def save_then_crash(*args, **kwargs):
        original_save(*args, **kwargs)
        raise KeyboardInterrupt  # as if Ctrl-C arrived right after the first checkpoint

    monkeypatch.setattr(sb3_training, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        _teach(overrides)
    monkeypatch.setattr(sb3_training, "save_checkpoint", original_save)
    manifest = json.loads((ckpt.parent / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    saved_steps = json.loads((ckpt / "state.json").read_text())["num_timesteps"]
    saved = load_file(str(ckpt / "tensors.safetensors"))
    assert 0 < saved_steps < 512

    restored = {}
    original_restore = teach_sb3.restore_checkpoint

    def spy(directory, model, vec_normalize, explore_venv):
        state = original_restore(directory, model, vec_normalize, explore_venv)
        restored.update(steps=model.num_timesteps, mean=vec_normalize.obs_rms.mean.copy(),
                        count=vec_normalize.obs_rms.count, explore_venv=explore_venv)  # fmt: skip
        return state

    monkeypatch.setattr(teach_sb3, "restore_checkpoint", spy)
    _, metrics = _teach(overrides)
    assert restored["steps"] == saved_steps == metrics["resumed_from_timesteps"]
    np.testing.assert_array_equal(restored["mean"], saved["vecnormalize.obs_rms.mean"].numpy())
    assert restored["count"] == float(saved["vecnormalize.obs_rms.count"]) > 1
    assert metrics["timesteps"] == 512
    # The exploration wrapper is what the resume restores into; its state was saved.
    assert isinstance(restored["explore_venv"], IntrinsicRewardVecEnv) == (exploration != "none")
    assert any(k.startswith("exploration.") for k in saved) == (exploration != "none")


# -- learning --------------------------------------------------------------------------------


def test_ppo_learns_inverted_pendulum(tmp_path):
    """PPO must beat the random policy on InvertedPendulum-v5 by a wide margin.

    Why this task: PPO is cheap per step (batched updates), so 4096 steps take ~5 s here,
    whereas SAC on Pendulum-v1 (one gradient step per env step) needed ~1 min for 3000
    steps on this contended 2-core machine and still failed on 1 of 2 seeds. Measured with
    episodes capped at 200 steps on the 5 evaluation seeds: random policy 5-11 mean return;
    PPO after 4096 steps 200.0 (the cap) on seeds 0, 1 and 2; after 2048 steps 62-192.
    The threshold of 100 is 10x random and fails if learning (or the eval path) breaks.
    """
    _, metrics = _teach([
        f"runs_dir={tmp_path / 'runs'}", "env.id=InvertedPendulum-v5", "env.num_envs=2",
        "env.max_episode_steps=200", "teach.algo=ppo", "teach.total_timesteps=4096",
        "teach.n_steps=256", "teach.learning_rate=1e-3", "teach.eval_every=4096",
        "teach.eval_episodes=5", "teach.checkpoint_every=100000",
    ])  # fmt: skip
    assert metrics["final_return_mean"] > 100, metrics


def test_teach_with_exploration_checkpoints_its_state(tmp_path):
    overrides = _pendulum(
        tmp_path, "ppo", 256, "teach.exploration.method=rnd", "teach.checkpoint_every=128"
    )
    _, metrics = _teach(overrides)
    ckpt = tmp_path / "runs" / "default" / "teach" / "checkpoint"
    assert json.loads((ckpt / "state.json").read_text())["exploration"] is True
    assert any(k.startswith("exploration.") for k in load_file(str(ckpt / "tensors.safetensors")))
    assert metrics["timesteps"] == 256


def test_rl_teachers_train_under_the_thread_rule(tmp_path, monkeypatch):
    import torch

    from robodistill.teach import stage as teach_stage

    seen = []

    def fake_train(cfg, stage):
        seen.append(torch.get_num_threads())
        return {}

    monkeypatch.setattr(teach_stage, "run_teach_sb3", fake_train)
    before = torch.get_num_threads()
    for threads in (2, 1):
        cfg = load_config(None, [f"runs_dir={tmp_path}", f"name=t{threads}", "env.id=Pendulum-v1",
                                 "teach.algo=ppo", f"teach.torch_threads={threads}"])  # fmt: skip
        teach_stage.run_teach(cfg)
    assert seen == [2, 1] and torch.get_num_threads() == before
