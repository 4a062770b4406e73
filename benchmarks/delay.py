"""Delay robustness: success against an injected inference delay, synchronous vs
asynchronous vs asynchronous + RTC, in the real controller loop.

::

    python benchmarks/delay.py --episodes 50                     # export, run, table, plot
    python benchmarks/delay.py --kinds "consistency 1-step" --delays 0 4 --episodes 20
    python benchmarks/delay.py --run runs/benchmarks/pusht --kinds "consistency 1-step" \
        --policy "consistency 1-step=runs/pilot/cons-traj5k/distill/consistency/policy"

The policies are ONNX exports of the default pipeline's run (``runs/benchmarks/default``,
``robodistill/Nav-v0``): the diffusion teacher (DDIM-10), RTI (the same weights, warm start
+ 3 of 10 steps), the 1-step consistency student and the streaming student; they are
exported once into ``--workdir`` (torch is only needed for that; ``sources.json`` there
says from where, and a kind is re-exported when its source changes).

``--run RUN`` takes another pipeline run instead: its environment (``config.json``: id and
kwargs) and its policies (``--policy KIND=DIR`` swaps in another policy directory for a
kind), with the results in ``RUN/delay/delay.json`` + ``RUN/delay/delay.png``, which the
run's report (``robodistill.report``) shows. Table and plot: ``robodistill.core.delay_results``.

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

While no action is queued at an episode's start the robot holds: the SimRobot's safe
(zero) action on Nav; on Push-T, whose actions are position targets, the pusher's current
position (:data:`HOLDS`; the zero action would drive it to the centre).

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

from robodistill.core.delay_results import MODES, SEED0, plot, table

ROOT = Path(__file__).resolve().parents[1]
ENV = "robodistill/Nav-v0"
RUN = ROOT / "runs" / "benchmarks" / "default"
KINDS = ("teacher DDIM-10", "RTI 3/10", "consistency 1-step", "streaming")
FILES = {"teacher DDIM-10": "teacher_ddim10.onnx", "RTI 3/10": "rti.onnx",
         "consistency 1-step": "consistency.onnx", "streaming": "streaming.onnx"}  # fmt: skip
SOURCES = {"teacher DDIM-10": "teach/policy", "RTI 3/10": "teach/policy",
           "consistency 1-step": "distill/consistency/policy",
           "streaming": "distill/streaming/policy"}  # fmt: skip


def _pusht_hold(env: Any) -> np.ndarray:
    """Push-T's holding command: the pusher's own position (its actions are position
    targets, so the zero action would drive it to the centre)."""
    from robodistill.envs.pusht import WORKSPACE

    pos = np.clip(env.unwrapped.pusher_position(), 0.0, WORKSPACE)
    return (pos / WORKSPACE * 2.0 - 1.0).astype(np.float32)


HOLDS = {"robodistill/PushT-v0": _pusht_hold}
"""Position-commanded envs: env id -> the command that holds the robot where it is, sent
while no action is queued at an episode's start (else the SimRobot's zero action)."""


def run_config_env(run: Path) -> tuple[str, dict[str, Any]]:
    """(env id, env kwargs) of a pipeline run, from its ``config.json``."""
    env = json.loads((run / "config.json").read_text())["env"]
    return env["id"], env.get("kwargs") or {}


def export_all(workdir: Path, kinds: list[str], run: Path = RUN, env: str = ENV,
               sources: dict[str, Path] | None = None) -> dict[str, Path]:  # fmt: skip
    """Export the kinds that ``workdir`` lacks (or holds from another source): each from
    ``sources[kind]`` if given, else from ``run``'s stage directory; name -> file."""
    paths = {k: workdir / FILES[k] for k in kinds}
    srcs = {k: Path((sources or {}).get(k) or run / SOURCES[k]).resolve() for k in kinds}
    record = workdir / "sources.json"
    known = json.loads(record.read_text()) if record.is_file() else {}
    missing = [k for k, p in paths.items()
               if not p.is_file() or known.get(k, str(srcs[k])) != str(srcs[k])]  # fmt: skip
    if missing:
        import dataclasses

        import torch

        from robodistill.deploy.export import export_policy
        from robodistill.policies.base import load_policy

        torch.set_num_threads(1)
        workdir.mkdir(parents=True, exist_ok=True)
        meta = {"env_id": env, "control_rate_hz": 10.0}
        for k in missing:
            policy = load_policy(srcs[k])
            if k == "RTI 3/10":
                policy.config = dataclasses.replace(policy.config, rti_steps=3)
            export_policy(policy, paths[k], exporter="torchscript", metadata=meta)
    known.update({k: str(v) for k, v in srcs.items()})
    if paths:
        record.write_text(json.dumps(known, indent=1))
    return paths


def run_point(path: Path, mode: str, delay: int, episodes: int, seed0: int = SEED0,
              rtc: Any = None, env: str = ENV,
              env_kwargs: dict[str, Any] | None = None) -> dict:  # fmt: skip
    """Success (and timing counters) of one (file, mode, delay) over ``episodes``."""
    from robodistill.deploy.async_control import AsyncPolicy
    from robodistill.deploy.controller import Controller, SimulatedClock
    from robodistill.deploy.robot import SimRobot
    from robodistill.deploy.rtc import RtcSettings
    from robodistill.deploy.runtime import OnnxPolicy

    hold = HOLDS.get(env)

    class Robot(SimRobot):
        def safe_action(self) -> np.ndarray:
            if hold is None:
                return super().safe_action()
            return hold(self.env).reshape(self.action_shape)

    class Planner(AsyncPolicy):
        def act(self, obs: Any) -> np.ndarray:
            if hold is not None:  # hold where the robot is, not at a fixed command
                self.hold_action = robot.safe_action().reshape(self.action_dim)
            return super().act(obs)

    robot = Robot(env, episodes=episodes, seeds=[seed0 + i for i in range(episodes)],
                  env_kwargs=env_kwargs)  # fmt: skip
    policy = Planner(
        OnnxPolicy(path, seed=0), mode="sync" if mode == "sync" else "async",
        rtc=(rtc or RtcSettings()) if mode == "async+rtc" else None,
        delay_steps=delay,
        hold_action=robot.safe_action(),
    )  # fmt: skip
    clock = SimulatedClock()
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


def _policy_arg(text: str) -> tuple[str, Path]:
    kind, sep, folder = text.partition("=")
    if not sep or kind not in KINDS:
        raise argparse.ArgumentTypeError(f"KIND=DIR with KIND one of {KINDS}, got {text!r}")
    return kind, Path(folder)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, metavar="KIND")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--delays", nargs="+", type=int, default=[0, 1, 2, 4, 8])
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--run", type=Path, default=None,
                    help="a pipeline run: its env and policies, results to <run>/delay/"
                         "delay.json + delay.png (its report shows them); default: "
                         "runs/benchmarks/default, results in the workdir")  # fmt: skip
    ap.add_argument("--policy", type=_policy_arg, action="append", default=[],
                    metavar="KIND=DIR", help="export KIND from this policy directory instead "
                    "of the run's (repeatable)")  # fmt: skip
    ap.add_argument("--workdir", type=Path, default=None,
                    help="the ONNX files (default: runs/benchmarks/delay, with --run "
                         "<run>/delay/onnx)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: workdir, "
                    "with --run <run>/delay/delay.json)")  # fmt: skip
    ap.add_argument("--plot", type=Path, default=None, help="PNG (e.g. docs/deploy_delay.png; "
                    "with --run also <run>/delay/delay.png)")  # fmt: skip
    ap.add_argument("--merge", type=Path, nargs="+", default=[],
                    help="results JSONs of other runs (e.g. other kinds in parallel) to add")  # fmt: skip
    ap.add_argument("--no-run", action="store_true", help="only merge, tabulate and plot")
    args = ap.parse_args(argv)
    run = args.run or RUN
    env, env_kwargs = run_config_env(run) if args.run else (ENV, {})
    workdir = args.workdir or (run / "delay" / "onnx" if args.run else
                               ROOT / "runs" / "benchmarks" / "delay")  # fmt: skip
    sources = dict(args.policy)
    paths = {} if args.no_run else export_all(workdir, args.kinds, run, env, sources)
    out = args.out or (run / "delay" if args.run else workdir) / "delay.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    results = doc.get("results", {})
    policies = doc.get("policies", {})
    policies.update({k: str(Path(sources.get(k) or run / SOURCES[k])) for k in paths})

    def save() -> None:
        out.write_text(json.dumps({"env": env, "env_kwargs": env_kwargs, "seed0": SEED0,
                                   "episodes": args.episodes, "policies": policies,
                                   "hold": "position" if env in HOLDS else "safe action",
                                   "results": results}, indent=1))  # fmt: skip

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
                pts[str(d)] = run_point(paths[kind], mode, d, args.episodes, env=env,
                                        env_kwargs=env_kwargs)  # fmt: skip
                print(f"{kind:20s} {mode:10s} d={d}: {json.dumps(pts[str(d)])}", flush=True)
                save()
    if args.merge:
        save()
    print(table(results, args.delays, env))
    for png in [args.plot, run / "delay" / "delay.png" if args.run else None]:
        if png is not None:
            plot(results, args.delays, png, title=env if args.run else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
