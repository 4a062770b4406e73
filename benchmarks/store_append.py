"""How much the journal + batched merge and in-RAM sampling buy over per-call zarr access,
and what store integrity (checksummed chunks, every chunk written, episode digests) costs.

    python benchmarks/store_append.py [--episodes 100 --steps-per-episode 200 --obs-dim 20
                                       --act-dim 6 --repeats 5]

Measures, in one process after a warm-up, medians over ``--repeats`` (the variants compared
take turns within each repeat, so a drifting machine load hits them alike):
  (a) episodes/s appending with every episode committed straight to zarr (flush_every=1),
  (b) episodes/s with the write-ahead journal and one batched merge per flush_every episodes,
      each before (``integrity=False``: format 1, no checksums, no digests) and after
      (format 2); the goal is after >= 0.9 x before,
  (c) steps/s of ``TrajectoryStore.load()``, format 1 vs format 2 (checked against digests),
  (d) random (obs, action) windows/s from SequenceSampler in RAM vs slicing zarr per window.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
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


def append_rate(
    path: Path, episodes: list[Episode], flush_every: int, integrity: bool, keep: bool = False
) -> float:
    t0 = time.perf_counter()
    with TrajectoryStore.create(path, flush_every=flush_every, integrity=integrity) as store:
        for ep in episodes:
            store.add_episode(ep)
    rate = len(episodes) / (time.perf_counter() - t0)
    if not keep:
        shutil.rmtree(path)
    return rate


def load_rate(path: Path) -> float:
    t0 = time.perf_counter()
    with TrajectoryStore.open(path) as store:
        n = len(store.load()["obs"])
    return n / (time.perf_counter() - t0)


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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--zarr-windows", type=int, default=300)
    args = parser.parse_args()
    repeats = max(3, args.repeats)
    episodes = make_episodes(args.episodes, args.steps_per_episode, args.obs_dim, args.act_dim)
    with tempfile.TemporaryDirectory() as tmp:
        path, old = Path(tmp) / "bench.zarr", Path(tmp) / "old.zarr"
        variants = list(itertools.product((1, args.flush_every), (False, True)))
        for flush_every, integrity in variants:
            append_rate(path, episodes[:10], flush_every, integrity)  # warm-up: imports, codecs
        rates: dict[tuple[int, bool], list[float]] = defaultdict(list)
        for r in range(repeats):
            # Before and after take turns, first one then the other, so neither always runs
            # right after the other's writes and deletes.
            for flush_every, integrity in variants if r % 2 else variants[::-1]:
                rates[flush_every, integrity].append(
                    append_rate(path, episodes, flush_every, integrity)
                )
        append_rate(path, episodes, args.flush_every, True, keep=True)
        append_rate(old, episodes, args.flush_every, False, keep=True)
        loads: dict[bool, list[float]] = defaultdict(list)
        for _ in range(repeats + 1):  # the first round warms the page cache
            loads[False].append(load_rate(old))
            loads[True].append(load_rate(path))
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
        f"act {args.act_dim}; medians of {repeats} repeats; ratio: against the row above"
    )
    f = args.flush_every
    direct, batched = med(rates[1, False]), med(rates[f, False])
    checked, checked_batched = med(rates[1, True]), med(rates[f, True])
    # Paired: after / before within each repeat, so a machine load that drifts between
    # repeats cancels out.
    paired = {n: med(a / b for a, b in zip(rates[n, True], rates[n, False], strict=True))
              for n in (1, f)}  # fmt: skip
    rows = [
        ("append, commit each episode (flush_every=1), before", direct, "episodes/s", None),
        ("append, commit each episode (flush_every=1), after", checked, "episodes/s",
         checked / direct),
        (f"append, journal + merge (flush_every={f}), before", batched, "episodes/s",
         batched / direct),
        (f"append, journal + merge (flush_every={f}), after", checked_batched, "episodes/s",
         checked_batched / batched),
        ("load(), before (format 1)", med(loads[False][1:]), "steps/s", None),
        ("load(), after (format 2, digests checked)", med(loads[True][1:]), "steps/s",
         med(loads[True][1:]) / med(loads[False][1:])),
        ("windows, zarr slice per window", med(from_zarr), "windows/s", None),
        (f"windows, SequenceSampler in RAM (batch {BATCH})", med(ram), "windows/s",
         med(ram) / med(from_zarr)),
    ]  # fmt: skip
    print(f"{'measurement':<60} {'rate':>12}  {'unit':<10} {'ratio':>8}")
    for name, rate, unit, ratio in rows:
        print(
            f"{name:<60} {rate:>12,.0f}  {unit:<10} {'' if ratio is None else f'{ratio:.2f}x':>8}"
        )
    print(
        "before: integrity=False (format 1: no chunk checksums, no episode digests); after: "
        "format 2. Append slowdown from integrity, median of the per-repeat after/before: "
        f"{1 - paired[1]:.1%} (flush_every=1), {1 - paired[f]:.1%} (flush_every={f}); "
        "goal <= 10 %"
    )


if __name__ == "__main__":
    main()
