"""Asynchronous inference: plan the next chunk while the robot executes the current one.

:class:`AsyncPolicy` wraps an :class:`~robodistill.deploy.runtime.OnnxPolicy` behind the
same ``act`` / ``reset`` a :class:`~robodistill.deploy.controller.Controller` calls, so
the controller's deadlines, checks, fault handling, tick log and SIGINT handling are the
ones of the synchronous loop::

    policy = AsyncPolicy(OnnxPolicy("policy.onnx"), rtc=RtcSettings())
    Controller(policy, robot, rate_hz=10).run()        # act() never waits for inference

Every ``act`` is one control step ``t`` (its observation joins the history) and never
waits: it takes a chunk that has arrived, requests a new one when the action queue has
fallen to ``threshold`` x the chunk's horizon (LeRobot's ``chunk_size_threshold``), and
pops the next action — or holds the last one when the queue ran dry (at an episode's
start: ``hold_action``). A chunk planned from the observation at step ``t_obs`` that
arrives at step ``t`` has its first ``t - t_obs`` actions dropped (those steps are past);
the rest replaces the queue (RTC / the blend fallback decide how it meets the leftover:
:mod:`robodistill.deploy.rtc`). Each chunk is recorded in :attr:`AsyncPolicy.chunks`
(observation step, arrival step, delay in steps and compute seconds, actions dropped)
and, with ``log_path``, as a JSON line.

Two clocks for the planner:

* real time (``delay_steps=None``): a planner thread runs the network; a chunk arrives
  whenever its computation ends, at the next ``act``.
* simulated (``delay_steps=k``): the chunk is computed at the request but delivered at
  step ``t_obs + k`` exactly, as if inference had taken k control steps. Results then
  depend on the robot's step clock only, not on this machine's speed
  (``benchmarks/delay.py``).

``mode="sync"`` is the classic receding-horizon loop under the same clock: a chunk is
requested only when the queue is empty, the robot holds its last command until the chunk
arrives, and the chunk runs from its first action (nothing dropped: a synchronous loop
does not know it was late) for the file's ``execute`` steps.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from robodistill.deploy.rtc import ChunkPlanner, RtcSettings

log = logging.getLogger(__name__)


class AsyncPolicy:
    """A chunked policy planned ahead of execution (see the module docstring).

    Args:
        policy: an :class:`~robodistill.deploy.runtime.OnnxPolicy` (or anything a
            :class:`~robodistill.deploy.rtc.ChunkPlanner` accepts), or a ready planner.
        mode: ``"async"`` or ``"sync"``.
        threshold: request when ``len(queue) <= threshold * horizon`` (async).
        rtc: :class:`~robodistill.deploy.rtc.RtcSettings` or ``None``.
        aggregate, blend_weight: without RTC, how a new chunk meets the leftover.
        delay_steps: simulated inference delay in control steps; ``None``: real time
            (a planner thread).
        hold_action: (A,) sent while no action is queued at an episode's start (default
            zeros clipped into the action limits; pass the robot's safe action).
        log_path: one JSON line per chunk.
    """

    def __init__(self, policy: Any, *, mode: str = "async", threshold: float = 0.5,
                 rtc: RtcSettings | None = None, aggregate: str = "replace",
                 blend_weight: float = 0.7, delay_steps: int | None = None,
                 hold_action: np.ndarray | None = None,
                 log_path: str | Path | None = None):  # fmt: skip
        if mode not in ("async", "sync"):
            raise ValueError(f"mode must be 'async' or 'sync', got {mode!r}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if delay_steps is not None and delay_steps < 0:
            raise ValueError(f"delay_steps must be >= 0 or None, got {delay_steps}")
        self.planner = policy if isinstance(policy, ChunkPlanner) else ChunkPlanner(
            policy, rtc if mode == "async" else None, aggregate, blend_weight)  # fmt: skip
        self.policy = self.planner.policy
        self.mode, self.delay_steps = mode, delay_steps
        for name in ("observation_shape", "action_shape", "action_low", "action_high",
                     "observation_low", "observation_high", "control_rate_hz"):  # fmt: skip
            setattr(self, name, getattr(self.policy, name, None))
        p = self.policy
        self.history = int(getattr(p, "history", 1))
        self.obs_dim = int(getattr(p, "observation_dim", 0) or np.prod(p.observation_shape))
        self.action_dim = int(getattr(p, "action_dim", 0) or np.prod(p.action_shape))
        self.horizon = self.planner.horizon
        execute = int(getattr(p, "execute", self.horizon)) if self.planner.chunked else 1
        self.execute = max(1, min(execute, self.horizon))
        self.threshold_n = int(threshold * self.horizon)
        if hold_action is None:
            hold_action = np.zeros(self.action_dim, np.float32)
            if self.action_low is not None:
                hold_action = np.clip(hold_action, self.action_low, self.action_high)
        self.hold_action = np.asarray(hold_action, np.float32).reshape(self.action_dim)
        self.log_path = None if log_path is None else Path(log_path)
        self.chunks: list[dict[str, Any]] = []
        """One record per delivered chunk: episode, obs_step, arrival_step, delay_steps,
        compute_s, dropped, kept, delay_assumed (RTC's d)."""
        self.held = 0
        """Control steps on which no action was queued (the last one was held)."""
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._log = None
        self._episode = -1
        self.reset()

    # -- episode state -----------------------------------------------------------------------
    def reset(self, env_ids: Any = None) -> None:
        """A new episode: empty queue and history, pending chunks discarded."""
        if self.planner.stateful and self._worker is not None:
            # A stateful file's state is reset below: not while the planner uses it.
            self._worker.wait_idle(5.0)
        with self._lock:
            self._episode += 1
            self.step = 0
            self._hist: np.ndarray | None = None
            self._queue = np.zeros((0, self.action_dim), np.float32)
            self._last: np.ndarray | None = None
            self._pending: dict[str, Any] | None = None
            self._result: dict[str, Any] | None = None
            self._last_obs_step: int | None = None
        self.planner.reset()

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the planner thread (waits up to ``timeout`` for an inference in progress);
        ``True`` when no planner thread is left running. The controller calls this when
        its loop ends; a later ``act`` starts a new thread."""
        worker, self._worker = self._worker, None
        stopped = True
        if worker is not None:
            stopped = worker.stop(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return stopped

    @property
    def planner_alive(self) -> bool:
        """Whether a planner thread is running."""
        return self._worker is not None and self._worker.is_alive()

    def peek(self, n: int) -> np.ndarray:
        """The next ``n`` queued actions (fewer when fewer are queued): (<= n, A)."""
        with self._lock:
            return self._queue[:n].copy()

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def wait_planner(self, timeout: float | None = None) -> bool:
        """Block until the planner thread is idle (tests and shutdown; never in a tick)."""
        return self._worker is None or self._worker.wait_idle(timeout)

    # -- one control step --------------------------------------------------------------------
    def act(self, obs: Any) -> np.ndarray:
        """(1, *observation_shape) -> (1, *action_shape): one control step, never waiting
        for inference."""
        x = np.asarray(obs, np.float32).reshape(-1, self.obs_dim)
        if x.shape[0] != 1:
            raise ValueError(f"AsyncPolicy runs one robot: batch 1, got {x.shape[0]}")
        x = x[0]
        if self._hist is None:
            self._hist = np.repeat(x[None], self.history, axis=0)  # repeat the first
        else:
            self._hist = np.concatenate([self._hist[1:], x[None]], axis=0)
        self._deliver()
        if self._pending is None and self._wants_chunk():
            self._request()
            self._deliver()  # a simulated delay of 0 steps arrives at once
        with self._lock:
            if len(self._queue):
                action, self._queue = self._queue[0].copy(), self._queue[1:]
                self._last = action
            else:
                self.held += 1
                action = (self._last if self._last is not None else self.hold_action).copy()
            self.step += 1
        shape = self.action_shape or (self.action_dim,)
        return action.reshape(1, *shape)

    def _wants_chunk(self) -> bool:
        if self.mode == "sync":
            return len(self._queue) == 0
        return len(self._queue) <= self.threshold_n

    def _delay_estimate(self) -> int:
        rtc = self.planner.rtc
        if rtc is not None and rtc.delay is not None:
            return int(rtc.delay)
        if self.delay_steps is not None:
            return int(self.delay_steps)
        recent = [c["delay_steps"] for c in self.chunks[-5:]]
        return int(max(recent)) if recent else 0

    def _request(self) -> None:
        job = {"episode": self._episode, "obs_step": self.step, "hist": self._hist.copy(),
               "leftover": self._queue.copy() if self.mode == "async" else None,
               "delay": self._delay_estimate(),
               "since": None if self._last_obs_step is None
               else self.step - self._last_obs_step}  # fmt: skip
        self._last_obs_step = self.step
        self._pending = job
        if self.delay_steps is None:
            if self._worker is None or not self._worker.is_alive():
                self._worker = _Worker(self._compute)
            self._worker.submit(job)
        else:
            self._result = self._compute(job)

    def _compute(self, job: dict[str, Any]) -> dict[str, Any]:
        t = time.perf_counter()
        actions = self.planner.plan(job["hist"], job["leftover"], job["delay"], job["since"])
        return {**job, "actions": actions, "compute_s": time.perf_counter() - t}

    def _deliver(self) -> None:
        job = self._pending
        if job is None:
            return
        if self.delay_steps is None:
            result = self._worker.poll() if self._worker is not None else None
            if result is None:
                return
        else:
            result = self._result
            if result is None or self.step < job["obs_step"] + self.delay_steps:
                return
        self._result = None
        if result["episode"] != self._episode:
            return  # planned in an episode that has ended; this episode's job is pending
        self._pending = None
        if result.get("failed"):
            return  # logged by the planner; the next tick requests again
        late = self.step - result["obs_step"]
        actions = result["actions"]
        if self.mode == "sync":
            drop, actions = 0, actions[: self.execute]
        else:
            # Steps already executed since the observation are past; a single stale action
            # (a one-action policy) is still the newest plan, so at least one is kept.
            drop = min(late, len(actions) - 1)
            actions = actions[drop:]
        with self._lock:
            self._queue = np.array(actions, np.float32)
        record = {"episode": self._episode, "obs_step": result["obs_step"],
                  "arrival_step": self.step, "delay_steps": late,
                  "compute_s": round(result["compute_s"], 6), "dropped": drop,
                  "kept": len(actions), "delay_assumed": result["delay"]}  # fmt: skip
        self.chunks.append(record)
        log.debug("chunk: %s", record)
        if self.log_path is not None:
            if self._log is None:
                self._log = open(self.log_path, "a")  # noqa: SIM115
            self._log.write(json.dumps(record) + "\n")


class _Worker:
    """The planner thread: one job at a time; the tick polls for the result."""

    def __init__(self, compute):
        self._compute = compute
        self._cv = threading.Condition()
        self._job: dict[str, Any] | None = None
        self._result: dict[str, Any] | None = None
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="robodistill-planner",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, job: dict[str, Any]) -> None:
        with self._cv:
            self._job, self._result = job, None
            self._cv.notify()

    def poll(self) -> dict[str, Any] | None:
        with self._cv:
            result, self._result = self._result, None
            return result

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running (tests)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._job is None and not self._busy, timeout)

    def stop(self, timeout: float) -> bool:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._job is not None or self._stopping)
                if self._stopping:
                    return
                job, self._job, self._busy = self._job, None, True
            try:
                result = self._compute(job)
            except Exception as e:  # a failed plan: logged; the queue runs on and holds
                log.error("planner: %s: %s", type(e).__name__, e)
                result = {**job, "failed": True}
            with self._cv:
                self._busy = False
                if not self._stopping:
                    self._result = result
                self._cv.notify_all()
