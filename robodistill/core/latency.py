"""Latency of a torch-side policy at batch 1 on one thread, the numbers the students are
judged by, in two units that must not be mixed.

A *decision* (:func:`decision_latency`) is what the policy computes when it has to decide
something new:

* chunked policies (diffusion teacher, RTI, consistency student): one chunk, i.e. one call
  of :meth:`ChunkedPolicy.plan` on a full observation history (RTI: the warm-started plan
  after the first one, which is what it costs in steady state);
* every other policy (streaming student, MLP and RL policies): one :meth:`Policy.act` call
  of a running episode (the streaming student's steady-state buffer update).

A chunk covers ``action_horizon`` control steps and a streaming ``act`` one, so decisions of
the two kinds are not comparable. :func:`policy_tick_latency` (and :func:`control_tick_latency`
for any ``act``, the onnxruntime one included) times *control ticks* instead and reports both
comparable numbers: the **worst tick** (a tick that plans: what a controller waits for) and
the **compute per control step** (a plan cycle's time over its ticks), with the network
calls measured by :func:`count_network_calls` (a forward hook on the denoiser).

Times are wall-clock milliseconds after untimed warm-up; median and p99.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robodistill.core.threads import torch_threads
from robodistill.policies import Policy
from robodistill.policies.chunking import ChunkedPolicy


def decision_latency(
    policy: Policy, obs: np.ndarray, decisions: int = 100, warmup: int = 5, threads: int = 1
) -> dict[str, Any]:
    """Time ``decisions`` decisions of ``policy`` on observation ``obs`` (D,) at batch 1 with
    ``threads`` torch threads. Returns ``median_ms``, ``p99_ms``, ``mean_ms``, ``decisions``
    and ``kind`` (``plan`` or ``act``); the policy is reset before and after."""

    obs = np.asarray(obs, dtype=np.float32).reshape(1, -1)
    times = []
    with torch_threads(threads):
        try:
            policy.reset()
            if isinstance(policy, ChunkedPolicy):
                policy.act(obs)  # builds the per-row state the plan reads (history, RTI's plan)
                hist = policy._state["hist"].clone()
                rows = torch.arange(1)

                def decide() -> None:
                    policy.plan(hist, rows)

                kind = "plan"
            else:

                def decide() -> None:
                    policy.act(obs)

                kind = "act"
            with torch.no_grad():
                for i in range(warmup + decisions):
                    t0 = time.perf_counter()
                    decide()
                    if i >= warmup:
                        times.append(time.perf_counter() - t0)
        finally:
            policy.reset()
    ms = np.asarray(times) * 1e3
    return {"kind": kind, "decisions": int(decisions), "median_ms": float(np.median(ms)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "threads": threads}  # fmt: skip


# -- control ticks: the worst tick and the compute per control step ---------------------------
def denoiser(policy: Policy) -> torch.nn.Module:
    """The network ``policy`` evaluates when it acts: the EMA network of the diffusion teacher
    (RTI included), the consistency student and the streaming student."""
    if not has_denoiser(policy):
        raise TypeError(f"{type(policy).__name__} has no denoiser network (ema_net) to count")
    return policy.ema_net


@dataclass
class NetworkCalls:
    """What :func:`count_network_calls` saw: ``calls`` batched forward calls of the denoiser,
    ``rows`` denoiser evaluations (the sum of their batch sizes), ``act_rows`` control steps
    (batch rows of every ``act`` call), ``plan_rows`` rows that planned (chunked policies:
    rows that went through :meth:`ChunkedPolicy.plan`; every ``act`` row otherwise)."""

    calls: int = 0
    rows: int = 0
    act_rows: int = 0
    plan_rows: int = 0

    @property
    def per_step(self) -> float | None:
        """Denoiser evaluations per control step of one env row."""
        return self.rows / self.act_rows if self.act_rows else None

    @property
    def per_plan(self) -> float | None:
        """Denoiser evaluations per plan of one env row."""
        return self.rows / self.plan_rows if self.plan_rows else None

    def as_dict(self) -> dict[str, Any]:
        return {"per_plan": self.per_plan, "per_step": self.per_step, "calls": self.calls,
                "rows": self.rows, "act_rows": self.act_rows, "plan_rows": self.plan_rows}  # fmt: skip


@contextmanager
def count_network_calls(policy: Policy) -> Iterator[NetworkCalls]:
    """Count, while the block runs, the forward calls of ``policy``'s :func:`denoiser` (a
    forward hook: what the network really ran, not what a config says), its ``act`` rows
    and, for a :class:`ChunkedPolicy`, the rows it planned."""
    counts = NetworkCalls()
    chunked = isinstance(policy, ChunkedPolicy)
    act, plan = policy.act, getattr(policy, "plan", None)

    def on_forward(_module, args, _output) -> None:
        counts.calls += 1
        counts.rows += int(args[0].shape[0]) if args and torch.is_tensor(args[0]) else 1

    def counted_act(obs):
        rows = int(np.asarray(obs).shape[0])
        counts.act_rows += rows
        if not chunked:
            counts.plan_rows += rows
        return act(obs)

    def counted_plan(obs_hist, rows):
        counts.plan_rows += int(rows.numel())
        return plan(obs_hist, rows)

    handle = denoiser(policy).register_forward_hook(on_forward)
    saved = {name: policy.__dict__[name] for name in ("act", "plan") if name in policy.__dict__}
    policy.act = counted_act  # instance attributes shadow the methods until the block ends
    if chunked:
        policy.plan = counted_plan
    try:
        yield counts
    finally:
        handle.remove()
        for name in ("act", "plan"):
            policy.__dict__.pop(name, None)
        policy.__dict__.update(saved)


def _stats_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        return {"median_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    return {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "mean_ms": float(ms.mean())}  # fmt: skip


def control_tick_latency(
    act: Callable[[], object],
    calls: Callable[[], int] | None = None,
    *,
    plans: int = 50,
    warmup: int = 2,
    max_steps: int = 1_000_000,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Time control ticks (``act()``: one control step) and split them by what they cost.

    ``calls()`` is a running count of network calls (a :class:`NetworkCalls`' ``calls``, an
    onnxruntime session's runs); a tick that raised it *plans* (chunked policies: the tick
    whose queue ran out; the streaming student: every tick). Without ``calls`` every tick
    plans. After ``warmup`` untimed planning cycles (a fresh episode's first plan, RTI's cold
    start), ``plans`` complete cycles are timed; a cycle is a planning tick and the ticks that
    follow it up to the next plan. Returns, in milliseconds:

    * ``worst_tick``: the planning ticks (median / p99 / max / mean): the control step that
      has to wait for the network;
    * ``per_step``: each cycle's time divided by its ticks (median / p99 / max over cycles;
      ``mean_ms`` = all cycles' time / all their ticks): the compute per control step,
      amortized over the executed actions;
    * ``other_tick``: the ticks that do not plan (popping a queued action);
    * ``plans``, ``steps``, ``steps_per_plan``, ``calls_per_plan`` (mean; ``calls_per_plan_max``)
      and ``calls_per_step`` over the timed cycles: measured, not configured.
    """
    if plans < 1 or warmup < 0:
        raise ValueError(f"plans must be >= 1 and warmup >= 0, got {plans} and {warmup}")
    count = calls if calls is not None else (lambda: 0)
    seen, timed, ticks = 0, 0, []  # ticks: (seconds, calls, planned) from the first timed plan
    for _ in range(max_steps):
        before = count()
        t0 = clock()
        act()
        dt = clock() - t0
        n = count() - before
        planned = n > 0 or calls is None
        seen += planned
        if seen <= warmup:
            continue
        if planned and timed == plans:
            break  # this plan closes the last timed cycle (it is not timed itself)
        timed += planned
        ticks.append((dt, n, planned))
    else:
        raise RuntimeError(f"{max_steps} control steps made fewer than {warmup + plans + 1} "
                           "plans; is the network counter wired to the policy?")  # fmt: skip
    cycles: list[list[tuple[float, int]]] = []
    for dt, n, planned in ticks:
        if planned:
            cycles.append([])
        cycles[-1].append((dt, n))
    plan_ticks = [c[0][0] for c in cycles]
    other = [dt for c in cycles for dt, _ in c[1:]]
    per_step = [sum(dt for dt, _ in c) / len(c) for c in cycles]
    steps = sum(len(c) for c in cycles)
    total_calls = sum(n for c in cycles for _, n in c)
    plan_calls = [c[0][1] for c in cycles]
    return {
        "worst_tick": _stats_ms(plan_ticks),
        "per_step": _stats_ms(per_step) | {"mean_ms": sum(dt for dt, *_ in ticks) / steps * 1e3},
        "other_tick": _stats_ms(other),
        "plans": len(cycles),
        "steps": steps,
        "steps_per_plan": steps / len(cycles),
        "calls_per_plan": None if calls is None else float(np.mean(plan_calls)),
        "calls_per_plan_max": None if calls is None else int(max(plan_calls)),
        "calls_per_step": None if calls is None else total_calls / steps,
    }


def has_denoiser(policy: Policy) -> bool:
    """Whether :func:`count_network_calls` can count ``policy``'s network calls."""
    return isinstance(getattr(policy, "ema_net", None), torch.nn.Module)


def policy_tick_latency(
    policy: Policy, obs: np.ndarray, plans: int = 50, warmup: int = 2, threads: int = 1
) -> dict[str, Any]:
    """:func:`control_tick_latency` of a torch ``policy`` stepping ``act`` at batch 1 on the
    fixed observation ``obs`` (D,) with ``threads`` torch threads, its network calls counted
    by :func:`count_network_calls`; the policy is reset before and after.

    A policy without a :func:`denoiser` (MLP and RL policies: one forward pass per ``act``)
    is timed with every tick as a plan and no call count (``calls_*`` None); a
    :class:`ChunkedPolicy` must have one (a ``TypeError`` otherwise)."""
    x = np.asarray(obs, dtype=np.float32).reshape(1, -1)
    counted = has_denoiser(policy) or isinstance(policy, ChunkedPolicy)
    counter = count_network_calls(policy) if counted else nullcontext(None)
    with torch_threads(threads), torch.no_grad(), counter as counts:
        policy.reset()
        try:
            result = control_tick_latency(lambda: policy.act(x),
                                          (lambda: counts.calls) if counts is not None else None,
                                          plans=plans, warmup=warmup)  # fmt: skip
        finally:
            policy.reset()
    return result | {"threads": threads}
