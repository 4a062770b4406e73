"""Simulator throughput: raw env steps/s vs. collection into the trajectory store.

For each task: the raw rate of one env in a plain ``reset``/``step`` loop, then
``robodistill.core.rollout`` + ``TrajectoryStore`` with 1, 2 and 4 envs, as a ratio to the raw
single-env rate. Both drive the env with the same deterministic probe policy (a fixed
random projection of the observation, costing the same per step in both loops), so both
simulate exactly the same trajectories: with random actions the simulator's own cost varies
with how often the bodies touch, which drowned the overhead being measured. Goal:
collection overhead <= 15 % (ratio >= 0.85). Medians over interleaved repeats, after a
warm-up, in one process.

    python benchmarks/sim_throughput.py                       # every robodistill/... id
    python benchmarks/sim_throughput.py --env Hopper-v5 --steps 4000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from robodistill.core.rollout import rollout
from robodistill.data.store import TrajectoryStore
from robodistill.envs import ROBODISTILL_ENV_IDS, make_env
from robodistill.policies import Policy


class ProbePolicy(Policy):
    """``a = sin(3 * z @ W)`` with ``z`` the observation scaled by its space's bounds:
    deterministic per state (so trajectories do not depend on batching), and varied enough
    to keep the bodies moving."""

    kind = "benchmark/probe"

    def __init__(self, observation_space, action_space):
        rng = np.random.default_rng(0)
        low, high = observation_space.low, observation_space.high
        finite = np.isfinite(low) & np.isfinite(high)
        self.center = np.where(finite, (low + high) / 2, 0.0).astype(np.float32)
        self.scale = np.where(finite, (high - low) / 2 + 1e-6, 1.0).astype(np.float32)
        self.weights = rng.normal(size=(low.size, action_space.shape[0])).astype(np.float32)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.sin(3.0 * ((obs - self.center) / self.scale) @ self.weights)


def raw_rate(env_id: str, steps: int, max_episode_steps: int | None) -> float:
    env = make_env(env_id, max_episode_steps=max_episode_steps)
    policy = ProbePolicy(env.observation_space, env.action_space)
    # The same episode seeds as the collection runs, so both simulate the same start states.
    episode = 0
    obs, _ = env.reset(seed=episode)
    t0 = time.perf_counter()
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(policy.act(obs[None])[0])
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=episode)
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def collection_rate(
    env_id: str, steps: int, max_episode_steps: int | None, num_envs: int, store_dir: Path
) -> float:
    """Steps/s of ``rollout`` into a store that already holds episodes (its arrays exist, as
    in any long collection), including the final merge of the journal into zarr."""
    env = make_env(env_id, max_episode_steps=max_episode_steps)
    episodes = max(4 * num_envs, steps // env.spec.max_episode_steps)
    policy = ProbePolicy(env.observation_space, env.action_space)
    env.close()
    path = store_dir / f"{num_envs}.zarr"
    store = (TrajectoryStore.open(path, mode="a") if path.exists()
             else TrajectoryStore.create(path))  # fmt: skip
    recorded = 0

    def record(ep):
        nonlocal recorded
        store.add_episode(ep)
        recorded += ep.length

    t0 = time.perf_counter()
    rollout(env_id, policy, range(episodes), num_envs=num_envs,
            max_episode_steps=max_episode_steps, on_episode=record)  # fmt: skip
    store.close()
    return recorded / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="append", help="env id (repeatable); default: ours")
    parser.add_argument("--steps", type=int, default=12000, help="env steps per measurement")
    parser.add_argument("--max-episode-steps", type=int, default=None,
                        help="episode limit (default: each id's registered limit)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env_ids = args.env or list(ROBODISTILL_ENV_IDS) or ["InvertedPendulum-v5"]
    limit = args.max_episode_steps or "the registered"
    print(f"~{args.steps} steps per measurement, episode limit {limit}, probe policy, "
          f"medians of {args.repeats}; ratio = collection rate / raw single-env rate "
          "(goal >= 0.85, i.e. overhead <= 15 %)")  # fmt: skip
    header = f"{'env':<28}{'raw steps/s':>12}" + "".join(
        f"{f'collect x{n}':>14}{'ratio':>7}" for n in (1, 2, 4)
    )
    print(header)
    for env_id in env_ids:
        with tempfile.TemporaryDirectory() as tmp:
            raw_rate(env_id, 200, args.max_episode_steps)  # warm-up: model compile, imports
            for n in (1, 2, 4):  # warm-up, and creates each store's arrays
                collection_rate(env_id, 200, 50, n, Path(tmp))
            # Interleaved repeats, so slow phases of this noisy machine hit every column.
            rates: dict[str, list[float]] = {"raw": [], 1: [], 2: [], 4: []}
            for _ in range(args.repeats):
                rates["raw"].append(raw_rate(env_id, args.steps, args.max_episode_steps))
                for n in (1, 2, 4):
                    rates[n].append(
                        collection_rate(env_id, args.steps, args.max_episode_steps, n, Path(tmp))
                    )
        raw = statistics.median(rates["raw"])
        row = f"{env_id:<28}{raw:>12,.0f}"
        for n in (1, 2, 4):
            rate = statistics.median(rates[n])
            row += f"{rate:>14,.0f}{rate / raw:>7.2f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
