"""Env steps per second of RL-100's online stage (DPPO), variants side by side in one process.

Each variant runs ``--iterations`` online iterations (collect + PPO update, no validation
between them) of :func:`robodistill.teach.rl100.online.run_online_rl` from a policy of the
given backbone built like the imitation stage builds it (``teach.diffusion`` sizes, the
demonstrations' normalizer; fresh weights: what is timed is the compute, not the skill).
Variants:

* ``unet, 8 envs x 32 decisions``: the settings the online stage had before issue 21
  (``configs/pipelines/rl100_nav_diffdrive.yaml`` of 2026-12-06, measured then at about
  30 env steps/s over a whole run with validations);
* the UNet and the residual MLP at the config's ``teach.online`` settings;
* with ``--before-rev REV``, first the online stage's code as it was at git revision REV
  (``robodistill/teach/rl100/online.py`` loaded from ``git show``) at the "before" settings:
  the same settings, the old loop (a second pass through the network for the old
  log-probabilities).

Rates: env steps over a whole ``run_online_rl`` call (two 1-episode validations included;
the only rate the old code allows measuring), and the per-iteration medians the new code logs.

    python benchmarks/online_speed.py --config configs/pipelines/rl100_nav_diffdrive.yaml

Needs the config's demonstrations (``robodistill collect --config ...`` first). Prints env
steps/s (whole iteration and collection alone) and the ratio to the first row; the first
iteration of each variant is a warm-up and is left out of the median.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import types
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


def online_at(rev: str):
    """``run_online_rl`` of ``robodistill/teach/rl100/online.py`` at git revision ``rev``."""
    shown = subprocess.run(["git", "show", f"{rev}:robodistill/teach/rl100/online.py"],
                           capture_output=True, text=True)  # fmt: skip
    if shown.returncode != 0:
        raise SystemExit(f"--before-rev {rev}: git has no robodistill/teach/rl100/online.py "
                         f"there ({shown.stderr.strip()}); give a revision of this repository")  # fmt: skip
    source = shown.stdout
    module = types.ModuleType(f"online_at_{rev}")
    sys.modules[module.__name__] = module  # its dataclasses look their module up there
    exec(compile(source, f"online.py@{rev}", "exec"), module.__dict__)  # noqa: S102
    return module.run_online_rl


def run_variant(cfg, demos: tuple, backbone: str, overrides: dict, iterations: int, work: Path,
                run_online_rl=None) -> dict:  # fmt: skip
    """``demos``: ``load_demos(cfg)`` (its normalizer and sizes build the policy)."""
    from robodistill.teach.rl100.imitation import build_policy
    from robodistill.teach.rl100.online import run_online_rl as current

    run_online_rl = run_online_rl or current

    data, stats, _ = demos
    torch.manual_seed(0)
    vcfg = cfg.model_copy(deep=True)
    vcfg.teach.diffusion.backbone = backbone
    for key, value in overrides.items():
        setattr(vcfg.teach.online, key, value)
    vcfg.teach.online.iterations = iterations
    vcfg.teach.online.eval_every = 10**6  # validate only before the first and after the last
    vcfg.teach.online.max_minutes = None
    vcfg.teach.rl100.rl_eval_episodes = 1
    vcfg.teach.eval_episodes = 1  # what the code before issue 21 validated on
    vcfg.teach.online.critic_warmup_iterations = 0
    policy = build_policy(vcfg, data["obs"].shape[1], data["action"].shape[1], stats)
    start = policy.save(work / f"{backbone}-start")
    stage = Rows(Path(tempfile.mkdtemp(dir=work)))
    t = time.perf_counter()
    run_online_rl(vcfg, stage, start, stage.dir / "online")
    wall = time.perf_counter() - t
    o = vcfg.teach.online
    env_steps = iterations * o.num_envs * o.decisions_per_env * vcfg.teach.diffusion.action_horizon
    rows = [r for r in stage.rows if "online_env_steps_per_s" in r][1:]  # warm-up left out
    median = lambda k: float(np.median([r[k] for r in rows])) if rows else None  # noqa: E731
    return {"whole": env_steps / wall, "iteration": median("online_env_steps_per_s"),
            "collect": median("online_collect_steps_per_s"), "env_steps": env_steps,
            "wall_s": wall, "parameters": sum(p.numel() for p in policy.net.parameters())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/pipelines/rl100_nav_diffdrive.yaml")
    parser.add_argument("--runs-dir", default="runs/benchmarks")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--before-rev", help="also time the online loop of this git revision")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the project's thread rule (teach.rl100.torch_threads)

    from robodistill.config import load_config
    from robodistill.data.demos import load_demos

    cfg = load_config(args.config, [f"runs_dir={args.runs_dir}", *args.set])
    demos = load_demos(cfg)  # once: every variant builds its policy from the same store
    o = cfg.teach.online
    new = {"num_envs": o.num_envs, "decisions_per_env": o.decisions_per_env}
    old = {"num_envs": 8, "decisions_per_env": 32, "ft_denoising_steps": 3, "epochs": 10,
           "minibatch_size": 64}  # fmt: skip
    variants = [
        ("unet", old, "unet, 8 envs x 32 decisions (before)", None),
        ("unet", new, f"unet, {o.num_envs} envs x {o.decisions_per_env} decisions", None),
        ("mlp", new, f"mlp, {o.num_envs} envs x {o.decisions_per_env} decisions", None),
    ]
    if args.before_rev:
        variants.insert(0, ("unet", old, f"unet, 8 envs x 32 decisions, code of {args.before_rev}",
                            online_at(args.before_rev)))  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone, overrides, label, loop in variants:
            r = run_variant(cfg, demos, backbone, overrides, args.iterations, Path(tmp), loop)
            print(f"{label}: {r}", flush=True)
            results.append((label, r))
    base = results[0][1]["whole"]

    def rate(x: float | None) -> str:
        return "—" if x is None else f"{x:.0f}"

    table = markdown(
        ["variant", "denoiser parameters", "env steps/s (whole call)", "vs first row",
         "env steps/s (iteration, median)", "env steps/s (collection alone, median)"],
        [[label, f"{r['parameters'] / 1e6:.2f} M", rate(r["whole"]), f"{r['whole'] / base:.1f}x",
          rate(r["iteration"]), rate(r["collect"])] for label, r in results],
    )  # fmt: skip
    print(f"\n{cfg.env.id} {cfg.env.kwargs}, {args.iterations} iterations per variant "
          f"(first left out), one torch thread\n\n{table}")  # fmt: skip


if __name__ == "__main__":
    main()
