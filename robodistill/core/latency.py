"""Per-decision latency of a torch-side policy at batch 1 on one thread, the number the
students are judged by (the ONNX side is :func:`robodistill.deploy.runtime.time_act`).

A *decision* is what the policy computes when it has to decide something new:

* chunked policies (diffusion teacher, RTI, consistency student): one chunk, i.e. one call
  of :meth:`ChunkedPolicy.plan` on a full observation history (RTI: the warm-started plan
  after the first one, which is what it costs in steady state);
* every other policy (streaming student, MLP and RL policies): one :meth:`Policy.act` call
  of a running episode (the streaming student's steady-state buffer update).

Times are wall-clock milliseconds after ``warmup`` untimed decisions; median and p99.
"""

from __future__ import annotations

import time
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
