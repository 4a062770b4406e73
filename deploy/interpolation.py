"""A high-rate interpolation layer: the controller ticks at the robot's rate (500-1,000 Hz)
while the policy decides at its own rate (e.g. 10 Hz).

:class:`InterpolatingPolicy` wraps a policy for a
:class:`~robodistill.deploy.controller.Controller` running at ``rate_hz = ratio x
policy_hz``: on every ``ratio``-th tick (a *policy tick*) it calls the inner policy and
sends its action unchanged; on the ticks between it sends a point of the curve from that
action to the next one. The next action is known ahead when the inner policy has a queue
(:meth:`~robodistill.deploy.async_control.AsyncPolicy.peek`); otherwise the command holds
(zero-order) until the next policy tick. The controller's clamp and slew-rate limit then
act on every high-rate command (``slew_rate`` per second becomes ``slew_rate / rate_hz``
per tick), and the curve itself is clipped to the action limits (a cubic can overshoot).

Curves between knots ``a_j`` (at ``u = 0``) and ``a_{j+1}`` (``u = 1``):

* ``linear``: ``a_j + u (a_{j+1} - a_j)``;
* ``cubic``: Catmull-Rom (Hermite with tangents ``(a_{j+1} - a_{j-1}) / 2``), C1 through
  the knots; the missing neighbour at either end is the knot itself;
* ``minjerk``: ``a_j + (10 u^3 - 15 u^4 + 6 u^5)(a_{j+1} - a_j)``, zero velocity and
  acceleration at the knots (Flash & Hogan).

:class:`SubsampledRobot` is the simulation side: a robot whose simulator steps at the
policy rate takes the high-rate commands and steps on every ``ratio``-th one — the one sent
on a policy tick, i.e. exactly the policy's action.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METHODS = ("linear", "cubic", "minjerk", "hold")


def interpolate(method: str, prev: np.ndarray, a0: np.ndarray, a1: np.ndarray,
                nxt: np.ndarray, u: float) -> np.ndarray:  # fmt: skip
    """The point at ``u`` in [0, 1] between knots ``a0`` and ``a1`` (A,); ``prev`` / ``nxt``
    the knots before ``a0`` and after ``a1`` (cubic only). ``u = 0`` gives ``a0`` exactly."""
    if method == "hold" or u <= 0.0:
        return np.array(a0, np.float32, copy=True)
    if method == "linear":
        return (a0 + u * (a1 - a0)).astype(np.float32)
    if method == "minjerk":
        s = u**3 * (10 - 15 * u + 6 * u * u)
        return (a0 + s * (a1 - a0)).astype(np.float32)
    if method == "cubic":
        m0, m1 = (a1 - prev) / 2, (nxt - a0) / 2
        u2, u3 = u * u, u * u * u
        h00, h10, h01, h11 = 2 * u3 - 3 * u2 + 1, u3 - 2 * u2 + u, -2 * u3 + 3 * u2, u3 - u2
        return (h00 * a0 + h10 * m0 + h01 * a1 + h11 * m1).astype(np.float32)
    raise ValueError(f"interpolation must be one of {METHODS}, got {method!r}")


class InterpolatingPolicy:
    """Run ``inner`` every ``ratio`` controller ticks and interpolate between its actions.

    Args:
        inner: a policy with ``act(obs (1, D)) -> (1, A)`` and ``reset()``; with
            ``peek(n)`` (an AsyncPolicy) the curve runs toward the next queued action.
        ratio: controller ticks per policy tick (``rate_hz / policy_hz``, an integer >= 1).
        method: ``linear``, ``cubic``, ``minjerk`` or ``hold``.
        action_low, action_high: (A,) the curve is clipped to (default: the inner's).
    """

    def __init__(self, inner: Any, ratio: int, method: str = "linear",
                 action_low: np.ndarray | None = None,
                 action_high: np.ndarray | None = None):  # fmt: skip
        if int(ratio) != ratio or ratio < 1:
            raise ValueError(f"ratio must be an integer >= 1 (rate_hz / policy_hz), got {ratio}")
        if method not in METHODS:
            raise ValueError(f"interpolation must be one of {METHODS}, got {method!r}")
        self.inner, self.ratio, self.method = inner, int(ratio), method
        for name in ("observation_shape", "action_shape", "observation_low",
                     "observation_high", "control_rate_hz"):  # fmt: skip
            setattr(self, name, getattr(inner, name, None))
        low = action_low if action_low is not None else getattr(inner, "action_low", None)
        high = action_high if action_high is not None else getattr(inner, "action_high", None)
        self.action_low = None if low is None else np.asarray(low, np.float32).reshape(-1)
        self.action_high = None if high is None else np.asarray(high, np.float32).reshape(-1)
        self.reset()

    def reset(self, env_ids: Any = None) -> None:
        """A new episode: the next tick is a policy tick."""
        self.phase = 0
        self._prev = self._a0 = self._a1 = self._nxt = None
        self.inner.reset()

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    def act(self, obs: Any) -> np.ndarray:
        """(1, *observation_shape) -> (1, *action_shape): the policy's action on a policy
        tick, a point of the curve between them otherwise."""
        if self.phase == 0:
            action = np.asarray(self.inner.act(obs), np.float32)
            shape = action.shape
            a0 = action.reshape(-1)
            self._prev = a0 if self._a0 is None else self._a0
            self._a0 = a0
            ahead = self._ahead(2)
            self._a1 = ahead[0] if len(ahead) > 0 else a0
            self._nxt = ahead[1] if len(ahead) > 1 else self._a1
            self._shape = shape
            out = a0
        else:
            u = self.phase / self.ratio
            out = interpolate(self.method, self._prev, self._a0, self._a1, self._nxt, u)
        self.phase = (self.phase + 1) % self.ratio
        if self.action_low is not None:
            out = np.clip(out, self.action_low, self.action_high)
        return np.asarray(out, np.float32).reshape(self._shape)

    def _ahead(self, n: int) -> np.ndarray:
        peek = getattr(self.inner, "peek", None)
        if not callable(peek):
            return np.zeros((0, 0), np.float32)
        return np.asarray(peek(n), np.float32).reshape(-1, self._a0.size)


class SubsampledRobot:
    """A robot whose simulator steps once per ``ratio`` commands (a SimRobot at the policy
    rate under a high-rate controller): the command of every ``ratio``-th ``apply`` after an
    episode starts (the one sent on a policy tick) steps it, the others are checked by the
    controller and dropped. Everything else is the inner robot's."""

    def __init__(self, robot: Any, ratio: int):
        if int(ratio) != ratio or ratio < 1:
            raise ValueError(f"ratio must be an integer >= 1, got {ratio}")
        self.robot, self.ratio = robot, int(ratio)
        self._count = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.robot, name)

    def observe(self) -> np.ndarray:
        obs = self.robot.observe()
        if getattr(self.robot, "new_episode", False):
            self._count = 0
        return obs

    def apply(self, action: np.ndarray) -> None:
        if self._count % self.ratio == 0:
            self.robot.apply(action)
        self._count += 1

    def safe_action(self) -> np.ndarray:
        return self.robot.safe_action()
