"""What a :class:`~robodistill.deploy.controller.Controller` run reports: the
:class:`ControlResult`, the per-run counters behind it, and :func:`summarize_ms`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from robodistill.deploy.guards import FAULT_KINDS


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
    """Faults by kind, every kind of ``FAULT_KINDS`` present (0 when none happened)."""
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


class RunStats:
    """Counters and durations of one run (seconds), turned into a :class:`ControlResult`."""

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
