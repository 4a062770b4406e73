"""The Push-T demonstrators side by side: quality, smoothness, speed and multimodality.

    python benchmarks/pusht_expert.py --episodes 100 --seed 0

Runs the registered expert (``PushTSmoothExpert``, "new") and the earlier state-machine
expert (``PushTExpert``, "old") in the same process on the same starts: episode i starts
from ``env.reset(seed=seed + i)`` for both. Printed per demonstrator:

* success rate, mean max score (the max over the episode of ``clip(coverage / 0.95, 0, 1)``,
  Diffusion Policy's Push-T ``mean_score``), mean final coverage, mean episode length;
* the per-step target jump ``|a_t - a_{t-1}|`` in workspace units (median, p90, fraction
  above 30 units) and the target lead ``|a_t - pusher_t|`` (how far the commanded target
  is from the pusher the policy observes; median, p90) and the 2-frame miss
  ``|a_t - (2 p_t - p_{t-1})|`` (how far the target is from where the last two observed
  pusher positions, extrapolated at constant velocity, put it; median, p90);
* the first approach's side: the angle the pusher sweeps about the block's centre of mass
  before the block first moves, as ccw / cw / direct (under 0.5 rad; the same measure for
  both, see ``pusht_smooth_expert.side_of``), and the entropy of the first pushed face;
* with a second expert seed on the same starts: how often the first side differs (the
  demonstrator's multimodality on identical states);
* milliseconds per control step in ``expert.act`` (median, p99, mean) and seconds per
  episode (expert and env together).
"""

from __future__ import annotations

import argparse
import collections
import time

import gymnasium as gym
import numpy as np

from robodistill.envs.pusht import SUCCESS_THRESHOLD, TEE_COM, WORKSPACE, PushTEnv, tee_to_world
from robodistill.envs.pusht_expert import PushTExpert
from robodistill.envs.pusht_smooth_expert import PushTSmoothExpert, side_of, sweep_angle

EXPERTS = {"old": PushTExpert, "new": PushTSmoothExpert}


def run_episode(env, expert, seed: int, max_steps: int, first_only: bool = False) -> dict:
    """One episode; ``first_only`` stops once the block first moves (the first approach)."""
    obs, info = env.reset(seed=seed)
    expert.reset()
    start_pose = env.block_pose()
    com = tee_to_world(start_pose, TEE_COM[None])[0]
    approach = [env.pusher_position().copy()]
    targets, leads, misses, act_s = [], [], [], []
    before = env.pusher_position().copy()
    best = float(np.clip(info["coverage"] / SUCCESS_THRESHOLD, 0.0, 1.0))
    touched = False
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007  (steps is the episode length)
        t0 = time.perf_counter()
        action = expert.act(obs[None])[0]
        act_s.append(time.perf_counter() - t0)
        target = (action.astype(np.float64) + 1.0) / 2.0 * WORKSPACE
        targets.append(target)
        now = env.pusher_position().copy()
        leads.append(np.linalg.norm(target - now))
        misses.append(np.linalg.norm(target - (2.0 * now - before)))
        before = now
        obs, _, terminated, truncated, info = env.step(action)
        best = max(best, float(np.clip(info["coverage"] / SUCCESS_THRESHOLD, 0.0, 1.0)))
        if not touched:
            moved = np.abs(env.block_pose() - start_pose) > (1.0, 1.0, 0.01)
            touched = bool(np.any(moved))
            if not touched:
                approach.append(env.pusher_position().copy())
            elif first_only:
                break
        if terminated or truncated:
            break
    jumps = np.linalg.norm(np.diff(np.asarray(targets), axis=0), axis=1)
    return {
        "success": bool(info["is_success"]),
        "max_score": best,
        "coverage": float(info["coverage"]),
        "length": steps,
        "jumps": jumps,
        "leads": np.asarray(leads),
        "misses": np.asarray(misses),
        "act_s": np.asarray(act_s),
        "side": side_of(sweep_angle(np.asarray(approach), com)),
        "first_face": expert.episode_info(0)["first_face"],
    }


def evaluate(name: str, env, args) -> dict:
    expert = EXPERTS[name](seed=args.expert_seed)
    expert.attach([env])
    start = time.perf_counter()
    runs = [run_episode(env, expert, args.seed + i, args.max_steps) for i in range(args.episodes)]
    wall = time.perf_counter() - start
    jumps = np.concatenate([r["jumps"] for r in runs])
    leads = np.concatenate([r["leads"] for r in runs])
    misses = np.concatenate([r["misses"] for r in runs])
    act_ms = 1e3 * np.concatenate([r["act_s"] for r in runs])
    sides = collections.Counter(r["side"] for r in runs)
    faces = collections.Counter(r["first_face"] for r in runs)
    p = np.array(list(faces.values()), float) / len(runs)
    out = {
        "success": np.mean([r["success"] for r in runs]),
        "max_score": np.mean([r["max_score"] for r in runs]),
        "coverage": np.mean([r["coverage"] for r in runs]),
        "length": np.mean([r["length"] for r in runs]),
        "jump_median": np.median(jumps),
        "jump_p90": np.percentile(jumps, 90),
        "jump_gt30": np.mean(jumps > 30.0),
        "lead_median": np.median(leads),
        "lead_p90": np.percentile(leads, 90),
        "miss_median": np.median(misses),
        "miss_p90": np.percentile(misses, 90),
        **{f"side_{k}": sides[k] / len(runs) for k in ("ccw", "cw", "direct")},
        "face_entropy": float(-(p * np.log2(p)).sum()),
        "act_median": np.median(act_ms),
        "act_p99": np.percentile(act_ms, 99),
        "act_mean": act_ms.mean(),
        "s_per_episode": wall / args.episodes,
    }
    if not args.no_second_seed:
        other = EXPERTS[name](seed=args.expert_seed + 1)
        other.attach([env])
        differ = [
            run_episode(env, other, args.seed + i, args.max_steps, first_only=True)["side"]
            != runs[i]["side"]
            for i in range(args.episodes)
        ]
        out["side_differs"] = float(np.mean(differ))
    return out


ROWS = [
    ("success", "success rate", "{:.2f}"),
    ("max_score", "mean max score", "{:.3f}"),
    ("coverage", "mean final coverage", "{:.3f}"),
    ("length", "mean length (steps)", "{:.1f}"),
    ("jump_median", "target jump median", "{:.1f}"),
    ("jump_p90", "target jump p90", "{:.1f}"),
    ("jump_gt30", "jumps > 30 units", "{:.3f}"),
    ("lead_median", "target lead median", "{:.1f}"),
    ("lead_p90", "target lead p90", "{:.1f}"),
    ("miss_median", "2-frame miss median", "{:.1f}"),
    ("miss_p90", "2-frame miss p90", "{:.1f}"),
    ("side_ccw", "first side ccw", "{:.2f}"),
    ("side_cw", "first side cw", "{:.2f}"),
    ("side_direct", "first side direct", "{:.2f}"),
    ("face_entropy", "first face entropy (bits)", "{:.2f}"),
    ("side_differs", "side differs, seed+1", "{:.2f}"),
    ("act_median", "act ms median", "{:.3f}"),
    ("act_p99", "act ms p99", "{:.1f}"),
    ("act_mean", "act ms mean", "{:.2f}"),
    ("s_per_episode", "s per episode", "{:.2f}"),
]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="episode i uses seed + i")
    parser.add_argument("--expert-seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument(
        "--no-second-seed", action="store_true", help="skip the second-expert-seed comparison"
    )
    args = parser.parse_args(argv)

    env = PushTEnv()
    report = {name: evaluate(name, env, args) for name in EXPERTS}
    last = args.seed + args.episodes - 1
    print(f"{args.episodes} episodes (seeds {args.seed}..{last}), expert seed {args.expert_seed}")
    print(f"| {'metric':<26} | {'old':>8} | {'new':>8} |")
    print(f"| {'-' * 26} | {'-' * 7}: | {'-' * 7}: |")
    for key, label, fmt in ROWS:
        if key in report["new"]:
            cells = " | ".join(f"{fmt.format(report[n][key]):>8}" for n in EXPERTS)
            print(f"| {label:<26} | {cells} |")
    return report


if __name__ == "__main__":
    gym.logger.min_level = 40  # keep the report readable
    main()
