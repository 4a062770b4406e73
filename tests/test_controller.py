"""The fixed-rate controller: deadline accounting on an injectable clock (no timing
asserts), faults -> safe action, output limits, SIGINT, the tick log, SimRobot."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from robodistill.deploy.controller import Controller
from robodistill.deploy.metadata import FORMAT, METADATA_KEY
from robodistill.deploy.robot import Robot, SimRobot
from robodistill.deploy.runtime import OnnxPolicy

SAFE = np.array([0.0, 0.0], np.float32)


class FakeClock:
    """Time moves only when someone sleeps or spends it; sleeps may overshoot."""

    def __init__(self, oversleep_s: float = 0.0, seed: int = 0):
        self.now = 1000.0
        self.oversleep_s = oversleep_s
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        assert dt >= 0
        self.now += dt + self.rng.uniform(0, self.oversleep_s)

    def spend(self, dt: float) -> None:
        self.now += dt


class FakeRobot:
    def __init__(self, clock: FakeClock, cost_s: float = 0.0003, episode_every: int = 0):
        self.clock, self.cost_s, self.episode_every = clock, cost_s, episode_every
        self.tick = -1
        self.applied: list[np.ndarray] = []
        self.observe_hooks: dict[int, object] = {}  # tick -> observation or exception
        self.apply_fails: set[int] = set()
        self.on_apply = None
        self.new_episode = False

    def observe(self) -> np.ndarray:
        self.tick += 1
        self.clock.spend(self.cost_s)
        self.new_episode = bool(self.episode_every) and self.tick % self.episode_every == 0
        hook = self.observe_hooks.get(self.tick)
        if isinstance(hook, Exception):
            raise hook
        if hook is not None:
            return hook
        return np.array([0.1 * self.tick, 1.0, -1.0], np.float32)

    def apply(self, action: np.ndarray) -> None:
        is_safe = np.array_equal(action, SAFE)
        if self.tick in self.apply_fails and not is_safe:
            raise ConnectionError("bus timeout")
        self.applied.append(np.array(action))
        if self.on_apply:
            self.on_apply(self)

    def safe_action(self) -> np.ndarray:
        return SAFE.copy()


class FakePolicy:
    observation_shape = (3,)
    action_low = np.array([-1.0, -1.0], np.float32)
    action_high = np.array([1.0, 1.0], np.float32)

    def __init__(self, clock: FakeClock, cost_s: float = 0.0005):
        self.clock, self.cost_s = clock, cost_s
        self.calls = 0
        self.resets = 0
        self.costs: dict[int, float] = {}  # call index -> extra seconds
        self.outputs: dict[int, object] = {}  # call index -> action or exception

    def reset(self, env_ids=None) -> None:
        self.resets += 1

    def act(self, obs: np.ndarray) -> np.ndarray:
        assert obs.shape == (1, 3) and obs.dtype == np.float32
        i = self.calls
        self.calls += 1
        self.clock.spend(self.cost_s + self.costs.get(i, 0.0))
        out = self.outputs.get(i)
        if isinstance(out, Exception):
            raise out
        if out is not None:
            return np.asarray(out, np.float32)[None]
        return np.array([[0.5, -0.5]], np.float32)


def make(clock, rate_hz=200.0, robot=None, policy=None, **kwargs):
    robot = robot or FakeRobot(clock)
    policy = policy or FakePolicy(clock)
    controller = Controller(policy, robot, rate_hz, clock=clock, sleep=clock.sleep, **kwargs)
    return controller, robot, policy


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_fixed_rate_loop_does_not_drift(tmp_path):
    # Every sleep overshoots by up to 0.4 ms and every tick costs ~1 ms; a loop sleeping
    # "one period" after each tick would drift by ~280 ms over 200 ticks.
    clock = FakeClock(oversleep_s=0.0004)
    controller, robot, _ = make(clock, 200.0, log_path=tmp_path / "ticks.jsonl")
    result = controller.run(ticks=200)
    assert result.ticks == 200 and result.reason == "ticks"
    assert result.deadline_misses == 0 and result.skipped_slots == 0 and result.miss_rate == 0.0
    ticks = [r for r in read_log(tmp_path / "ticks.jsonl") if "tick" in r]
    offsets = np.array([r["t"] - r["slot"] * 0.005 for r in ticks])
    assert np.all(offsets >= -1e-9) and np.all(offsets <= 0.0004 + 1e-9)  # on the grid
    assert [r["slot"] for r in ticks] == list(range(200))
    assert result.jitter_ms["max"] <= 0.4 + 1e-6
    assert 0.7 <= result.latency_ms["median"] <= 1.3  # robot 0.3 + policy 0.5 (+ apply)
    assert result.faults == dict.fromkeys(result.faults, 0) and result.safe_actions == 0
    assert np.allclose(robot.applied[-1], SAFE) and len(robot.applied) == 201  # final safe


def test_overrun_is_a_miss_and_a_late_fault_and_keeps_the_phase(tmp_path):
    clock = FakeClock()
    controller, robot, policy = make(clock, 200.0, log_path=tmp_path / "ticks.jsonl")
    policy.costs[50] = 0.012  # tick 50's inference takes 12 ms of a 5 ms period
    result = controller.run(ticks=100)
    ticks = [r for r in read_log(tmp_path / "ticks.jsonl") if "tick" in r]
    late = ticks[50]
    assert late["fault"] == "late" and late["safe"] and late["missed"]
    assert np.array_equal(robot.applied[50], SAFE)  # late inference -> safe action instead
    # Tick 50 ends at 262.8 ms: slot 51 (deadline 260 ms) is skipped, slot 52 (deadline
    # 265 ms) starts at once, late; from slot 53 on the loop is back on the grid.
    assert ticks[51]["slot"] == 52 and ticks[51]["jitter_ms"] == pytest.approx(2.8, abs=1e-3)
    assert all(abs(r["t"] - r["slot"] * 0.005) < 1e-9 for r in ticks[52:])
    assert result.deadline_misses == 1 and result.skipped_slots == 1
    assert result.faults["late"] == 1 and result.safe_actions == 1
    assert result.miss_rate == pytest.approx(0.01)


def test_nan_observation_and_robot_exceptions_send_the_safe_action():
    clock = FakeClock()
    robot = FakeRobot(clock)
    robot.observe_hooks[3] = np.array([0.0, np.nan, 1.0], np.float32)
    robot.observe_hooks[4] = np.zeros(5, np.float32)  # wrong shape
    robot.observe_hooks[5] = np.array(["a", "b", "c"])  # wrong dtype
    robot.observe_hooks[6] = TimeoutError("camera")
    robot.apply_fails.add(8)
    controller, robot, policy = make(clock, robot=robot)
    result = controller.run(ticks=12)
    assert result.ticks == 12 and result.reason == "ticks"  # on_fault="continue"
    assert result.faults["observation"] == 3 and result.faults["robot"] == 2
    for t in (3, 4, 5, 6, 8):
        assert np.array_equal(robot.applied[t], SAFE), t
    assert np.allclose(robot.applied[2], [0.5, -0.5]) and np.allclose(robot.applied[9], [0.5, -0.5])
    assert policy.calls == 12 - 4  # no inference on a bad or missing observation
    assert result.safe_actions == 5


def test_policy_exception_and_nan_action_and_stop_on_fault():
    clock = FakeClock()
    controller, robot, policy = make(clock)
    policy.outputs[1] = RuntimeError("onnxruntime failed")
    policy.outputs[2] = [np.nan, 0.0]
    result = controller.run(ticks=5)
    assert result.faults["policy"] == 1 and result.faults["action"] == 1
    assert np.array_equal(robot.applied[1], SAFE) and np.array_equal(robot.applied[2], SAFE)

    controller, robot, policy = make(FakeClock(), on_fault="stop")
    robot.observe_hooks[4] = np.array([np.inf, 0, 0], np.float32)
    result = controller.run(ticks=50)
    assert result.reason == "fault: observation" and result.ticks == 5
    assert np.array_equal(robot.applied[-1], SAFE)

    controller, robot, policy = make(FakeClock(), max_faults=2)
    for i in range(10):
        policy.outputs[i] = ValueError("broken")
    result = controller.run(ticks=50)
    assert result.reason == "more than 2 faults" and result.ticks == 3


def test_actions_are_clamped_and_slew_limited():
    clock = FakeClock()
    controller, robot, policy = make(clock, rate_hz=100.0, slew_rate=20.0)  # 0.2 per tick
    for i in range(20):
        policy.outputs[i] = [5.0, -5.0] if i < 10 else [-5.0, 0.3]
    result = controller.run(ticks=20)
    applied = np.stack(robot.applied[:20])
    assert np.all(applied >= -1.0) and np.all(applied <= 1.0)
    np.testing.assert_allclose(applied[0], [1.0, -1.0])  # first tick: clamped, no slew ref
    assert np.all(np.abs(np.diff(applied, axis=0)) <= 0.2 + 1e-6)
    np.testing.assert_allclose(applied[10], [0.8, -0.8], atol=1e-6)  # turning, 0.2 a tick
    np.testing.assert_allclose(applied[16], [-0.4, 0.3], atol=1e-6)
    np.testing.assert_allclose(applied[19], [-1.0, 0.3], atol=1e-6)
    assert result.clamped == 20 and result.slew_limited >= 9


def test_sigint_stops_cleanly_with_the_safe_action_last(tmp_path):
    clock = FakeClock()
    robot = FakeRobot(clock)

    def interrupt(r):
        if r.tick == 5 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    sent: list[bool] = []

    robot.on_apply = interrupt
    previous = signal.getsignal(signal.SIGINT)
    controller, robot, _ = make(clock, robot=robot, log_path=tmp_path / "ticks.jsonl")
    result = controller.run(ticks=1000)
    assert result.reason == "interrupted" and 6 <= result.ticks <= 7
    assert np.array_equal(robot.applied[-1], SAFE)
    assert signal.getsignal(signal.SIGINT) is previous  # handler restored
    last = read_log(tmp_path / "ticks.jsonl")[-1]
    assert last == {"event": "stop", "reason": "interrupted", "ticks": result.ticks,
                    "safe_action": [0.0, 0.0], "faults": result.faults}  # fmt: skip

    # stop() from anywhere (another thread, a watchdog) ends the loop the same way.
    clock = FakeClock()
    robot = FakeRobot(clock)
    controller, robot, _ = make(clock, robot=robot)
    robot.on_apply = lambda r: r.tick == 3 and controller.stop("watchdog")
    result = controller.run()
    assert result.reason == "watchdog" and result.ticks == 4
    assert np.array_equal(robot.applied[-1], SAFE)

    controller, robot, _ = make(FakeClock(), rate_hz=200.0)
    result = controller.run(duration_s=0.05)  # slots at 0, 5, ..., 45 ms
    assert result.reason == "duration" and result.ticks == 10


def test_tick_log_is_json_lines_and_episodes_reset_the_policy(tmp_path):
    clock = FakeClock()
    robot = FakeRobot(clock, episode_every=10)
    robot.observe_hooks[7] = np.array([np.nan] * 3, np.float32)
    controller, robot, policy = make(clock, robot=robot, log_path=tmp_path / "t.jsonl")
    result = controller.run(ticks=30)
    rows = read_log(tmp_path / "t.jsonl")
    assert len(rows) == 31 and rows[-1]["event"] == "stop"
    keys = {"tick", "slot", "t", "jitter_ms", "latency_ms", "infer_ms", "missed", "fault",
            "faults", "error", "safe", "episode", "action"}  # fmt: skip
    assert all(set(r) == keys for r in rows[:-1])
    assert rows[7]["fault"] == "observation" and "NaN" in rows[7]["error"]
    assert rows[7]["faults"] == ["observation"] and rows[6]["faults"] == []
    assert rows[7]["infer_ms"] is None and rows[8]["infer_ms"] is not None
    assert [r["episode"] for r in rows[:-1]] == [1] * 10 + [2] * 10 + [3] * 10
    assert policy.resets == 1 + 3  # run() start + each new episode
    assert result.ticks == 30


def test_rejects_bad_arguments():
    clock = FakeClock()
    with pytest.raises(ValueError, match="rate_hz"):
        make(clock, rate_hz=0)
    with pytest.raises(ValueError, match="on_fault"):
        make(clock, on_fault="ignore")
    with pytest.raises(ValueError, match="realtime_priority"):
        make(clock, realtime_priority=0)
    with pytest.raises(TypeError, match="safe_action"):
        Controller(FakePolicy(clock), object(), 10.0)


# -- a real ONNX file (built with onnx.helper, no torch) on a SimRobot, real clock --------------
def linear_policy_onnx(path, weight: np.ndarray, low: float, high: float) -> None:
    """obs (B, D) -> clip(obs @ W, low, high), with robodistill metadata."""
    d, a = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["obs", "W"], ["y"]),
         helper.make_node("Clip", ["y", "lo", "hi"], ["action"])],
        "linear",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", a])],
        [helper.make_tensor("W", TensorProto.FLOAT, [d, a], weight.ravel().tolist()),
         helper.make_tensor("lo", TensorProto.FLOAT, [], [low]),
         helper.make_tensor("hi", TensorProto.FLOAT, [], [high])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    doc = {
        "format": FORMAT, "format_version": 1, "policy_kind": "linear", "deterministic": True,
        "observation": {"shape": [d]}, "action": {"shape": [a], "low": [low] * a,
                                                  "high": [high] * a},
        "inputs": [{"name": "obs", "role": "observation", "shape": ["batch", d]}],
        "outputs": [{"name": "action", "role": "action", "shape": ["batch", a]}],
        "control_rate_hz": 20.0,
    }  # fmt: skip
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(doc)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


class RecordingSimRobot(SimRobot):
    """A SimRobot that keeps what it observed and what it was sent, tick by tick."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[np.ndarray] = []
        self.sent: list[np.ndarray] = []

    def observe(self) -> np.ndarray:
        obs = super().observe()
        self.seen.append(obs.copy())
        return obs

    def apply(self, action: np.ndarray) -> None:
        self.sent.append(np.array(action))
        super().apply(action)


class SlowOnce:
    """``policy`` whose call ``call`` first sleeps ``seconds`` of real time."""

    def __init__(self, policy, call: int, seconds: float):
        self.policy, self.call, self.seconds, self.calls = policy, call, seconds, 0

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def act(self, obs):
        if self.calls == self.call:
            time.sleep(self.seconds)
        self.calls += 1
        return self.policy.act(obs)


def test_onnx_policy_on_a_sim_robot_in_real_time(tmp_path):
    path = tmp_path / "linear.onnx"
    weight = np.array([[-1.0], [0.0], [-0.5]], np.float32)
    linear_policy_onnx(path, weight, -2.0, 2.0)
    robot = RecordingSimRobot("Pendulum-v1", episodes=2, seed=5, max_episode_steps=15)
    assert isinstance(robot, Robot)
    # Inference 10 sleeps 12 ms of real time in a 5 ms period: a late fault for certain.
    policy = SlowOnce(OnnxPolicy(path), call=10, seconds=0.012)
    controller = Controller(policy, robot, 200.0, log_path=tmp_path / "ticks.jsonl")
    result = controller.run(ticks=1000)
    assert result.reason == "robot done" and result.ticks == 30
    assert [e["seed"] for e in result.episodes] == [5, 6]
    assert all(e["length"] == 15 and e["success"] is None for e in result.episodes)
    rows = read_log(tmp_path / "ticks.jsonl")[:-1]
    assert len(rows) == 30 and len(robot.seen) == 30 and len(robot.sent) == 31  # + final safe
    # Real time: no tick starts before its slot, and the overrun skips the slots it used.
    assert all(r["jitter_ms"] >= 0 for r in rows)
    assert rows[10]["faults"] == ["late"] and rows[10]["safe"] and rows[10]["missed"]
    assert rows[10]["infer_ms"] >= 12.0 and rows[11]["slot"] >= 12 and result.skipped_slots >= 1
    # Every late tick (the forced one, and any the machine's load made late) is counted
    # once, in the result and in the log, and sent the safe action; every other tick sent
    # the policy's action on the observation of that tick. Nothing else faulted: Pendulum's
    # observations lie within its declared bounds.
    late = [i for i, r in enumerate(rows) if r["faults"]]
    assert all(rows[i]["faults"] == ["late"] for i in late)
    assert result.faults == {**dict.fromkeys(result.faults, 0), "late": len(late)}
    assert result.safe_actions == len(late)
    assert result.deadline_misses == sum(r["missed"] for r in rows)
    for i, (obs, sent) in enumerate(zip(robot.seen, robot.sent, strict=False)):
        expected = [0.0] if i in late else np.clip(obs @ weight, -2.0, 2.0)
        np.testing.assert_allclose(sent, expected, atol=1e-5, err_msg=f"tick {i}")
        np.testing.assert_allclose(rows[i]["action"], expected, atol=1e-5)
    assert np.array_equal(robot.sent[-1], [0.0])
    robot.close()


def test_realtime_priority_runs_the_loop_under_sched_fifo_and_restores_it(monkeypatch, caplog):
    before = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)

    # Granted (simulated: tests do not run as root): every tick, and the final safe action,
    # run under SCHED_FIFO at the priority asked; the previous policy comes back after.
    state = {"policy": os.SCHED_OTHER, "priority": 0}
    calls: list[tuple[int, int, int]] = []

    def set_scheduler(pid, policy, param):
        calls.append((pid, policy, param.sched_priority))
        state.update(policy=policy, priority=param.sched_priority)

    with monkeypatch.context() as m:
        m.setattr(os, "sched_getscheduler", lambda pid: state["policy"])
        m.setattr(os, "sched_getparam", lambda pid: os.sched_param(state["priority"]))
        m.setattr(os, "sched_setscheduler", set_scheduler)
        controller, robot, _ = make(FakeClock(), realtime_priority=10)
        seen: list[tuple[int, int]] = []
        robot.on_apply = lambda r: seen.append((state["policy"], state["priority"]))
        result = controller.run(ticks=5)
        assert result.realtime is True and result.ticks == 5
        assert seen == [(os.SCHED_FIFO, 10)] * 6
        assert calls == [(0, os.SCHED_FIFO, 10), (0, os.SCHED_OTHER, 0)]
        assert state == {"policy": os.SCHED_OTHER, "priority": 0}

        # Refused (no CAP_SYS_NICE): a warning, the loop runs at normal priority.
        def refuse(pid, policy, param):
            raise PermissionError(1, "Operation not permitted")

        m.setattr(os, "sched_setscheduler", refuse)
        controller, robot, _ = make(FakeClock(), realtime_priority=10)
        with caplog.at_level("WARNING", logger="robodistill.deploy.controller"):
            result = controller.run(ticks=5)
        assert result.realtime is False and result.ticks == 5
        assert "cannot use SCHED_FIFO" in caplog.text

    # The real system, whatever this process may do: the result says what the loop ran
    # under, and the scheduler is restored.
    controller, robot, _ = make(FakeClock(), realtime_priority=10)
    during: list[int] = []
    robot.on_apply = lambda r: during.append(os.sched_getscheduler(0))
    result = controller.run(ticks=5)
    assert set(during) == {os.SCHED_FIFO if result.realtime else before[0]}
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before
