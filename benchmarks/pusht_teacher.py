"""The Push-T teacher recipe: a small measured sweep, each point with its wall time.

Every point is the imitation stage of the RL-100 diffusion teacher (``teach.rl100.stages:
[il]``) on the demonstrations of ``configs/pipelines/pusht.yaml``, changed by the point's
overrides (network, batch, steps, learning rate, number of demos). For each point this
collects the demos it needs (one store per demo count, shared between points), trains
(resumable: a finished point is reused), then evaluates the selected policy on
``--episodes`` held-out evaluation seeds (the same for every point) and prints, side by side:
parameters, steps, batch, training steps/s, training minutes (validation included),
validation success, and held-out success and mean max score (Diffusion Policy's
``mean_score``: the max over an episode of ``clip(coverage / 0.95, 0, 1)``, averaged).

Goal (issue 20): mean max score >= 0.90 and success >= 50 % on 100 held-out seeds, trained
in <= 60 minutes on this 2-core CPU.

    python benchmarks/pusht_teacher.py                     # the default points
    python benchmarks/pusht_teacher.py --only mlp-1024 --episodes 100
    python benchmarks/pusht_teacher.py --point "mine=teach.rl100.il_steps=2000"

Writes ``pusht_teacher.json`` and ``pusht_teacher.md`` under ``--runs-dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import evaluate, markdown, pct, score  # noqa: E402

CONFIG = "configs/pipelines/pusht.yaml"

POINTS: dict[str, list[str]] = {
    # DPPO's state-task denoiser (residual MLP 512 x 3, 1.7 M) at diffusion policy's batch.
    "mlp512-d100": ["teach.diffusion.backbone=mlp", "teach.diffusion.mlp_width=512",
                    "teach.rl100.batch_size=256", "teach.rl100.il_steps=15000",
                    "teach.rl100.eval_every=2500", "collect.episodes=100"],
    "mlp512-d500": ["teach.diffusion.backbone=mlp", "teach.diffusion.mlp_width=512",
                    "teach.rl100.batch_size=256", "teach.rl100.il_steps=12000",
                    "teach.rl100.eval_every=2000", "collect.episodes=500"],
    # Chi et al.'s temporal UNet (1.1 M, the default pipeline's), batch 64.
    "unet-d500": ["teach.diffusion.backbone=unet", "teach.rl100.batch_size=64",
                  "teach.rl100.il_steps=8000", "teach.rl100.eval_every=2000",
                  "collect.episodes=500"],
    # The recipe itself (configs/pipelines/pusht.yaml as it is).
    "recipe": [],
}  # fmt: skip
"""Name -> overrides on top of ``--config`` (which holds the recipe's defaults)."""


def run_point(name: str, overrides: list[str], args) -> dict:
    from robodistill.collect import run_collect
    from robodistill.config import load_config
    from robodistill.core.seeds import EVAL_SEED_OFFSET, episode_seeds
    from robodistill.policies import load_policy
    from robodistill.teach.stage import run_teach

    base = [f"runs_dir={args.runs_dir}", *args.set]
    cfg = load_config(args.config, [*base, *overrides])
    # One demo store per demo count, shared by every point that uses that many.
    demos_cfg = load_config(args.config, [*base, f"name=pusht-demos-{cfg.collect.episodes}",
                                          f"collect.episodes={cfg.collect.episodes}"])  # fmt: skip
    t0 = time.monotonic()
    run_collect(demos_cfg)
    collect_s = time.monotonic() - t0
    demos = Path(demos_cfg.runs_dir) / demos_cfg.name / "collect" / "demos.zarr"
    cfg = load_config(args.config, [*base, f"name=pusht-teacher-{name}",
                                    f"teach.rl100.demos={demos}", *overrides])  # fmt: skip
    teach = run_teach(cfg)
    il = json.loads((Path(cfg.runs_dir) / cfg.name / "teach/il/result.json").read_text())
    policy = load_policy(Path(cfg.runs_dir) / cfg.name / "teach/policy")
    seeds = episode_seeds(cfg, args.episodes, EVAL_SEED_OFFSET)
    t1 = time.monotonic()
    held_out = evaluate(cfg, policy, seeds, args.num_envs)
    r = cfg.teach.rl100
    row = {
        "point": name, "overrides": overrides, "demos": cfg.collect.episodes,
        "backbone": cfg.teach.diffusion.backbone, "parameters": il["num_parameters"],
        "steps": il["steps"], "batch": r.batch_size, "learning_rate": r.learning_rate,
        "steps_per_s": il["steps_per_s"], "train_min": il["wall_s"] / 60,
        "collect_s": collect_s, "best_step": il["best_step"],
        "validation_success": il["best_success_rate"],
        "validation_max_score": il.get("best_max_score_mean"),
        "held_out": held_out, "eval_s": time.monotonic() - t1, "teach": teach,
    }  # fmt: skip
    logging.info("%s: %s", name, json.dumps({k: v for k, v in row.items() if k != "teach"},
                                            default=str))  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--runs-dir", default="runs/benchmarks")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every point")  # fmt: skip
    parser.add_argument("--point", action="append", default=[], metavar="NAME=K=V,K=V",
                        help="an extra point: name, then comma-separated overrides")  # fmt: skip
    parser.add_argument("--only", nargs="*", help="run only these points")
    parser.add_argument("--episodes", type=int, default=100, help="held-out evaluation seeds")
    parser.add_argument("--num-envs", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    points = dict(POINTS)
    for spec in args.point:
        name, _, rest = spec.partition("=")
        points[name] = [o for o in rest.split(",") if o]
    if args.only:
        unknown = set(args.only) - set(points)
        if unknown:
            raise SystemExit(f"--only: unknown points {sorted(unknown)}; known: {sorted(points)}")
        points = {k: points[k] for k in args.only}

    rows = [run_point(name, overrides, args) for name, overrides in points.items()]
    table = markdown(
        ["point", "backbone", "params", "demos", "batch", "steps", "steps/s", "train min",
         "val success", f"success ({args.episodes} seeds)", "mean max score", "goal"],
        [[r["point"], r["backbone"], f"{r['parameters'] / 1e6:.2f} M", r["demos"], r["batch"],
          r["steps"], f"{r['steps_per_s']:.1f}", f"{r['train_min']:.1f}",
          pct(r["validation_success"]), pct(r["held_out"]["success_rate"]),
          score(r["held_out"]["max_score_mean"]),
          "met" if goal_met(r) else "NOT met"] for r in rows],
    )  # fmt: skip
    text = (
        f"Push-T teacher sweep ({args.config}); held-out: {args.episodes} evaluation seeds; "
        f"goal: mean max score >= 0.90, success >= 50 %, <= 60 training minutes\n\n{table}"
    )
    print("\n" + text)
    out = Path(args.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pusht_teacher.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    (out / "pusht_teacher.md").write_text(text + "\n")


def goal_met(row: dict) -> bool:
    held = row["held_out"]
    return ((held["max_score_mean"] or 0) >= 0.90 and (held["success_rate"] or 0) >= 0.50
            and row["train_min"] <= 60)  # fmt: skip


if __name__ == "__main__":
    main()
