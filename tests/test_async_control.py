"""Asynchronous inference (``robodistill.deploy.async_control``): a tick never waits for
inference, the dropped prefix is exact, and SIGINT stops both threads with the safe action.

The fake policy's chunk encodes where each action came from: planned from the observation
of step ``t`` (the observation *is* ``t``), element ``i`` of its actions (for step
``t + i``) is ``100 * t + i``. Clocks are constructed (a sleep advances them); the planner
thread is synchronised through events, never through elapsed time."""

from __future__ import annotations

import signal
import threading

import numpy as np
import pytest

from robodistill.deploy.async_control import AsyncPolicy
from robodistill.deploy.controller import Controller, SimulatedClock

H = 16  # actions per chunk


class ChunkFake:
    """What ChunkPlanner reads of an OnnxPolicy: a stateless direct-mode chunk file."""

    observation_shape, action_shape = (1,), (1,)
    observation_dim, action_dim = 1, 1
    action_low, action_high = np.array([-1e6], np.float32), np.array([1e6], np.float32)
    observation_low = observation_high = None
    history, prediction, start, execute = 1, H, 0, 8
    mode, metadata, _chunked, _state, _obs_rank = "direct", {}, True, [], 2

    def __init__(self, gate: threading.Event | None = None, slow_from: int = 0):
        self.gate, self.slow_from, self.calls, self.returned = gate, slow_from, 0, 0

    def reset(self, env_ids=None):
        pass

    def predict(self, obs):
        call, self.calls = self.calls, self.calls + 1
        if self.gate is not None and call >= self.slow_from:
            assert self.gate.wait(30), "the test never opened the gate"
        t = float(np.asarray(obs).reshape(-1)[0])
        self.returned += 1
        return (100 * t + np.arange(H, dtype=np.float32)).reshape(1, H, 1)


class StepRobot:
    """Observes its own step counter; ``on_apply(step)`` runs after every command."""

    def __init__(self, steps: int, on_apply=None):
        self.steps, self.on_apply = steps, on_apply
        self.applied: list[float] = []
        self.done = False

    def observe(self):
        return np.array([len(self.applied)], np.float32)

    def apply(self, action):
        self.final = float(np.ravel(action)[0])  # the last command, whenever sent
        if self.done:
            return
        self.applied.append(float(np.ravel(action)[0]))
        if self.on_apply is not None:
            self.on_apply(len(self.applied) - 1)
        self.done = len(self.applied) >= self.steps

    def safe_action(self):
        return np.array([-1.0], np.float32)


def _run(policy, robot, rate_hz=100.0, **kw):
    clock = SimulatedClock()
    controller = Controller(policy, robot, rate_hz, clock=clock, sleep=clock.sleep,
                            handle_sigint=False, **kw)  # fmt: skip
    return controller.run()


def test_slow_policy_never_delays_a_tick_and_the_queue_refills():
    gate = threading.Event()
    fake = ChunkFake(gate, slow_from=1)  # the first plan is quick, the second blocks
    policy = AsyncPolicy(fake, threshold=0.5, hold_action=np.array([-1.0], np.float32))
    busy_while_ticking = []

    def on_apply(step):
        if step == 0:
            policy.wait_planner(30)  # the first chunk lands before step 1
        if 8 <= step <= 19:  # the second plan (requested at step 8) is still running
            busy_while_ticking.append(fake.returned == 1)
        if step >= 19:
            gate.set()
            policy.wait_planner(30)  # ... and lands before step 20 (so do the later ones)

    robot = StepRobot(30, on_apply)
    result = _run(policy, robot)
    assert result.ticks == 30 and result.deadline_misses == 0 and result.skipped_slots == 0
    assert result.faults["late"] == 0 and sum(result.faults.values()) == 0
    assert all(busy_while_ticking) and len(busy_while_ticking) == 12
    a = robot.applied
    assert a[0] == -1.0  # nothing queued yet: the hold action
    assert a[1:16] == [float(i) for i in range(1, 16)]  # chunk 0 (obs 0), step i -> i
    assert a[16:20] == [15.0] * 4  # queue ran dry: the last action held, no tick waited
    # Chunk 1 was planned from step 8 and arrived at step 20: 12 actions dropped, and the
    # queue refilled with the actions planned for steps 20.. (then chunk 2 from step 20).
    assert a[20] == 800 + 12
    assert [c["dropped"] for c in policy.chunks[:2]] == [1, 12]
    assert policy.chunks[1]["delay_steps"] == 12 and policy.held == 5
    assert not policy.planner_alive  # the controller closed it


@pytest.mark.parametrize("delay", [0, 1, 3, 6])
def test_dropped_prefix_is_exact_for_simulated_delays(delay):
    policy = AsyncPolicy(ChunkFake(), threshold=0.5, delay_steps=delay)
    robot = StepRobot(60)
    _run(policy, robot)
    for c in policy.chunks:
        assert c["delay_steps"] == delay and c["dropped"] == delay
        assert c["arrival_step"] == c["obs_step"] + delay
    # Every executed action was planned for exactly the step it ran on.
    for step, value in enumerate(robot.applied[delay:], start=delay):
        planned_at, index = divmod(int(value), 100)
        assert planned_at + index == step, (step, value)
    assert policy.held == delay  # only the first chunk's wait


def test_sync_mode_holds_during_inference_and_runs_stale_chunks_from_the_start():
    delay = 3
    policy = AsyncPolicy(ChunkFake(), mode="sync", delay_steps=delay)
    robot = StepRobot(2 * (8 + delay))
    _run(policy, robot)
    a = robot.applied
    assert a[:3] == [0.0] * 3  # hold action (zeros within the limits) while the first plans
    assert a[3:11] == [float(i) for i in range(8)]  # chunk of obs 0, from its first action
    assert a[11:14] == [7.0] * 3  # the last command held while the next one plans (obs 11)
    assert a[14:22] == [1100.0 + i for i in range(8)]
    assert all(c["dropped"] == 0 and c["kept"] == 8 for c in policy.chunks)


def test_new_episode_discards_a_pending_chunk():
    policy = AsyncPolicy(ChunkFake(), delay_steps=4)
    policy.act(np.array([[0.0]]))
    policy.reset()
    for t in range(6):
        policy.act(np.array([[float(t)]]))
    assert [c["obs_step"] for c in policy.chunks] == [0]  # the new episode's chunk only
    assert policy.chunks[0]["episode"] == 1


def test_sigint_in_async_mode_stops_both_threads_and_sends_the_safe_action():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGINT handling needs the main thread")
    gate = threading.Event()
    fake = ChunkFake(gate, slow_from=1)
    policy = AsyncPolicy(fake, threshold=0.5)

    def on_apply(step):
        if step == 0:
            policy.wait_planner(30)
        if step == 10:  # the second plan is running in the planner thread now
            gate.set()  # (it may finish; the interrupt must still end the thread)
            signal.raise_signal(signal.SIGINT)

    robot = StepRobot(10_000, on_apply)
    previous = signal.getsignal(signal.SIGINT)
    clock = SimulatedClock()
    result = Controller(policy, robot, 1000.0, clock=clock, sleep=clock.sleep).run()
    assert result.reason == "interrupted"
    assert robot.final == -1.0 and robot.applied[10] == 10.0  # ticks, then the safe action
    assert not policy.planner_alive
    assert not [t for t in threading.enumerate() if t.name == "robodistill-planner"]
    assert signal.getsignal(signal.SIGINT) is previous


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="mode"):
        AsyncPolicy(ChunkFake(), mode="later")
    with pytest.raises(ValueError, match="threshold"):
        AsyncPolicy(ChunkFake(), threshold=1.0)
    with pytest.raises(ValueError, match="delay_steps"):
        AsyncPolicy(ChunkFake(), delay_steps=-1)


def test_a_chunk_of_an_ended_episode_is_never_executed_in_real_time_mode():
    gate = threading.Event()
    policy = AsyncPolicy(ChunkFake(gate, slow_from=0), threshold=0.5)
    policy.act(np.array([[50.0]]))  # requests from observation 50; the planner blocks
    policy.reset()
    policy.act(np.array([[0.0]]))  # the new episode requests again (queued behind it)
    gate.set()
    policy.wait_planner(30)
    assert policy.wait_planner(30)
    actions = [float(policy.act(np.array([[0.0]]))[0, 0]) for _ in range(3)]
    assert all(a < 100 for a in actions)  # planned from observation 0, never from 50
    assert [c["episode"] for c in policy.chunks] == [policy._episode]
    assert policy.close()
