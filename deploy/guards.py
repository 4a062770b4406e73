"""What the controller checks before it uses an observation or sends a safe action.

Observations (:class:`ObservationGuard`), in this order, each failure a fault of the kind
named:

* ``observation``: not convertible to an array; a dtype that is not a real number (the
  dtype rule: float16/32/64 and signed or unsigned integers are accepted and converted to
  float32; bool, complex, object, string and datetime arrays are refused); a shape other
  than exactly the expected one (``(3, 9)``, ``(27, 1)`` or ``(1, 27)`` where ``(27,)`` is
  expected is a fault, never reshaped: a same-size array in another layout is a wiring bug,
  not an observation); a NaN or inf entry, including a float64 value too large for float32
  (it becomes inf in the conversion);
* ``bounds``: a finite entry outside the declared ``[low, high]`` (when bounds are declared
  and the check is on).

Actions (:func:`action_problem`): the expected shape exactly, finite, and within the action
limits. The controller checks ``robot.safe_action()`` with it once before the first tick and
every time it asks for one; an invalid safe action is never sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FAULT_KINDS = ("observation", "bounds", "robot", "policy", "late", "action", "safe_action")
"""Every fault the controller counts (``ControlResult.faults`` and the tick log):
``observation`` (invalid: type, dtype, shape, NaN/inf), ``bounds`` (outside the declared
observation bounds), ``robot`` (``observe``/``apply`` raised), ``policy`` (``act`` raised),
``late`` (inference ended after the tick's late time), ``action`` (the policy's action is
not finite or has the wrong shape), ``safe_action`` (``robot.safe_action()`` raised, or
returned an action of the wrong shape, not finite, or outside the limits)."""

_REAL_KINDS = "fiu"  # numpy dtype kinds: float, signed int, unsigned int


def _bounds(values: Any, size: int, sign: float) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    if arr.size != size:
        raise ValueError(f"observation bounds have {arr.size} entries, expected {size}")
    return np.where(np.isnan(arr), sign * np.inf, arr).astype(np.float32)


class ObservationGuard:
    """Validate one observation (no batch axis) for the controller.

    Args:
        shape: the exact expected shape (a policy's ``observation_shape``); ``None``: the
            shape of the first valid observation becomes the expected one.
        low, high: the declared bounds, any shape with one entry per element (``None``, NaN
            or inf entries: unbounded there); ``None`` for both turns the bounds check off.
    """

    def __init__(self, shape: tuple[int, ...] | None, low: Any = None, high: Any = None):
        self.shape = None if shape is None else tuple(int(d) for d in shape)
        self.low = self.high = None
        if low is not None or high is not None:
            given = np.asarray(low if low is not None else high).size
            size = given if self.shape is None else int(np.prod(self.shape))
            lo = _bounds(low, size, -1.0)
            hi = _bounds(high, size, 1.0)
            lo = np.full(size, -np.inf, np.float32) if lo is None else lo
            hi = np.full(size, np.inf, np.float32) if hi is None else hi
            if np.isfinite(lo).any() or np.isfinite(hi).any():
                self.low, self.high = lo, hi

    @property
    def bounded(self) -> bool:
        """Whether observations are checked against bounds."""
        return self.low is not None

    def __call__(self, obs: Any) -> tuple[np.ndarray | None, str | None, str | None]:
        """``obs`` -> ``(observation as float32 of the expected shape, None, None)``, or
        ``(None, fault kind, message)``."""
        try:
            x = np.asarray(obs)
        except Exception as e:
            return None, "observation", f"observation is not an array: {type(e).__name__}: {e}"
        if x.dtype.kind not in _REAL_KINDS:
            return None, "observation", (f"observation dtype {x.dtype} is not a real number "
                                         "type (float or integer)")  # fmt: skip
        if self.shape is not None and x.shape != self.shape:
            return None, "observation", (f"observation shape {x.shape}, expected exactly "
                                         f"{self.shape} (no reshape)")  # fmt: skip
        with np.errstate(over="ignore"):  # float64 beyond float32's range -> inf, a fault below
            x = x.astype(np.float32, copy=False)
        finite = np.isfinite(x)
        if not finite.all():
            where = np.flatnonzero(~finite.reshape(-1))[:8].tolist()
            return None, "observation", f"observation contains NaN or inf (entries {where})"
        if self.low is not None and x.size != self.low.size:
            return None, "observation", (f"observation shape {x.shape} has {x.size} entries, "
                                         f"the declared bounds {self.low.size}")  # fmt: skip
        if self.shape is None:
            self.shape = x.shape  # the first valid observation fixes the layout
        if self.low is not None:
            flat = x.reshape(-1)
            out = (flat < self.low) | (flat > self.high)
            if out.any():
                i = np.flatnonzero(out)
                j = int(i[0])
                message = (f"observation entries {i[:8].tolist()} outside the declared bounds "
                           f"(entry {j}: {float(flat[j]):.6g} not in [{float(self.low[j]):.6g}, "
                           f"{float(self.high[j]):.6g}])")  # fmt: skip
                return None, "bounds", message
        return x, None, None


def action_problem(
    action: Any, shape: tuple[int, ...] | None, low: np.ndarray | None, high: np.ndarray | None
) -> str | None:
    """What is wrong with ``action`` (exact ``shape`` unless ``None``; finite; within
    ``[low, high]`` (A,) when given), or ``None`` when nothing is."""
    try:
        a = np.asarray(action, dtype=np.float32)
    except Exception as e:
        return f"not an array of numbers ({type(e).__name__}: {e})"
    if shape is not None and a.shape != tuple(shape):
        return f"shape {a.shape}, expected {tuple(shape)}"
    if not np.isfinite(a).all():
        return "contains NaN or inf"
    if low is not None and high is not None:
        flat = a.reshape(-1)
        if flat.size != low.size:
            return f"{flat.size} entries, the action limits have {low.size}"
        out = (flat < low) | (flat > high)
        if out.any():
            return f"entries {np.flatnonzero(out)[:8].tolist()} outside the action limits"
    return None
