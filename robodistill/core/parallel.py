"""Run episodes in parallel worker processes; the driver receives every episode exactly once.

::

    driver (the store's single writer)               workers (envs + policy each)
    seeds ─► batches ─► 2 in flight per worker ──►   worker 0: run(batch) ─► [Episode, ...]
      ▲                                              worker 1: run(batch) ─► [Episode, ...]
      └── a dead worker's batches go back ◄── wait ─► on_episode(ep), once per seed

Two backends run the workers under one scheduling loop (:class:`ParallelRollout`):

- ``local`` (the default): spawned processes on this machine, talking to the driver over
  OS pipes (:class:`robodistill.core.process_pool.ProcessWorkers`). Nothing listens on a
  network port, and Ray is not needed.
- ``ray``: Ray actors, used when a Ray address is given (``RAY_ADDRESS``, which the CLI's
  ``--ray-address`` sets): :func:`init_ray` joins that cluster, whose token authentication
  guards its services. On a cluster every node needs robodistill installed (actors import
  it to build envs and policies).

:func:`choose_backend` picks one (``auto``: ``ray`` iff an address is set). A local Ray
is never started for episodes: Ray 2.60's services listen on every interface.

Each worker builds its own envs and policy from the policy *spec* (``random``, ``expert`` or
a saved policy directory), never from a pickled torch module, uses one torch thread, and
runs the seeds it is given with :func:`robodistill.core.rollout.rollout`
(:class:`RolloutWorker`). Finished episodes (numpy arrays) come back to the driver, which
hands each seed to ``on_episode`` once: a seed that was already delivered is dropped, and
when a worker dies (killed, out of memory, its node gone) the batches it held go back to
the queue, a fresh worker takes its slot, and the run goes on. A batch whose worker died
:data:`MAX_ATTEMPTS` times raises :class:`WorkerLostError` naming its seeds (a seed that
crashes the simulator would otherwise kill workers forever); only the batch a worker was
running when it died counts, not those queued behind it.

Two batches per worker are in flight so that a worker never idles while the driver writes
the previous batch to the store. A batch is ``num_envs`` episodes (one per env row): small,
so a death re-runs little and the last batches spread evenly over the workers, while each
``rollout`` call's env construction (~15 ms for PushT) stays small next to an episode.

Per-seed data does not depend on how seeds are split over workers, nor on the backend, for
deterministic policies (experts, saved policies). The ``random`` policy is re-seeded per
batch from ``(policy_seed, first seed of the batch)``, so a parallel random collection is
reproducible too, on either backend and across worker deaths (its actions differ from a
``workers=1`` run, whose single generator streams through all episodes).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from robodistill.config import ConfigError, RunConfig
from robodistill.core.policy_specs import resolve_policy
from robodistill.core.process_pool import ProcessWorkers, WorkerDied
from robodistill.core.rollout import env_spaces, rollout
from robodistill.data.episode import Episode
from robodistill.policies import RandomPolicy

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Worker deaths one batch may see before the run gives up on its seeds."""
IN_FLIGHT_PER_WORKER = 2
"""Batches queued on each worker: one running, one ready to start."""
STALL_WARNING_S = 60.0
"""Warn when no batch has come back for this long (workers waiting for CPUs, a hung env)."""
BACKENDS = ("auto", "local", "ray")
"""``auto``: ``ray`` when a Ray address is set, else ``local`` (see :func:`choose_backend`)."""


class WorkerLostError(RuntimeError):
    """The same seeds were running when their worker died, ``max_attempts`` times."""


def choose_backend(backend: str = "auto") -> str:
    """``local`` or ``ray``: ``auto`` is ``ray`` exactly when a Ray address is set
    (``RAY_ADDRESS``; the CLI's ``--ray-address`` sets it), so that joining a cluster is
    unchanged and nothing listens on the network otherwise."""
    if backend == "auto":
        return "ray" if os.environ.get("RAY_ADDRESS") else "local"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _ray(field: str):
    try:
        import ray  # optional: only runs that join a Ray cluster need it
    except ImportError as e:
        raise ConfigError(
            f"{field} > 1 with a Ray address (RAY_ADDRESS or --ray-address) runs episodes in "
            f"Ray actors, but Ray is not installed: pip install 'robodistill[rllib]', or unset "
            "the address to run them in local worker processes"
        ) from e
    return ray


class RolloutWorker:
    """One worker's envs and policy (in a local worker process or a Ray actor); :meth:`run`
    plays a batch of seeds: ``len(seeds)`` episodes, one per seed."""

    def __init__(
        self,
        env_id: str,
        policy_spec: str,
        policy_seed: int,
        rollout_kwargs: dict[str, Any],
    ) -> None:
        # The policy is built on the first batch, so that a bad spec raises its own error
        # type (e.g. UnknownExpertError) through the call instead of killing the worker.
        self.env_id, self.policy_spec, self.policy_seed = env_id, policy_spec, policy_seed
        self.rollout_kwargs = rollout_kwargs
        self.policy = None
        self.action_space = None

    def _policy(self, seeds: list[int]):
        if self.action_space is None:
            _, self.action_space, _ = env_spaces(self.env_id, self.rollout_kwargs.get("env_kwargs"))
        if self.policy_spec == "random":
            # Per batch, from the batch's first seed: whichever worker runs the batch (and
            # however often it is re-run), it gets the same actions.
            seq = np.random.SeedSequence([self.policy_seed, seeds[0]])
            return RandomPolicy.for_space(self.action_space, seed=int(seq.generate_state(1)[0]))
        if self.policy is None:
            self.policy = resolve_policy(
                self.policy_spec, self.env_id, self.action_space, self.policy_seed
            )
        return self.policy

    def run(self, seeds: list[int]) -> list[Episode]:
        return rollout(self.env_id, self._policy(seeds), seeds, **self.rollout_kwargs)

    def cpu_seconds(self) -> float:
        """CPU time this worker's process has used (for overhead accounting in benchmarks)."""
        return time.process_time()


class _Backend(Protocol):
    """Workers in slots ``0..workers-1``, each holding one :class:`RolloutWorker`; calls on
    one slot run in submission order. :class:`ProcessWorkers` and :class:`RayActors`.

    ``submit`` queues ``method(*args)`` on a slot and returns a handle; ``wait`` returns
    one of ``handles`` whose call has finished or lost its worker, or None after
    ``timeout`` seconds; ``get`` returns a finished call's value (once), or raises the
    worker's own exception, or :class:`WorkerDied`; ``restart`` puts a fresh worker in a
    slot; ``close`` stops them all."""

    name: str

    def submit(self, slot: int, method: str, *args: Any) -> Hashable: ...
    def wait(self, handles: list[Hashable], timeout: float | None) -> Hashable | None: ...
    def get(self, handle: Hashable) -> Any: ...
    def restart(self, slot: int) -> None: ...
    def close(self) -> None: ...


class RayActors:
    """The ``ray`` backend: one Ray actor per slot, on the cluster :func:`init_ray` joins
    (a local Ray started by it is shut down again in :meth:`close`)."""

    name = "ray"

    def __init__(self, factory: type, args: tuple, workers: int, field: str) -> None:
        self.ray = _ray(field)
        self._args, self.actors, self._started_ray = args, [], False
        self._started_ray = init_ray()
        try:
            cpus = float(self.ray.cluster_resources().get("CPU", 1.0))
            # One CPU per actor, unless the cluster is smaller than the request: then the
            # actors share what there is (they would otherwise wait for CPUs that never come).
            # Ray sets an actor's OMP_NUM_THREADS from its CPUs: one thread each here.
            share = min(1.0, cpus / workers)
            if cpus < workers:
                log.warning("%s=%d but Ray has %g CPUs: actors share them (%.2f CPU each)",
                            field, workers, cpus, share)  # fmt: skip
            self._remote = self.ray.remote(num_cpus=share, max_restarts=0)(factory)
            self.actors = [self._remote.remote(*args) for _ in range(workers)]
        except BaseException:
            self.close()
            raise

    def submit(self, slot: int, method: str, *args: Any):
        return getattr(self.actors[slot], method).remote(*args)

    def wait(self, handles: list, timeout: float | None):
        ready, _ = self.ray.wait(list(handles), num_returns=1, timeout=timeout)
        return ready[0] if ready else None

    def get(self, handle) -> Any:
        from ray.exceptions import (  # ray is optional: imported where used
            NodeDiedError,
            ObjectLostError,
            OutOfMemoryError,
            RayActorError,
            RayTaskError,
            WorkerCrashedError,
        )

        try:
            return self.ray.get(handle)
        except (RayActorError, ObjectLostError, WorkerCrashedError, NodeDiedError,
                OutOfMemoryError) as e:  # fmt: skip
            first = str(e).splitlines()[0][:200] if str(e) else ""
            raise WorkerDied(f"{type(e).__name__}: {first}" if first else type(e).__name__) from e
        except RayTaskError as e:
            # The actor's own error (RolloutError, CheckpointError, ...) with its own message,
            # so the CLI reports it as it does for workers=1; Ray's traceback stays chained.
            if isinstance(getattr(e, "cause", None), Exception):
                raise e.cause from e
            raise

    def restart(self, slot: int) -> None:
        self.ray.kill(self.actors[slot])
        self.actors[slot] = self._remote.remote(*self._args)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False


@dataclass
class _Batch:
    seeds: list[int]
    attempts: int = 0


class ParallelRollout:
    """``workers`` worker processes running episodes; reusable for several :meth:`run` calls.

    ::

        with ParallelRollout("robodistill/PushT-v0", "expert", workers=2, num_envs=2) as pr:
            pr.run(seeds, on_episode=store.add_episode)

    ``num_envs`` (per worker, also the batch size), ``max_episode_steps``, ``env_kwargs``
    and ``source_policy`` go to :func:`robodistill.core.rollout.rollout`; ``policy_seed`` is
    :func:`robodistill.core.policy_specs.resolve_policy`'s seed. ``backend`` is one of
    :data:`BACKENDS` (:func:`choose_backend`; ``ray`` without an address starts a local
    Ray, which listens on every interface). ``field`` names the config key that asked for
    workers, for error messages. A batch may see ``max_attempts`` worker deaths before
    :class:`WorkerLostError`. ``lost`` counts workers that died and were replaced,
    ``requeued`` lists the seeds that were handed to another worker.
    """

    def __init__(
        self,
        env_id: str,
        policy_spec: str,
        *,
        workers: int,
        policy_seed: int = 0,
        num_envs: int = 1,
        max_episode_steps: int | None = None,
        env_kwargs: dict | None = None,
        source_policy: str = "",
        field: str = "workers",
        max_attempts: int = MAX_ATTEMPTS,
        backend: str = "auto",
    ) -> None:
        if workers < 1:
            raise ValueError(f"{field} must be >= 1, got {workers}")
        self.workers, self.num_envs, self.max_attempts = workers, num_envs, max_attempts
        kwargs = {"num_envs": num_envs, "max_episode_steps": max_episode_steps,
                  "env_kwargs": dict(env_kwargs or {}), "source_policy": source_policy}  # fmt: skip
        args = (env_id, policy_spec, int(policy_seed), kwargs)
        self.backend: _Backend
        if choose_backend(backend) == "ray":
            self.backend = RayActors(RolloutWorker, args, workers, field)
        else:
            self.backend = ProcessWorkers(RolloutWorker, args, workers)
        self._generation = [0] * workers
        self._inflight: dict[Hashable, tuple[int, int, _Batch]] = {}
        self.lost = 0
        self.requeued: list[int] = []

    def in_flight(self) -> dict[int, list[int]]:
        """Worker slot -> the seeds submitted to it and not yet returned."""
        out: dict[int, list[int]] = {}
        for slot, _, batch in self._inflight.values():
            out.setdefault(slot, []).extend(batch.seeds)
        return out

    def _load(self) -> list[int]:
        load = [0] * self.workers
        for slot, _, _ in self._inflight.values():
            load[slot] += 1
        return load

    def _reap(self, handle: Hashable, error: WorkerDied) -> tuple[list[Episode], list[_Batch]]:
        """``handle``'s worker died: (episodes it finished, batches to run again), and a
        fresh worker in its slot. Only the oldest unfinished batch is blamed for the death:
        a worker runs its batches in submission order, so the others had not started."""
        slot, generation, _ = self._inflight[handle]
        log.warning("worker %d died (%s); starting a new one", slot, error)
        handles = [h for h, (s, g, _) in self._inflight.items() if (s, g) == (slot, generation)]
        finished, redo = [], []
        for h in handles:  # dict order is submission order
            batch = self._inflight.pop(h)[2]
            try:
                if h == handle:  # its answer was already taken: the death
                    raise error
                finished.extend(self.backend.get(h))
            except WorkerDied as e:
                if not redo:
                    batch.attempts += 1
                    if batch.attempts >= self.max_attempts:
                        raise WorkerLostError(
                            f"episode seeds {batch.seeds} lost their worker {batch.attempts} "
                            f"times (last: {e}); an env that crashes the process on these "
                            "seeds? Run with workers=1 to see the error"
                        ) from e
                redo.append(batch)
        # After the answers: a dead Ray actor's calls fail at once, and a local worker's
        # finished answers stay readable; replacing it first would only delay them.
        self.backend.restart(slot)
        self._generation[slot] += 1
        self.lost += 1
        return finished, redo

    def run(
        self, seeds: Iterable[int], on_episode: Callable[[Episode], None] | None = None
    ) -> list[Episode]:
        """One episode per seed, each handed to ``on_episode`` exactly once, in the order
        they arrive; returns them when ``on_episode`` is None. An error raised inside a
        worker (a :class:`~robodistill.core.rollout.RolloutError`, a bad policy) propagates."""
        wanted = list(dict.fromkeys(int(s) for s in seeds))
        size = max(1, self.num_envs)
        queue = deque(_Batch(wanted[i : i + size]) for i in range(0, len(wanted), size))
        pending, collected = set(wanted), []

        def deliver(episodes: list[Episode]) -> None:
            for ep in episodes:
                if ep.seed in pending:  # the first copy of a seed wins; a re-run is dropped
                    pending.discard(ep.seed)
                    if on_episode is None:
                        collected.append(ep)
                    else:
                        on_episode(ep)

        last_result = time.monotonic()
        while queue or self._inflight:
            # The least-loaded slot first, so that a replaced worker gets work at once.
            load = self._load()
            while queue and min(load) < IN_FLIGHT_PER_WORKER:
                slot = int(np.argmin(load))
                batch = queue.popleft()
                handle = self.backend.submit(slot, "run", batch.seeds)
                self._inflight[handle] = (slot, self._generation[slot], batch)
                load[slot] += 1
            handle = self.backend.wait(list(self._inflight), STALL_WARNING_S)
            if handle is None:
                log.warning("no episodes from the %d workers for %.0f s (in flight: %s)",
                            self.workers, time.monotonic() - last_result,
                            self.in_flight())  # fmt: skip
                continue
            last_result = time.monotonic()
            try:
                episodes = self.backend.get(handle)
            except WorkerDied as e:
                finished, redo = self._reap(handle, e)
                deliver(finished)
                for batch in redo:
                    batch.seeds = [s for s in batch.seeds if s in pending]
                    self.requeued.extend(batch.seeds)
                # First in line again, in their old order (empty: left from an aborted run).
                queue.extendleft(b for b in reversed(redo) if b.seeds)
                continue
            except BaseException:  # the worker's own error: its answer is taken
                del self._inflight[handle]
                raise
            del self._inflight[handle]
            deliver(episodes)
        if pending:  # a worker returned fewer episodes than seeds: a bug, not bad luck
            raise RuntimeError(f"workers returned no episode for seeds {sorted(pending)}")
        return collected

    def cpu_seconds(self) -> float:
        """CPU time the current workers' processes have used, summed (for overhead
        accounting in benchmarks); call it between runs."""
        handles = [self.backend.submit(slot, "cpu_seconds") for slot in range(self.workers)]
        total = 0.0
        for h in handles:
            while self.backend.wait([h], None) is None:
                pass
            total += self.backend.get(h)
        return total

    def close(self) -> None:
        """Stop the workers (and a local Ray, if the ``ray`` backend started one)."""
        if hasattr(self, "backend"):
            self.backend.close()
        self._inflight = {}

    def __enter__(self) -> ParallelRollout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parallel_rollout(
    env_id: str,
    policy_spec: str,
    seeds: Iterable[int],
    *,
    workers: int,
    policy_seed: int = 0,
    on_episode: Callable[[Episode], None] | None = None,
    field: str = "workers",
    backend: str = "auto",
    **rollout_kwargs: Any,
) -> list[Episode]:
    """:func:`robodistill.core.rollout.rollout` over ``workers`` workers, for one call."""
    with ParallelRollout(env_id, policy_spec, workers=workers, policy_seed=policy_seed,
                         field=field, backend=backend, **rollout_kwargs) as runner:  # fmt: skip
        return runner.run(seeds, on_episode)


def init_ray() -> bool:
    """Join ``RAY_ADDRESS`` or start a local Ray; ``True`` when this call connected. Ray
    2.60's local services listen on every interface and cannot be bound to loopback (it
    turns a loopback node IP into the host's address), so a command line that starts one
    (an RLlib teacher, data-parallel training) runs in a private network namespace
    (:mod:`robodistill.core.netns`); Ray's token authentication, on by default, refuses
    peers without the session's token. Episodes never start a local Ray
    (:func:`choose_backend`).

    A local Ray's workers run at this process's priority: Ray starts them at niceness 15
    by default (``RAY_worker_niceness``), which on a busy machine starves them — an RLlib
    teacher made no iteration in 75 minutes beside five ordinary jobs on 2 cores. Set
    ``RAY_worker_niceness`` yourself to keep Ray's default."""
    import ray  # optional and heavy: only Ray-backed runs import it

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # Read by the raylet this call starts (it inherits the environment).
        os.environ.setdefault("RAY_worker_niceness", "0")
        # At least 2 logical CPUs so a driver-side learner and one env runner fit on small hosts.
        ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    return True


def run_episodes(
    cfg: RunConfig, policy, spec: str, seeds: list[int], *, on_episode, workers: int,
    field: str, policy_seed: int, env_kwargs: dict, on_frames=None,
) -> None:  # fmt: skip
    """One episode per seed into ``on_episode``: here with ``policy`` when ``workers == 1``,
    else in ``workers`` worker processes (:func:`choose_backend`: local ones, or Ray actors
    when a Ray address is set) that rebuild the policy from ``spec`` (``policy_seed`` is
    the seed ``policy`` was resolved with)."""
    kwargs = {"num_envs": cfg.env.num_envs, "max_episode_steps": cfg.env.max_episode_steps,
              "env_kwargs": env_kwargs, "source_policy": spec}  # fmt: skip
    if workers > 1 and seeds:
        parallel_rollout(cfg.env.id, spec, seeds, workers=workers, policy_seed=policy_seed,
                         on_episode=on_episode, field=field, **kwargs)  # fmt: skip
    else:
        rollout(cfg.env.id, policy, seeds, on_episode=on_episode, on_frames=on_frames, **kwargs)
