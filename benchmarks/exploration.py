"""Exploration under sparse reward: PPO vs PPO+RND vs PPO+RDD, same env-step budget.

Each (method, seed) is one ``robodistill teach`` run of ``--config`` (default
``configs/teachers/ppo_rnd_agvmaze.yaml``: the fixed 1-row ``AGVMaze-v0`` hall with the bonus
on the privileged position) with ``teach.exploration.method``, ``seed``,
``teach.total_timesteps``, ``name`` and ``runs_dir`` overridden (plus ``--rows`` and every
``--set``), in its own process (``--workers`` at a time, spawn context, one torch thread
each). Per method it prints:

* the final success rate on the teach stage's fixed validation seeds (``teach.eval_episodes``
  = 10 episodes), mean +- std over seeds;
* the fraction of training episodes that reached the goal (all seeds pooled, and per seed);
* steps-to-first-success: the first env step at which a training episode reached the goal
  (per seed; "never" if none did);
* the share of the start-goal distance the final policy covers (5 episodes);
* the median training wall time per run (with ``--workers`` runs side by side);

and writes ``results.json`` (all numbers, per run the bonus's novelty ratio and r_int over
training) and ``learning_curve.png`` (success over env steps, mean over seeds; novelty ratio
and r_int per seed) under ``--out``. The goal this checks: RND or RDD reaches >= 3x plain
PPO's success rate and >= 50 % absolute. Only one evaluation is run, at the end.

Budget, measured on this 2-core machine with 2 runs side by side: PPO ~1,800 env steps/s,
PPO+RND ~1,380, PPO+RDD ~1,280 on the 1-row hall; 3 methods x 5 seeds x 300k steps took
22 min (two of the 15 runs resumed from checkpoints of an interrupted call, so a little
more from scratch).

    python benchmarks/exploration.py --rows 1 --steps 300000
    python benchmarks/exploration.py --config configs/teachers/ppo_rnd_nav_sparse.yaml
    python benchmarks/exploration.py --set teach.exploration.input_scaling=bounds_running_mean

Finished runs are reused (each stage is resumable); ``--fresh`` retrains them.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

CONFIG = "configs/teachers/ppo_rnd_agvmaze.yaml"
METHODS = {"ppo": "none", "ppo+rnd": "rnd", "ppo+rdd": "rdd"}
DEFAULT_STEPS = 300_000


def run_one(
    method: str, seed: int, steps: int, runs_dir: str, fresh: bool, rows: int | None,
    overrides: tuple[str, ...] = (), config: str = CONFIG,
) -> dict[str, Any]:  # fmt: skip
    """Train one (method, seed) teacher in this (worker) process; returns its numbers."""
    import torch

    torch.set_num_threads(1)
    from robodistill.config import load_config
    from robodistill.teach.stage import run_teach

    name = f"{method.replace('+', '-')}-s{seed}"
    cfg = load_config(
        config,
        [
            f"teach.exploration.method={METHODS[method]}",
            f"seed={seed}",
            f"teach.total_timesteps={steps}",
            f"teach.eval_every={steps}",  # one evaluation, at the end
            f"teach.checkpoint_every={max(steps // 4, 1)}",
            f"name={name}",
            f"runs_dir={runs_dir}",
            *([f"env.kwargs.rows={rows}"] if rows is not None else []),
            *overrides,
        ],
    )
    t0 = time.monotonic()
    metrics = run_teach(cfg, overwrite=fresh)
    stage_dir = Path(runs_dir) / name / "teach"
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [
        [r["step"], r["train_success"], r["train_episodes"]] for r in rows if "train_success" in r
    ]
    bonus = [[r["step"], r.get("novelty_ratio"), r.get("r_int_mean")]
             for r in rows if r.get("stage") == "exploration"]  # fmt: skip
    return {
        "method": method,
        "seed": seed,
        "run_dir": str(stage_dir),
        "timesteps": metrics["timesteps"],
        "final_success_rate": metrics["final_success_rate"],
        "final_return_mean": metrics["final_return_mean"],
        "first_success_step": metrics.get("first_success_step"),
        "train_episodes": sum(c[2] for c in curve),
        "train_successes": sum(c[1] for c in curve),
        "steps_per_s": metrics["steps_per_s"],
        "wall_s": round(time.monotonic() - t0, 1),
        "curve": curve,  # [step, successes, episodes] per PPO rollout
        "bonus": bonus,  # [step, novelty ratio, mean r_int] per predictor update
        **closest_approach(stage_dir / "policy", cfg.env.id, cfg.env.kwargs, seed),
    }


def closest_approach(policy_dir: Path, env_id: str, env_kwargs: dict, seed: int,
                     episodes: int = 5) -> dict[str, Any]:  # fmt: skip
    """How close the trained policy drives to the goal (a signal even when no run succeeds).

    Rolls the final policy out on ``episodes`` held-out layouts and records, per episode, the
    closest distance to the goal and the fraction of the start-goal distance covered
    (``1 - closest / start``; 1.0 is the goal, 0.0 never got closer than the start).
    """
    import numpy as np

    from robodistill.envs import make_env
    from robodistill.policies.base import load_policy

    policy = load_policy(policy_dir)
    env = make_env(env_id, **env_kwargs)
    closest, covered = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed * 1_000_000 + 700_000 + i)
        policy.reset()
        start = best = float(env.unwrapped._goal_distance())
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(policy.act(obs[None])[0])
            best = min(best, info["distance"])
            done = terminated or truncated
        closest.append(best)
        covered.append(1.0 - best / start)
    env.close()
    return {
        "closest_goal_distance_m": round(float(np.mean(closest)), 3),
        "start_goal_distance_covered": round(float(np.mean(covered)), 3),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def binned_curve(curve: list[list[int]], steps: int, n_bins: int) -> list[float | None]:
    """Training-episode success rate per bin of env steps (None where no episode ended)."""
    succ, eps = [0] * n_bins, [0] * n_bins
    for step, s, e in curve:
        b = min(int((step - 1) * n_bins / steps), n_bins - 1)
        succ[b] += s
        eps[b] += e
    return [s / e if e else None for s, e in zip(succ, eps, strict=True)]


def summarize(runs: list[dict[str, Any]], steps: int, n_bins: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in METHODS:
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        if not mine:
            continue
        mean, std = _mean_std([r["final_success_rate"] or 0.0 for r in mine])
        episodes = sum(r["train_episodes"] for r in mine)
        successes = sum(r["train_successes"] for r in mine)
        curves = [binned_curve(r["curve"], steps, n_bins) for r in mine]
        mean_curve = []
        for column in zip(*curves, strict=True):
            vals = [v for v in column if v is not None]
            mean_curve.append(statistics.fmean(vals) if vals else None)
        out[method] = {
            "seeds": [r["seed"] for r in mine],
            "eval_success_mean": mean,
            "eval_success_std": std,
            "eval_success_per_seed": [r["final_success_rate"] for r in mine],
            "train_success_fraction": successes / episodes if episodes else 0.0,
            "train_success_fraction_per_seed": [
                r["train_successes"] / r["train_episodes"] if r["train_episodes"] else 0.0
                for r in mine
            ],
            "train_episodes": episodes,
            "train_successes": successes,
            "first_success_step_per_seed": [r["first_success_step"] for r in mine],
            "distance_covered_mean": statistics.fmean(
                r.get("start_goal_distance_covered", math.nan) for r in mine
            ),
            "closest_goal_distance_m_mean": statistics.fmean(
                r.get("closest_goal_distance_m", math.nan) for r in mine
            ),
            "steps_per_s_per_seed": [r["steps_per_s"] for r in mine],
            # Training wall time only (steps / steps-per-second): the two workers share two
            # cores, so this is the time per run with another run beside it.
            "wall_s_median": statistics.median(
                r["timesteps"] / r["steps_per_s"] for r in mine if r["steps_per_s"]
            ),
            "novelty_ratio_last_per_seed": [
                next((b[1] for b in reversed(r.get("bonus", [])) if b[1] is not None), None)
                for r in mine
            ],
            "curve_bin_edges": [round(steps * i / n_bins) for i in range(n_bins + 1)],
            "curve_mean": mean_curve,
        }
    base = out.get("ppo")
    for method in ("ppo+rnd", "ppo+rdd"):
        if base and method in out:
            for key in ("eval_success_mean", "train_success_fraction"):
                b = base[key]
                out[method][f"{key}_vs_ppo"] = (
                    out[method][key] / b if b > 0 else (math.inf if out[method][key] > 0 else None)
                )
    return out


def print_table(summary: dict[str, Any], steps: int, title: str) -> str:
    lines = [
        f"{title}, {steps} env steps per run",
        f"{'method':<9} {'eval success (mean±std)':<24} {'train-episode success':<26} "
        f"{'distance covered':<17} {'wall s/run':<11} steps to first success (per seed)",
    ]
    for method, s in summary.items():
        first = ", ".join(
            "never" if v is None else str(v) for v in s["first_success_step_per_seed"]
        )
        train = f"{s['train_success_fraction']:.3f} ({s['train_successes']}/{s['train_episodes']})"
        lines.append(
            f"{method:<9} {s['eval_success_mean']:.2f} ± {s['eval_success_std']:.2f}"
            f"{'':<13} {train:<26} {s['distance_covered_mean']:<17.2f} "
            f"{s['wall_s_median']:<11.0f} {first}"
        )
    for method in ("ppo+rnd", "ppo+rdd"):
        ratio = summary.get(method, {}).get("train_success_fraction_vs_ppo", "n/a")
        eval_ratio = summary.get(method, {}).get("eval_success_mean_vs_ppo", "n/a")
        lines.append(f"{method} / ppo: train-success x{ratio}, eval-success x{eval_ratio}")
    text = "\n".join(lines)
    print(text)
    return text


def plot(summary: dict[str, Any], runs: list[dict[str, Any]], path: Path, title: str) -> None:
    """Left: training-episode success vs env steps (mean over seeds). Middle and right: the
    bonus per seed over training, novelty ratio and mean normalised r_int (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    for method, s in summary.items():
        edges = s["curve_bin_edges"]
        xs = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        ys = [math.nan if v is None else v for v in s["curve_mean"]]
        ax.plot(xs, ys, marker=".", label=f"{method} (n={len(s['seeds'])})")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("training-episode success rate")
    ax.set_title("training episodes reaching the goal, mean over seeds", fontsize=9)
    fig.suptitle(title)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    colors = {"ppo+rnd": "tab:orange", "ppo+rdd": "tab:green"}
    for col, (ax, label) in enumerate(
        [(axes[1], "novelty ratio (held-out / visited)"), (axes[2], "mean r_int per step")]
    ):
        for r in runs:
            pts = [(b[0], b[col + 1]) for b in r.get("bonus", []) if b[col + 1]]
            if pts and r["method"] in colors:
                solved = r["first_success_step"] is not None
                ax.plot(*zip(*pts, strict=True), color=colors[r["method"]], lw=0.8,
                        ls="-" if solved else ":",
                        label=f"{r['method']} s{r['seed']}{'' if solved else ' (never)'}")  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("environment steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=CONFIG, help="teacher config every run starts from")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--rows", type=int, default=None, help="AGVMaze shelf rows (default: the config's)"
    )
    parser.add_argument("--bins", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/exploration"))
    parser.add_argument("--fresh", action="store_true", help="retrain finished runs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. env.kwargs.layout_seed=0")  # fmt: skip
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs_dir = str(args.out / "runs")
    from robodistill.config import load_config

    cfg = load_config(args.config, [*([f"env.kwargs.rows={args.rows}"] if args.rows else []),
                                    *args.set])  # fmt: skip
    args.env_id = cfg.env.id
    kwargs = ", ".join(f"{k}={v}" for k, v in cfg.env.kwargs.items())
    title = f"{cfg.env.id.split('/')[-1]} ({kwargs})"

    # Slowest methods first within each seed, so the two workers finish close together.
    jobs = [(m, s) for s in args.seeds for m in reversed(args.methods)]
    runs: list[dict[str, Any]] = []
    t0 = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        futures = {
            pool.submit(
                run_one, m, s, args.steps, runs_dir, args.fresh, args.rows, tuple(args.set),
                args.config,
            ): (m, s)
            for m, s in jobs
        }  # fmt: skip
        for future in as_completed(futures):
            m, s = futures[future]
            r = future.result()
            runs.append(r)
            print(
                f"[{time.monotonic() - t0:7.1f}s] {m} seed {s}: eval success "
                f"{r['final_success_rate']}, train {r['train_successes']}/{r['train_episodes']}, "
                f"first success {r['first_success_step'] or 'never'}, {r['steps_per_s']} steps/s",
                flush=True,
            )
            summary = summarize(runs, args.steps, args.bins)  # partial results survive a kill
            _write(args, runs, summary, time.monotonic() - t0)

    summary = summarize(runs, args.steps, args.bins)
    table = print_table(summary, args.steps, title)
    _write(args, runs, summary, time.monotonic() - t0, table)
    plot(summary, runs, args.out / "learning_curve.png", title)
    print(f"plot: {args.out / 'learning_curve.png'}\njson: {args.out / 'results.json'}")


def _write(args, runs, summary, wall, table: str | None = None) -> None:
    document = {
        "env": args.env_id,
        "config": args.config,
        "steps_per_run": args.steps,
        "seeds": args.seeds,
        "workers": args.workers,
        "rows": args.rows,
        "overrides": args.set,
        "wall_s": round(wall, 1),
        "complete": table is not None,
        "summary": summary,
        "table": table,
        "runs": sorted(runs, key=lambda r: (r["method"], r["seed"])),
    }
    (args.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
