"""The thread rule for RL teachers (``teach.torch_threads``), measured: SB3 PPO env steps/s
with one torch thread against torch's default (one per core), while a competing process
keeps one core busy (as a second training, a test run or a browser would), same process,
alternating variants, medians.

    python benchmarks/rl_threads.py --steps 4096 --repeats 3

Prints env steps/s per variant and the ratio to torch's default.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import markdown  # noqa: E402


def burn(stop) -> None:
    """Keep one core busy until ``stop`` is set."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def steps_per_s(threads: int, steps: int, env_id: str) -> float:
    from stable_baselines3 import PPO

    torch.set_num_threads(threads)
    model = PPO("MlpPolicy", env_id, n_steps=512, batch_size=64, n_epochs=10, seed=0,
                device="cpu", policy_kwargs={"net_arch": [64, 64]})  # fmt: skip
    t = time.perf_counter()
    model.learn(steps)
    return steps / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--env", default="Pendulum-v1")
    args = parser.parse_args()
    default = torch.get_num_threads()  # torch's default: one per core
    variants = {f"torch default ({default} threads)": default, "teach.torch_threads: 1": 1}
    stop = mp.Event()
    competitor = mp.Process(target=burn, args=(stop,), daemon=True)
    competitor.start()
    try:
        steps_per_s(1, 512, args.env)  # warm-up: imports, first allocations
        rates: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for name, threads in variants.items():
                rates[name].append(steps_per_s(threads, args.steps, args.env))
    finally:
        stop.set()
        competitor.join()
    base = statistics.median(rates[next(iter(variants))])
    rows = [[name, f"{statistics.median(r):.0f}", f"{statistics.median(r) / base:.2f}x",
             " ".join(f"{x:.0f}" for x in r)] for name, r in rates.items()]  # fmt: skip
    print(f"SB3 PPO on {args.env}, {args.steps} steps x {args.repeats}, one competing "
          f"process busy, {os.cpu_count()} cores")  # fmt: skip
    print(markdown(["variant", "env steps/s (median)", "vs default", "runs"], rows))


if __name__ == "__main__":
    main()
