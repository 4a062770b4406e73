"""The strict controller: exact observation shapes, the dtype rule, declared observation
bounds, a checked safe action — each violation a counted fault with a safe behaviour, and
no exception out of ``Controller.run()``. Fake clock, robot and policy; no torch."""

from __future__ import annotations

import collections
import json
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from robodistill.deploy.controller import FAULT_KINDS, Controller
from robodistill.deploy.metadata import FORMAT, METADATA_KEY
from robodistill.deploy.robot import SimRobot
from robodistill.deploy.runtime import OnnxPolicy

D = 27
SAFE = np.array([0.0, 0.0], np.float32)
GOOD = np.full(D, 0.5, np.float32)


class Clock:
    """Time moves only when someone sleeps or spends it."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        self.now += dt


class Robot:
    """Observations, exceptions and safe actions scripted by tick / by call."""

    def __init__(self):
        self.tick = -1
        self.observations: dict[int, object] = {}  # tick -> observation or exception
        self.safe_calls = 0
        self.safe_script: dict[int, object] = {}  # safe_action() call -> action or exception
        self.applied: list[np.ndarray] = []

    def observe(self):
        self.tick += 1
        value = self.observations.get(self.tick, GOOD)
        if isinstance(value, Exception):
            raise value
        return value

    def apply(self, action) -> None:
        self.applied.append(np.array(action, dtype=np.float64))  # NaN and shapes kept as sent

    def safe_action(self):
        i = self.safe_calls
        self.safe_calls += 1
        value = self.safe_script.get(i, SAFE)
        if isinstance(value, Exception):
            raise value
        return np.array(value)


class Policy:
    observation_shape = (D,)
    observation_low = np.full(D, -1.0, np.float32)
    observation_high = np.full(D, 1.0, np.float32)
    action_low = np.array([-1.0, -1.0], np.float32)
    action_high = np.array([1.0, 1.0], np.float32)

    def __init__(self, clock: Clock):
        self.clock = clock
        self.seen: list[np.ndarray] = []
        self.outputs: dict[int, object] = {}  # call -> action, exception, or seconds (late)

    def reset(self, env_ids=None) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        self.seen.append(obs)
        self.clock.sleep(0.0002)
        out = self.outputs.get(len(self.seen) - 1)
        if isinstance(out, Exception):
            raise out
        if isinstance(out, float):  # spend this long: past the deadline
            self.clock.sleep(out)
            out = None
        return np.asarray([[0.25, -0.25]] if out is None else out, np.float32)


def run(robot=None, policy=None, ticks=10, log_path=None, **kwargs):
    clock = Clock()
    robot = robot or Robot()
    policy = policy or Policy(clock)
    policy.clock = clock
    controller = Controller(policy, robot, 100.0, clock=clock, sleep=clock.sleep,
                            log_path=log_path, **kwargs)  # fmt: skip
    return controller.run(ticks=ticks), robot, policy


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def is_safe(action) -> bool:
    return np.array_equal(action, SAFE)


@pytest.mark.parametrize("shape", [(3, 9), (27, 1), (1, 27)])
def test_a_same_size_observation_of_another_shape_is_a_fault_not_reshaped(shape, tmp_path):
    robot = Robot()
    robot.observations[2] = GOOD.reshape(shape)
    result, robot, policy = run(robot, log_path=tmp_path / "t.jsonl")
    assert result.ticks == 10 and result.faults["observation"] == 1
    assert sum(result.faults.values()) == 1 and result.safe_actions == 1
    assert is_safe(robot.applied[2]) and not is_safe(robot.applied[1])
    assert len(policy.seen) == 9 and all(o.shape == (1, D) for o in policy.seen)
    row = rows_of(tmp_path / "t.jsonl")[2]
    assert row["faults"] == ["observation"] and row["infer_ms"] is None
    assert f"observation shape {shape}, expected exactly ({D},)" in row["error"]


def test_the_dtype_rule():
    robot = Robot()
    robot.observations[1] = GOOD.astype(np.float64)  # floats of any width: converted
    robot.observations[2] = np.zeros(D, np.int64)  # integers: converted
    robot.observations[3] = np.ones(D, bool)  # bool: refused
    robot.observations[4] = np.full(D, 1e39)  # float64 beyond float32: inf, refused
    robot.observations[5] = np.full(D, 1 + 1j)  # complex: refused
    robot.observations[6] = [0.5] * D  # a list of numbers: an array
    result, robot, policy = run(robot)
    assert result.faults["observation"] == 3 and sum(result.faults.values()) == 3
    assert [is_safe(a) for a in robot.applied[:7]] == [False] * 3 + [True] * 3 + [False]
    assert all(o.dtype == np.float32 for o in policy.seen)
    assert len(policy.seen) == 7


def test_an_observation_outside_the_declared_bounds_is_a_bounds_fault(tmp_path):
    far = GOOD.copy()
    far[4] = 1e30
    robot = Robot()
    robot.observations[3] = far
    result, robot, policy = run(robot, log_path=tmp_path / "t.jsonl")
    assert result.faults["bounds"] == 1 and sum(result.faults.values()) == 1
    assert is_safe(robot.applied[3]) and len(policy.seen) == 9
    row = rows_of(tmp_path / "t.jsonl")[3]
    assert row["faults"] == ["bounds"] and "entries [4] outside the declared bounds" in row["error"]

    # The check is optional: off, the observation reaches the policy.
    robot = Robot()
    robot.observations[3] = far
    result, robot, policy = run(robot, check_bounds=False)
    assert sum(result.faults.values()) == 0 and len(policy.seen) == 10


def bounded_policy_onnx(path, low: float, high: float) -> None:
    """obs (B, 3) -> obs[:, :2] * 0.1, with robodistill metadata declaring bounds."""
    graph = helper.make_graph(
        [helper.make_node("Slice", ["obs", "starts", "ends", "axes"], ["head"]),
         helper.make_node("Mul", ["head", "k"], ["action"])],
        "bounded", [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
         helper.make_tensor("ends", TensorProto.INT64, [1], [2]),
         helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
         helper.make_tensor("k", TensorProto.FLOAT, [], [0.1])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    doc = {
        "format": FORMAT, "format_version": 1, "policy_kind": "bounded",
        "observation": {"shape": [3], "low": [low, None, low], "high": [high, None, high]},
        "action": {"shape": [2], "low": [-1.0, -1.0], "high": [1.0, 1.0]},
        "inputs": [{"name": "obs", "role": "observation", "shape": ["batch", 3]}],
        "outputs": [{"name": "action", "role": "action", "shape": ["batch", 2]}],
    }  # fmt: skip
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(doc)
    onnx.save(model, str(path))


def test_the_bounds_come_from_the_onnx_metadata(tmp_path):
    bounded_policy_onnx(tmp_path / "p.onnx", -5.0, 5.0)
    policy = OnnxPolicy(tmp_path / "p.onnx")
    robot = Robot()
    robot.observations = {t: np.array([1.0, 1e30, 1.0], np.float32) for t in range(6)}
    robot.observations[2] = np.array([1e30, 0.0, 0.0], np.float32)  # entry 0 is bounded
    robot.observations[4] = np.array([0.0, 0.0, -6.0], np.float32)
    result, robot, _ = run(robot, policy, ticks=6)
    assert result.faults["bounds"] == 2 and sum(result.faults.values()) == 2
    assert [is_safe(a) for a in robot.applied[:6]] == [False, False, True, False, True, False]
    np.testing.assert_allclose(robot.applied[0], [0.1, 1.0])  # 1e29 clamped to the limit


def test_without_bounds_from_the_policy_the_robots_are_checked():
    class Unbounded(Policy):
        observation_low = observation_high = None

    class BoundedRobot(Robot):
        observation_low = np.full(D, -2.0, np.float32)
        observation_high = np.full(D, 2.0, np.float32)

    robot = BoundedRobot()
    robot.observations[1] = np.full(D, 3.0, np.float32)
    result, robot, _ = run(robot, Unbounded(Clock()))
    assert result.faults["bounds"] == 1 and is_safe(robot.applied[1])


@pytest.mark.parametrize(
    "bad",
    [RuntimeError("bus down"), [np.nan, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0]],
    ids=["raises", "nan", "wrong shape", "outside limits"],
)
def test_an_invalid_safe_action_while_handling_a_fault_stops_with_the_last_valid_one(
    bad, tmp_path, caplog
):
    robot = Robot()
    robot.observations[3] = np.full(D, np.nan, np.float32)  # a fault: the safe action is asked
    robot.safe_script[1] = bad  # call 0 is the check before the first tick
    with caplog.at_level(logging.ERROR, logger="robodistill.deploy.controller"):
        result, robot, _ = run(robot, ticks=50, log_path=tmp_path / "t.jsonl")
    assert result.ticks == 4 and result.reason.startswith("safe_action failed")
    assert result.faults["observation"] == 1 and result.faults["safe_action"] == 1
    # The last valid safe action went out instead, on the tick and at shutdown; nothing
    # invalid ever reached apply().
    assert len(robot.applied) == 5 and is_safe(robot.applied[3]) and is_safe(robot.applied[4])
    assert all(a.shape == (2,) and np.isfinite(a).all() for a in robot.applied)
    assert robot.safe_calls == 2  # a failed safe_action() is not asked again
    assert "safe_action()" in caplog.text
    rows = rows_of(tmp_path / "t.jsonl")
    assert rows[3]["faults"] == ["observation", "safe_action"] and rows[3]["safe"]
    assert rows[-1]["event"] == "stop" and rows[-1]["faults"]["safe_action"] == 1
    assert rows[-1]["safe_action"] == [0.0, 0.0]


@pytest.mark.parametrize(
    "bad",
    [RuntimeError("no brake"), [np.nan, 0.0], [0.0], [2.0, 0.0]],
    ids=["raises", "nan", "wrong shape", "outside limits"],
)
def test_an_invalid_safe_action_at_start_runs_nothing_and_sends_nothing(bad, tmp_path):
    robot = Robot()
    robot.safe_script[0] = bad
    result, robot, policy = run(robot, log_path=tmp_path / "t.jsonl")
    assert result.ticks == 0 and result.reason.startswith("safe_action failed at start")
    assert result.faults == {**dict.fromkeys(FAULT_KINDS, 0), "safe_action": 1}
    assert robot.applied == [] and policy.seen == [] and robot.tick == -1
    stop = rows_of(tmp_path / "t.jsonl")[-1]
    assert stop["safe_action"].startswith("not sent") and stop["faults"]["safe_action"] == 1


def test_a_wrong_shaped_policy_action_is_an_action_fault():
    clock = Clock()
    policy = Policy(clock)
    policy.outputs[2] = [[0.1, 0.2, 0.3]]
    result, robot, _ = run(Robot(), policy)
    assert result.faults["action"] == 1 and is_safe(robot.applied[2])
    assert all(a.shape == (2,) for a in robot.applied)


def test_every_fault_kind_is_counted_in_the_result_and_the_tick_log(tmp_path):
    clock = Clock()
    robot, policy = Robot(), Policy(clock)
    robot.observations[1] = np.zeros(5, np.float32)  # observation
    robot.observations[2] = np.full(D, 7.0, np.float32)  # bounds
    robot.observations[3] = TimeoutError("camera")  # robot
    policy.outputs[1] = ValueError("onnxruntime")  # policy (its 2nd call: tick 4)
    policy.outputs[2] = 0.05  # late (tick 5; a 10 ms period)
    policy.outputs[3] = [[np.inf, 0.0]]  # action (tick 6)
    robot.observations[8] = np.full(D, np.nan, np.float32)  # observation ...
    robot.safe_script[7] = RuntimeError("brake")  # ... and safe_action (call 0 is the start
    # check, 1-6 ticks 1-6): stops the run
    result, robot, policy = run(robot, policy, ticks=100, log_path=tmp_path / "t.jsonl")
    expected = dict.fromkeys(FAULT_KINDS, 1) | {"observation": 2}
    assert result.faults == expected and result.reason.startswith("safe_action failed")
    rows = rows_of(tmp_path / "t.jsonl")
    logged = collections.Counter(k for r in rows[:-1] for k in r["faults"])
    assert logged == expected and rows[-1]["faults"] == expected
    assert [r["fault"] for r in rows[:-1]] == [None, "observation", "bounds", "robot", "policy",
                                               "late", "action", None, "observation"]  # fmt: skip
    assert all(is_safe(robot.applied[i]) for i in range(1, 7)) and is_safe(robot.applied[8])
    assert result.safe_actions == 7


def test_sim_robot_refuses_an_invalid_safe_action_and_exposes_its_observation_space():
    with pytest.raises(ValueError, match="safe_action has shape"):
        SimRobot("Pendulum-v1", safe_action=np.zeros(2))
    with pytest.raises(ValueError, match="not finite or not within"):
        SimRobot("Pendulum-v1", safe_action=np.array([5.0]))
    robot = SimRobot("Pendulum-v1")
    assert robot.observation_shape == (3,)
    np.testing.assert_array_equal(robot.observation_high, [1.0, 1.0, 8.0])
    robot.close()
