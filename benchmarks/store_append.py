"""How much the journal + batched merge and in-RAM sampling buy over per-call zarr access.

    python benchmarks/store_append.py [--episodes 100 --steps-per-episode 200 --obs-dim 20
                                       --act-dim 6 --repeats 3]

Measures, in one process after a warm-up, medians over ``--repeats``:
  (a) episodes/s appending with every episode committed straight to zarr (flush_every=1),
  (b) episodes/s with the write-ahead journal and one batched merge per flush_every episodes,
  (c) random (obs, action) windows/s from SequenceSampler in RAM vs slicing zarr per window.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from robodistill.data.sampler import SequenceSampler
from robodistill.data.store import Episode, TrajectoryStore

OBS_HORIZON, PRED_HORIZON, BATCH = 2, 16, 256


def make_episodes(n: int, steps: int, obs_dim: int, act_dim: int, seed: int = 0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    return [
        Episode(
            data={
                "obs": rng.normal(size=(steps, obs_dim)).astype(np.float32),
                "action": rng.normal(size=(steps, act_dim)).astype(np.float32),
                "reward": rng.normal(size=steps),
                "terminated": np.arange(steps) == steps - 1,
                "truncated": np.zeros(steps, dtype=bool),
            },
            final={"obs": rng.normal(size=obs_dim).astype(np.float32)},
            seed=i,
            env_id="bench-v0",
            success=bool(i % 2),
        )
        for i in range(n)
    ]


def append_rate(path: Path, episodes: list[Episode], flush_every: int) -> float:
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    with TrajectoryStore.create(path, flush_every=flush_every) as store:
        for ep in episodes:
            store.add_episode(ep)
    return len(episodes) / (time.perf_counter() - t0)


def ram_window_rate(sampler: SequenceSampler, seconds: float = 0.5) -> float:
    rng = np.random.default_rng(0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sampler.sample(BATCH, rng)
        n += BATCH
    return n / (time.perf_counter() - t0)


def zarr_window_rate(path: Path, sampler: SequenceSampler, n_windows: int) -> float:
    # Same windows as the sampler, but each one sliced from zarr: what a naive Dataset does.
    root = zarr.open_group(path, mode="r")
    obs, action = root["data/obs"], root["data/action"]
    idx = np.random.default_rng(1).integers(0, len(sampler), size=n_windows)
    t0 = time.perf_counter()
    for i in idx:
        lo, hi = int(sampler._lo[i]), int(sampler._hi[i])
        start = int(sampler._start[i])
        steps = np.clip(np.arange(start, start + PRED_HORIZON), lo, hi)
        a = action[steps[0] : steps[-1] + 1]
        o = obs[steps[0] : steps[OBS_HORIZON - 1] + 1]
        _ = a[steps - steps[0]], o[steps[:OBS_HORIZON] - steps[0]]
    return n_windows / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--steps-per-episode", type=int, default=200)
    parser.add_argument("--obs-dim", type=int, default=20)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--flush-every", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--zarr-windows", type=int, default=300)
    args = parser.parse_args()
    repeats = max(3, args.repeats)
    episodes = make_episodes(args.episodes, args.steps_per_episode, args.obs_dim, args.act_dim)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.zarr"
        append_rate(path, episodes[:10], 1)  # warm-up: imports, codecs, page cache
        append_rate(path, episodes[:10], 64)
        direct = [append_rate(path, episodes, 1) for _ in range(repeats)]
        batched = [append_rate(path, episodes, args.flush_every) for _ in range(repeats)]
        store = TrajectoryStore.open(path)
        data = store.load(["obs", "action"])
        sampler = SequenceSampler(
            data, data["episode_ends"], obs_horizon=OBS_HORIZON, pred_horizon=PRED_HORIZON
        )
        ram_window_rate(sampler, 0.1)
        zarr_window_rate(path, sampler, 20)
        ram = [ram_window_rate(sampler) for _ in range(repeats)]
        from_zarr = [zarr_window_rate(path, sampler, args.zarr_windows) for _ in range(repeats)]

    med = statistics.median
    print(
        f"{args.episodes} episodes x {args.steps_per_episode} steps, obs {args.obs_dim}, "
        f"act {args.act_dim}; medians of {repeats} repeats"
    )
    rows = [
        ("append, commit each episode (flush_every=1)", med(direct), "episodes/s", None),
        (f"append, journal + merge (flush_every={args.flush_every})", med(batched),
         "episodes/s", med(batched) / med(direct)),
        ("windows, zarr slice per window", med(from_zarr), "windows/s", None),
        (f"windows, SequenceSampler in RAM (batch {BATCH})", med(ram), "windows/s",
         med(ram) / med(from_zarr)),
    ]  # fmt: skip
    print(f"{'measurement':<50} {'rate':>12}  {'unit':<10} {'ratio':>8}")
    for name, rate, unit, ratio in rows:
        print(
            f"{name:<50} {rate:>12,.0f}  {unit:<10} {'' if ratio is None else f'{ratio:.1f}x':>8}"
        )


if __name__ == "__main__":
    main()
