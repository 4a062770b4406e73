"""A fixed-rate control loop with absolute deadlines, fault handling and a tick log.

::

    controller = Controller(OnnxPolicy("policy.onnx"), robot, rate_hz=50, log_path="ticks.jsonl")
    result = controller.run(ticks=10_000)        # or until robot.done, stop() or Ctrl-C
    print(result.to_dict())                      # latency median/p99/max, misses, faults

Tick ``k`` is scheduled at ``t0 + k / rate_hz`` on a monotonic clock and must finish (its
command applied) by the next slot: sleeping until an absolute time, rather than for a
period, keeps the loop from drifting however long each tick takes. A tick that overruns
makes the loop skip the slots whose deadline has already passed (counted), never burst.

Each tick: ``robot.observe()`` -> input validation (shape, dtype, finite) ->
``policy.act(obs[None])[0]`` -> output validation (finite; clamped to the action limits;
optional slew-rate limit) -> ``robot.apply(action)``. On a fault — an invalid observation,
an exception in the robot or the policy, inference that ends after the tick's late-time, a
non-finite action — the robot's ``safe_action()`` is sent instead, the fault is counted by
kind, and the loop goes on (``on_fault="continue"``) or stops (``"stop"``). However the loop
ends (ticks done, ``robot.done``, :meth:`Controller.stop`, SIGINT, too many faults, an
unexpected exception), the safe action is the last command sent.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FAULT_KINDS = ("observation", "robot", "policy", "late", "action")
log = logging.getLogger(__name__)


def summarize_ms(seconds: list[float] | np.ndarray) -> dict[str, float | None]:
    """Median, p99 and max of durations in seconds, reported in milliseconds."""
    x = np.asarray(seconds, dtype=np.float64)
    if x.size == 0:
        return {"median": None, "p99": None, "max": None}
    return {
        "median": round(float(np.median(x)) * 1e3, 4),
        "p99": round(float(np.percentile(x, 99)) * 1e3, 4),
        "max": round(float(x.max()) * 1e3, 4),
    }


@dataclass
class ControlResult:
    """What one :meth:`Controller.run` did. Times are in milliseconds."""

    ticks: int
    reason: str
    rate_hz: float
    duration_s: float
    deadline_misses: int
    miss_rate: float
    skipped_slots: int
    safe_actions: int
    faults: dict[str, int]
    latency_ms: dict[str, float | None]
    """Tick latency: from the tick's start (before observe) to the command applied."""
    inference_ms: dict[str, float | None]
    jitter_ms: dict[str, float | None]
    """How late each tick started after its scheduled slot."""
    slew_limited: int
    clamped: int
    realtime: bool
    """Whether the loop ran under SCHED_FIFO (``realtime_priority``)."""
    episodes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
            ``action_low``/``action_high`` (an OnnxPolicy has them), else the robot's.
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
        self.obs_shape = getattr(policy, "observation_shape", None)
        self.log_path = None if log_path is None else Path(log_path)
        self.clock, self.sleep, self.spin_s = clock, sleep, float(spin_s)
        self.handle_sigint = handle_sigint
        if realtime_priority is not None and not 1 <= realtime_priority <= 99:
            raise ValueError(f"realtime_priority must be 1..99 or None, got {realtime_priority}")
        self.realtime_priority = realtime_priority
        self._stop_reason: str | None = None
        self._finishing = False

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
        stats = _Stats()
        reason = "ticks"
        previous_sched = self._enter_realtime()
        stats.realtime = previous_sched is not None
        # Objects alive now (torch, gymnasium, ...) leave the collector's view: a full
        # collection during the loop then walks only what the loop itself allocated.
        gc.freeze()
        try:
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
                if tick["fault"] is None:
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
                        "missed": missed, "fault": tick["fault"], "error": tick["error"],
                        "safe": tick["safe"], "episode": episode,
                        "action": [round(float(a), 6) for a in np.ravel(tick["action"])],
                    }) + "\n")  # fmt: skip
                slot_index = next_index
                if tick["fault"] is not None:
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
            final = self._send_safe_final()
            gc.unfreeze()
            self._leave_realtime(previous_sched)
            self._restore_sigint(previous_handler)
            if tick_log:
                tick_log.write(json.dumps({"event": "stop", "reason": reason, "ticks": stats.ticks,
                                      "safe_action": final}) + "\n")  # fmt: skip
                tick_log.close()
        episodes = list(getattr(self.robot, "results", []) or [])
        return stats.result(reason, self.rate_hz, episodes)

    def _tick(self, slot: float, start: float, prev_action, stats: _Stats) -> dict[str, Any]:
        fault = error = infer = None
        new_episode = False
        action = None
        try:
            obs = self.robot.observe()
            new_episode = bool(getattr(self.robot, "new_episode", False))
        except Exception as e:
            fault, error = "robot", f"observe: {type(e).__name__}: {e}"
        if fault is None:
            if new_episode:
                # A new episode: fresh history/queues, and no slew limit against the last
                # episode's final command (a simulator teleports between episodes).
                self.policy.reset()
                prev_action = None
            obs, error = self._check_observation(obs)
            fault = "observation" if error else None
        if fault is None:
            t_in = self.clock()
            try:
                action = np.asarray(self.policy.act(obs[None]), dtype=np.float32)[0]
            except Exception as e:
                fault, error = "policy", f"{type(e).__name__}: {e}"
            done = self.clock()
            infer = done - t_in
            if fault is None and done > slot + self.late_after * self.period:
                fault, error = "late", f"inference ended {(done - slot) * 1e3:.3f} ms after slot"
            elif fault is None and not np.all(np.isfinite(action)):
                fault, error = "action", "policy returned NaN or inf"
        if fault is None:
            action = self._limit(action, prev_action, stats)
        else:
            stats.faults[fault] += 1
            action = self._safe()
            stats.safe_actions += 1
        try:
            self.robot.apply(action)
        except Exception as e:
            stats.faults["robot"] += 1
            fault, error = "robot", f"apply: {type(e).__name__}: {e}"
            action = self._safe()
            stats.safe_actions += 1
            try:
                self.robot.apply(action)
            except Exception as e2:  # the robot cannot take commands at all: stop
                self.stop(f"robot failed: {type(e2).__name__}: {e2}")
        safe = fault is not None
        return {"action": action, "fault": fault, "error": error, "infer": infer,
                "new_episode": new_episode, "safe": safe}  # fmt: skip

    # -- validation -----------------------------------------------------------------------------
    def _check_observation(self, obs: Any) -> tuple[np.ndarray | None, str | None]:
        try:
            x = np.asarray(obs)
        except Exception as e:
            return None, f"observation is not an array: {e}"
        if x.dtype.kind not in "fiu":
            return None, f"observation dtype {x.dtype} is not a real number type"
        if self.obs_shape is not None and x.size != int(np.prod(self.obs_shape)):
            return None, f"observation shape {x.shape}, expected {tuple(self.obs_shape)}"
        x = x.astype(np.float32, copy=False)
        if not np.all(np.isfinite(x)):
            return None, "observation contains NaN or inf"
        return (x if self.obs_shape is None else x.reshape(self.obs_shape)), None

    def _limit(self, action: np.ndarray, prev: np.ndarray | None, stats: _Stats) -> np.ndarray:
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

    def _safe(self) -> np.ndarray:
        return np.asarray(self.robot.safe_action(), dtype=np.float32)

    def _send_safe_final(self) -> list[float] | str:
        try:
            action = self._safe()
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


def _attr(policy: Any, robot: Any, name: str):
    value = getattr(policy, name, None)
    return value if value is not None else getattr(robot, name, None)


class _Stats:
    def __init__(self):
        self.ticks = 0
        self.jitter: list[float] = []
        self.latency: list[float] = []
        self.infer: list[float] = []
        self.misses = 0
        self.skipped = 0
        self.safe_actions = 0
        self.clamped = 0
        self.slew_limited = 0
        self.faults = dict.fromkeys(FAULT_KINDS, 0)
        self.t0 = self.t_end = 0.0
        self.realtime = False

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    def record(self, jitter: float, latency: float, infer: float | None, missed: bool) -> None:
        self.ticks += 1
        self.jitter.append(jitter)
        self.latency.append(latency)
        if infer is not None:
            self.infer.append(infer)
        self.misses += int(missed)

    def result(self, reason: str, rate_hz: float, episodes: list) -> ControlResult:
        return ControlResult(
            ticks=self.ticks, reason=reason, rate_hz=rate_hz,
            duration_s=round(self.t_end - self.t0, 6),
            deadline_misses=self.misses,
            miss_rate=self.misses / self.ticks if self.ticks else 0.0,
            skipped_slots=self.skipped, safe_actions=self.safe_actions, faults=dict(self.faults),
            latency_ms=summarize_ms(self.latency), inference_ms=summarize_ms(self.infer),
            jitter_ms=summarize_ms(self.jitter), slew_limited=self.slew_limited,
            clamped=self.clamped, realtime=self.realtime, episodes=episodes,
        )  # fmt: skip
