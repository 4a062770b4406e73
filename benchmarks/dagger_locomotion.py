"""DAgger on MuJoCo locomotion: an SB3 PPO teacher on Hopper-v5 and its MLP student.

Runs three things under ``--runs-dir`` (default ``runs/benchmarks``), each resumable and
reused when already done (``configs/students/dagger_hopper.yaml``, run name
``dagger-hopper``):

1. ``teach``: PPO (SB3) on Hopper-v5 -> ``<run>/teach/policy``;
2. ``distill``: DAgger into a small MLP student -> ``<run>/distill/dagger/policy``;
3. both policies on the same ``--episodes`` fixed evaluation seeds (``robodistill eval``'s
   seeds), then the per-decision latency of each: ``policy.act`` on one observation
   (batch 1), one torch thread, median over ``--latency-calls`` calls, teacher and student
   interleaved so that background load hits both alike.

It prints teacher return, student return, their ratio (goal: >= 0.95) and the latencies,
and writes ``benchmark.json`` into the run directory.

Why Hopper: its episodes end when the hopper falls, so a student that drifts off the
teacher's states pays for it in return, which is what DAgger is for; PPO gets it hopping
within a few hundred thousand steps on 2 CPU cores, where HalfCheetah's PPO returns stay
low for far longer and SAC costs ~10x more per step.

    python benchmarks/dagger_locomotion.py                        # the config's budgets
    python benchmarks/dagger_locomotion.py --set teach.total_timesteps=200000 --episodes 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

CONFIG = "configs/students/dagger_hopper.yaml"


def evaluate(cfg, policy, seeds: list[int]) -> list[float]:
    """Returns of ``policy`` on ``seeds`` (one episode each), in seed order."""
    from robodistill.core.rollout import rollout

    episodes = rollout(cfg.env.id, policy, seeds, num_envs=cfg.env.num_envs,
                       max_episode_steps=cfg.env.max_episode_steps, env_kwargs=cfg.env.kwargs)  # fmt: skip
    by_seed = {e.seed: e.return_ for e in episodes}
    return [by_seed[s] for s in seeds]


def latencies(policies: dict[str, object], obs: np.ndarray, calls: int) -> dict[str, float]:
    """Median seconds per ``act`` on one observation (B = 1), policies interleaved."""
    times: dict[str, list[float]] = {name: [] for name in policies}
    for policy in policies.values():  # warm-up: first calls allocate
        for row in obs[:20]:
            policy.act(row[None])
    for i in range(calls):
        row = obs[i % len(obs)][None]
        for name, policy in policies.items():
            t = time.perf_counter()
            policy.act(row)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--runs-dir", default="runs/benchmarks")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. teach.total_timesteps=200000")  # fmt: skip
    parser.add_argument("--episodes", type=int, default=50, help="evaluation episodes (seeds)")
    parser.add_argument("--latency-calls", type=int, default=2000)
    args = parser.parse_args()

    # One thread: the latency is measured single-threaded, and on a shared 2-core machine
    # torch's intra-op threads fighting other processes made SB3's PPO ~10x slower.
    torch.set_num_threads(1)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from robodistill.config import load_config
    from robodistill.core.seeds import EVAL_SEED_OFFSET, episode_seeds
    from robodistill.distill.stage import run_distill, teacher_path
    from robodistill.policies import load_policy
    from robodistill.teach.stage import run_teach

    cfg = load_config(args.config, [f"runs_dir={args.runs_dir}", *args.set])
    t0 = time.monotonic()
    teach = run_teach(cfg)
    t_teach = time.monotonic() - t0
    distill = run_distill(cfg)["dagger"]
    t_distill = time.monotonic() - t0 - t_teach

    teacher = load_policy(teacher_path(cfg))
    student = load_policy(distill["policy"])
    seeds = episode_seeds(cfg, args.episodes, EVAL_SEED_OFFSET)
    teacher_returns = evaluate(cfg, teacher, seeds)
    student_returns = evaluate(cfg, student, seeds)
    # Observations for the latency test: states the student visits (any states would do).
    from robodistill.core.rollout import rollout

    obs = rollout(cfg.env.id, student, seeds[:1])[0].data["obs"]
    latency = latencies({"teacher": teacher, "student": student}, obs, args.latency_calls)

    t_mean, s_mean = float(np.mean(teacher_returns)), float(np.mean(student_returns))
    result = {
        "env": cfg.env.id,
        "teacher": {
            "kind": teacher.kind,
            "net_arch": cfg.teach.net_arch,
            "timesteps": teach.get("timesteps"),
            "return_mean": t_mean,
            "return_std": float(np.std(teacher_returns)),
            "act_latency_ms": latency["teacher"] * 1e3,
        },  # fmt: skip
        "student": {
            "kind": student.kind,
            "hidden": cfg.distill.dagger.hidden,
            "loss": distill["loss"],
            "rounds": distill["rounds"],
            "dataset_states": distill["dataset_states"],
            "best_round": distill["best_round"],
            "return_mean": s_mean,
            "return_std": float(np.std(student_returns)),
            "act_latency_ms": latency["student"] * 1e3,
        },  # fmt: skip
        "return_ratio": s_mean / t_mean if t_mean else None,
        "episodes": len(seeds),
        "seeds": [seeds[0], seeds[-1]],
        "teacher_returns": teacher_returns,
        "student_returns": student_returns,
        "seconds": {"teach": round(t_teach, 1), "distill": round(t_distill, 1)},
        "torch_threads": torch.get_num_threads(),
    }
    out = Path(cfg.runs_dir) / cfg.name / "benchmark.json"
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{cfg.env.id}: teacher vs DAgger student on {len(seeds)} evaluation seeds "
          f"({seeds[0]}..{seeds[-1]})")  # fmt: skip
    print("| policy | network | return (mean ± std) | act latency, B=1, 1 thread (median) |")
    print("| --- | --- | --- | --- |")
    print(f"| teacher (SB3 PPO, {teach.get('timesteps')} steps) | {cfg.teach.net_arch} | "
          f"{t_mean:.1f} ± {np.std(teacher_returns):.1f} | {latency['teacher'] * 1e3:.3f} ms |")  # fmt: skip
    print(f"| student (DAgger, {distill['loss']}, {distill['rounds']} rounds) | "
          f"{cfg.distill.dagger.hidden} | {s_mean:.1f} ± {np.std(student_returns):.1f} | "
          f"{latency['student'] * 1e3:.3f} ms |")  # fmt: skip
    ratio = result["return_ratio"]
    verdict = "met" if ratio is not None and ratio >= 0.95 else "NOT met"
    print(f"return ratio student/teacher: {ratio:.3f} (goal >= 0.95: {verdict})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
