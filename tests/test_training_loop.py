"""The one gradient-step loop on a toy trainer: it learns, resumes exactly, keeps the best
policy, and writes the result last."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from robodistill.config import load_config
from robodistill.policies import MLPStudent, load_policy
from robodistill.policies.mlp_student import array_stats
from robodistill.training import loop as training_loop
from robodistill.training.loop import LoopSettings, Trainer, train
from robodistill.training.selection import BestPolicyKeeper

OBS, ACT = 3, 1


def _student(hidden: list[int]) -> MLPStudent:
    """A deterministic MLP student on Pendulum's spaces (obs (3,), action (1,) in [-2, 2])."""
    obs_space = spaces.Box(-8.0, 8.0, (OBS,), np.float32)
    action_space = spaces.Box(-2.0, 2.0, (ACT,), np.float32)
    data = np.random.default_rng(0).normal(size=(64, OBS))
    return MLPStudent.build(obs_space, action_space, array_stats(data),
                            array_stats(data[:, :1]), hidden, head="deterministic", seed=0)  # fmt: skip


class Stage:
    """The part of StageRun the loop uses: the metrics rows."""

    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, step: int, metrics: dict) -> None:
        self.rows.append((step, metrics))


class ToyTrainer(Trainer):
    """Regress a fixed linear map with an MLP student: a loss that must fall."""

    name = "toy"
    loss_parts = ("mse", "never_logged")

    def __init__(self, seed: int = 0):
        with torch.random.fork_rng(devices=[]):
            self.policy = _student([16])
        self.optimizer = torch.optim.Adam(self.policy.net.parameters(), lr=1e-2)
        self.lr_scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 5, gamma=0.9)
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.finished_before_result: bool | None = None

    def loss(self):
        obs = torch.from_numpy(self.rng.normal(size=(32, OBS)).astype(np.float32))
        noise = 0.01 * torch.randn(32, ACT, generator=self.gen)
        target = 0.3 * obs.sum(-1, keepdim=True) + noise
        mean, _ = self.policy.net(obs)
        loss = (mean - target).pow(2).mean()
        return loss, {"loss": float(loss.detach()), "mse": float(loss.detach())}

    def finish(self, out: Path, keeper: BestPolicyKeeper, evals: list) -> dict:
        self.finished_before_result = not (out / "result.json").exists()
        return {"validations": len(evals)}


@pytest.fixture
def cfg(tmp_path):
    return load_config(None, [f"runs_dir={tmp_path / 'runs'}", "env.id=Pendulum-v1",
                              "env.num_envs=1", "env.max_episode_steps=5",
                              "teach.eval_episodes=1"])  # fmt: skip


def _train(cfg, out: Path, stage=None) -> dict:
    settings = LoopSettings(steps=12, eval_every=6, checkpoint_every=4, log_every=3)
    trainer = ToyTrainer()
    result = train(cfg, stage or Stage(), trainer, settings, out, BestPolicyKeeper(cfg, out))
    assert trainer.finished_before_result is not False
    return result


def test_the_loop_trains_logs_validates_and_writes_the_result_last(cfg, tmp_path):
    stage = Stage()
    result = _train(cfg, tmp_path / "a", stage)
    losses = [row["loss"] for _, row in stage.rows if "loss" in row]
    assert len(losses) == 4 and losses[-1] < losses[0]  # rows at steps 3, 6, 9, 12
    assert all(row["stage"] == "toy" for _, row in stage.rows)
    assert [e["step"] for e in result["evals"]] == [6, 12]
    assert result["steps"] == 12 and result["resumed_from_step"] == 0
    assert result["validations"] == 2
    assert result["final_mse_loss"] == pytest.approx(result["final_loss"])
    assert result["final_never_logged_loss"] is None
    assert result["best_step"] in (6, 12)
    assert (tmp_path / "a/policy/config.json").is_file()
    assert load_policy(tmp_path / "a/policy_last").kind == "mlp_student"
    assert json.loads((tmp_path / "a/result.json").read_text()) == result
    # Done: a second call returns the stored result without training.
    assert _train(cfg, tmp_path / "a") == result


def test_an_interrupted_run_resumes_to_the_same_weights(cfg, tmp_path, monkeypatch):
    straight = _train(cfg, tmp_path / "straight")
    original = training_loop.save_checkpoint

    def save_then_crash(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training_loop, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, tmp_path / "resumed")
    monkeypatch.setattr(training_loop, "save_checkpoint", original)
    resumed = _train(cfg, tmp_path / "resumed")
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 12
    a = load_policy(tmp_path / "straight/policy_last").net.state_dict()
    b = load_policy(tmp_path / "resumed/policy_last").net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final_loss"] == straight["final_loss"]


def test_a_checkpoint_of_another_policy_config_is_refused(cfg, tmp_path):
    from robodistill.data.store import StoreError

    _train(cfg, tmp_path / "run")
    (tmp_path / "run/result.json").unlink()
    other = ToyTrainer()
    other.policy = _student([8])
    other.optimizer = torch.optim.Adam(other.policy.net.parameters())
    settings = LoopSettings(steps=12, eval_every=6, checkpoint_every=4, log_every=3)
    keeper = BestPolicyKeeper(cfg, tmp_path / "run")
    with pytest.raises(StoreError, match="another policy config"):
        train(cfg, Stage(), other, settings, tmp_path / "run", keeper)
