"""Delay robustness: success against an injected inference delay, synchronous vs
asynchronous vs asynchronous + RTC, in the real controller loop.

::

    python benchmarks/delay.py --episodes 50                     # export, run, table, plot
    python benchmarks/delay.py --kinds consistency --delays 0 4 --episodes 20

The policies are ONNX exports of the default pipeline's run (``runs/benchmarks/default``,
``robodistill/Nav-v0``): the diffusion teacher (DDIM-10), RTI (the same weights, warm start
+ 3 of 10 steps), the 1-step consistency student and the streaming student; they are
exported once into ``--workdir`` (torch is only needed for that).

Every point runs ``--episodes`` episodes (evaluation seeds 900000.., the same for every
point) through :class:`~robodistill.deploy.controller.Controller` +
:class:`~robodistill.deploy.async_control.AsyncPolicy` on a
:class:`~robodistill.deploy.robot.SimRobot`, with a simulated clock: the injected delay is
``k`` control steps of the SimRobot's step clock (``AsyncPolicy(delay_steps=k)``), so the
table does not depend on this machine's speed or load. The modes:

* ``sync``: a receding-horizon loop that waits for inference: the robot holds its last
  command for the k steps of each plan, then runs the chunk's ``execute`` actions from
  the first (they are k steps stale);
* ``async``: the next chunk is requested when the queue falls to half the horizon; on
  arrival the k actions already executed are dropped;
* ``async+rtc``: the same with real-time chunking (:mod:`robodistill.deploy.rtc`).

The streaming student outputs one action per call (its chunk lives in state tensors), so
it has no queue to run on and no RTC: its async rows are one-action plans.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENV = "robodistill/Nav-v0"
RUN = ROOT / "runs" / "benchmarks" / "default"
KINDS = ("teacher DDIM-10", "RTI 3/10", "consistency 1-step", "streaming")
FILES = {"teacher DDIM-10": "teacher_ddim10.onnx", "RTI 3/10": "rti.onnx",
         "consistency 1-step": "consistency.onnx", "streaming": "streaming.onnx"}  # fmt: skip
MODES = ("sync", "async", "async+rtc")
SEED0 = 900_000


class SimClock:
    """A clock that only ``sleep`` advances: the controller's slots pass instantly."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += max(dt, 0.0)


def export_all(workdir: Path, kinds: list[str]) -> dict[str, Path]:
    """Export the kinds of the default run that ``workdir`` lacks; name -> file."""
    paths = {k: workdir / FILES[k] for k in kinds}
    missing = [k for k, p in paths.items() if not p.is_file()]
    if missing:
        import dataclasses

        import torch

        from robodistill.deploy.export import export_policy
        from robodistill.policies.base import load_policy

        torch.set_num_threads(1)
        workdir.mkdir(parents=True, exist_ok=True)
        meta = {"env_id": ENV, "control_rate_hz": 10.0}
        for k in missing:
            source = {"teacher DDIM-10": "teach/policy", "RTI 3/10": "teach/policy",
                      "consistency 1-step": "distill/consistency/policy",
                      "streaming": "distill/streaming/policy"}[k]  # fmt: skip
            policy = load_policy(RUN / source)
            if k == "RTI 3/10":
                policy.config = dataclasses.replace(policy.config, rti_steps=3)
            export_policy(policy, paths[k], exporter="torchscript", metadata=meta)
    return paths


def run_point(path: Path, mode: str, delay: int, episodes: int, seed0: int = SEED0,
              rtc: Any = None) -> dict:  # fmt: skip
    """Success (and timing counters) of one (file, mode, delay) over ``episodes``."""
    from robodistill.deploy.async_control import AsyncPolicy
    from robodistill.deploy.controller import Controller
    from robodistill.deploy.robot import SimRobot
    from robodistill.deploy.rtc import RtcSettings
    from robodistill.deploy.runtime import OnnxPolicy

    robot = SimRobot(ENV, episodes=episodes, seeds=[seed0 + i for i in range(episodes)])
    policy = AsyncPolicy(
        OnnxPolicy(path, seed=0), mode="sync" if mode == "sync" else "async",
        rtc=(rtc or RtcSettings()) if mode == "async+rtc" else None,
        delay_steps=delay,
        hold_action=robot.safe_action(),
    )  # fmt: skip
    clock = SimClock()
    controller = Controller(policy, robot, 10.0, clock=clock, sleep=clock.sleep,
                            handle_sigint=False)  # fmt: skip
    t = time.perf_counter()
    result = controller.run()
    robot.close()
    eps = result.episodes
    success = [bool(e["success"]) for e in eps]
    n = len(success)
    rate = float(np.mean(success)) if n else float("nan")
    return {"success": rate, "se": float(np.sqrt(rate * (1 - rate) / n)) if n else None,
            "episodes": n, "ticks": result.ticks, "faults": sum(result.faults.values()),
            "chunks": len(policy.chunks), "held": policy.held,
            "dropped": int(sum(c["dropped"] for c in policy.chunks)),
            "wall_s": round(time.perf_counter() - t, 1)}  # fmt: skip


def table(results: dict, delays: list[int], episodes: int) -> str:
    counts = sorted({p["episodes"] for m in results.values() for q in m.values()
                     for p in q.values()})  # fmt: skip
    per_point = " or ".join(str(c) for c in counts) if counts else str(episodes)
    lines = [f"Success on {ENV} ({per_point} episodes per point, seeds {SEED0}..; delay in "
             "control steps of 0.1 s):", "",
             "| policy | mode | " + " | ".join(f"d={d}" for d in delays) + " | d=4 / d=0 |",
             "| --- | --- | " + " | ".join("---" for _ in delays) + " | --- |"]  # fmt: skip
    for kind, modes in results.items():
        for mode, points in modes.items():
            cells = [f"{100 * points[str(d)]['success']:.0f} % ({points[str(d)]['episodes']})"
                     if str(d) in points else "—" for d in delays]  # fmt: skip
            base, four = points.get("0"), points.get("4")
            ratio = (f"{four['success'] / base['success']:.2f}"
                     if base and four and base["success"] else "—")  # fmt: skip
            lines.append(f"| {kind} | {mode} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def plot(results: dict, delays: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(results)
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds), 3.4), dpi=100,
                             sharey=True, squeeze=False)  # fmt: skip
    for ax, kind in zip(axes[0], kinds, strict=True):
        for mode, style in zip(MODES, ("s--", "o-", "D-"), strict=True):
            pts = results[kind].get(mode, {})
            xs = [d for d in delays if str(d) in pts]
            if xs:
                ys = [100 * pts[str(d)]["success"] for d in xs]
                ax.plot(xs, ys, style, label=mode)
        counts = sorted({q["episodes"] for m in results[kind].values() for q in m.values()})
        ax.set_title(f"{kind} ({'/'.join(map(str, counts))} episodes per point)", fontsize=9)
        ax.set_xlabel("inference delay (control steps)")
        ax.set_xticks(delays)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("success %")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, metavar="KIND")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--delays", nargs="+", type=int, default=[0, 1, 2, 4, 8])
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "benchmarks" / "delay")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: workdir)")
    ap.add_argument("--plot", type=Path, default=None, help="PNG (e.g. docs/deploy_delay.png)")
    ap.add_argument("--merge", type=Path, nargs="+", default=[],
                    help="results JSONs of other runs (e.g. other kinds in parallel) to add")  # fmt: skip
    ap.add_argument("--no-run", action="store_true", help="only merge, tabulate and plot")
    args = ap.parse_args(argv)
    paths = {} if args.no_run else export_all(args.workdir, args.kinds)
    out = args.out or args.workdir / "delay.json"
    results = json.loads(out.read_text())["results"] if out.is_file() else {}
    for other in args.merge:
        for kind, modes in json.loads(other.read_text())["results"].items():
            for mode, pts in modes.items():
                results.setdefault(kind, {}).setdefault(mode, {}).update(pts)
    for kind in [] if args.no_run else args.kinds:
        for mode in args.modes:
            for d in args.delays:
                pts = results.setdefault(kind, {}).setdefault(mode, {})
                if str(d) in pts and pts[str(d)]["episodes"] >= args.episodes:
                    continue  # resumable: a point already measured with as many episodes
                pts[str(d)] = run_point(paths[kind], mode, d, args.episodes)
                print(f"{kind:20s} {mode:10s} d={d}: {json.dumps(pts[str(d)])}", flush=True)
                out.write_text(json.dumps({"env": ENV, "episodes": args.episodes,
                                           "results": results}, indent=1))  # fmt: skip
    if args.merge:
        out.write_text(json.dumps({"env": ENV, "episodes": args.episodes, "results": results},
                                  indent=1))  # fmt: skip
    print(table(results, args.delays, args.episodes))
    if args.plot:
        plot(results, args.delays, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
