"""Env steps per second of RL-100's online stage (DPPO), variants side by side in one process.

Each variant runs ``--iterations`` online iterations (collect + PPO update, no validation
between them) of :func:`robodistill.teach.rl100.online.run_online_rl` from a policy of the
given backbone built like the imitation stage builds it (``teach.diffusion`` sizes, the
demonstrations' normalizer; fresh weights: what is timed is the compute, not the skill).
Variants:

* ``unet, 8 envs x 32 decisions``: the settings the online stage had before issue 21
  (``configs/pipelines/rl100_nav_diffdrive.yaml`` of 2026-12-06, measured then at about
  30 env steps/s over a whole run with validations);
* the UNet and the residual MLP at the config's ``teach.online`` settings.

    python benchmarks/online_speed.py --config configs/pipelines/rl100_nav_diffdrive.yaml

Needs the config's demonstrations (``robodistill collect --config ...`` first). Prints env
steps/s (whole iteration and collection alone) and the ratio to the first row; the first
iteration of each variant is a warm-up and is left out of the median.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import markdown  # noqa: E402


class Rows:
    """The StageRun interface the online stage writes to, keeping the rows."""

    def __init__(self, directory: Path):
        self.dir, self.rows = directory, []
        directory.mkdir(parents=True, exist_ok=True)

    def log_metrics(self, step, metrics):
        self.rows.append({"step": int(step), **metrics})


def run_variant(cfg, backbone: str, overrides: dict, iterations: int, work: Path) -> dict:
    from robodistill.data.demos import load_demos
    from robodistill.teach.rl100.imitation import build_policy
    from robodistill.teach.rl100.online import run_online_rl

    data, stats, _ = load_demos(cfg)
    torch.manual_seed(0)
    vcfg = cfg.model_copy(deep=True)
    vcfg.teach.diffusion.backbone = backbone
    for key, value in overrides.items():
        setattr(vcfg.teach.online, key, value)
    vcfg.teach.online.iterations = iterations
    vcfg.teach.online.eval_every = 10**6  # validate only before the first and after the last
    vcfg.teach.online.max_minutes = None
    vcfg.teach.rl100.rl_eval_episodes = 1
    vcfg.teach.online.critic_warmup_iterations = 0
    policy = build_policy(vcfg, data["obs"].shape[1], data["action"].shape[1], stats)
    start = policy.save(work / f"{backbone}-start")
    stage = Rows(work / f"{backbone}-{overrides.get('num_envs')}-teach")
    t = time.perf_counter()
    result = run_online_rl(vcfg, stage, start, stage.dir / "online")
    rows = [r for r in stage.rows if "online_env_steps_per_s" in r][1:]  # warm-up left out
    return {"iteration": float(np.median([r["online_env_steps_per_s"] for r in rows])),
            "collect": float(np.median([r["online_collect_steps_per_s"] for r in rows])),
            "env_steps": result["env_steps"], "wall_s": time.perf_counter() - t,
            "parameters": sum(p.numel() for p in policy.net.parameters())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/pipelines/rl100_nav_diffdrive.yaml")
    parser.add_argument("--runs-dir", default="runs/benchmarks")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--iterations", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the project's thread rule (teach.rl100.torch_threads)

    from robodistill.config import load_config

    cfg = load_config(args.config, [f"runs_dir={args.runs_dir}", *args.set])
    o = cfg.teach.online
    new = {"num_envs": o.num_envs, "decisions_per_env": o.decisions_per_env}
    old = {"num_envs": 8, "decisions_per_env": 32, "ft_denoising_steps": 3, "epochs": 10,
           "minibatch_size": 64}  # fmt: skip
    variants = [("unet", old, "unet, 8 envs x 32 decisions (before)"),
                ("unet", new, f"unet, {o.num_envs} envs x {o.decisions_per_env} decisions"),
                ("mlp", new, f"mlp, {o.num_envs} envs x {o.decisions_per_env} decisions")]  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone, overrides, label in variants:
            r = run_variant(cfg, backbone, overrides, args.iterations, Path(tmp))
            print(f"{label}: {r}", flush=True)
            results.append((label, r))
    base = results[0][1]["iteration"]
    table = markdown(
        ["variant", "denoiser parameters", "env steps/s (iteration, median)",
         "env steps/s (collection alone)", "vs before"],
        [[label, f"{r['parameters'] / 1e6:.2f} M", f"{r['iteration']:.0f}", f"{r['collect']:.0f}",
          f"{r['iteration'] / base:.1f}x"] for label, r in results],
    )  # fmt: skip
    print(f"\n{cfg.env.id} {cfg.env.kwargs}, {args.iterations} iterations per variant "
          f"(first left out), one torch thread\n\n{table}")  # fmt: skip


if __name__ == "__main__":
    main()
