"""The high-rate interpolation layer (``robodistill.deploy.interpolation``): the policy's
actions pass through at policy ticks, the curve stays within the limits, and the
controller's slew check acts at the high rate."""

from __future__ import annotations

import numpy as np
import pytest

from robodistill.deploy.controller import Controller, SimulatedClock
from robodistill.deploy.interpolation import (
    METHODS,
    InterpolatingPolicy,
    SubsampledRobot,
    interpolate,
)

LOW, HIGH = np.array([-1.0, -1.0], np.float32), np.array([1.0, 1.0], np.float32)
# Knots that make a cubic overshoot: a step from -1 to 1 and back, at the limits.
KNOTS = np.array([[-1, 0], [-1, 0.5], [1, 1], [1, -1], [-1, 0.2], [0.3, 0.3], [0.3, 0.3]] * 3,
                 np.float32)  # fmt: skip


class QueuePolicy:
    """Pops the next knot per act; ``peek`` shows the ones after it (like AsyncPolicy)."""

    observation_shape, action_shape = (1,), (2,)
    action_low, action_high = LOW, HIGH

    def __init__(self, knots):
        self.knots, self.i = knots, 0

    def reset(self, env_ids=None):
        self.i = 0

    def act(self, obs):
        a = self.knots[min(self.i, len(self.knots) - 1)]
        self.i += 1
        return a[None].copy()

    def peek(self, n):
        return self.knots[self.i : self.i + n].copy()


class Recorder:
    def __init__(self):
        self.commands = []

    def observe(self):
        return np.zeros(1, np.float32)

    def apply(self, action):
        self.commands.append(np.array(action, np.float32))

    def safe_action(self):
        return np.zeros(2, np.float32)


@pytest.mark.parametrize("method", METHODS)
def test_policy_actions_pass_through_at_policy_ticks_and_limits_hold(method):
    ratio = 50  # 500 Hz controller, 10 Hz policy
    policy = InterpolatingPolicy(QueuePolicy(KNOTS), ratio, method)
    out = np.array([policy.act(np.zeros((1, 1)))[0] for _ in range(ratio * (len(KNOTS) - 1))])
    np.testing.assert_array_equal(out[::ratio], KNOTS[: len(KNOTS) - 1])
    assert (out >= LOW).all() and (out <= HIGH).all()
    if method == "hold":
        assert (out == np.repeat(KNOTS[:-1], ratio, axis=0)).all()
    else:  # continuous: no high-rate jump larger than the largest knot step
        assert np.abs(np.diff(out, axis=0)).max() < np.abs(np.diff(KNOTS, axis=0)).max()


def test_curves():
    a0, a1 = np.array([0.0]), np.array([2.0])
    assert interpolate("linear", a0, a0, a1, a1, 0.25)[0] == pytest.approx(0.5)
    assert interpolate("minjerk", a0, a0, a1, a1, 0.5)[0] == pytest.approx(1.0)
    assert interpolate("minjerk", a0, a0, a1, a1, 0.1)[0] < 0.2  # slow start
    # Catmull-Rom on equally spaced collinear knots is the straight line.
    assert interpolate("cubic", -a1, a0, a1, 2 * a1, 0.3)[0] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="interpolation"):
        interpolate("spline", a0, a0, a1, a1, 0.5)
    with pytest.raises(ValueError, match="ratio"):
        InterpolatingPolicy(QueuePolicy(KNOTS), 2.5)


def test_slew_limit_acts_at_the_high_rate():
    ratio, rate = 10, 100.0
    policy = InterpolatingPolicy(QueuePolicy(KNOTS), ratio, "hold")
    robot = Recorder()
    clock = SimulatedClock()
    result = Controller(policy, robot, rate, slew_rate=5.0, clock=clock, sleep=clock.sleep,
                        handle_sigint=False).run(ticks=ratio * 6)  # fmt: skip
    steps = np.abs(np.diff(np.array(robot.commands[:-1]), axis=0))
    assert steps.max() <= 5.0 / rate + 1e-6  # per high-rate tick, not per policy tick
    assert result.slew_limited > 0


class StepCounter(Recorder):
    new_episode = False

    def __init__(self):
        super().__init__()
        self.stepped = []

    def apply(self, action):
        self.stepped.append(np.array(action, np.float32))


def test_subsampled_robot_steps_with_the_policy_actions():
    ratio = 5
    inner = StepCounter()
    robot = SubsampledRobot(inner, ratio)
    policy = InterpolatingPolicy(QueuePolicy(KNOTS), ratio, "cubic")
    for _ in range(ratio * 4):
        obs = robot.observe()
        robot.apply(policy.act(obs[None])[0])
    np.testing.assert_array_equal(np.array(inner.stepped), KNOTS[:4])
