"""RLlib privileged teachers (robodistill.teach.rl.privileged_rllib): the teach loop, the
conversion into a PrivilegedTeacher (actions = RLlib's deterministic actions), who reads
the draw in each mode, and an RMA student distilled from the RLlib oracle. Tiny budgets:
Nav-v0 diffdrive without obstacles, 30-step episodes, two PPO iterations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from robodistill.cli import main  # noqa: E402
from robodistill.config import ConfigError, load_config  # noqa: E402
from robodistill.core.rollout import env_spaces  # noqa: E402
from robodistill.core.rundir import StageRun  # noqa: E402
from robodistill.envs import make_env  # noqa: E402
from robodistill.policies import load_policy  # noqa: E402
from robodistill.teach.rl.privileged_rllib import (  # noqa: E402
    PrivilegedPPOTorchRLModule,
    learner_module,
)
from robodistill.teach.rl.rllib import (  # noqa: E402
    build_config,
    policy_converter,
    run_teach_rllib,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RANDOMIZATION = ("env.randomization={mass: [0.8, 1.2], friction: [0.7, 1.3], "
                 "actuator_gain: null, speed: [0.7, 1.1], privileged_obs: true}")  # fmt: skip
PRIV = 3  # mass, friction, speed: the last three entries


def _run(tmp_path, name: str, mode: str, *extra: str) -> list[str]:
    return [
        f"runs_dir={tmp_path / 'runs'}", f"name={name}", "env.id=robodistill/Nav-v0",
        "env.kwargs={embodiment: diffdrive, n_obstacles: 0}", "env.max_episode_steps=30",
        "env.num_envs=2", RANDOMIZATION, "teach.algo=ppo", "teach.backend=rllib",
        f"teach.privileged={mode}", "teach.n_steps=64", "teach.n_epochs=2",
        "teach.batch_size=64", "teach.total_timesteps=256", "teach.eval_every=128",
        "teach.checkpoint_every=128", "teach.eval_episodes=2", "teach.net_arch=[32, 32]",
        "distill.history.rounds=2", "distill.history.episodes_per_round=2",
        "distill.history.epochs=2", "distill.history.eval_episodes=2", "distill.history.k=4",
        "distill.history.encoder_arch=[32]", "distill.history.hidden=[32]", *extra,
    ]  # fmt: skip


def _sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def _observations(cfg, n: int = 32) -> np.ndarray:
    """Real raw observations (B, D + P) of the run's randomized env, after random steps."""
    env = make_env(cfg.env.id, max_episode_steps=cfg.env.max_episode_steps,
                   **cfg.env.make_kwargs())  # fmt: skip
    rng, out = np.random.default_rng(0), []
    try:
        for seed in range(n // 8):
            obs, _ = env.reset(seed=seed)
            for _ in range(8):
                out.append(obs)
                obs, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape))
    finally:
        env.close()
    return np.asarray(out, dtype=np.float32)


def _filtered(algo, obs: np.ndarray) -> np.ndarray:
    """What the env-to-module MeanStdFilter hands the module (statistics not updated)."""
    from ray.rllib.connectors.env_to_module import MeanStdFilter

    conn = next(c for c in algo.env_runner._env_to_module.connectors
                if isinstance(c, MeanStdFilter))  # fmt: skip
    (agent_filter,) = conn._filters.values()
    return np.stack([agent_filter(o, update=False) for o in obs]).astype(np.float32)


def _rllib_actions(module, filtered: np.ndarray, low, high) -> np.ndarray:
    """RLlib's deterministic action: the Gaussian's mean, clipped to the Box."""
    with torch.no_grad():
        inputs = module.forward_inference({"obs": torch.as_tensor(filtered)})
    mean = inputs["action_dist_inputs"].numpy()[:, : len(low)]
    return np.clip(mean, low, high)


def test_oracle_trains_converts_and_rma_distills(ray_session, tmp_path, capsys):
    run = _run(tmp_path, "oracle", "oracle")
    cfg = load_config(None, run)
    with StageRun(cfg, "teach") as stage:
        metrics = run_teach_rllib(cfg, stage)
        stage.finish(metrics)
    assert metrics["backend"] == "rllib" and metrics["timesteps"] >= 256
    teach_dir = tmp_path / "runs/oracle/teach"
    teacher = load_policy(teach_dir / "policy")
    assert teacher.kind == "privileged_teacher" and teacher.net.actor_privileged
    assert len(teacher.arch["priv_idx"]) == PRIV and teacher.net.encoder is not None

    obs = _observations(cfg)
    obs_space, act_space, _ = env_spaces(cfg.env.id, cfg.env.make_kwargs())
    algo = build_config(cfg).build_algo()
    try:
        # The stage's last RLlib checkpoint holds the module policy_last was made from.
        algo.restore_from_path(str((teach_dir / "checkpoint").resolve()))
        converted = policy_converter(cfg)(algo, obs_space, act_space)
        np.testing.assert_allclose(converted.act(obs), load_policy(teach_dir / "policy_last")
                                   .act(obs), atol=1e-6)  # fmt: skip
        filtered = _filtered(algo, obs)
        assert float(np.abs(filtered - obs).max()) > 1e-3  # the filter really normalizes
        full = learner_module(algo, obs_space, act_space)
        runner = algo.get_module()
        assert isinstance(runner, PrivilegedPPOTorchRLModule) and runner.inference_only
        actions = converted.act(obs)
        for module in (runner, full):  # the env runners' copy and the learner's
            expected = _rllib_actions(module, filtered, act_space.low, act_space.high)
            np.testing.assert_allclose(actions, expected, atol=1e-5)
        # RMA's target: the same z = mu(e) as the module's encoder computes.
        with torch.no_grad():
            z = full.encoder.latent(torch.as_tensor(filtered)).numpy()
        np.testing.assert_allclose(converted.latent(obs), z, atol=1e-5)
        # The oracle's actor reads the draw: moving it moves the action.
        moved = obs.copy()
        moved[:, -PRIV:] += 1.0
        assert np.abs(converted.act(moved) - actions).max() > 1e-6
    finally:
        algo.stop()

    # RMA distills the RLlib oracle unchanged (its head is the teacher's, frozen).
    assert main(["distill", *_sets([*run, "distill.students=[rma]"])]) == 0
    result = json.loads((tmp_path / "runs/oracle/distill/rma/result.json").read_text())
    assert result["rounds"] == 2 and result["final_latent_mse"] is not None
    student = load_policy(tmp_path / "runs/oracle/distill/rma/policy")
    assert student.arch["variant"] == "rma" and student.net.latent_dim == teacher.net.latent_dim
    head = dict(student.net.head.policy_net.state_dict())
    for key, value in teacher.net.policy_net.state_dict().items():
        assert torch.equal(head[key], value)


def test_asymmetric_and_blind_actors_never_read_the_draw(ray_session, tmp_path):
    for mode, critic_reads in (("asymmetric", True), ("blind", False)):
        cfg = load_config(None, _run(tmp_path, mode, mode, "teach.num_env_runners=0"))
        obs_space, act_space, _ = env_spaces(cfg.env.id, cfg.env.make_kwargs())
        algo = build_config(cfg).build_algo()
        try:
            algo.train()
            teacher = policy_converter(cfg)(algo, obs_space, act_space)
            assert not teacher.net.actor_privileged
            obs = _observations(cfg)
            moved = obs.copy()
            moved[:, -PRIV:] += np.random.default_rng(1).normal(0, 3, (len(obs), PRIV))
            np.testing.assert_array_equal(teacher.act(moved), teacher.act(obs))
            # The RLlib modules themselves, on filtered inputs whose draw moved.
            filtered, filtered_moved = _filtered(algo, obs), _filtered(algo, moved)
            assert np.abs(filtered_moved - filtered).max() > 0.1
            full, runner = learner_module(algo, obs_space, act_space), algo.get_module()
            assert not runner.encoder.has_mu  # the actor's copy holds no encoder of e
            for module in (runner, full):
                np.testing.assert_array_equal(
                    _rllib_actions(module, filtered_moved, act_space.low, act_space.high),
                    _rllib_actions(module, filtered, act_space.low, act_space.high),
                )
            with torch.no_grad():
                values = full.compute_values({"obs": torch.as_tensor(filtered)})
                values_moved = full.compute_values({"obs": torch.as_tensor(filtered_moved)})
            assert bool((values != values_moved).any()) is critic_reads
            # asymmetric: the teacher still carries the critic's mu (z for an RMA student
            # would be defined); blind: there is none.
            assert (teacher.net.encoder is not None) is critic_reads
        finally:
            algo.stop()


def test_config_accepts_rllib_privileged_and_keeps_the_other_errors():
    base = ["teach.algo=ppo", "teach.backend=rllib", "teach.privileged=oracle"]
    cfg = load_config(None, [*base, "env.randomization={privileged_obs: true}"])
    assert cfg.teach.backend == "rllib" and cfg.teach.privileged == "oracle"
    with pytest.raises(ConfigError, match=r"env\.randomization\.privileged_obs"):
        load_config(None, base)
    with pytest.raises(ConfigError, match=r"teach\.exploration\.method=rnd"):
        load_config(None, [*base, "env.randomization={privileged_obs: true}",
                           "teach.exploration.method=rnd"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"teach\.net_arch"):
        load_config(None, [*base, "env.randomization={privileged_obs: true}",
                           "teach.net_arch=[]"])  # fmt: skip
