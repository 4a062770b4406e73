"""COMPASS stage 2 in parallel: each specialist in its own spawned process
(``teach.compass.workers``), logging to the stage's files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from robodistill.config import ConfigError, RunConfig
from robodistill.core.rundir import (
    MetricsAppender,
    StageRun,
)
from robodistill.envs.embodiments import EMBODIMENTS
from robodistill.policies.compass import CompassBase
from robodistill.teach.compass.specialists import specialist_dir, train_residual

log = logging.getLogger(__name__)


def _train_residual_worker(cfg: RunConfig, stage_dir: Path, embodiment: str, budget: int,
                           log_level: int, t0: float) -> dict[str, Any]:  # fmt: skip
    """One specialist in a fresh (spawned) process: :func:`train_residual`, logging to the
    terminal and the stage's ``stage.log`` and ``metrics.jsonl``."""

    fmt = f"%(asctime)s %(levelname)s [{embodiment}] %(name)s: %(message)s"
    logging.basicConfig(level=log_level, format=fmt, datefmt="%H:%M:%S", force=True)
    to_file = logging.FileHandler(stage_dir / "stage.log")
    to_file.setFormatter(logging.Formatter(fmt))
    logging.getLogger().addHandler(to_file)
    if embodiment not in EMBODIMENTS:
        raise ConfigError(f"teach.compass.workers: embodiment {embodiment!r} is registered in "
                          "the parent process only and worker processes import robodistill "
                          "afresh; register it in a module robodistill imports, or set "
                          "teach.compass.workers: 1")  # fmt: skip
    # A fresh process: its thread count is set for its whole life.
    torch.set_num_threads(cfg.teach.compass.torch_threads or torch.get_num_threads())
    base = CompassBase.load(stage_dir / "compass" / "base" / "policy")
    out = specialist_dir(stage_dir, embodiment)
    metrics = MetricsAppender(stage_dir / "metrics.jsonl", t0)
    return train_residual(cfg, metrics, base, embodiment, out, budget)


def _worker_main(conn, *args) -> None:
    """A spawned process's entry: sends ``("ok", result)`` or ``("error", exception,
    traceback)`` back over ``conn``."""
    import traceback

    try:
        conn.send(("ok", _train_residual_worker(*args)))
    except BaseException as e:  # noqa: BLE001 - the parent re-raises it
        text = traceback.format_exc()
        try:
            conn.send(("error", e, text))
        except Exception:  # an exception that does not pickle: its text still gets there
            conn.send(("error", RuntimeError(f"{type(e).__name__}: {e}"), text))
    finally:
        conn.close()


def train_in_processes(cfg: RunConfig, stage: StageRun, budgets: dict[str, int],
                        workers: int) -> dict[str, Any]:  # fmt: skip
    """Stage 2 with at most ``workers`` processes, a fresh one per specialist; the biggest
    budgets start first so that the last ones to finish are short. The first error (or
    Ctrl-C) terminates every worker and is raised: their checkpoints are written atomically,
    so a rerun resumes them. Results in ``budgets``' order."""
    import multiprocessing
    from multiprocessing.connection import wait

    # spawn, not fork: a forked child would inherit torch's thread pool and open file handles.
    ctx = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    queue = sorted(budgets, key=budgets.get, reverse=True)
    running: dict[str, tuple[Any, Any]] = {}  # name -> (process, our end of its pipe)
    results: dict[str, Any] = {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                name = queue.pop(0)
                ours, theirs = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_worker_main, name=f"specialist-{name}", args=(
                    theirs, cfg, stage.dir, name, budgets[name], level, stage.t0))  # fmt: skip
                process.start()
                theirs.close()
                running[name] = (process, ours)
            wait([p.sentinel for p, _ in running.values()])
            for name, (process, conn) in list(running.items()):
                if process.is_alive():
                    continue
                message = conn.recv() if conn.poll() else None
                process.join()
                del running[name]
                if message is None:
                    raise RuntimeError(f"teach.compass.workers: the process training the {name} "
                                       f"specialist died (exit code {process.exitcode}); rerun "
                                       "to resume it from its checkpoint")  # fmt: skip
                if message[0] == "error":
                    log.error("specialist %s failed:\n%s", name, message[2])
                    raise message[1]
                results[name] = message[1]
    finally:
        for process, _ in running.values():
            process.terminate()
        for process, conn in running.values():
            process.join()
            conn.close()
    return {n: results[n] for n in budgets}
