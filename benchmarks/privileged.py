"""Privileged teacher -> deployable students under domain randomization (issue 24).

For each task, in one process:

1. ``oracle``: PPO whose actor and critic read the privileged draw through RMA's encoder
   ``z = mu(e)`` (:mod:`robodistill.teach.rl.privileged`, mode ``oracle``);
2. ``dr``: PPO on the same randomized env and env-step budget that never sees ``e``
   (mode ``blind``): the domain-randomized policy without privileged information;
3. three students distilled from the oracle by DAgger on their own states, each reading
   only the robot's observation and its last ``k`` (observation, action) pairs
   (:mod:`robodistill.distill.history`): ``history``, ``rma``, ``hib``;
4. every policy on ``--episodes`` held-out seeds with parameters drawn in the training
   ranges and ``--episodes`` with parameters drawn out of them (``OOD`` below; the
   privileged vector is normalized to the training ranges, so the oracle sees values
   beyond [-1, 1] there).

Tasks: ``nav``: ``robodistill/Nav-v0`` diffdrive (``--nav-obstacles`` obstacles, 200-step
episodes) with randomized mass, friction and speed limits; success rate is the metric.
``hopper``: ``Hopper-v5`` (``--hopper-steps``-step episodes) with randomized masses and
friction; return is the metric.

    python benchmarks/privileged.py --task hopper --teacher-steps 100000 --episodes 100
    python benchmarks/privileged.py --task nav --json runs/benchmarks/privileged_nav.json

Goals (issue 24): the best student >= 0.9x the oracle's metric in the training ranges, and
above the DR policy out of them. Wall times are per policy: training (teacher PPO or DAgger)
and evaluation of both seed sets, on this machine under whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

TASKS = {
    "nav": {
        "id": "robodistill/Nav-v0",
        "metric": "success",
        "train": {"mass": [0.7, 1.3], "friction": [0.6, 1.4], "speed": [0.6, 1.2]},
        "ood": {"mass": [1.3, 1.8], "friction": [0.3, 0.6], "speed": [0.35, 0.6]},
    },
    "hopper": {
        "id": "Hopper-v5",
        "metric": "return",
        "train": {"mass": [0.7, 1.3], "friction": [0.6, 1.4]},
        "ood": {"mass": [1.3, 1.7], "friction": [0.3, 0.6]},
    },
}


def env_factory(task: str, args, ood: bool = False):
    from robodistill.envs.make import make_env
    from robodistill.envs.randomization import DomainRandomization

    spec = TASKS[task]

    def make():
        if task == "nav":
            env = make_env(spec["id"], embodiment="diffdrive", n_obstacles=args.nav_obstacles,
                           max_episode_steps=200)  # fmt: skip
        else:
            env = make_env(spec["id"], max_episode_steps=args.hopper_steps)
        ranges = spec["ood"] if ood else spec["train"]
        return DomainRandomization(env, ranges, reference=spec["train"], privileged_obs=True)

    return make


def evaluate(task: str, args, act, reset, seeds: list[int], ood: bool) -> dict[str, float]:
    """Mean return and success rate over ``seeds``, each with its standard error."""
    from robodistill.distill.history import run_episodes

    envs = [env_factory(task, args, ood)() for _ in range(args.eval_envs)]
    out = run_episodes(envs, seeds, act, reset)
    for env in envs:
        env.close()
    ret, succ = out["returns"], out["successes"]
    succ = succ[np.isfinite(succ)]
    n = len(seeds)
    return {
        "return": float(ret.mean()),
        "return_se": float(ret.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "success": float(succ.mean()) if len(succ) else float("nan"),
        "success_se": float(succ.std(ddof=1) / np.sqrt(len(succ)))
        if len(succ) > 1
        else float("nan"),
    }


def run_task(task: str, args) -> dict:
    from robodistill.distill.history import HistoryDAgger, distill_history, robot_view
    from robodistill.policies.privileged import PrivilegedTeacher
    from robodistill.teach.rl.privileged import train_privileged_ppo

    make = env_factory(task, args)
    ppo = {"n_steps": 512, "batch_size": 128, "n_epochs": 10, "ent_coef": 0.0}
    if task == "nav":
        ppo["gamma"] = 0.98
    rows, teachers = {}, {}
    modes = [("oracle", "oracle"), ("dr", "blind")]
    if args.asymmetric:  # only the critic reads e: a deployable PPO policy
        modes.append(("asymmetric", "asymmetric"))
    for name, mode in modes:
        t0 = time.monotonic()
        model, vn = train_privileged_ppo(make, mode, total_timesteps=args.teacher_steps,
                                         n_envs=4, seed=args.seed, ppo_kwargs=ppo)  # fmt: skip
        teachers[name] = PrivilegedTeacher.from_model(model, vn)
        if args.save_dir:
            teachers[name].save(args.save_dir / task / name)
        rows[name] = {"train_s": time.monotonic() - t0}
        print(f"[{task}] {name}: trained in {rows[name]['train_s']:.0f} s", flush=True)
    cfg = HistoryDAgger(rounds=args.rounds, episodes_per_round=args.dagger_episodes,
                        epochs=args.epochs, history_len=args.history, n_envs=4, seed=args.seed)  # fmt: skip
    students = {}
    for variant in ("history", "rma", "hib"):
        t0 = time.monotonic()
        students[variant], log = distill_history(make, teachers["oracle"], variant, cfg)
        rows[variant] = {"train_s": time.monotonic() - t0, "dagger": log}
        if args.save_dir:
            students[variant].save(args.save_dir / task / variant)
        print(f"[{task}] {variant}: distilled in {rows[variant]['train_s']:.0f} s; last round "
              f"{ {k: v for k, v in log[-1].items() if 'mse' in k} }", flush=True)  # fmt: skip
    probe = make()
    robot_idx = robot_view(probe)
    probe.close()
    seeds = {"in": [900_000 + i for i in range(args.episodes)],
             "ood": [950_000 + i for i in range(args.episodes)]}  # fmt: skip
    for name in [*teachers, "history", "rma", "hib"]:
        t0 = time.monotonic()
        if name in teachers:
            act, reset = teachers[name].act, (lambda rows: None)
        else:
            student = students[name]
            student.reset()
            act, reset = (lambda obs, s=student: s.act(obs[:, robot_idx])), students[name].reset
        for split, ood in (("in", False), ("ood", True)):
            rows[name][split] = evaluate(task, args, act, reset, seeds[split], ood)
        rows[name]["eval_s"] = time.monotonic() - t0
        print(f"[{task}] {name}: {rows[name]['in']} / OOD {rows[name]['ood']}", flush=True)
    return rows


def table(task: str, rows: dict, args) -> str:
    metric = TASKS[task]["metric"]
    lines = [f"### {task}: {TASKS[task]['id']} (metric: {metric}; {args.episodes} episodes "
             f"in range, {args.episodes} out of range)", "",
             "| policy | in range (± s.e.) | out of range (± s.e.) | train s | eval s |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, r in rows.items():
        cells = [
            f"{r[s][metric]:.3f} ± {r[s].get(metric + '_se', float('nan')):.3f}"
            for s in ("in", "ood")
        ]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {r['train_s']:.0f} | "
                     f"{r['eval_s']:.0f} |")  # fmt: skip
    students = ("history", "rma", "hib")
    best_in = max(students, key=lambda s: rows[s]["in"][metric])
    best_ood = max(students, key=lambda s: rows[s]["ood"][metric])
    oracle, dr = rows["oracle"]["in"][metric], rows["dr"]["ood"][metric]
    ratio = rows[best_in]["in"][metric] / oracle if oracle else float("nan")
    lines += ["", f"- best student in range: {best_in}, {ratio:.2f}x the oracle (goal >= 0.9): "
              f"{'met' if ratio >= 0.9 else 'NOT met'}",
              f"- best student out of range: {best_ood}, {rows[best_ood]['ood'][metric]:.3f} vs "
              f"DR {dr:.3f} (goal: above): "
              f"{'met' if rows[best_ood]['ood'][metric] > dr else 'NOT met'}"]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=[*TASKS, "all"], default="all")
    p.add_argument("--teacher-steps", type=int, default=100_000)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dagger-episodes", type=int, default=12)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--history", type=int, default=8)
    p.add_argument("--eval-envs", type=int, default=8)
    p.add_argument("--nav-obstacles", type=int, default=2)
    p.add_argument("--hopper-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--asymmetric",
        action="store_true",
        help="also train and evaluate the asymmetric PPO (privileged critic only)",
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--save-dir",
        type=Path,
        default=None,
        help="save every teacher and student under <dir>/<task>/<policy>",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    tasks = list(TASKS) if args.task == "all" else [args.task]
    results = {}
    for task in tasks:
        t0 = time.monotonic()
        results[task] = run_task(task, args)
        print(table(task, results[task], args))
        print(f"[{task}] total {time.monotonic() - t0:.0f} s\n", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=1, default=float))  # fmt: skip


if __name__ == "__main__":
    main()
