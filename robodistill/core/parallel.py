"""Run episodes in parallel Ray actors; the driver receives every episode exactly once.

::

    driver (the store's single writer)               Ray actors (envs + policy each)
    seeds ─► batches ─► 2 in flight per actor ──►    worker 0: rollout(batch) ─► [Episode, ...]
      ▲                                              worker 1: rollout(batch) ─► [Episode, ...]
      └── a dead actor's batches go back ◄── ray.wait ─► on_episode(ep), once per seed

Each actor builds its own envs and policy from the policy *spec* (``random``, ``expert`` or
a saved policy directory), never from a pickled torch module, and runs the seeds it is given
with :func:`robodistill.core.rollout.rollout`. Finished episodes (numpy arrays) come back to the
driver, which hands each seed to ``on_episode`` once: a seed that was already delivered is
dropped, and when an actor dies (killed, out of memory, its node gone) the batches it held
go back to the queue, a fresh actor takes its slot, and the run goes on. A batch whose
actor died :data:`MAX_ATTEMPTS` times raises :class:`WorkerLostError` naming its seeds
(a seed that crashes the simulator would otherwise kill actors forever); only the batch an
actor was running when it died counts, not those queued behind it.

Two batches per actor are in flight so that an actor never idles while the driver writes
the previous batch to the store. A batch is ``num_envs`` episodes (one per env row): small,
so a death re-runs little and the last batches spread evenly over the actors, while each
``rollout`` call's env construction (~15 ms for PushT) stays small next to an episode.

Per-seed data does not depend on how seeds are split over actors for deterministic policies
(experts, saved policies). The ``random`` policy is re-seeded per batch from
``(policy_seed, first seed of the batch)``, so a parallel random collection is reproducible
too, even across actor deaths (its actions differ from a ``workers=1`` run, whose single
generator streams through all episodes).

Ray: :func:`init_ray` joins ``RAY_ADDRESS`` or starts a local Ray;
a Ray started here is shut down again when the run ends. On a cluster every node needs
robodistill installed (actors import it to build envs and policies).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from robodistill.config import ConfigError, RunConfig
from robodistill.core.policy_specs import resolve_policy
from robodistill.core.rollout import env_spaces, rollout
from robodistill.data.episode import Episode
from robodistill.policies import RandomPolicy

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Actor deaths one batch may see before the run gives up on its seeds."""
IN_FLIGHT_PER_WORKER = 2
"""Batches queued on each actor: one running, one ready to start."""
STALL_WARNING_S = 60.0
"""Warn when no batch has come back for this long (actors waiting for CPUs, a hung env)."""


class WorkerLostError(RuntimeError):
    """The same seeds were running when their actor died, ``max_attempts`` times."""


def _ray(field: str):
    try:
        import ray  # optional: only runs with workers > 1 need it
    except ImportError as e:
        raise ConfigError(
            f"{field} > 1 runs episodes in Ray actors, but Ray is not installed: "
            f"pip install 'robodistill[rllib]', or set {field}=1"
        ) from e
    return ray


class RolloutWorker:
    """One actor's envs and policy; :meth:`run` plays a batch of seeds (Ray remote class)."""

    def __init__(
        self,
        env_id: str,
        policy_spec: str,
        policy_seed: int,
        rollout_kwargs: dict[str, Any],
    ) -> None:
        # The policy is built on the first batch, so that a bad spec raises its own error
        # type (e.g. UnknownExpertError) through the task instead of killing the actor.
        self.env_id, self.policy_spec, self.policy_seed = env_id, policy_spec, policy_seed
        self.rollout_kwargs = rollout_kwargs
        self.policy = None
        self.action_space = None

    def _policy(self, seeds: list[int]):
        if self.action_space is None:
            _, self.action_space, _ = env_spaces(self.env_id, self.rollout_kwargs.get("env_kwargs"))
        if self.policy_spec == "random":
            # Per batch, from the batch's first seed: whichever actor runs the batch (and
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
        """CPU time this actor's process has used (for overhead accounting in benchmarks)."""
        return time.process_time()


@dataclass
class _Batch:
    seeds: list[int]
    attempts: int = 0


class ParallelRollout:
    """``workers`` Ray actors running episodes; reusable for several :meth:`run` calls.

    ::

        with ParallelRollout("robodistill/PushT-v0", "expert", workers=2, num_envs=2) as pr:
            pr.run(seeds, on_episode=store.add_episode)

    ``num_envs`` (per actor, also the batch size), ``max_episode_steps``, ``env_kwargs``
    and ``source_policy`` go to :func:`robodistill.core.rollout.rollout`; ``policy_seed`` is
    :func:`robodistill.core.policy_specs.resolve_policy`'s seed. ``field`` names the config key that
    asked for workers, for error messages. A batch may see ``max_attempts`` actor
    deaths before :class:`WorkerLostError`. ``lost`` counts actors that died and were
    replaced, ``requeued`` lists the seeds that were handed to another actor.
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
    ) -> None:
        if workers < 1:
            raise ValueError(f"{field} must be >= 1, got {workers}")
        self.ray = _ray(field)
        self.workers, self.num_envs, self.max_attempts = workers, num_envs, max_attempts
        kwargs = {"num_envs": num_envs, "max_episode_steps": max_episode_steps,
                  "env_kwargs": dict(env_kwargs or {}), "source_policy": source_policy}  # fmt: skip
        self._args = (env_id, policy_spec, int(policy_seed), kwargs)
        self._started_ray = init_ray()
        try:
            self._start_actors(field)
        except BaseException:
            self.close()
            raise
        self._generation = [0] * workers
        self._inflight: dict[Any, tuple[int, int, _Batch]] = {}
        self.lost = 0
        self.requeued: list[int] = []

    def _start_actors(self, field: str) -> None:
        workers = self.workers
        cpus = float(self.ray.cluster_resources().get("CPU", 1.0))
        # One CPU per actor, unless the cluster is smaller than the request: then the actors
        # share what there is (they would otherwise wait for CPUs that never come).
        self._cpus = min(1.0, cpus / workers)
        if cpus < workers:
            log.warning("%s=%d but Ray has %g CPUs: actors share them (%.2f CPU each)",
                        field, workers, cpus, self._cpus)  # fmt: skip
        self._remote = self.ray.remote(num_cpus=self._cpus, max_restarts=0)(RolloutWorker)
        self.actors = [self._spawn() for _ in range(workers)]

    def _spawn(self):
        return self._remote.remote(*self._args)

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

    def _get(self, ref) -> list[Episode]:
        from ray.exceptions import RayTaskError  # ray is optional: imported where used

        try:
            return self.ray.get(ref)
        except RayTaskError as e:
            # The actor's own error (RolloutError, CheckpointError, ...) with its own message,
            # so the CLI reports it as it does for workers=1; Ray's traceback stays chained.
            if isinstance(getattr(e, "cause", None), Exception):
                raise e.cause from e
            raise

    def _reap(self, slot: int, generation: int, error: BaseException, lost_errors) -> tuple:
        """A dead actor's batches: (episodes it finished, batches to run again), and a fresh
        actor in its slot. Only the oldest unfinished batch is blamed for the death: an
        actor runs its batches in submission order, so the others had not started."""
        log.warning("worker %d died (%s); starting a new one", slot,
                    str(error).splitlines()[0] if str(error) else type(error).__name__)  # fmt: skip
        self.ray.kill(self.actors[slot])
        refs = [r for r, (s, g, _) in self._inflight.items() if (s, g) == (slot, generation)]
        finished, redo = [], []
        for ref in refs:  # dict order is submission order
            batch = self._inflight.pop(ref)[2]
            try:
                finished.extend(self._get(ref))
            except lost_errors as e:
                if not redo:
                    batch.attempts += 1
                    if batch.attempts >= self.max_attempts:
                        raise WorkerLostError(
                            f"episode seeds {batch.seeds} lost their worker {batch.attempts} "
                            f"times (last: {type(e).__name__}); an env that crashes the "
                            "process on these seeds? Run with workers=1 to see the error"
                        ) from e
                redo.append(batch)
        self.actors[slot] = self._spawn()
        self._generation[slot] += 1
        self.lost += 1
        return finished, redo

    def run(
        self, seeds: Iterable[int], on_episode: Callable[[Episode], None] | None = None
    ) -> list[Episode]:
        """One episode per seed, each handed to ``on_episode`` exactly once, in the order
        they arrive; returns them when ``on_episode`` is None. An error raised inside an
        actor (a :class:`~robodistill.core.rollout.RolloutError`, a bad policy) propagates."""
        ray = self.ray
        from ray.exceptions import (
            NodeDiedError,
            ObjectLostError,
            OutOfMemoryError,
            RayActorError,
            WorkerCrashedError,
        )

        lost_errors = (RayActorError, ObjectLostError, WorkerCrashedError, NodeDiedError,
                       OutOfMemoryError)  # fmt: skip
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
            # The least-loaded slot first, so that a replaced actor gets work at once.
            load = self._load()
            while queue and min(load) < IN_FLIGHT_PER_WORKER:
                slot = int(np.argmin(load))
                batch = queue.popleft()
                ref = self.actors[slot].run.remote(batch.seeds)
                self._inflight[ref] = (slot, self._generation[slot], batch)
                load[slot] += 1
            ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=STALL_WARNING_S)
            if not ready:
                log.warning("no episodes from the %d workers for %.0f s (in flight: %s)",
                            self.workers, time.monotonic() - last_result,
                            self.in_flight())  # fmt: skip
                continue
            last_result = time.monotonic()
            (ref,) = ready
            slot, generation, _ = self._inflight[ref]
            try:
                episodes = self._get(ref)
            except lost_errors as e:
                finished, redo = self._reap(slot, generation, e, lost_errors)
                deliver(finished)
                for batch in redo:
                    batch.seeds = [s for s in batch.seeds if s in pending]
                    self.requeued.extend(batch.seeds)
                # First in line again, in their old order (empty: left from an aborted run).
                queue.extendleft(b for b in reversed(redo) if b.seeds)
                continue
            del self._inflight[ref]
            deliver(episodes)
        if pending:  # an actor returned fewer episodes than seeds: a bug, not bad luck
            raise RuntimeError(f"workers returned no episode for seeds {sorted(pending)}")
        return collected

    def close(self) -> None:
        """Stop the actors (and the local Ray, if this object started it)."""
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor)
        self.actors = []
        self._inflight = {}
        if getattr(self, "_started_ray", False):
            self.ray.shutdown()
            self._started_ray = False

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
    **rollout_kwargs: Any,
) -> list[Episode]:
    """:func:`robodistill.core.rollout.rollout` over ``workers`` Ray actors, for one call."""
    with ParallelRollout(env_id, policy_spec, workers=workers, policy_seed=policy_seed,
                         field=field, **rollout_kwargs) as runner:  # fmt: skip
        return runner.run(seeds, on_episode)


def init_ray() -> bool:
    """Join ``RAY_ADDRESS`` or start a local Ray; ``True`` when this call connected. Ray
    2.60's local services listen on every interface and cannot be bound to loopback (it
    turns a loopback node IP into the host's address); its token authentication, on by
    default, refuses peers without the session's token (docs/stages/collect.md)."""
    import ray  # optional and heavy: only Ray-backed runs import it

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # At least 2 logical CPUs so a driver-side learner and one env runner fit on small hosts.
        ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    return True


def run_episodes(
    cfg: RunConfig, policy, spec: str, seeds: list[int], *, on_episode, workers: int,
    field: str, policy_seed: int, env_kwargs: dict, on_frames=None,
) -> None:  # fmt: skip
    """One episode per seed into ``on_episode``: here with ``policy`` when ``workers == 1``,
    else in ``workers`` Ray actors that rebuild the policy from ``spec`` (``policy_seed``
    is the seed ``policy`` was resolved with)."""
    kwargs = {"num_envs": cfg.env.num_envs, "max_episode_steps": cfg.env.max_episode_steps,
              "env_kwargs": env_kwargs, "source_policy": spec}  # fmt: skip
    if workers > 1 and seeds:
        parallel_rollout(cfg.env.id, spec, seeds, workers=workers, policy_seed=policy_seed,
                         on_episode=on_episode, field=field, **kwargs)  # fmt: skip
    else:
        rollout(cfg.env.id, policy, seeds, on_episode=on_episode, on_frames=on_frames, **kwargs)
