"""Scaling: collection with 1 vs N workers, RLlib PPO vs stable-baselines3 PPO, and
gradient-step training with 1 vs N data-parallel workers.

**Collection.** ``robodistill collect``'s two paths on the same seeds, both writing into a
:class:`~robodistill.data.store.TrajectoryStore` in this process: 1 worker (``rollout`` here, no
Ray) and N workers (:class:`~robodistill.core.parallel.ParallelRollout`: Ray actors, each with
``--num-envs`` envs). The actors are started once and warmed up before timing; their
start-up (a fresh process importing torch and MuJoCo) is reported on its own line. Besides
steps/s, the CPU seconds per 1000 steps (this process, plus the actors' processes for N
workers): the cost of going parallel, which a busy machine does not distort as much as
wall-clock rates.

**PPO.** The same env and the project's PPO settings (``teach`` defaults: n_steps 256 per
env, minibatch 64, 10 epochs, net [64, 64], observation normalization) for the same number
of env steps, built the way the two ``teach`` backends build them: stable-baselines3 (a
``DummyVecEnv`` of ``--ppo-envs`` envs + ``VecNormalize``, all in this process) and RLlib
(:func:`robodistill.teach.rl.rllib.build_config`: one env-runner actor with ``--ppo-envs`` envs,
the learner in this process). Env steps/s of training (sampling + updates) after one
warm-up rollout / iteration. This process uses ``--torch-threads`` (1) intra-op threads.

Medians over interleaved repeats, in one process, so slow phases of a shared machine hit
both columns. The load average is recorded with the results: on a busy 2-core machine the
ratios are what the machine gave, not what the code can do.

    python benchmarks/scaling.py                                # ~3-5 min on 2 idle cores
    python benchmarks/scaling.py --workers 4 --policy random --episodes 40
    python benchmarks/scaling.py --skip-ppo
    python benchmarks/scaling.py --only-training --plot docs/data_parallel_loss.png

**Training.** :mod:`scaling_training` (next to this file): the RL-100 imitation trainer in
this process vs ``--train-workers`` Ray Train workers at the same global batch: samples/s,
CPU seconds per 1000 samples, and the two loss curves (``--skip-training`` leaves it out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import scaling_training  # benchmarks/, this script's directory

from robodistill.config import load_config
from robodistill.core.parallel import ParallelRollout, choose_backend, init_ray
from robodistill.core.policy_specs import resolve_policy
from robodistill.core.rollout import env_spaces, rollout
from robodistill.data.store import TrajectoryStore
from robodistill.teach.rl.rllib import ENV_NAME, build_config, create_env


def _store(tmp: Path, tag: str) -> TrajectoryStore:
    path = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=tmp)) / "demos.zarr"
    return TrajectoryStore.create(path, flush_every=64)


def collect_in_process(args, policy, seeds: list[int], tmp: Path) -> tuple[float, float]:
    """Steps/s of ``rollout`` into a fresh store (the ``workers=1`` path), and CPU seconds
    per 1000 steps."""
    steps = 0
    with _store(tmp, "one") as store:

        def record(ep):
            nonlocal steps
            store.add_episode(ep)
            steps += ep.length

        t0, cpu0 = time.perf_counter(), time.process_time()
        rollout(args.env, policy, seeds, num_envs=args.num_envs,
                max_episode_steps=args.max_episode_steps, on_episode=record)  # fmt: skip
        store.flush()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return steps / wall, 1000 * cpu / steps


def collect_parallel(runner: ParallelRollout, seeds: list[int], tmp: Path) -> tuple[float, float]:
    """Steps/s of warm workers into a fresh store (the ``workers > 1`` path), and CPU
    seconds (this process + the workers) per 1000 steps."""
    steps = 0
    with _store(tmp, "many") as store:

        def record(ep):
            nonlocal steps
            store.add_episode(ep)
            steps += ep.length

        actors0 = runner.cpu_seconds()
        t0, cpu0 = time.perf_counter(), time.process_time()
        runner.run(seeds, on_episode=record)
        store.flush()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        cpu += runner.cpu_seconds() - actors0
        return steps / wall, 1000 * cpu / steps


def bench_collection(args) -> dict[str, Any]:
    _, action_space, _ = env_spaces(args.env)
    policy = resolve_policy(args.policy, args.env, action_space, 0)
    seeds = list(range(args.episodes))
    warm = list(range(10_000, 10_000 + 2 * args.workers * args.num_envs))
    rates: dict[str, list[float]] = {"1": [], str(args.workers): []}
    cpu: dict[str, list[float]] = {"1": [], str(args.workers): []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        collect_in_process(args, policy, warm[: args.num_envs], tmp)  # imports, MuJoCo compile
        t0 = time.perf_counter()
        runner = ParallelRollout(args.env, args.policy, workers=args.workers,
                                 num_envs=args.num_envs,
                                 max_episode_steps=args.max_episode_steps,
                                 backend=args.backend)  # fmt: skip
        with runner:
            runner.run(warm)  # every actor starts, imports and builds its envs and policy
            startup = time.perf_counter() - t0
            for _ in range(args.repeats):
                for key, (rate, cpu_k) in (
                    ("1", collect_in_process(args, policy, seeds, tmp)),
                    (str(args.workers), collect_parallel(runner, seeds, tmp)),
                ):
                    rates[key].append(rate)
                    cpu[key].append(cpu_k)
    medians = {k: statistics.median(v) for k, v in rates.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu.items()}
    return {"rates": rates, "median": medians, "actor_startup_s": startup,
            "ratio": medians[str(args.workers)] / medians["1"],
            "cpu_s_per_1k_steps": cpu, "cpu_median": cpu_medians}  # fmt: skip


def _ppo_cfg(args):
    return load_config(None, [f"env.id={args.env}", f"env.num_envs={args.ppo_envs}",
                              "teach.algo=ppo", "teach.num_env_runners=1"])  # fmt: skip


class SB3Trainer:
    """PPO as ``robodistill.teach.rl.sb3`` builds it (without its evaluation and checkpoint callbacks)."""

    def __init__(self, args) -> None:
        from stable_baselines3 import PPO
        from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

        from robodistill.envs import make_env

        cfg, teach = _ppo_cfg(args), _ppo_cfg(args).teach
        venv = DummyVecEnv([lambda: make_env(args.env) for _ in range(args.ppo_envs)])
        venv.seed(cfg.seed)
        venv = VecNormalize(venv, norm_obs=teach.normalize_obs, norm_reward=False,
                            gamma=teach.gamma)  # fmt: skip
        self.model = PPO("MlpPolicy", venv, n_steps=teach.n_steps, n_epochs=teach.n_epochs,
                         learning_rate=teach.learning_rate, gamma=teach.gamma,
                         batch_size=teach.batch_size, seed=cfg.seed, device="cpu", verbose=0,
                         policy_kwargs={"net_arch": list(teach.net_arch)})  # fmt: skip
        self.rollout_steps = teach.n_steps * args.ppo_envs

    def train(self, steps: int) -> float:
        before = self.model.num_timesteps
        t0 = time.perf_counter()
        self.model.learn(steps, reset_num_timesteps=False)
        return (self.model.num_timesteps - before) / (time.perf_counter() - t0)

    def close(self) -> None:
        self.model.get_env().close()


class RLlibTrainer:
    """PPO as ``robodistill.teach.rl.rllib`` builds it (``build_config``), trained iteration by iteration."""

    def __init__(self, args) -> None:
        from ray.tune import register_env

        register_env(ENV_NAME, create_env)
        self.algo = build_config(_ppo_cfg(args)).build_algo()

    def train(self, steps: int) -> float:
        done = 0
        t0 = time.perf_counter()
        while done < steps:
            result = self.algo.train()
            done += int(result["env_runners"]["num_env_steps_sampled"])
        return done / (time.perf_counter() - t0)

    def close(self) -> None:
        self.algo.stop()


def bench_ppo(args) -> dict[str, Any]:
    trainers = {"sb3": SB3Trainer(args), "rllib": RLlibTrainer(args)}
    rates: dict[str, list[float]] = {k: [] for k in trainers}
    try:
        rollout_steps = trainers["sb3"].rollout_steps
        for trainer in trainers.values():
            trainer.train(rollout_steps)  # warm-up: one rollout and one update
        for _ in range(args.repeats):
            for name, trainer in trainers.items():
                rates[name].append(trainer.train(args.ppo_steps))
    finally:
        for trainer in trainers.values():
            trainer.close()
    medians = {k: statistics.median(v) for k, v in rates.items()}
    return {"rates": rates, "median": medians, "ratio": medians["rllib"] / medians["sb3"],
            "rollout_steps": rollout_steps}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="robodistill/PushT-v0")
    parser.add_argument("--policy", default="expert", help="collection policy: expert, "
                        "random or a policy directory")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="workers for collection")
    parser.add_argument("--backend", default="auto", choices=["auto", "local", "ray"],
                        help="collection workers: local processes, or Ray actors (auto: Ray "
                        "when RAY_ADDRESS is set)")  # fmt: skip
    parser.add_argument("--episodes", type=int, default=32, help="episodes per measurement")
    parser.add_argument("--max-episode-steps", type=int, default=100)
    parser.add_argument("--num-envs", type=int, default=2, help="envs per worker")
    parser.add_argument("--ppo-steps", type=int, default=4096, help="env steps per PPO "
                        "measurement (whole rollouts of n_steps x --ppo-envs)")  # fmt: skip
    parser.add_argument("--ppo-envs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=1, help="intra-op threads in "
                        "this process (RLlib's learner and all of SB3 run here)")  # fmt: skip
    parser.add_argument("--skip-ppo", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--only-training", action="store_true", help="training alone")
    scaling_training.add_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/scaling"))
    args = parser.parse_args()
    if args.only_training:
        return scaling_training.main_with(args)
    import torch

    # [64, 64] MLPs on minibatches of 64 gain nothing from intra-op threads, and on a busy
    # 2-core machine the thread pool's spin-waiting slowed SB3 PPO to ~20 steps/s. Ray
    # actors (env runners, collection workers) get OMP_NUM_THREADS=1 from Ray.
    torch.set_num_threads(args.torch_threads)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    started = init_ray()
    try:
        collection = bench_collection(args)
        ppo = None if args.skip_ppo else bench_ppo(args)
        training = None if args.skip_training else scaling_training.bench_training(args)
    finally:
        if started:
            ray.shutdown()
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()

    n = args.workers
    runner_kind = choose_backend(args.backend)
    lines = [
        f"collection: {args.env}, policy {args.policy}, {args.episodes} episodes of <= "
        f"{args.max_episode_steps} steps, {args.num_envs} envs per worker, medians of "
        f"{args.repeats}",
        f"  {'workers':<22}{'steps/s':>10}{'ratio':>8}{'CPU s/1k steps':>16}",
        f"  {'1 (in-process)':<22}{collection['median']['1']:>10,.0f}{1.0:>8.2f}"
        f"{collection['cpu_median']['1']:>16.2f}",
        f"  {f'{n} ({runner_kind} workers)':<22}{collection['median'][str(n)]:>10,.0f}"
        f"{collection['ratio']:>8.2f}{collection['cpu_median'][str(n)]:>16.2f}",
        f"  ({n} workers started in {collection['actor_startup_s']:.1f} s, once, not timed)",
    ]
    if ppo is not None:
        lines += [
            f"PPO: {args.env}, {args.ppo_steps} env steps per measurement, rollouts of "
            f"{ppo['rollout_steps']} steps ({args.ppo_envs} envs), medians of {args.repeats}",
            f"  {'backend':<22}{'steps/s':>10}{'ratio':>8}",
            f"  {'stable-baselines3':<22}{ppo['median']['sb3']:>10,.0f}{1.0:>8.2f}",
            f"  {'RLlib (1 env runner)':<22}{ppo['median']['rllib']:>10,.0f}{ppo['ratio']:>8.2f}",
        ]
    if training is not None:
        lines += scaling_training.table(args, training)
        if args.plot:
            scaling_training.plot(args, training, args.plot)
    lines.append(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, on "
                 f"{os.cpu_count()} CPUs; {wall:.0f} s in all")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "collection": collection,
        "ppo": ppo,
        "training": training,
        "load_average": {"before": load_before, "after": load_after},
        "cpus": os.cpu_count(),
        "wall_s": round(wall, 1),
        "table": table,
    }
    (args.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"json: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
