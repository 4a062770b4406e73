"""Real-time chunking (RTC): plan the next chunk consistent with the actions that will
execute while it is being computed.

When a chunk is requested at control step ``t``, the action queue still holds ``r``
actions of the previous chunk for steps ``t .. t+r-1`` (the *leftover*); the first ``d`` of
them (``d``: the inference delay in control steps) execute before the new chunk can
arrive, whatever it says. RTC (Black et al., 2025, "Real-Time Execution of Action Chunking
Flow Policies") therefore conditions the new chunk on the leftover with prefix weights
(:func:`prefix_weights`): 1 for the first ``d`` steps (frozen), decaying to 0 at the end
of the overlap ``r`` (soft), 0 after it (free)::

    weight  1 |####....
              |        ``--..__
            0 +----------------+-------------> step after t
              0       d        r

How the weights are used depends on the kind of file (:class:`ChunkPlanner`):

* ``denoise`` mode (the diffusion teacher, RTI): *guided inpainting* inside the denoising
  loop. Before every step at noise level ``alpha_bar`` the sample is pulled toward the
  forward-noised leftover: ``x <- (1 - w) x + w (sqrt(alpha_bar) y + sqrt(1 - alpha_bar) eps)``
  (``y`` the leftover in the graph's normalized action space, from
  :meth:`~robodistill.deploy.runtime.OnnxPolicy.action_map`). **Deviation from the paper**:
  RTC corrects each step with a vector-Jacobian product of the denoiser (guidance weight
  capped at ``max_guidance``); a numpy + onnxruntime runtime has no autograd, so this is
  the training-free inpainting variant (RePaint-style replacement, soft-weighted), which
  REFERENCES names as the alternative. ``max_guidance`` is kept as a config key for a
  future VJP form and unused here.
* ``direct`` mode with a chunk (the 1-step consistency student): one network call leaves
  nothing to guide, so the output is *blended*: ``a <- w y + (1 - w) a`` with the same
  soft prefix weights (the soft-prefix schedule).
* fallback (``rtc=False`` with ``aggregate="blend"``): a plain blend of the overlap with a
  constant weight (LeRobot's aggregation, 0.3 old + 0.7 new).

Every mode ends with the same blend, so the frozen prefix equals the leftover exactly
(those actions are executed from the old chunk anyway; pinning them keeps the chunk's
own record consistent).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEDULES = ("exp", "linear", "ones", "zeros")


@dataclass(frozen=True)
class RtcSettings:
    """RTC's knobs (defaults: the RTC paper's exponential schedule; LeRobot's guidance cap).

    Attributes:
        schedule: soft-prefix weights between ``d`` and the overlap's end: ``exp`` (the
            paper's ``c (e^c - 1) / (e - 1)``), ``linear``, ``ones`` (hard inpainting of the
            whole overlap) or ``zeros`` (only the frozen prefix).
        delay: the inference delay ``d`` in control steps; ``None``: measured (the largest
            of the last chunks' delays).
        max_guidance: the VJP guidance cap of the published form (unused by inpainting).
        blend_steps: the 1-step blend's soft region ends this many steps after ``d``
            (capped at the overlap's end; ``None``: the whole overlap, as the guidance;
            2 measured best of None / 2 / 4 on Nav, ``benchmarks/delay.py``).
            A literal blend follows the older plan far more than guidance does (guidance
            only pulls the sample where the model agrees), so a short ramp keeps the
            chunk's own actions soon after the frozen prefix. Ours, not the paper's.
    """

    schedule: str = "exp"
    delay: int | None = None
    max_guidance: float = 10.0
    blend_steps: int | None = 2

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"rtc schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.delay is not None and self.delay < 0:
            raise ValueError(f"rtc delay must be >= 0 control steps, got {self.delay}")
        if self.blend_steps is not None and self.blend_steps < 0:
            raise ValueError(f"rtc blend_steps must be >= 0, got {self.blend_steps}")


def prefix_weights(length: int, delay: int, overlap: int, schedule: str = "exp") -> np.ndarray:
    """Weights (length,) of the leftover for the steps ``0 .. length-1`` after the request:
    1 below ``delay``, the soft ``schedule`` from ``delay`` to ``overlap``, 0 from
    ``overlap`` on (RTC's ``W``, with ``H - s`` = the overlap)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    i = np.arange(length, dtype=np.float64)
    overlap = int(max(0, min(overlap, length)))
    delay = int(max(0, min(delay, overlap)))
    w = np.zeros(length)
    w[:delay] = 1.0
    soft = (i >= delay) & (i < overlap)
    if schedule == "ones":
        w[soft] = 1.0
    elif schedule != "zeros" and soft.any():
        c = (overlap - i[soft]) / (overlap - delay + 1)  # in (0, 1): 1 - 1/(n+1) .. 1/(n+1)
        w[soft] = c if schedule == "linear" else c * np.expm1(c) / np.expm1(1.0)
    return w.astype(np.float32)


def blend(chunk: np.ndarray, leftover: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``chunk`` (T, A) with its first ``len(leftover)`` rows pulled to ``leftover`` (r, A):
    ``w y + (1 - w) a`` row by row, ``weights`` (r,)."""
    out = np.array(chunk, np.float32, copy=True)
    r = min(len(leftover), len(out))
    if r:
        w = weights[:r, None]
        out[:r] = w * leftover[:r] + (1 - w) * out[:r]
    return out


class ChunkPlanner:
    """Plans action chunks from an :class:`~robodistill.deploy.runtime.OnnxPolicy`, with RTC.

    ``plan(hist, leftover, delay, steps_since)`` -> actions (n, A) for the control steps
    ``t, t+1, ...`` from the observation at ``t`` (``n = horizon``: the chunk from its
    ``current_index`` on; 1 for a file that outputs one action).

    Args:
        policy: the loaded file. Stateless files plan with ``predict`` on the given
            observation history; a stateful one (streaming) acts through ``act`` on the
            newest observation, one action per plan (no chunk, so no RTC).
        rtc: :class:`RtcSettings`, or ``None`` (no RTC).
        aggregate: without RTC, ``"replace"`` (the new chunk replaces the queue) or
            ``"blend"`` (the overlap blended with ``blend_weight`` on the new chunk).
        blend_weight: the new chunk's weight in ``"blend"`` (LeRobot: 0.7).
        seed: the inpainting's own noise draws (the policy's ``rng`` draws stay those of
            the plain sampler, so zero weights reproduce it exactly).
    """

    def __init__(self, policy, rtc: RtcSettings | None = None, aggregate: str = "replace",
                 blend_weight: float = 0.7, seed: int = 0):  # fmt: skip
        if aggregate not in ("replace", "blend"):
            raise ValueError(f"aggregate must be 'replace' or 'blend', got {aggregate!r}")
        if not 0.0 <= blend_weight <= 1.0:
            raise ValueError(f"blend_weight must be in [0, 1], got {blend_weight}")
        self.policy, self.rtc = policy, rtc
        self.aggregate, self.blend_weight = aggregate, float(blend_weight)
        self.stateful = bool(getattr(policy, "_state", None))
        self.chunked = bool(getattr(policy, "_chunked", False)) and not self.stateful
        self.start = int(getattr(policy, "start", 0)) if self.chunked else 0
        self.horizon = int(policy.prediction) - self.start if self.chunked else 1
        self.denoise = self.chunked and policy.mode == "denoise"
        self._map = policy.action_map() if self.denoise and rtc is not None else None
        self._warm = self.denoise and bool(policy.metadata.get("denoise", {}).get("warm_start"))
        self._plan: np.ndarray | None = None  # RTI: the last final sample (T, A)
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """A new episode: forget the warm-start plan (and a stateful file's state)."""
        self._plan = None
        self.policy.reset()

    def plan(self, hist: np.ndarray, leftover: np.ndarray | None = None, delay: int = 0,
             steps_since: int | None = None) -> np.ndarray:  # fmt: skip
        """``hist`` (To, D) the observation history at ``t`` (oldest first); ``leftover``
        (r, A) the queued actions for ``t .. t+r-1``; ``delay`` d in control steps;
        ``steps_since`` control steps since the previous plan's observation (RTI's warm
        start shift; ``None``: cold). Returns (horizon, A) float32."""
        p = self.policy
        if self.stateful:
            return np.asarray(p.act(hist[-1][None]), np.float32).reshape(1, -1)
        obs = hist[None] if p._obs_rank == 3 else hist[-1][None]
        r = 0 if leftover is None else len(leftover)
        weights = None
        if r and self.rtc is not None:
            end = r
            if not self.denoise and self.rtc.blend_steps is not None:
                end = min(r, delay + self.rtc.blend_steps)
            weights = prefix_weights(r, delay, end, self.rtc.schedule)
        elif r and self.aggregate == "blend":
            weights = np.full(r, 1.0 - self.blend_weight, np.float32)
            weights[: min(delay, r)] = 1.0  # those execute from the old chunk regardless
        if not self.chunked:
            return np.asarray(p.predict(obs), np.float32).reshape(1, -1)
        warm = None
        if self._warm and self._plan is not None and steps_since is not None:
            warm = _shift(self._plan, steps_since)[None]
        guide = None
        if self.denoise and self.rtc is not None and weights is not None and weights.any():
            guide = self._guide(leftover, weights, self.rng)
        if self.denoise:
            chunk, final = p.predict(obs, guide=guide, warm=warm, return_sample=True)
            self._plan = final[0]
        else:
            chunk = p.predict(obs)
        actions = np.asarray(chunk, np.float32)[0, self.start :]
        if weights is not None:
            actions = blend(actions, leftover, weights)
        return actions

    def _guide(self, leftover: np.ndarray, weights: np.ndarray, rng: np.random.Generator):
        """The inpainting correction for ``predict(guide=...)``: sample (1, T, A)."""
        scale, offset = self._map
        safe = np.where(np.abs(scale) > 1e-8, scale, 1.0)
        y = np.zeros((self.horizon + self.start, leftover.shape[1]), np.float32)
        w = np.zeros(len(y), np.float32)
        r = min(len(leftover), self.horizon)
        y[self.start : self.start + r] = (leftover[:r] - offset) / safe
        w[self.start : self.start + r] = weights[:r]
        y, w = np.clip(y, -1.0, 1.0)[None], w[None, :, None]

        def guide(x: np.ndarray, coef: np.ndarray) -> np.ndarray:
            sa = float(coef[0])
            known = sa * y + np.sqrt(max(0.0, 1.0 - sa * sa)) * rng.standard_normal(x.shape)
            return (1 - w) * x + w * known

        return guide


def _shift(plan: np.ndarray, shift: int) -> np.ndarray:
    """(T, A): drop the first ``shift`` actions, repeat the last (RTI's warm start)."""
    shift = min(max(int(shift), 0), len(plan) - 1)
    if shift == 0:
        return plan.copy()
    return np.concatenate([plan[shift:], np.repeat(plan[-1:], shift, axis=0)], axis=0)
