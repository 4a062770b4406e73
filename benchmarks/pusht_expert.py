"""Quality, speed and multimodality of the Push-T expert on fixed seeds.

    python benchmarks/pusht_expert.py --episodes 100 --seed 0

Episode i starts from ``env.reset(seed=seed + i)``. Prints success rate, mean final coverage,
mean episode length, the milliseconds per control step spent in ``expert.act`` and in
``env.step`` (median and p99), and two multimodality measures:

* which way the first route goes round the block (ccw / cw / direct, see
  ``PushTExpert._side``) and the entropy of the first pushed face over the 8 faces;
* for the same starts, how often a second expert seed picks a different first face or route
  (the expert's own multimodality on identical states).
"""

from __future__ import annotations

import argparse
import collections
import time

import gymnasium as gym
import numpy as np

from robodistill.envs.pusht import PushTEnv
from robodistill.envs.pusht_expert import PushTExpert


def run_episode(env, expert: PushTExpert, seed: int, max_steps: int, timings: dict) -> dict:
    obs, info = env.reset(seed=seed)
    expert.reset()
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007  (steps is the episode length)
        t0 = time.perf_counter()
        action = expert.act(obs[None])[0]
        t1 = time.perf_counter()
        obs, _, terminated, truncated, info = env.step(action)
        t2 = time.perf_counter()
        timings["act"].append(t1 - t0)
        timings["step"].append(t2 - t1)
        if terminated or truncated:
            break
    return {"success": bool(info["is_success"]), "coverage": info["coverage"], "length": steps}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="episode i uses seed + i")
    parser.add_argument("--expert-seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--tie-tolerance", type=float, default=None, help="expert override")
    parser.add_argument(
        "--no-second-seed", action="store_true", help="skip the second-expert-seed comparison"
    )
    args = parser.parse_args(argv)

    env = PushTEnv()
    overrides = {} if args.tie_tolerance is None else {"tie_tolerance": args.tie_tolerance}
    expert = PushTExpert(seed=args.expert_seed, **overrides)
    expert.attach([env])
    timings: dict[str, list[float]] = {"act": [], "step": []}
    results, firsts = [], []
    start = time.perf_counter()
    for i in range(args.episodes):
        results.append(run_episode(env, expert, args.seed + i, args.max_steps, timings))
        firsts.append(expert.episode_info(0))
    wall = time.perf_counter() - start

    success = np.mean([r["success"] for r in results])
    print(
        f"episodes            {args.episodes} (seeds {args.seed}..{args.seed + args.episodes - 1})"
    )
    print(f"success rate        {success:.3f}")
    print(f"mean coverage       {np.mean([r['coverage'] for r in results]):.3f}")
    print(f"mean length         {np.mean([r['length'] for r in results]):.1f} steps")
    for key in ("act", "step"):
        ms = 1e3 * np.asarray(timings[key])
        print(
            f"{key:<5} ms/step      median {np.median(ms):.3f}  p99 {np.percentile(ms, 99):.2f}"
            f"  mean {ms.mean():.3f}"
        )
    print(f"wall time           {wall:.1f} s ({wall / args.episodes:.2f} s/episode)")

    sides = collections.Counter(f["first_side"] for f in firsts)
    faces = collections.Counter(f["first_face"] for f in firsts)
    p = np.array(list(faces.values()), float) / len(firsts)
    entropy = float(-(p * np.log2(p)).sum())
    print(
        "first route round the block: "
        + ", ".join(f"{k} {sides[k] / len(firsts):.2f}" for k in ("ccw", "cw", "direct"))
    )
    print(f"first pushed face   entropy {entropy:.2f} bits (max 3.00), counts {dict(faces)}")

    report = {"success": float(success), "sides": dict(sides), "face_entropy": entropy}
    if not args.no_second_seed:
        other = PushTExpert(seed=args.expert_seed + 1, **overrides)
        other.attach([env])
        differ_face = differ_side = 0
        for i in range(args.episodes):
            # Only the first plan matters here: step until the second expert has planned.
            env.reset(seed=args.seed + i)
            other.reset()
            other.act(np.zeros((1, 5), np.float32))
            info = other.episode_info(0)
            differ_face += info["first_face"] != firsts[i]["first_face"]
            differ_side += info["first_side"] != firsts[i]["first_side"]
        print(
            f"same start, expert seed {args.expert_seed} vs {args.expert_seed + 1}: first face "
            f"differs {differ_face / args.episodes:.2f}, first route side differs "
            f"{differ_side / args.episodes:.2f}"
        )
        report["differ_face"] = differ_face / args.episodes
    return report


if __name__ == "__main__":
    gym.logger.min_level = 40  # keep the report readable
    main()
