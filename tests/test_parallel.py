"""Parallel collection and evaluation (``workers > 1``): every seed lands exactly once, with
the same data as in-process, also when a worker dies mid-run; local workers open no network
socket. Both backends: local worker processes (the default) and Ray actors (when a Ray
address is set; one local Ray for the module, only for the tests that ask for it)."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from robodistill.cli import main
from robodistill.collect import run_collect
from robodistill.config import load_config
from robodistill.core import parallel
from robodistill.core.parallel import (
    ParallelRollout,
    RolloutWorker,
    WorkerLostError,
    choose_backend,
)
from robodistill.core.process_pool import ProcessWorkers, RemoteTraceback, WorkerDied
from robodistill.data.store import TrajectoryStore
from robodistill.policies.checkpoint import CheckpointError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Workers import this module by name to build the crashing env: local ones find it on the
# sys.path they inherit, Ray actors through ray_session's PYTHONPATH.
CRASH_ID = "robodistill-test/CrashingPendulum-v0"
CRASH_ENV = f"test_parallel:{CRASH_ID}"


class CrashingPendulum(PendulumEnv):
    """Pendulum whose *process* dies (``os._exit``) when it resets to ``crash_seed``: once,
    claimed through the ``marker`` file, or every time when ``marker`` is empty."""

    def __init__(self, crash_seed: int = -1, marker: str = ""):
        super().__init__()
        self.crash_seed, self.marker = crash_seed, marker

    def reset(self, *, seed=None, options=None):
        if seed == self.crash_seed:
            if not self.marker:
                os._exit(1)
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass  # crashed once already: behave
            else:
                os._exit(1)
        return super().reset(seed=seed, options=options)


if CRASH_ID not in gym.registry:  # also runs in the workers, which import this module
    gym.register(CRASH_ID, entry_point="test_parallel:CrashingPendulum")


class Probe:
    """A tiny object for :class:`ProcessWorkers` (workers import this module to build it)."""

    def __init__(self, tag: str) -> None:
        self.tag, self.sockets = tag, []

    def echo(self, x):
        return self.tag, x

    def fail(self):
        raise ValueError("bad input 7")

    def die(self):
        os._exit(3)

    def threads(self):
        import torch

        return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")

    def listen(self):
        """Open (and keep) a listening TCP socket, to show that the socket check sees workers."""
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        self.sockets.append(s)
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def no_ray_address(monkeypatch):
    # Without an address every run here uses local worker processes (the CLI's --ray-address
    # sets RAY_ADDRESS for the rest of the process, so another test may have left one).
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    # Actor processes get this directory on their path, so they can import this module.
    here = str(Path(__file__).resolve().parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": here}})  # fmt: skip
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()  # tests/test_teach_rllib.py starts its own Ray in the same process


@pytest.fixture(params=["local", "ray"])
def backend(request, monkeypatch):
    """Run the test on each backend, chosen the way the stages choose it: by whether a Ray
    address is set. The other backend fails the test if it is started."""

    def wrong(*args, **kwargs):
        pytest.fail(f"started the wrong backend for {request.param}")

    if request.param == "ray":
        monkeypatch.setenv("RAY_ADDRESS", request.getfixturevalue("ray_session"))
        monkeypatch.setattr(parallel, "ProcessWorkers", wrong)
    else:
        monkeypatch.setattr(parallel, "RayActors", wrong)
    return request.param


def _sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def _pusht(tmp_path, *extra):
    return [f"runs_dir={tmp_path / 'runs'}", "env.id=robodistill/PushT-v0", "env.num_envs=2",
            "env.max_episode_steps=8", "collect.policy=expert", "collect.episodes=6",
            "collect.flush_every=2", "eval.policy=expert", "eval.episodes=5",
            "eval.video_episodes=0", *extra]  # fmt: skip


def _episodes(path):
    with TrajectoryStore.open(path) as store:
        seeds = store.episode_meta()["seed"].tolist()
        return seeds, {ep.seed: ep for ep in (store.episode(i) for i in range(len(seeds)))}


def _descendants(pid: int) -> list[int]:
    """``pid``'s child processes, their children, ... (from /proc/<pid>/stat's ppid)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # exited meanwhile
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _listening(pids: list[int]) -> dict[str, tuple[int, str, int]]:
    """Socket inode -> (pid, protocol, local port) of the TCP sockets in LISTEN state and all
    UDP sockets that ``pids`` hold (from /proc/<pid>/fd and /proc/net/{tcp,udp}[6])."""
    owner = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # exited meanwhile
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[len("socket:[") : -1]] = pid
    found = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        path = Path(f"/proc/{os.getpid()}/net/{proto}")  # the workers share our namespace
        if not path.exists():  # no IPv6
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            # 0A is TCP_LISTEN; any bound UDP socket can receive, so all of them count.
            if inode in owner and (proto.startswith("udp") or state == "0A"):
                found[inode] = (owner[inode], proto, int(local.rsplit(":", 1)[1], 16))
    return found


def test_the_backend_is_ray_exactly_when_a_ray_address_is_set(monkeypatch):
    assert choose_backend() == choose_backend("auto") == "local"
    assert choose_backend("ray") == "ray" and choose_backend("local") == "local"
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend("threads")
    monkeypatch.setenv("RAY_ADDRESS", "ray://10.0.0.1:10001")
    assert choose_backend() == "ray" and choose_backend("local") == "local"

    # ParallelRollout follows it (checked without starting Ray: the Ray backend is a stub).
    class Chosen(Exception):
        pass

    def ray_actors(factory, args, workers, field):
        raise Chosen(factory, workers, field)

    monkeypatch.setattr(parallel, "RayActors", ray_actors)
    with pytest.raises(Chosen) as chosen:
        ParallelRollout("Pendulum-v1", "random", workers=3, field="collect.workers")
    assert chosen.value.args == (RolloutWorker, 3, "collect.workers")


def test_process_workers_answer_in_order_and_report_deaths():
    pool = ProcessWorkers(Probe, ("a",), 2)
    try:
        # Slot 0: an answer, then a death, then a call queued behind it.
        first, died, queued = (pool.submit(0, "echo", 1), pool.submit(0, "die"),
                               pool.submit(0, "echo", 3))  # fmt: skip
        assert pool.wait([first, died, queued], None) == first
        assert pool.get(first) == ("a", 1)
        for handle in (died, queued):
            assert pool.wait([handle], None) == handle
            with pytest.raises(WorkerDied, match="exited with code 3"):
                pool.get(handle)
        pool.restart(0)
        # One torch thread per worker (OpenMP's variable: 1 unless the user set it).
        for slot in (0, 1):
            handle = pool.submit(slot, "threads")
            assert pool.wait([handle], None) == handle
            assert pool.get(handle) == (1, os.environ.get("OMP_NUM_THREADS", "1"))
        # An error inside a worker arrives as itself, its traceback chained; the worker lives.
        handle = pool.submit(1, "fail")
        pool.wait([handle], None)
        with pytest.raises(ValueError, match="bad input 7") as error:
            pool.get(handle)
        assert isinstance(error.value.__cause__, RemoteTraceback)
        assert "in fail" in str(error.value.__cause__)
        handle = pool.submit(1, "echo", "still here")
        pool.wait([handle], None)
        assert pool.get(handle) == ("a", "still here")
        pids = [p.pid for p in pool.processes]
    finally:
        pool.close()
    assert pool.processes == [None, None]
    for pid in pids:  # stopped and reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_local_run_opens_no_listening_socket(tmp_path):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("reads sockets from Linux's /proc")
    me = os.getpid()
    # Sockets another test left here (a Ray session's, say) are not this run's.
    before = set(_listening([me, *_descendants(me)]))

    # The check sees listening sockets, both here and in a worker process.
    tcp, udp = socket.socket(), socket.socket(type=socket.SOCK_DGRAM)
    with tcp, udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        pool = ProcessWorkers(Probe, ("p",), 1)
        try:
            handle = pool.submit(0, "listen")
            pool.wait([handle], None)
            port = pool.get(handle)
            seen = set(_listening([me, *_descendants(me)]).values())
            opened = {(me, "tcp", tcp.getsockname()[1]), (me, "udp", udp.getsockname()[1]),
                      (pool.processes[0].pid, "tcp", port)}  # fmt: skip
        finally:
            pool.close()
    assert opened <= seen

    # A real run: none, in this process or any process it started, while episodes arrive.
    new: dict = {}
    runner = ParallelRollout("Pendulum-v1", "random", workers=2, max_episode_steps=10)
    workers = {p.pid for p in runner.backend.processes}

    def check(ep):
        pids = [me, *_descendants(me)]
        assert workers <= set(pids)  # the workers are among the processes checked
        new.update({k: v for k, v in _listening(pids).items() if k not in before})

    with runner:
        runner.run(range(6), on_episode=check)
    assert new == {}


def test_collect_with_two_workers_stores_the_same_episodes_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(parallel, "RayActors", None)  # no address: Ray must not be used
    overrides = _sets(_pusht(tmp_path))
    assert main(["collect", "--name", "one", *overrides]) == 0
    assert main(["collect", "--name", "two", "--workers", "2", *overrides]) == 0
    runs = tmp_path / "runs"
    manifest = json.loads((runs / "two/collect/manifest.json").read_text())
    assert manifest["config"]["collect"]["workers"] == 2 and manifest["status"] == "done"
    assert manifest["metrics"]["episodes"] == 6
    assert len((runs / "two/collect/metrics.jsonl").read_text().splitlines()) == 6
    seeds_one, one = _episodes(runs / "one/collect/demos.zarr")
    seeds_two, two = _episodes(runs / "two/collect/demos.zarr")
    assert sorted(seeds_two) == sorted(seeds_one) == list(range(6))  # each seed exactly once
    for seed in seeds_one:  # the expert is deterministic per seed: same data wherever it ran
        for key in one[seed].data:
            np.testing.assert_array_equal(one[seed].data[key], two[seed].data[key])
        np.testing.assert_array_equal(one[seed].final["obs"], two[seed].final["obs"])
        assert one[seed].success == two[seed].success


def test_killing_a_worker_process_mid_run_delivers_each_seed_once(caplog):
    # 12 batches of one seed over 2 workers: when the first episode arrives the others are
    # still queued, so the killed worker's slot is found dead and refilled whatever it held.
    runner = ParallelRollout("Pendulum-v1", "random", workers=2, max_episode_steps=50)
    delivered, killed = {}, []

    def kill_once(ep):
        assert ep.seed not in delivered
        delivered[ep.seed] = ep
        if not killed:
            busy = runner.in_flight()
            slot = max(busy, key=lambda s: len(busy[s]))
            killed.append(runner.backend.processes[slot].pid)
            os.kill(killed[0], signal.SIGKILL)

    with runner:
        runner.run(range(12), on_episode=kill_once)
        alive = [p.pid for p in runner.backend.processes]
    assert sorted(delivered) == list(range(12))  # each seed once
    assert runner.lost == 1 and killed[0] not in alive
    assert "killed by SIGKILL" in caplog.text
    # Re-seeded per batch (here: per seed), the random policy's episodes are those of an
    # undisturbed in-process run, re-run seeds included.
    here = RolloutWorker("Pendulum-v1", "random", 0, {"max_episode_steps": 50})
    for seed, ep in delivered.items():
        (expected,) = here.run([seed])
        np.testing.assert_array_equal(ep.data["action"], expected.data["action"])
        np.testing.assert_array_equal(ep.data["obs"], expected.data["obs"])


def test_a_stalled_run_warns_and_goes_on(monkeypatch, caplog):
    # Starting a worker process (imports, env) takes far longer than this.
    monkeypatch.setattr(parallel, "STALL_WARNING_S", 0.05)
    with ParallelRollout("Pendulum-v1", "random", workers=1, max_episode_steps=5) as runner:
        assert sorted(ep.seed for ep in runner.run(range(3))) == [0, 1, 2]
    assert "no episodes from the 1 workers" in caplog.text


def test_eval_with_two_workers_writes_each_seed_once(tmp_path, capsys):
    overrides = _sets(_pusht(tmp_path, "eval.video_episodes=1"))
    assert main(["eval", "--name", "one", *overrides]) == 0
    assert main(["eval", "--name", "two", "--workers", "2", *overrides]) == 0
    rows = {}
    for name in ("one", "two"):
        stage = tmp_path / "runs" / name / "eval"
        lines = (stage / "episodes.jsonl").read_text().splitlines()
        rows[name] = {r["seed"]: r for r in map(json.loads, lines)}
        assert len(lines) == len(rows[name]) == 5
        assert [v.name for v in (stage / "videos").iterdir()] == ["seed-900000.mp4"]
    assert rows["one"] == rows["two"]


# On both backends. Last in the module: its Ray session starts with the first Ray case, so
# the local-only tests above run without it.


def test_worker_process_crash_mid_collect_loses_and_duplicates_nothing(backend, tmp_path):
    marker = tmp_path / "crashed"
    cfg = load_config(None, [f"runs_dir={tmp_path / 'runs'}", f"env.id={CRASH_ENV}",
                             "env.num_envs=2", "env.max_episode_steps=10",
                             "collect.policy=random", "collect.episodes=8",
                             "collect.workers=2", "collect.flush_every=3",
                             f"env.kwargs={{crash_seed: 5, marker: '{marker}'}}"])  # fmt: skip
    metrics = run_collect(cfg)
    assert marker.exists()  # seed 5's reset did take its worker's process down, once
    assert metrics["episodes"] == 8 and metrics["steps"] == 80
    seeds, stored = _episodes(Path(metrics["store"]))
    assert sorted(seeds) == list(range(8))  # none lost, none twice
    stage = Path(metrics["store"]).parent
    assert len((stage / "metrics.jsonl").read_text().splitlines()) == 8
    # The random policy is re-seeded per batch of env.num_envs seeds, so the batch that was
    # re-run after the crash repeats its actions: the data is what the same batches give
    # when run here, in-process, with nothing dying (the marker now exists). The same on
    # both backends.
    kwargs = {"num_envs": 2, "max_episode_steps": 10, "source_policy": "random",
              "env_kwargs": dict(cfg.env.kwargs)}  # fmt: skip
    for batch in ([0, 1], [2, 3], [4, 5], [6, 7]):
        for ep in RolloutWorker(CRASH_ENV, "random", cfg.seed, kwargs).run(batch):
            np.testing.assert_array_equal(ep.data["action"], stored[ep.seed].data["action"])
            np.testing.assert_array_equal(ep.data["obs"], stored[ep.seed].data["obs"])


def test_seeds_that_always_crash_their_worker_stop_the_run(backend):
    # One worker runs [0] with [1] queued behind it; seed 0 kills it every time. Only the
    # running batch is blamed, so the error names seed 0 after max_attempts deaths.
    runner = ParallelRollout(CRASH_ENV, "random", workers=1, max_episode_steps=5,
                             env_kwargs={"crash_seed": 0}, max_attempts=2)  # fmt: skip
    with runner, pytest.raises(WorkerLostError, match=r"seeds \[0\] lost their worker 2 times"):
        runner.run(range(3))
    assert runner.lost == 1 and runner.requeued == [0, 1]


def test_an_error_inside_a_worker_arrives_as_itself(backend, tmp_path):
    # The CLI maps CheckpointError, RolloutError, ... to one clear line, as with workers=1.
    runner = ParallelRollout("Pendulum-v1", str(tmp_path / "missing"), workers=1)
    with runner, pytest.raises(CheckpointError, match="does not exist"):
        runner.run([1, 2])
