"""``robodistill control --async [--rtc] --hz 500 --policy-hz 10``: the flags, the config keys
and how ``robodistill.control`` wraps the policy and the robot for them."""

from __future__ import annotations

import numpy as np
import pytest

from robodistill.cli import build_parser, resolve_config
from robodistill.config import ConfigError
from robodistill.control import control_ratio, wrap_policy
from robodistill.deploy.async_control import AsyncPolicy
from robodistill.deploy.interpolation import InterpolatingPolicy, SubsampledRobot
from robodistill.deploy.rtc import RtcSettings


def _config(*argv):
    return resolve_config(build_parser().parse_args(["control", *argv]))


def test_flags_set_the_control_keys():
    cfg = _config("model.onnx", "--async", "--rtc", "--hz", "500", "--policy-hz", "10",
                  "--interpolation", "minjerk")  # fmt: skip
    c = cfg.control
    assert (c.model, c.mode, c.rtc, c.hz, c.policy_hz, c.interpolation) == (
        "model.onnx", "async", True, 500.0, 10.0, "minjerk")  # fmt: skip
    defaults = _config().control
    assert (defaults.mode, defaults.rtc, defaults.policy_hz) == ("sync", False, None)
    assert (defaults.queue_threshold, defaults.rtc_schedule, defaults.blend_weight) == (
        0.5, "exp", 0.7)  # fmt: skip


def test_policy_rate_must_divide_the_control_rate():
    assert control_ratio(500.0, 10.0) == 50 and control_ratio(50.0, None) == 1
    with pytest.raises(ConfigError, match="policy_hz"):
        control_ratio(500.0, 30.0)
    with pytest.raises(ConfigError, match="policy_hz"):
        control_ratio(10.0, 20.0)


class Fake:
    """Enough of an OnnxPolicy for the wrappers."""

    observation_shape, action_shape, observation_dim, action_dim = (2,), (1,), 2, 1
    action_low, action_high = np.array([-1.0], np.float32), np.array([1.0], np.float32)
    history, prediction, start, execute = 1, 8, 1, 4
    mode, metadata, _chunked, _state, _obs_rank = "direct", {}, True, [], 2

    def reset(self):
        pass


class Robot:
    def safe_action(self):
        return np.array([0.5], np.float32)


def test_wrap_policy_builds_the_async_and_high_rate_layers():
    c = _config("--async", "--rtc", "--hz", "500", "--policy-hz", "10").control
    driver, robot = wrap_policy(Fake(), Robot(), c, 50, None)
    assert isinstance(driver, InterpolatingPolicy) and driver.ratio == 50
    assert isinstance(robot, SubsampledRobot) and robot.ratio == 50
    inner = driver.inner
    assert isinstance(inner, AsyncPolicy) and inner.planner.rtc == RtcSettings()
    assert inner.hold_action.tolist() == [0.5] and inner.threshold_n == 3
    sync = _config().control
    assert wrap_policy(Fake(), Robot(), sync, 1, None)[0].__class__ is Fake
    with pytest.raises(ConfigError, match="rtc"):
        wrap_policy(Fake(), Robot(), _config("--rtc").control, 1, None)
