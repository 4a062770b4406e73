"""How well and how fast the A* planner expert drives each embodiment (and the AGV maze).

    python benchmarks/nav_expert.py --episodes 50 [--heading-mode auto|goal|hold|path]

Episodes use fixed seeds 0..episodes-1, so every embodiment sees the same Nav layouts.
Prints success rate, mean episode length (steps, failures count the full horizon), and
milliseconds per step spent in ``expert.act`` and in ``env.step``. The expert is tuned for
the holonomic base (default ``heading_mode="auto"``: strafing on Nav-v0, facing the path on
AGVMaze-v0), so it should succeed on ``holonomic`` and clearly less on the other bodies.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from robodistill.envs.agv_maze import AGVMazeEnv
from robodistill.envs.nav import NavEnv
from robodistill.envs.nav_expert import NavPlannerExpert

NAV_STEPS, AGV_STEPS = 400, 1000  # the registered max_episode_steps


def run(make, horizon: int, episodes: int, heading_mode: str = "auto") -> dict[str, float]:
    env = make()
    expert = NavPlannerExpert(heading_mode=heading_mode)
    expert.attach([env])
    successes, lengths, t_act, t_env, steps = 0, [], 0.0, 0.0, 0
    for seed in range(episodes):
        obs, _ = env.reset(seed=seed)
        expert.reset()
        for t in range(horizon):  # noqa: B007  (t + 1 is the episode length below)
            t0 = time.perf_counter()
            action = expert.act(obs[None])[0]
            t1 = time.perf_counter()
            obs, _, terminated, _, info = env.step(action)
            t2 = time.perf_counter()
            t_act, t_env, steps = t_act + t1 - t0, t_env + t2 - t1, steps + 1
            if terminated:
                break
        successes += bool(info["is_success"])
        lengths.append(t + 1)
    env.close()
    return {
        "success": successes / episodes,
        "length": float(np.mean(lengths)),
        "act_ms": 1e3 * t_act / steps,
        "step_ms": 1e3 * t_env / steps,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--heading-mode", default="auto", choices=["auto", "goal", "hold", "path"])
    args = parser.parse_args(argv)
    cases = [
        (f"Nav-v0/{name}", lambda name=name: NavEnv(embodiment=name), NAV_STEPS)
        for name in ("holonomic", "diffdrive", "ackermann", "heavy")
    ]
    cases.append(("AGVMaze-v0/diffdrive", AGVMazeEnv, AGV_STEPS))
    print(f"{'task':<24} {'success':>8} {'mean len':>9} {'act ms':>8} {'step ms':>8}")
    for label, make, horizon in cases:
        r = run(make, horizon, args.episodes, args.heading_mode)
        print(
            f"{label:<24} {r['success']:>8.0%} {r['length']:>9.1f} "
            f"{r['act_ms']:>8.3f} {r['step_ms']:>8.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
