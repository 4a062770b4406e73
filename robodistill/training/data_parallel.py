"""Data-parallel training of any loop trainer on Ray Train's ``TorchTrainer``.

::

    settings.workers = 2          # teach.training.workers / distill.training.workers, --workers
    result = train(cfg, stage, lambda: MyTrainer(cfg), settings, out, keeper)

:func:`robodistill.training.loop.train` hands a run with ``workers > 1`` to
:func:`run_data_parallel`, which starts a ``TorchTrainer`` whose ``train_loop_per_worker``
builds the trainer in each worker and runs **the same loop**
(:func:`robodistill.training.loop.run_loop`) as that worker's rank::

    driver (this process)             Ray Train workers (one process each, gloo / NCCL group)
    TorchTrainer.fit() ───────────►   rank 0: build trainer, restore out/checkpoint, loop:
      waits; a dead worker:                     rows 0,W,2W.. of each batch, all_reduce grads,
      FailureConfig(max_failures)               validate, checkpoint, metrics, result.json
      restarts the group, which       rank r: build trainer, restore out/checkpoint, loop:
      resumes from out/checkpoint               rows r,r+W,.. of each batch, all_reduce grads
    reads out/result.json ◄─────────  (writes nothing)

- Batches: :mod:`robodistill.training.shards` (the trainer's ``batch_size`` is the global
  batch; rank ``r`` computes every ``W``-th row from ``r``; the ranks' gradients are
  combined weighted by their rows, so a step is the one-process step on the same windows,
  up to floating-point order). Each rank ``r > 0`` draws its diffusion noise from its own
  stream (``(seed, rank, step)``), so with noise-drawing losses a run matches one process
  on the same windows in distribution, not noise draw for noise draw.
- Why not ``ray.train.torch.prepare_model``: DDP reduces gradients from hooks armed by the
  wrapper's ``forward``, but the trainers call their networks through other methods (the
  COMPASS base's ``latent`` / ``head`` / ``decode``, a consistency student's several calls
  per loss beside a target network); the loop instead combines the gradients after
  ``backward`` in one flattened ``all_reduce`` (:class:`~robodistill.training.shards.
  ProcessGroup`), which is DDP's arithmetic without its overlap of communication and
  backward.
- Failures: a worker that dies (killed, out of memory, its node lost) fails the group;
  Ray Train restarts it up to ``max_failures`` times and every worker resumes from the
  loop's own checkpoint in ``out/checkpoint`` (written by rank 0 every
  ``checkpoint_every`` steps). Ray Train's own checkpoint storage is not used: its
  ``storage_path`` is a temporary directory outside the run.
- Ray: ``RAY_ADDRESS`` (``--ray-address``) joins that cluster; else a local Ray starts
  (:func:`robodistill.core.parallel.init_ray`) and stops again afterwards. Ray 2.60's local
  services listen on every interface, so the command line runs in a private network
  namespace (:mod:`robodistill.core.netns`); the workers' gloo connections also go over
  loopback (``GLOO_SOCKET_IFNAME=lo``). On a cluster the run directory must be on storage every node sees (rank 0 writes
  it, every rank reads the checkpoint).
- Devices: with ``device`` not ``cpu`` and at least one GPU per worker in the cluster,
  ``use_gpu`` gives each worker its own GPU and the group uses NCCL; otherwise gloo on CPU.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robodistill.config import ConfigError, RunConfig
from robodistill.core.parallel import init_ray
from robodistill.core.rundir import metrics_line
from robodistill.training.checkpoint import finished_result

log = logging.getLogger(__name__)


class RankZeroMetrics:
    """Rank 0's ``stage.log_metrics``: rows appended to the stage's ``metrics.jsonl``. The
    first row of a series in each attempt first drops that series' rows at its step or
    later (an attempt before a restart logged them past the checkpoint it resumes from);
    the file is rewritten in place, so the driver's open handle stays valid."""

    def __init__(self, path: Path, t0: float):
        self.path, self.t0 = Path(path), t0
        self._seen: set[Any] = set()

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        series = metrics.get("stage")
        if series not in self._seen:
            self._seen.add(series)
            self._drop_rows_from(series, int(step))
        with open(self.path, "a") as f:
            f.write(metrics_line(step, self.t0, metrics))

    def _drop_rows_from(self, series: Any, step: int) -> None:
        import json

        if not self.path.is_file():
            return
        with open(self.path, "r+") as f:
            lines = f.read().splitlines(keepends=True)
            kept = []
            for line in lines:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill: nothing to keep
                if not (row.get("stage") == series and int(row.get("step", -1)) >= step):
                    kept.append(line if line.endswith("\n") else line + "\n")
            if len(kept) != len(lines):
                f.seek(0)
                f.write("".join(kept))
                f.truncate()


def _worker(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: this rank's run of the one loop."""
    import json

    import ray.train

    from robodistill.training.shards import ProcessGroup, Shard

    ctx = ray.train.get_context()
    shard = Shard(ctx.get_world_rank(), ctx.get_world_size())
    group = ProcessGroup(shard)
    keeper = config["keeper"]
    # The keeper was pickled before the run: a restarted group must see what the last
    # attempt kept.
    keeper.best = (json.loads(keeper.best_path.read_text())
                   if keeper.best_path.is_file() else None)  # fmt: skip
    stage = config["metrics"] if shard.writer else None
    config["loop"](config["cfg"], stage, config["make_trainer"], config["settings"],
                   config["out"], keeper, config["tag"], group)  # fmt: skip


def _local_loopback_env() -> dict[str, str]:
    """``GLOO_SOCKET_IFNAME=lo`` for a run on a local Ray (Linux), else nothing."""
    if os.environ.get("RAY_ADDRESS"):
        return {}
    names = (
        {name for _, name in socket.if_nameindex()} if hasattr(socket, "if_nameindex") else set()
    )
    return {"GLOO_SOCKET_IFNAME": "lo"} if "lo" in names else {}


def run_data_parallel(cfg: RunConfig, stage: Any, make_trainer: Callable[[], Any], settings: Any,
                      out: Path, keeper: Any, tag: dict[str, Any],
                      loop: Callable[..., Any]) -> dict[str, Any]:  # fmt: skip
    """Run ``loop`` (:func:`robodistill.training.loop.run_loop`) in ``settings.workers`` Ray
    Train workers (module docstring); returns rank 0's ``out/result.json``."""
    key = settings.workers_key
    try:
        import ray
        from ray.train import FailureConfig, ScalingConfig
        from ray.train import RunConfig as TrainRunConfig
        from ray.train.torch import TorchTrainer
    except ImportError as e:
        raise ConfigError(f"{key} > 1 trains on Ray Train, which is not installed: "
                          f"pip install 'ray[train]', or set {key}=1") from e  # fmt: skip
    started = init_ray()
    storage = tempfile.mkdtemp(prefix="robodistill-ray-train-")
    try:
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
        use_gpu = settings.device != "cpu" and gpus >= settings.workers
        if settings.device == "cuda" and not use_gpu:
            raise ConfigError(f"{key}={settings.workers} with device 'cuda' needs a GPU per "
                              f"worker; the Ray cluster has {gpus:g}")  # fmt: skip
        # A small machine: share its CPUs rather than wait forever for a CPU per worker.
        per_worker = {"CPU": min(1.0, cpus / settings.workers)}
        out.mkdir(parents=True, exist_ok=True)
        config = {
            "cfg": cfg, "make_trainer": make_trainer, "settings": settings, "out": out,
            "keeper": keeper, "tag": tag, "loop": loop,
            "metrics": RankZeroMetrics(Path(stage.dir) / "metrics.jsonl",
                                       getattr(stage, "t0", time.monotonic())),
        }  # fmt: skip
        trainer = TorchTrainer(
            _worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=use_gpu,
                                         resources_per_worker=per_worker),
            run_config=TrainRunConfig(
                name=f"robodistill-{out.name}-{os.getpid()}", storage_path=storage,
                failure_config=FailureConfig(max_failures=settings.max_failures),
                worker_runtime_env={"env_vars": _local_loopback_env()},
            ),
        )  # fmt: skip
        log.info("training data-parallel in %d Ray Train workers (%s, %s per worker)",
                 settings.workers, "NCCL on GPUs" if use_gpu else "gloo on CPU", per_worker)  # fmt: skip
        try:
            trainer.fit()
        except Exception as e:  # Ray Train wraps the workers' errors
            cause = _root_cause(e)
            if isinstance(cause, ConfigError):
                raise cause from None
            raise RuntimeError(f"data-parallel training in {out} failed after "
                               f"{settings.max_failures} restarts: {cause!r}") from e  # fmt: skip
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started:
            ray.shutdown()
    result = finished_result(out)
    if result is None:
        raise RuntimeError(f"data-parallel training ended without {out / 'result.json'}")
    return result


def _root_cause(error: BaseException) -> BaseException:
    """The workers' own exception inside Ray Train's wrappers (or ``error`` itself)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "worker_failures", None) or {}
        inner = next(iter(inner.values()), None) if isinstance(inner, dict) else None
        inner = inner or getattr(error, "cause", None) or error.__cause__
        if inner is None:
            break
        error = inner
    return error
