"""RLlib teachers: RLlibPolicy parity with forward_inference, the teach loop, fault tolerance."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

import robodistill.policies.rllib_policy  # noqa: E402, F401  (registers the "rllib" kind)
from robodistill.config import load_config  # noqa: E402
from robodistill.core.rundir import StageRun  # noqa: E402
from robodistill.policies import load_policy  # noqa: E402
from robodistill.policies.rllib_policy import RLlibPolicy  # noqa: E402
from robodistill.teach.rl.rllib import (  # noqa: E402
    build_config,
    create_env,
    run_teach_rllib,
    to_policy,
)


def _overrides(tmp_path, *extra: str) -> list[str]:
    return [
        f"runs_dir={tmp_path / 'runs'}", "env.id=Pendulum-v1", "env.num_envs=2",
        "env.max_episode_steps=50", "teach.backend=rllib", "teach.algo=ppo",
        "teach.total_timesteps=512", "teach.n_steps=128", "teach.batch_size=64",
        "teach.n_epochs=2", "teach.eval_every=256", "teach.eval_episodes=2",
        "teach.checkpoint_every=256", "teach.net_arch=[32, 32]", *extra,
    ]  # fmt: skip


def test_local_ray_workers_run_at_the_drivers_priority(ray_session):
    @ray.remote
    def niceness() -> int:
        return os.nice(0)

    # Ray's default niceness 15 starved the workers on a busy 2-core machine (init_ray).
    assert ray.get(niceness.remote()) == os.nice(0)


def test_teach_rllib_pendulum(ray_session, tmp_path, monkeypatch):
    # A relative runs_dir, as the default "runs" is: RLlib's checkpoint writer (pyarrow)
    # refused relative paths once.
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [*_overrides(tmp_path), "runs_dir=runs"])
    with pytest.raises(KeyboardInterrupt), StageRun(cfg, "teach") as stage:
        metrics = run_teach_rllib(cfg, stage)
        raise KeyboardInterrupt  # interrupted before finish(): the next run resumes
    assert metrics["timesteps"] >= 512 and metrics["best_step"] is not None
    assert np.isfinite(metrics["final_return_mean"]) and metrics["train_episodes"] > 0
    teach_dir = tmp_path / "runs" / cfg.name / "teach"
    assert (teach_dir / "checkpoint" / "robodistill_state.json").is_file()
    policy = load_policy(teach_dir / "policy")
    assert isinstance(policy, RLlibPolicy) and policy.obs_mean is not None
    obs = (np.random.default_rng(0).normal(size=(16, 3)) * 5).astype(np.float32)
    actions = policy.act(obs)
    assert actions.dtype == np.float32 and actions.shape == (16, 1)
    assert np.all(actions >= -2.0) and np.all(actions <= 2.0)
    assert ray.is_initialized()  # the test's Ray session was not shut down by the stage

    # Re-run: resumes from the RLlib checkpoint at 512 steps, nothing left to train; the
    # restored module and filter give the same policy as the one saved before.
    last = load_policy(teach_dir / "policy_last").act(obs)
    with StageRun(cfg, "teach") as stage:
        assert stage.resumed
        again = run_teach_rllib(cfg, stage)
        stage.finish(again)
    assert again["resumed_from_timesteps"] == metrics["timesteps"] == again["timesteps"]
    np.testing.assert_allclose(load_policy(teach_dir / "policy_last").act(obs), last, atol=1e-6)


def test_rllib_policy_matches_forward_inference(ray_session, tmp_path):
    from ray.rllib.connectors.env_to_module import MeanStdFilter

    cfg = load_config(None, _overrides(tmp_path))
    algo = build_config(cfg).build_algo()
    try:
        algo.train()  # moves the weights and the filter statistics away from their init
        env = create_env({"id": "Pendulum-v1"})
        policy = to_policy(algo, env.observation_space, env.action_space)
        obs = (np.random.default_rng(1).normal(size=(32, 3)) * 3).astype(np.float32)
        conn = next(
            c for c in algo.env_runner._env_to_module.connectors if isinstance(c, MeanStdFilter)
        )
        (agent_filter,) = conn._filters.values()
        filtered = np.stack([agent_filter(o, update=False) for o in obs])
        # The merged statistics reached the local runner (else the filter is the identity).
        assert policy.obs_std is not None and float(policy.obs_std.min()) > 0.0
        module = algo.get_module()
        with torch.no_grad():
            out = module.forward_inference({"obs": torch.as_tensor(filtered)})
        inputs = out["action_dist_inputs"].numpy()
        expected = np.clip(inputs[:, :1], -2.0, 2.0)
        np.testing.assert_allclose(policy.act(obs), expected, atol=1e-5)
        mean, log_std = policy.distribution(obs)
        np.testing.assert_allclose(mean.numpy(), inputs[:, :1], atol=1e-5)
        np.testing.assert_allclose(log_std.numpy(), inputs[:, 1:], atol=1e-5)
        policy.save(tmp_path / "p")
        np.testing.assert_array_equal(load_policy(tmp_path / "p").act(obs), policy.act(obs))
    finally:
        algo.stop()


def test_env_runner_restarted_after_kill(ray_session, tmp_path):
    cfg = load_config(None, _overrides(tmp_path))
    algo = build_config(cfg).build_algo()
    try:
        algo.train()
        group = algo.env_runner_group
        assert group.num_healthy_remote_workers() == 1
        actor = group._worker_manager.actors()[1]
        # A crash: Ray restarts the actor (RLlib creates env runners with max_restarts when
        # restart_failed_env_runners is set); RLlib then probes it and re-syncs its state.
        # (no_restart=True would be a permanent loss, which RLlib does not recreate.)
        ray.kill(actor, no_restart=False)
        algo.train()  # no exception: the dead runner is detected and taken out of service
        sampled = 0.0
        # Generous: on a loaded 2-core machine the restarted runner's setup took ~60 s.
        wait_s = 180.0
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:  # restarted (after a 1 s delay), sampling again
            sampled = algo.train()["env_runners"].get("num_env_steps_sampled", 0.0)
            if group.num_healthy_remote_workers() == 1 and sampled > 0:
                break
        assert group.num_healthy_remote_workers() == 1 and sampled > 0
        print(f"env runner restored after {time.monotonic() - deadline + wait_s:.1f} s")
        assert group.num_remote_env_runners() == 1
    finally:
        algo.stop()
