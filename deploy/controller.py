"""A fixed-rate control loop with absolute deadlines, fault handling and a tick log.

::

    controller = Controller(OnnxPolicy("policy.onnx"), robot, rate_hz=50, log_path="ticks.jsonl")
    result = controller.run(ticks=10_000)        # or until robot.done, stop() or Ctrl-C
    print(result.to_dict())                      # latency median/p99/max, misses, faults

Tick ``k`` is scheduled at ``t0 + k / rate_hz`` on a monotonic clock and must finish (its
command applied) by the next slot: sleeping until an absolute time, rather than for a
period, keeps the loop from drifting however long each tick takes. A tick that overruns
makes the loop skip the slots whose deadline has already passed (counted), never burst.

Each tick: ``robot.observe()`` -> input validation (:mod:`robodistill.deploy.guards`: a
real-number dtype converted to float32, exactly the expected shape — never reshaped —,
finite, and within the declared observation bounds) -> ``policy.act(obs[None])[0]`` ->
output validation (shape, finite; clamped to the action limits; optional slew-rate limit)
-> ``robot.apply(action)``. On a fault — an invalid or out-of-bounds observation, an
exception in the robot or the policy, inference that ends after the tick's late-time, a
non-finite or wrong-shaped action — the robot's ``safe_action()`` is sent instead, the fault
is counted by kind (:data:`~robodistill.deploy.guards.FAULT_KINDS`, in the result and in the
tick log), and the loop goes on (``on_fault="continue"``) or stops (``"stop"``). However the
loop ends (ticks done, ``robot.done``, :meth:`Controller.stop`, SIGINT, too many faults, an
unexpected exception), the safe action is the last command sent.

``safe_action()`` itself is checked before the first tick and every time it is asked for
(the action shape, finite, within the action limits). One that raises or is invalid is
never sent: it is a ``safe_action`` fault, the loop stops (the reason says why, and it is
logged) and the last valid safe action is sent instead; when there is none — the check
before the first tick failed — the loop does not start and nothing is sent.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# ControlResult and summarize_ms are imported from here too (robodistill.deploy, benchmarks).
from robodistill.deploy.control_result import ControlResult, RunStats, summarize_ms
from robodistill.deploy.guards import FAULT_KINDS, ObservationGuard, action_problem

__all__ = ["FAULT_KINDS", "ControlResult", "Controller", "summarize_ms"]
log = logging.getLogger(__name__)


class SimulatedClock:
    """A clock that only ``sleep`` advances (a negative sleep, a late tick's, is none): pass
    it as both ``clock`` and ``sleep`` (``clock=c, sleep=c.sleep``) to run the controller's
    slots in simulated time, whatever the machine's load (benchmarks, tests)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += max(dt, 0.0)


class Controller:
    """Run ``policy`` on ``robot`` at ``rate_hz``.

    Args:
        policy: anything with ``act(obs (1, ...)) -> (1, ...)`` and ``reset()``
            (an :class:`~robodistill.deploy.runtime.OnnxPolicy`, or a torch Policy).
        robot: a :class:`~robodistill.deploy.robot.Robot`.
        rate_hz: control rate.
        on_fault: ``"continue"`` (send the safe action, go on) or ``"stop"``.
        max_faults: stop once more faults than this have happened (``None``: no limit).
        action_low, action_high: limits the action is clamped to; default the policy's
            ``action_low``/``action_high`` (an OnnxPolicy has them), else the robot's. The
            safe action must lie within them.
        observation_shape: the exact shape of one observation; default the policy's
            ``observation_shape``, else the robot's, else the first valid observation's.
        observation_low, observation_high: declared observation bounds; default the
            policy's ``observation_low``/``observation_high`` (an OnnxPolicy has them from
            the file's metadata), else the robot's (SimRobot: the env's observation space).
        check_bounds: an observation outside those bounds is a ``bounds`` fault (``False``:
            no bounds check, for bounds that are nominal rather than physical).
        slew_rate: largest change of each action component per second (``None``: off);
            each tick's change is limited to ``slew_rate / rate_hz``. Safe actions bypass it.
        late_after: inference ending later than ``late_after`` periods after the tick's
            slot is a ``late`` fault (default 1.0: past the tick's deadline).
        log_path: write one JSON line per tick (and a final ``stop`` line) here.
        clock, sleep: monotonic clock and sleep (injectable for tests).
        spin_s: sleep until this long before a slot, then poll the clock (lower jitter,
            more CPU); 0 sleeps the whole way. Must be 0 with a fake clock that only
            ``sleep`` advances.
        handle_sigint: while running (in the main thread), SIGINT stops the loop cleanly.
        realtime_priority: run the loop's thread under Linux ``SCHED_FIFO`` at this priority
            (1-99) while running, so other processes cannot delay a tick (needs root,
            CAP_SYS_NICE or an rtprio limit; without them the loop warns and runs normally).
    """

    def __init__(
        self,
        policy: Any,
        robot: Any,
        rate_hz: float,
        *,
        on_fault: str = "continue",
        max_faults: int | None = None,
        action_low: np.ndarray | None = None,
        action_high: np.ndarray | None = None,
        slew_rate: float | np.ndarray | None = None,
        late_after: float = 1.0,
        log_path: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        spin_s: float = 0.0,
        handle_sigint: bool = True,
        realtime_priority: int | None = None,
        observation_shape: tuple[int, ...] | None = None,
        observation_low: np.ndarray | None = None,
        observation_high: np.ndarray | None = None,
        check_bounds: bool = True,
    ):
        if not (isinstance(rate_hz, (int, float)) and math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"rate_hz must be a positive number, got {rate_hz!r}")
        if on_fault not in ("continue", "stop"):
            raise ValueError(f"on_fault must be 'continue' or 'stop', got {on_fault!r}")
        if max_faults is not None and max_faults < 0:
            raise ValueError(f"max_faults must be >= 0 or None, got {max_faults}")
        if late_after <= 0:
            raise ValueError(f"late_after must be > 0 periods, got {late_after}")
        missing = [n for n in ("observe", "apply", "safe_action")
                   if not callable(getattr(robot, n, None))]  # fmt: skip
        if missing:
            raise TypeError(f"robot {type(robot).__name__} lacks {', '.join(missing)}: a robot "
                            "implements observe(), apply(action) and safe_action(); see "
                            "robodistill.deploy.robot.Robot")  # fmt: skip
        self.policy, self.robot = policy, robot
        self.rate_hz = float(rate_hz)
        self.period = 1.0 / self.rate_hz
        self.on_fault, self.max_faults = on_fault, max_faults
        low = action_low if action_low is not None else _attr(policy, robot, "action_low")
        high = action_high if action_high is not None else _attr(policy, robot, "action_high")
        self.action_low = None if low is None else np.asarray(low, np.float32).reshape(-1)
        self.action_high = None if high is None else np.asarray(high, np.float32).reshape(-1)
        if slew_rate is not None and np.any(np.asarray(slew_rate) <= 0):
            raise ValueError(f"slew_rate must be > 0 (units per second), got {slew_rate}")
        self.max_step = None if slew_rate is None else np.asarray(slew_rate, np.float32) / rate_hz
        self.late_after = float(late_after)
        shape = observation_shape
        shape = _attr(policy, robot, "observation_shape") if shape is None else shape
        self.obs_shape = None if shape is None else tuple(shape)
        obs_low, obs_high = observation_low, observation_high
        if check_bounds and obs_low is None and obs_high is None:
            # The policy's declared bounds, else (none declared, or all infinite) the robot's.
            source = policy if _bounded(policy) else robot
            obs_low = getattr(source, "observation_low", None)
            obs_high = getattr(source, "observation_high", None)
        self._guard_args = (
            (self.obs_shape, obs_low, obs_high) if check_bounds else (self.obs_shape,)
        )
        self.observation_guard = ObservationGuard(*self._guard_args)
        act_shape = _attr(policy, robot, "action_shape")
        if act_shape is None and self.action_low is not None:
            act_shape = self.action_low.shape
        self.action_shape = None if act_shape is None else tuple(act_shape)
        self.log_path = None if log_path is None else Path(log_path)
        self.clock, self.sleep, self.spin_s = clock, sleep, float(spin_s)
        self.handle_sigint = handle_sigint
        if realtime_priority is not None and not 1 <= realtime_priority <= 99:
            raise ValueError(f"realtime_priority must be 1..99 or None, got {realtime_priority}")
        self.realtime_priority = realtime_priority
        self._stop_reason: str | None = None
        self._finishing = False
        self._last_safe: np.ndarray | None = None
        self._safe_failed = False

    def stop(self, reason: str = "stopped") -> None:
        """Ask the loop to end after the current tick (thread- and signal-safe)."""
        if self._stop_reason is None:
            self._stop_reason = reason

    # -- the loop ------------------------------------------------------------------------------
    def run(self, ticks: int | None = None, duration_s: float | None = None) -> ControlResult:
        """Run until ``ticks`` ticks, ``duration_s`` seconds, ``robot.done``, :meth:`stop`,
        SIGINT or a stopping fault; return the statistics."""
        self._stop_reason, self._finishing = None, False
        tick_log = open(self.log_path, "w") if self.log_path else None  # noqa: SIM115
        # Nothing below raises before the try: the handler is always restored.
        previous_handler = self._install_sigint()
        stats = RunStats()
        reason = "ticks"
        previous_sched = self._enter_realtime()
        stats.realtime = previous_sched is not None
        # Objects alive now (torch, gymnasium, ...) leave the collector's view: a full
        # collection during the loop then walks only what the loop itself allocated.
        gc.freeze()
        self._last_safe, self._safe_failed = None, False
        # A fresh guard per run: a shape learnt from the first observation is this run's.
        self.observation_guard = ObservationGuard(*self._guard_args)
        try:
            # The safe action is checked before anything moves: an invalid one stops the
            # run here (a safe_action fault), and nothing is ever sent.
            self._safe_action(stats, [], when="at start")
            self.policy.reset()
            t0 = stats.t0 = self.clock()
            # Slots that start within duration_s (counted in slots: no float cancellation).
            max_slots = (
                math.inf if duration_s is None else math.ceil(duration_s * self.rate_hz - 1e-9)
            )
            slot_index, prev_action, episode = 0, None, 0
            while True:
                if ticks is not None and stats.ticks >= ticks:
                    break
                if getattr(self.robot, "done", False):
                    reason = "robot done"
                    break
                slot = t0 + slot_index * self.period
                if slot_index >= max_slots:
                    reason = "duration"
                    break
                self._wait_until(slot)
                if self._stop_reason is not None:
                    break
                start = self.clock()
                tick = self._tick(slot, start, prev_action, stats)
                end = stats.t_end = self.clock()
                if tick["new_episode"]:
                    episode += 1
                if not tick["faults"]:
                    prev_action = tick["action"]
                missed = end > slot + self.period
                stats.record(start - slot, end - start, tick["infer"], missed)
                # Slots whose deadline has already passed cannot be met: skip, don't burst.
                next_index = slot_index + 1
                while t0 + (next_index + 1) * self.period <= end:
                    next_index += 1
                stats.skipped += next_index - slot_index - 1
                if tick_log:
                    tick_log.write(json.dumps({
                        "tick": stats.ticks - 1, "slot": slot_index, "t": round(start - t0, 6),
                        "jitter_ms": round((start - slot) * 1e3, 4),
                        "latency_ms": round((end - start) * 1e3, 4),
                        "infer_ms": None if tick["infer"] is None else round(tick["infer"] * 1e3, 4),
                        "missed": missed, "fault": tick["fault"], "faults": tick["faults"],
                        "error": tick["error"], "safe": tick["safe"], "episode": episode,
                        "action": None if tick["action"] is None
                        else [round(float(a), 6) for a in np.ravel(tick["action"])],
                    }) + "\n")  # fmt: skip
                slot_index = next_index
                if tick["faults"]:
                    if self.on_fault == "stop":
                        self.stop(f"fault: {tick['fault']}")
                    elif self.max_faults is not None and stats.total_faults > self.max_faults:
                        self.stop(f"more than {self.max_faults} faults")
            reason = self._stop_reason or reason
        except BaseException as e:
            reason = f"exception: {type(e).__name__}: {e}"
            raise
        finally:
            self._finishing = True  # a Ctrl-C now must not cut off the final safe action
            final = self._send_safe_final(stats)
            close = getattr(self.policy, "close", None)
            if callable(close):  # an AsyncPolicy's planner thread ends with the loop
                close()
            gc.unfreeze()
            self._leave_realtime(previous_sched)
            self._restore_sigint(previous_handler)
            if tick_log:
                tick_log.write(json.dumps({"event": "stop", "reason": reason, "ticks": stats.ticks,
                                           "safe_action": final, "faults": dict(stats.faults)})
                               + "\n")  # fmt: skip
                tick_log.close()
        episodes = list(getattr(self.robot, "results", []) or [])
        return stats.result(reason, self.rate_hz, episodes)

    def _tick(self, slot: float, start: float, prev_action, stats: RunStats) -> dict[str, Any]:
        faults: list[tuple[str, str]] = []  # (kind, message) in the order they happened

        def fault(kind: str, message: str) -> None:
            _add_fault(stats, faults, kind, message)

        infer = None
        new_episode = False
        action = None
        try:
            obs = self.robot.observe()
            new_episode = bool(getattr(self.robot, "new_episode", False))
        except Exception as e:
            fault("robot", f"observe: {type(e).__name__}: {e}")
        if not faults:
            if new_episode:
                # A new episode: fresh history/queues, and no slew limit against the last
                # episode's final command (a simulator teleports between episodes).
                self.policy.reset()
                prev_action = None
            obs, kind, error = self.observation_guard(obs)
            if kind is not None:
                fault(kind, error)
        if not faults:
            t_in = self.clock()
            try:
                action = np.asarray(self.policy.act(obs[None]), dtype=np.float32)[0]
            except Exception as e:
                fault("policy", f"{type(e).__name__}: {e}")
            done = self.clock()
            infer = done - t_in
            if not faults and done > slot + self.late_after * self.period:
                fault("late", f"inference ended {(done - slot) * 1e3:.3f} ms after slot")
            elif not faults:
                # The limits are not checked here: beyond them, an action is clamped.
                problem = action_problem(action, self.action_shape, None, None)
                if problem:
                    fault("action", f"policy action {problem}")
        if not faults:
            action = self._limit(action, prev_action, stats)
        else:
            action = self._safe_action(stats, faults)
        if action is not None:  # None: there is no valid safe action; nothing is sent
            try:
                self.robot.apply(action)
            except Exception as e:
                fault("robot", f"apply: {type(e).__name__}: {e}")
                action = self._safe_action(stats, faults)
                try:
                    if action is not None:
                        self.robot.apply(action)
                except Exception as e2:  # the robot cannot take commands at all: stop
                    self.stop(f"robot failed: {type(e2).__name__}: {e2}")
        return {"action": action, "fault": faults[0][0] if faults else None,
                "faults": [k for k, _ in faults],
                "error": "; ".join(m for _, m in faults) if faults else None,
                "infer": infer, "new_episode": new_episode, "safe": bool(faults)}  # fmt: skip

    def _limit(self, action: np.ndarray, prev: np.ndarray | None, stats: RunStats) -> np.ndarray:
        flat = action.reshape(-1)
        if self.action_low is not None:
            clipped = np.clip(flat, self.action_low, self.action_high)
            stats.clamped += int(np.any(clipped != flat))
            flat = clipped
        if self.max_step is not None and prev is not None:
            p = prev.reshape(-1)
            limited = np.clip(flat, p - self.max_step, p + self.max_step)
            stats.slew_limited += int(np.any(limited != flat))
            flat = limited
        return flat.reshape(action.shape)

    def _safe_action(
        self, stats: RunStats, faults: list[tuple[str, str]], when: str = "while handling a fault"
    ) -> np.ndarray | None:
        """A checked ``robot.safe_action()`` (counted in ``safe_actions``), or — when it
        raises or is invalid (a ``safe_action`` fault, which stops the loop) — the last
        valid one; ``None`` when there has never been a valid one."""
        if not self._safe_failed:
            try:
                candidate = self.robot.safe_action()
                problem = action_problem(candidate, self.action_shape, self.action_low,
                                         self.action_high)  # fmt: skip
            except Exception as e:
                problem = f"raised {type(e).__name__}: {e}"
            if problem is None:
                self._last_safe = np.array(candidate, dtype=np.float32)
            else:
                # Asked again later, a broken safe_action() could also hang or move: never.
                self._safe_failed = True
                fallback = "none was ever valid" if self._last_safe is None else (
                    "sending the last valid one")  # fmt: skip
                message = f"safe_action() {when}: {problem}; {fallback}"
                _add_fault(stats, faults, "safe_action", message)
                log.error("controller: %s; stopping", message)
                self.stop(f"safe_action failed {when}: {problem}")
        if self._last_safe is None:
            return None
        if when == "while handling a fault":  # the start check and shutdown are not counted
            stats.safe_actions += 1
        return self._last_safe.copy()

    def _send_safe_final(self, stats: RunStats) -> list[float] | str:
        try:
            action = self._safe_action(stats, [], when="at shutdown")
            if action is None:
                return "not sent: the robot has no valid safe action"
            self.robot.apply(action)
            return [float(a) for a in action.ravel()]
        except Exception as e:
            return f"failed: {type(e).__name__}: {e}"

    def _wait_until(self, target: float) -> None:
        while self._stop_reason is None:
            remaining = target - self.clock()
            if remaining <= 0:
                return
            if remaining > self.spin_s:
                self.sleep(remaining - self.spin_s)

    # -- scheduling ---------------------------------------------------------------------------
    def _enter_realtime(self):
        if self.realtime_priority is None:
            return None
        try:
            previous = (os.sched_getscheduler(0), os.sched_getparam(0))
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.realtime_priority))
            return previous
        except (AttributeError, OSError) as e:
            log.warning("realtime_priority=%s: cannot use SCHED_FIFO (%s); running at normal "
                        "priority", self.realtime_priority, e)  # fmt: skip
            return None

    @staticmethod
    def _leave_realtime(previous) -> None:
        if previous is not None:
            os.sched_setscheduler(0, *previous)

    # -- SIGINT -----------------------------------------------------------------------------------
    def _install_sigint(self):
        if not self.handle_sigint or threading.current_thread() is not threading.main_thread():
            return None

        def on_sigint(signum, frame):
            if self._finishing:
                return
            if self._stop_reason == "interrupted":
                raise KeyboardInterrupt  # a second Ctrl-C: leave now (safe action still sent)
            self.stop("interrupted")

        return signal.signal(signal.SIGINT, on_sigint)

    def _restore_sigint(self, previous) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _add_fault(stats: RunStats, faults: list[tuple[str, str]], kind: str, message: str) -> None:
    faults.append((kind, message))
    stats.faults[kind] += 1


def _bounded(obj: Any) -> bool:
    bounds = [getattr(obj, n, None) for n in ("observation_low", "observation_high")]
    return any(b is not None and np.isfinite(np.asarray(b, np.float64)).any() for b in bounds)


def _attr(policy: Any, robot: Any, name: str):
    value = getattr(policy, name, None)
    return value if value is not None else getattr(robot, name, None)
