"""Data-parallel training on Ray Train (robodistill.training.data_parallel): 2 gloo workers
on localhost follow the 1-process loss trajectory at the same global batch, a killed worker
resumes from the checkpoint, only rank 0 writes the run directory, and trainers or stages
that cannot shard refuse ``workers > 1`` naming the key. The batch stream and gradient
combination are checked without Ray too."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from robodistill.config import ConfigError, load_config
from robodistill.policies import MLPStudent
from robodistill.policies.mlp_student import array_stats
from robodistill.training.loop import LoopSettings, Trainer, run_loop, train
from robodistill.training.selection import BestPolicyKeeper
from robodistill.training.shards import Shard, global_batch, shard_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OBS, ACT, WINDOWS, STEPS = 3, 1, 200, 20
BATCH = 33
"""The global batch: odd, so 2 workers hold unequal shards (17 and 16 rows) and the
row-weighted gradient combination is exercised, not only DDP's plain average."""
TOLERANCE = 1e-4
"""Relative difference allowed between the 2-worker and 1-process loss at each of the 20
steps: the same windows and weights, only the order of float additions differs (float32
rounding, ~1e-7 per operation, grows little over 20 Adam steps)."""


class ShardedToy(Trainer):
    """Regress a fixed nonlinear map of 200 fixed inputs with an MLP student; the loss is a
    plain mean over this process's rows, so shards combine exactly."""

    name = "toy"
    shardable = True

    def __init__(self, audit_dir: str | None = None, kill_marker: str | None = None,
                 run_dir: str | None = None, kill_at: int = 13):  # fmt: skip
        if audit_dir:
            _audit_writes(Path(audit_dir), Path(run_dir))
        self.kill_marker, self.kill_at = kill_marker, kill_at
        obs_space = spaces.Box(-8.0, 8.0, (OBS,), np.float32)
        action_space = spaces.Box(-2.0, 2.0, (ACT,), np.float32)
        data = np.random.default_rng(0).normal(size=(WINDOWS, OBS)).astype(np.float32)
        with torch.random.fork_rng(devices=[]):
            self.policy = MLPStudent.build(obs_space, action_space, array_stats(data),
                                           array_stats(data[:, :1]), [16], head="deterministic",
                                           seed=0)  # fmt: skip
        self.x = torch.from_numpy(data)
        self.y = 0.3 * self.x.sum(-1, keepdim=True) + 0.2 * torch.sin(3 * self.x[:, :1])
        self.optimizer = torch.optim.Adam(self.policy.net.parameters(), lr=1e-2)
        self.rng = np.random.default_rng(0)
        self.batch_seed = (0, 99)

    def loss(self):
        if (self.kill_marker and self.shard.rank == 1 and self.step == self.kill_at
                and not os.path.exists(self.kill_marker)):  # fmt: skip
            Path(self.kill_marker).write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)  # a worker lost mid-run
        idx = torch.from_numpy(self.batch_indices(WINDOWS, BATCH))
        mean, _ = self.policy.net(self.x[idx])
        loss = (mean - self.y[idx]).pow(2).mean()
        return loss, {"loss": float(loss.detach())}


def _audit_writes(audit_dir: Path, run_dir: Path) -> None:
    """Record every file this process opens for writing, renames or makes under
    ``run_dir`` into ``audit_dir/<pid>.jsonl`` (with the process's Ray Train rank)."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    audit_dir.mkdir(parents=True, exist_ok=True)
    sink = open(audit_dir / f"{os.getpid()}.jsonl", "a", buffering=1)  # noqa: SIM115
    root = str(run_dir.resolve())

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1] or "", args[2] or 0
            writing = any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR)
            paths = [args[0]] if writing else []
        elif event in ("os.rename", "os.replace"):
            paths = [args[0], args[1]]
        elif event in ("os.mkdir", "os.remove", "shutil.rmtree"):
            paths = [args[0]]
        else:
            return
        for p in paths:
            p = os.fsdecode(p) if isinstance(p, bytes) else str(p)
            if os.path.abspath(p).startswith(root):
                sink.write(json.dumps({"rank": rank, "event": event, "path": p}) + "\n")

    sys.addaudithook(hook)


class Stage:
    """The part of StageRun the loop uses: ``dir``, ``t0``, the metrics rows."""

    def __init__(self, directory: Path):
        self.dir, self.t0 = directory, 0.0
        directory.mkdir(parents=True, exist_ok=True)

    def log_metrics(self, step, metrics):
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": int(step), **metrics}) + "\n")

    def losses(self) -> dict[int, float]:
        rows = [json.loads(line) for line in (self.dir / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture
def cfg(tmp_path):
    return load_config(None, [f"runs_dir={tmp_path / 'runs'}", "env.id=Pendulum-v1",
                              "env.num_envs=1", "env.max_episode_steps=3",
                              "teach.eval_episodes=1"])  # fmt: skip


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.train.torch")
    # Workers unpickle the toy trainer: ship this test module by value, not by name.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def _run(cfg, directory: Path, workers: int, make, checkpoint_every: int = STEPS) -> tuple:
    stage = Stage(directory)
    settings = LoopSettings(steps=STEPS, eval_every=STEPS, checkpoint_every=checkpoint_every,
                            log_every=1, workers=workers, max_failures=1,
                            workers_key="distill.training.workers")  # fmt: skip
    keeper = BestPolicyKeeper(cfg, directory / "out", episodes=1)
    result = train(cfg, stage, make, settings, directory / "out", keeper)
    return result, stage.losses()


# -- without Ray ---------------------------------------------------------------------------


def test_shards_partition_the_global_batch_and_epochs_cover_every_window():
    seed = (3, 1)
    for step in range(12):  # 12 * 32 > 200: batches straddle epochs
        whole = global_batch(WINDOWS, 32, step, seed)
        parts = [shard_batch(WINDOWS, 32, step, seed, Shard(r, 3)) for r in range(3)]
        assert sorted(np.concatenate(parts)) == sorted(whole)
        assert [len(p) for p in parts] == [11, 11, 10]
    first_epoch = np.concatenate([global_batch(WINDOWS, 40, k, seed) for k in range(5)])
    assert sorted(first_epoch) == list(range(WINDOWS))  # each window once per epoch
    second = np.concatenate([global_batch(WINDOWS, 40, k, seed) for k in range(5, 10)])
    assert sorted(second) == list(range(WINDOWS)) and not np.array_equal(first_epoch, second)


def test_non_shardable_stages_refuse_workers_naming_the_key():
    with pytest.raises(ConfigError, match=r"distill\.training\.workers=2.*dagger"):
        load_config(None, ["distill.training.workers=2", "distill.students=[dagger]"])
    with pytest.raises(ConfigError, match=r"teach\.training\.workers=2.*stable-baselines3"):
        load_config(None, ["teach.training.workers=2", "teach.algo=ppo"])
    with pytest.raises(ConfigError, match=r"teach\.training\.workers.*exploration"):
        load_config(None, ["teach.training.workers=2", "teach.algo=ppo",
                           "teach.backend=rllib", "teach.exploration.method=rnd"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"teach\.rl100\.batch_size=4.*teach\.training\.workers"):
        load_config(None, ["teach.training.workers=8", "teach.rl100.batch_size=4"])
    load_config(None, ["teach.training.workers=2"])  # the RL-100 imitation stage shards


def test_bf16_autocast_trains_on_cpu(cfg, tmp_path):
    stage = Stage(tmp_path / "bf16")
    settings = LoopSettings(steps=4, eval_every=4, checkpoint_every=4, log_every=1,
                            precision="bf16")  # fmt: skip
    keeper = BestPolicyKeeper(cfg, tmp_path / "bf16" / "out", episodes=1)
    result = train(cfg, stage, ShardedToy, settings, tmp_path / "bf16" / "out", keeper)
    assert result["precision"] == "bf16" and np.isfinite(result["final_loss"])


# -- on Ray Train --------------------------------------------------------------------------


def test_two_workers_follow_one_process_survive_a_kill_and_only_rank0_writes(
    cfg, tmp_path, local_ray
):
    """One Ray Train run (Ray's start-up dominates this machine's test time): 2 gloo workers
    at global batch 33 (shards of 17 and 16) over 20 steps; rank 1 is SIGKILLed at step 13, Ray Train restarts the
    group, which resumes from the step-10 checkpoint and finishes. Each step's loss matches
    the 1-process run within TOLERANCE, and only rank 0 wrote into the run directory."""
    one, one_losses = _run(cfg, tmp_path / "one", 1, ShardedToy, checkpoint_every=5)
    marker, audit = tmp_path / "killed", tmp_path / "audit"
    make = functools.partial(ShardedToy, audit_dir=str(audit), run_dir=str(tmp_path / "two"),
                             kill_marker=str(marker), kill_at=13)  # fmt: skip
    two, two_losses = _run(cfg, tmp_path / "two", 2, make, checkpoint_every=5)
    assert marker.exists()  # rank 1 died at step 13
    assert two["steps"] == STEPS and two["resumed_from_step"] == 10
    assert two["workers"] == 2 and one["workers"] == 1
    # One row per step (rank 0's); the killed attempt's rows past step 10 were replaced.
    assert sorted(two_losses) == list(range(1, STEPS + 1))
    a, b = np.array(list(one_losses.values())), np.array(list(two_losses.values()))
    assert a[-1] < 0.5 * a[0]  # it learns
    np.testing.assert_allclose(b, a, rtol=TOLERANCE)
    rows = [json.loads(line) for f in audit.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert {r["rank"] for r in rows} == {0}, [r for r in rows if r["rank"] != 0][:5]
    assert any(r["path"].endswith("result.json") for r in rows)
    assert len(list(audit.glob("*.jsonl"))) == 4  # 2 workers x 2 attempts audited


def test_a_trainer_that_cannot_shard_names_the_key(cfg, tmp_path):
    """What every worker checks first (here without Ray: the check precedes any
    collective), and Ray Train hands back to the driver as the same ConfigError."""

    class Unsharded(ShardedToy):
        shardable = False

    settings = LoopSettings(steps=2, eval_every=2, checkpoint_every=2, log_every=1, workers=2,
                            workers_key="distill.training.workers")  # fmt: skip
    keeper = BestPolicyKeeper(cfg, tmp_path / "out", episodes=1)
    with pytest.raises(ConfigError, match=r"distill\.training\.workers=2.*toy.*set distill"):
        run_loop(cfg, None, Unsharded, settings, tmp_path / "out", keeper, {}, group=None)


# -- RLlib ---------------------------------------------------------------------------------


def _rllib_cfg(tmp_path, *extra: str):
    return load_config(None, [
        f"runs_dir={tmp_path / 'runs'}", "env.id=Pendulum-v1", "env.num_envs=1",
        "env.max_episode_steps=20", "teach.backend=rllib", "teach.algo=ppo",
        "teach.num_env_runners=0", "teach.n_steps=64", "teach.batch_size=32",
        "teach.n_epochs=1", "teach.net_arch=[8]", "teach.normalize_obs=false", *extra,
    ])  # fmt: skip


def test_rllib_workers_become_learners_with_the_global_batch_split(tmp_path):
    pytest.importorskip("ray.rllib")
    from robodistill.teach.rl.rllib import build_config

    one = build_config(_rllib_cfg(tmp_path))
    two = build_config(_rllib_cfg(tmp_path, "teach.training.workers=2"))
    assert (one.num_learners, two.num_learners) == (0, 2)
    assert two.train_batch_size_per_learner * 2 == one.train_batch_size_per_learner == 64
    assert two.minibatch_size * 2 == one.minibatch_size == 32


def test_rllib_ppo_updates_with_two_learners(tmp_path, local_ray):
    """The smallest multi-learner PPO: one iteration with 2 remote learners (gloo DDP)."""
    from ray.tune import register_env

    from robodistill.teach.rl.rllib import ENV_NAME, build_config, create_env

    register_env(ENV_NAME, create_env)
    config = build_config(_rllib_cfg(tmp_path, "teach.training.workers=2"))
    assert config.num_cpus_per_learner == 1.0  # 2 learners, no env runner, on 2 CPUs
    algo = config.build_algo()
    try:
        result = algo.train()
        learner = result["learners"]["default_policy"]
        assert np.isfinite(learner["total_loss"])
        assert algo.learner_group.is_remote and len(algo.learner_group._workers) == 2
    finally:
        algo.stop()
