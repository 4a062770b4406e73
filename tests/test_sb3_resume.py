"""Resuming the stable-baselines3 teachers (PPO, SAC, each with and without an exploration
bonus) and a COMPASS residual specialist restores exactly what the checkpoint saved.

An SB3 resume cannot continue bit for bit (``robodistill.teach.rl.sb3``'s docstring): the
envs are re-seeded, PPO's partial rollout and SAC's replay buffer are not saved, and SB3
samples its actions from torch's global RNG, which no checkpoint holds. So each test runs
the stage until its first checkpoint is written, crashes it right there (Ctrl-C), resumes
it, and compares the model as the resumed run hands it to ``learn`` (restored, before SB3
touches it) with the model that wrote the checkpoint, at that moment:

- every weight (the policy with SAC's critic target, TwoStreamPPO's intrinsic head, SAC's
  entropy coefficient), bit for bit;
- every optimizer's state: Adam's moments and step for each parameter, and param_groups;
- VecNormalize's observation and return statistics (mean, var, count);
- the exploration wrapper's state: the predictor and target weights, the bonus's input
  normalizer, the intrinsic-return normalizer and the per-env intrinsic returns (and
  TwoStreamPPO's minibatch RNG);
- ``num_timesteps`` and ``_n_updates``;
- the next actions on fixed observations: deterministic (SB3Policy, the exported teacher)
  and sampled (``model.predict`` under one torch seed), and the action distribution.

Each test first checks that a fresh model differs from the saved one in each of these, so
a restore that skipped one of them would fail (verified by mutating ``restore_checkpoint``).
PPO's resumed runs then finish, and end where an uninterrupted run ends.

The exploration predictor's own Adam moments and sampling generator are part of the
exploration state, so they are compared with the rest of it.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import Recorder
from stable_baselines3 import PPO, SAC

from robodistill.config import load_config
from robodistill.core.rundir import StageRun
from robodistill.envs import make_env
from robodistill.policies.compass import CompassBase
from robodistill.policies.mlp_student import array_stats
from robodistill.policies.sb3_policy import SB3Policy
from robodistill.teach.compass import specialists
from robodistill.teach.rl import sb3 as teach_sb3
from robodistill.training import sb3 as sb3_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_BONUS = [
    "teach.exploration.obs_norm_warmup_steps=16", "teach.exploration.hidden=16",
    "teach.exploration.embedding_dim=8", "teach.exploration.learning_rate=1e-3",
]  # fmt: skip


# -- what is compared ------------------------------------------------------------------------


def _optimizers(model) -> dict[str, torch.optim.Optimizer]:
    """Every optimizer of the model, listed here rather than by the code under test."""
    if isinstance(model, PPO):
        optims = {"policy": model.policy.optimizer}
        if hasattr(model, "critic_int"):
            optims["critic_int"] = model.critic_int_optimizer
        return optims
    assert isinstance(model, SAC)
    assert model.ent_coef_optimizer is not None  # ent_coef="auto", the default
    return {"actor": model.actor.optimizer, "critic": model.critic.optimizer,
            "ent_coef": model.ent_coef_optimizer}  # fmt: skip


def _snapshot(model, vec_normalize, explore_venv) -> dict:
    """Everything a resume must restore, copied, and the actions on fixed observations.
    Draws nothing from torch's global RNG (forked)."""
    weights = {f"policy.{k}": v.detach().clone() for k, v in model.policy.state_dict().items()}
    if hasattr(model, "critic_int"):
        weights |= {f"critic_int.{k}": v.detach().clone()
                    for k, v in model.critic_int.state_dict().items()}  # fmt: skip
    if isinstance(model, SAC):
        weights["log_ent_coef"] = model.log_ent_coef.detach().clone()
    vecnorm = {}
    if vec_normalize is not None:
        for name in ("obs_rms", "ret_rms"):
            rms = getattr(vec_normalize, name)
            vecnorm |= {f"{name}.mean": np.array(rms.mean, np.float64),
                        f"{name}.var": np.array(rms.var, np.float64),
                        f"{name}.count": np.array(rms.count, np.float64)}  # fmt: skip
    exploration = {}
    if explore_venv is not None:
        exploration = {
            k: torch.as_tensor(v).clone() for k, v in explore_venv.state_tensors().items()
        }
    obs_dim = int(np.prod(model.observation_space.shape))
    obs = np.random.default_rng(0).normal(0.0, 2.0, (16, obs_dim)).astype(np.float32)
    with torch.random.fork_rng(devices=[]):
        policy = SB3Policy.from_model(model, vec_normalize)
        mean, log_std = policy.distribution(obs)
        torch.manual_seed(1234)
        normalized = vec_normalize.normalize_obs(obs) if vec_normalize is not None else obs
        sampled, _ = model.predict(normalized, deterministic=False)
        act = policy.act(obs)
    return {
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(model._n_updates),
        "weights": weights,
        "optimizers": {n: copy.deepcopy(o.state_dict()) for n, o in _optimizers(model).items()},
        "vecnormalize": vecnorm,
        "exploration": exploration,
        "int_rng": model._int_rng.bit_generator.state if hasattr(model, "_int_rng") else None,
        "actions": {
            "deterministic": act,
            "sampled": np.asarray(sampled),
            "mean": mean.numpy(),
            "log_std": log_std.numpy(),
        },
    }


def _tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a
    )


def _assert_same_tensors(saved: dict, restored: dict, what: str) -> None:
    assert saved.keys() == restored.keys(), what
    for key in saved:
        a, b = np.asarray(saved[key]), np.asarray(restored[key])
        assert a.dtype == b.dtype and np.array_equal(a, b), f"{what}: {key}"


def _assert_same_optimizer(saved: dict, restored: dict, name: str) -> None:
    # Compared as JSON: the checkpoint keeps param_groups in state.json (betas: a list).
    groups = [json.loads(json.dumps(x["param_groups"])) for x in (saved, restored)]
    assert groups[0] == groups[1], name
    assert saved["state"].keys() == restored["state"].keys(), name
    for idx, per_param in saved["state"].items():
        other = restored["state"][idx]
        assert per_param.keys() == other.keys(), (name, idx)
        for key, value in per_param.items():  # exp_avg, exp_avg_sq, step
            if torch.is_tensor(value):
                assert torch.equal(value, other[key]), f"optimizer {name}: param {idx} {key}"
            else:
                assert value == other[key], f"optimizer {name}: param {idx} {key}"


def _assert_restored(saved: dict, fresh: dict, restored: dict) -> None:
    """``restored`` equals ``saved`` in every part; ``fresh`` (the model before the restore)
    differs from ``saved`` in every part, so the comparison can fail."""
    assert fresh is not None and restored is not None, "the second run did not resume"
    # The test can fail: a model that was not restored differs from the saved one.
    assert fresh["num_timesteps"] == 0 and saved["num_timesteps"] > 0
    assert not _tensors_equal(saved["weights"], fresh["weights"])
    for name, optim in saved["optimizers"].items():
        assert optim["state"] and not fresh["optimizers"][name]["state"], name
    if saved["vecnormalize"]:
        for key in ("obs_rms.mean", "obs_rms.count", "ret_rms.count"):
            assert not np.array_equal(saved["vecnormalize"][key], fresh["vecnormalize"][key]), key
    if saved["exploration"]:
        moments = {k for k in saved["exploration"] if k.startswith("bonus_optimizer.")}
        # A fresh predictor's Adam has no moments yet; the trained one's must be saved.
        assert moments and not any(k.startswith("bonus_optimizer.") for k in fresh["exploration"])
        assert fresh["exploration"].keys() == saved["exploration"].keys() - moments, "wrapper"
        for part in ("bonus.predictor.", "bonus.obs_rms.", "return_rms.", "intrinsic_return",
                     "bonus_rng"):  # fmt: skip
            keys = [k for k in saved["exploration"] if k.startswith(part)]
            assert keys and not _tensors_equal(
                {k: saved["exploration"][k] for k in keys},
                {k: fresh["exploration"][k] for k in keys},
            ), part
    for key in ("deterministic", "sampled", "mean"):
        assert not np.array_equal(saved["actions"][key], fresh["actions"][key]), key

    # What the resume restored.
    assert restored["num_timesteps"] == saved["num_timesteps"]
    assert restored["n_updates"] == saved["n_updates"] > 0
    _assert_same_tensors(saved["weights"], restored["weights"], "weights")
    assert saved["optimizers"].keys() == restored["optimizers"].keys()
    for name in saved["optimizers"]:
        _assert_same_optimizer(saved["optimizers"][name], restored["optimizers"][name], name)
    _assert_same_tensors(saved["vecnormalize"], restored["vecnormalize"], "VecNormalize")
    _assert_same_tensors(saved["exploration"], restored["exploration"], "exploration")
    assert restored["int_rng"] == saved["int_rng"]
    # The next actions: the same bits, deterministic and sampled under one seed.
    _assert_same_tensors(saved["actions"], restored["actions"], "actions")


# -- crash and resume ------------------------------------------------------------------------


def _crash_after_first_checkpoint(monkeypatch, train) -> dict:
    """Run ``train`` until the checkpoint callback has written its first checkpoint, then
    raise KeyboardInterrupt; returns the snapshot of the model that wrote it."""
    original = sb3_training.save_checkpoint  # CheckpointCallback looks it up at call time
    written = {}

    def save_then_crash(directory, model, vec_normalize, explore_venv, extra):
        original(directory, model, vec_normalize, explore_venv, extra)
        written.update(_snapshot(model, vec_normalize, explore_venv))
        raise KeyboardInterrupt  # as if Ctrl-C arrived right after the checkpoint

    monkeypatch.setattr(sb3_training, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(sb3_training, "save_checkpoint", original)
    assert written, "no checkpoint was written before the crash"
    return written


def _spy_on_restore(monkeypatch, module) -> dict:
    """Snapshots of the model just before ``module``'s restore_checkpoint and when
    ``learn`` is entered (after anything the stage does between the two, before SB3 resets
    the envs), on a resume (a restore that returns a checkpoint's state)."""
    seen = {}

    def spy(directory, model, vec_normalize, explore_venv):
        before = _snapshot(model, vec_normalize, explore_venv)
        state = sb3_training.restore_checkpoint(directory, model, vec_normalize, explore_venv)
        if state is not None:
            seen["fresh"] = before
            learn = model.learn

            def snapshot_then_learn(*args, **kwargs):
                seen["restored"] = _snapshot(model, vec_normalize, explore_venv)
                return learn(*args, **kwargs)

            model.learn = snapshot_then_learn
        return state

    monkeypatch.setattr(module, "restore_checkpoint", spy)
    return seen


def _teach(overrides: list[str]) -> dict:
    cfg = load_config(None, overrides)
    with StageRun(cfg, "teach") as stage:
        metrics = teach_sb3.run_teach_sb3(cfg, stage)
        stage.finish(metrics)
    return metrics


def _pendulum(tmp_path, name: str, *extra: str) -> list[str]:
    return [
        f"runs_dir={tmp_path / 'runs'}", f"name={name}", "env.id=Pendulum-v1",
        "env.max_episode_steps=50", "teach.net_arch=[16, 16]", "teach.eval_every=100000",
        "teach.eval_episodes=1", "teach.normalize_reward=true", *extra,
    ]  # fmt: skip


PPO_RUN = ["teach.algo=ppo", "env.num_envs=2", "teach.n_steps=64", "teach.n_epochs=2",
           "teach.total_timesteps=384", "teach.checkpoint_every=128"]  # fmt: skip
# One env, so the exploration callback's predictor update (every 256 vector steps with an
# off-policy learner) comes before the checkpoint at 300 steps.
SAC_RUN = ["teach.algo=sac", "env.num_envs=1", "teach.batch_size=32", "teach.learning_starts=50",
           "teach.total_timesteps=320", "teach.checkpoint_every=300"]  # fmt: skip


@pytest.mark.parametrize("exploration", ["none", "rnd"])
def test_ppo_resume_restores_the_checkpointed_model(exploration, tmp_path, monkeypatch):
    bonus = [f"teach.exploration.method={exploration}", *TINY_BONUS]
    straight = _teach(_pendulum(tmp_path, "straight", *PPO_RUN, *bonus))

    overrides = _pendulum(tmp_path, "resumed", *PPO_RUN, *bonus)
    saved = _crash_after_first_checkpoint(monkeypatch, lambda: _teach(overrides))
    assert saved["num_timesteps"] == 128  # the start of the second rollout
    seen = _spy_on_restore(monkeypatch, teach_sb3)
    metrics = _teach(overrides)
    _assert_restored(saved, seen.get("fresh"), seen.get("restored"))
    if exploration != "none":
        assert saved["int_rng"] is not None and saved["exploration"]

    # The resumed run trains on to the end, and ends where the uninterrupted one did.
    assert metrics["resumed_from_timesteps"] == 128 and metrics["timesteps"] == 384
    assert straight["timesteps"] == 384 and straight["resumed_from_timesteps"] == 0
    runs = tmp_path / "runs"
    ends = [json.loads((runs / n / "teach/checkpoint/state.json").read_text())
            for n in ("straight", "resumed")]  # fmt: skip
    assert ends[0]["n_updates"] == ends[1]["n_updates"] == 3 * 2  # 3 rollouts x n_epochs
    assert ends[0]["num_timesteps"] == ends[1]["num_timesteps"] == 384


@pytest.mark.parametrize("exploration", ["none", "rdd"])
def test_sac_resume_restores_the_checkpointed_model(exploration, tmp_path, monkeypatch):
    overrides = _pendulum(tmp_path, "resumed", *SAC_RUN,
                          f"teach.exploration.method={exploration}", *TINY_BONUS)  # fmt: skip
    saved = _crash_after_first_checkpoint(monkeypatch, lambda: _teach(overrides))
    assert saved["num_timesteps"] == 300
    seen = _spy_on_restore(monkeypatch, teach_sb3)
    metrics = _teach(overrides)
    _assert_restored(saved, seen.get("fresh"), seen.get("restored"))
    assert bool(saved["exploration"]) == (exploration != "none")
    assert metrics["resumed_from_timesteps"] == 300 and metrics["timesteps"] == 320


def test_compass_specialist_resume_restores_the_checkpointed_model(tmp_path, monkeypatch):
    nav = "robodistill/Nav-v0"
    cfg = load_config(None, [
        f"runs_dir={tmp_path / 'runs'}", f"env.id={nav}", "env.kwargs={embodiment: holonomic}",
        "env.num_envs=2", "env.max_episode_steps=12", "teach.algo=compass",
        "teach.compass.embodiments=[diffdrive]", "teach.compass.hidden=[16]",
        "teach.compass.latent_dim=8", "teach.n_steps=32", "teach.batch_size=32",
        "teach.n_epochs=2", "teach.net_arch=[16]", "teach.eval_every=100000",
        "teach.checkpoint_every=64", "teach.eval_episodes=1", "teach.normalize_reward=true",
    ])  # fmt: skip
    env = make_env(nav)
    env.observation_space.seed(0)
    rng = np.random.default_rng(0)
    obs = np.stack([env.observation_space.sample() for _ in range(24)]).astype(np.float32)
    base = CompassBase.build(env.observation_space, env.action_space, array_stats(obs),
                             array_stats(rng.uniform(-1, 1, (24, 3))), hidden=[16],
                             latent_dim=8, seed=0)  # fmt: skip
    out = tmp_path / "specialist"

    def train():
        return specialists.train_residual(cfg, Recorder(tmp_path / "stage"), base, "diffdrive",
                                          out, total_timesteps=128)  # fmt: skip

    saved = _crash_after_first_checkpoint(monkeypatch, train)
    assert saved["num_timesteps"] == 64 and not (out / "result.json").exists()
    seen = _spy_on_restore(monkeypatch, specialists)
    result = train()
    _assert_restored(saved, seen.get("fresh"), seen.get("restored"))
    assert result["resumed_from_timesteps"] == 64 and result["timesteps"] == 128
    # The specialist's per-episode training record, continued across the resume without a
    # repeated episode: 12-step episodes, 2 envs, 32 steps each per attempt (the envs restart
    # on resume) = 2 episodes per env per attempt.
    record = [json.loads(line) for line in (out / "episodes.jsonl").open()]
    assert [r["episode"] for r in record] == list(range(8))
    assert all(r["length"] == 12 for r in record) and record[-1]["env_steps"] <= 128
