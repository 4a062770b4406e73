"""Scaling of the gradient-step trainers: the RL-100 imitation trainer with 1 vs N
data-parallel workers (Ray Train, gloo on CPU) at the same global batch.

Each measurement trains the real :class:`~robodistill.teach.rl100.imitation.ImitationTrainer`
(a small UNet, ``--down-dims``) on the demonstrations ``--demos`` for ``--steps`` steps at
global batch ``--batch``, through :func:`robodistill.training.loop.train`: in this process
(1 worker) or in N Ray Train workers. Timed from step ``--warmup`` to the last step inside
the workers (Ray and worker start-up, imports and the final validation are outside the
timing and reported apart as ``startup_s``):

- samples/s: windows of the global batch per second of rank 0's wall clock;
- CPU s per 1000 samples: the CPU time of every training process (each worker's own
  ``process_time``) over the same steps, per 1000 windows: what going data-parallel costs.
  On a 2-core machine N = 2 cannot speed anything up; the ratio is the overhead.

The loss of every step (``log_every`` 1; with N workers the rows are the global batch's
loss, combined over the ranks) is written for the two runs and plotted side by side.

    python benchmarks/scaling_training.py                       # ~3 min on 2 busy cores
    python benchmarks/scaling_training.py --workers 2 --steps 200 --plot docs/data_parallel_loss.png
    python benchmarks/scaling.py --only-training                # the same, from scaling.py
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

DEMOS = "runs/benchmarks/default/collect/demos.zarr"


class _Stage:
    """What the loop needs of a StageRun: ``dir``, ``t0``, ``log_metrics``."""

    def __init__(self, directory: Path):
        self.dir, self.t0 = directory, time.monotonic()
        directory.mkdir(parents=True, exist_ok=True)

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": int(step), **metrics}) + "\n")


def _timed_trainer(cfg, probe_dir: str, warmup: int, steps: int):
    """The imitation trainer, its ``loss`` wrapped to note (CPU, wall) at the start of step
    ``warmup`` and of the last step into ``probe_dir/<pid>.json`` (one file per process)."""
    from robodistill.teach.rl100.imitation import ImitationTrainer

    trainer = ImitationTrainer(cfg)
    loss, marks = trainer.loss, {}

    def timed_loss():
        if trainer.step in (warmup, steps - 1):
            marks[str(trainer.step)] = (time.process_time(), time.perf_counter())
            if trainer.step == steps - 1:
                path = Path(probe_dir) / f"{os.getpid()}.json"
                path.write_text(json.dumps({"rank": trainer.shard.rank, "marks": marks}))
        return loss()

    trainer.loss = timed_loss
    return trainer


def run_once(args, workers: int, root: Path) -> dict[str, Any]:
    """One training run with ``workers``; its rates and per-step losses."""
    import functools

    from robodistill.config import load_config
    from robodistill.training.loop import LoopSettings, train
    from robodistill.training.selection import BestPolicyKeeper

    directory = Path(tempfile.mkdtemp(prefix=f"w{workers}-", dir=root))
    cfg = load_config(None, [
        f"runs_dir={directory / 'runs'}", f"teach.rl100.demos={Path(args.demos).resolve()}",
        f"teach.diffusion.down_dims={json.dumps(args.down_dims)}", "teach.diffusion.n_groups=8",
        f"teach.rl100.batch_size={args.batch}", f"teach.rl100.il_steps={args.steps}",
        "teach.rl100.warmup_steps=10", "teach.eval_episodes=1", "env.num_envs=1",
        "env.max_episode_steps=5", f"teach.training.workers={workers}",
    ])  # fmt: skip
    probes = directory / "probes"
    probes.mkdir()
    settings = LoopSettings(steps=args.steps, eval_every=args.steps,
                            checkpoint_every=args.steps, log_every=1, torch_threads=1
                            ).with_training(cfg.teach.training, "teach", "cpu")  # fmt: skip
    stage = _Stage(directory / "stage")
    t0 = time.perf_counter()
    make = functools.partial(_timed_trainer, cfg, str(probes), args.warmup, args.steps)
    train(cfg, stage, make, settings, directory / "il", BestPolicyKeeper(cfg, directory / "keep"))
    wall_total = time.perf_counter() - t0
    marks = [json.loads(p.read_text()) for p in probes.glob("*.json")]
    first, last = str(args.warmup), str(args.steps - 1)
    rank0 = next(m for m in marks if m["rank"] == 0)["marks"]
    wall = rank0[last][1] - rank0[first][1]
    cpu = sum(m["marks"][last][0] - m["marks"][first][0] for m in marks)
    samples = (args.steps - 1 - args.warmup) * args.batch
    rows = [json.loads(line) for line in (stage.dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    return {"workers": workers, "samples_per_s": samples / wall,
            "cpu_s_per_1k_samples": 1000 * cpu / samples, "timed_wall_s": wall,
            "processes": len(marks), "startup_s": wall_total - wall,
            "losses": [losses[k] for k in sorted(losses)]}  # fmt: skip


def bench_training(args) -> dict[str, Any]:
    """Interleaved runs with 1 and ``args.train_workers`` workers (``args.train_repeats`` each)."""
    import statistics
    import sys

    import ray.cloudpickle

    # Workers build the trainer through this module's functions: ship them by value (the
    # module is not importable in a worker when it was loaded as a script's neighbour).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    root = Path(tempfile.mkdtemp(prefix="scaling-training-"))
    runs: dict[str, list[dict[str, Any]]] = {"1": [], str(args.train_workers): []}
    for _ in range(args.train_repeats):
        for workers in (1, args.train_workers):
            runs[str(workers)].append(run_once(args, workers, root))
    median = {k: {m: statistics.median(r[m] for r in v)
                  for m in ("samples_per_s", "cpu_s_per_1k_samples", "startup_s")}
              for k, v in runs.items()}  # fmt: skip
    n = str(args.train_workers)
    return {"runs": runs, "median": median,
            "rate_ratio": median[n]["samples_per_s"] / median["1"]["samples_per_s"],
            "cpu_ratio": median[n]["cpu_s_per_1k_samples"] / median["1"]["cpu_s_per_1k_samples"],
            "curves": {k: v[0]["losses"] for k, v in runs.items()}}  # fmt: skip


def table(args, result: dict[str, Any]) -> list[str]:
    n, m = str(args.train_workers), result["median"]
    return [
        f"training: RL-100 imitation (UNet {args.down_dims}), global batch {args.batch}, "
        f"steps {args.warmup}-{args.steps - 1} timed, medians of {args.train_repeats}",
        f"  {'workers':<22}{'samples/s':>10}{'ratio':>8}{'CPU s/1k samples':>18}{'start-up s':>12}",
        f"  {'1 (in-process)':<22}{m['1']['samples_per_s']:>10,.0f}{1.0:>8.2f}"
        f"{m['1']['cpu_s_per_1k_samples']:>18.2f}{m['1']['startup_s']:>12.1f}",
        f"  {f'{n} (Ray Train, gloo)':<22}{m[n]['samples_per_s']:>10,.0f}"
        f"{result['rate_ratio']:>8.2f}{m[n]['cpu_s_per_1k_samples']:>18.2f}"
        f"{m[n]['startup_s']:>12.1f}",
    ]


def plot(args, result: dict[str, Any], path: Path) -> None:
    """The per-step losses of the first 1-worker and N-worker runs, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    k = 10

    def smooth(losses):
        return np.convolve(losses, np.ones(k) / k, mode="valid")

    curves = result["curves"]
    for ax, (workers, losses) in zip(axes, curves.items(), strict=True):
        steps = np.arange(1, len(losses) + 1)
        ax.plot(steps, losses, lw=0.8, alpha=0.5, label="per step")
        ax.plot(steps[k - 1 :], smooth(losses), lw=2, label=f"mean of {k}")
        other = next(v for w, v in curves.items() if w != workers)
        ax.plot(steps[k - 1 :], smooth(other), lw=1.2, ls="--", color="0.3",
                label=f"mean of {k}, the other run")  # fmt: skip
        ax.set_title(f"{workers} worker{'s' if workers != '1' else ''}, global batch {args.batch}")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("denoising loss")
    axes[0].legend()
    fig.suptitle("RL-100 imitation: 1 process vs data-parallel workers, same global batch")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demos", default=DEMOS, help="trajectory store to imitate")
    parser.add_argument("--train-workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=120, help="gradient steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="untimed first steps")
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--down-dims", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--train-repeats", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=None, help="write the loss curves here")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/scaling_training"))
    parser.add_argument("--replot", type=Path, default=None,
                        help="only redraw --plot from this results.json")  # fmt: skip
    args = parser.parse_args()
    if args.replot:
        plot(args, json.loads(args.replot.read_text())["training"], args.plot)
        return
    main_with(args)


def main_with(args) -> None:
    """Measure, print the table, plot, write ``args.out/results.json``."""
    load_before = os.getloadavg()
    result = bench_training(args)
    lines = table(args, result)
    lines.append(f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after, "
                 f"on {os.cpu_count()} CPUs")  # fmt: skip
    print("\n".join(lines))
    if args.plot:
        plot(args, result, args.plot)
    args.out.mkdir(parents=True, exist_ok=True)
    document = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "training": result, "table": "\n".join(lines)}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"json: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
