"""kill -9 and torn-merge recovery: reopening shows exactly the durable episodes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from robodistill.data.store import Episode, StoreError, TrajectoryStore

REPO = Path(__file__).resolve().parents[1]


def deterministic_episode(i: int) -> Episode:
    t = 1 + (i * 7) % 23
    return Episode(
        data={
            "obs": (i + np.arange(t * 3, dtype=np.float32)).reshape(t, 3),
            "action": np.full((t, 2), i, dtype=np.float32),
            "reward": np.full(t, 0.5),
            "terminated": np.arange(t) == t - 1,
            "truncated": np.zeros(t, dtype=bool),
        },
        final={"obs": np.full(3, -i, dtype=np.float32)},
        seed=i,
        env_id=f"env-{i}",
        success=bool(i % 2),
    )


WRITER = """
import sys
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
from pathlib import Path
from robodistill.data.store import TrajectoryStore
from test_store_crash import deterministic_episode
path = Path({path!r})
if path.exists():
    store = TrajectoryStore.open(path, mode="a", flush_every=5)
else:
    store = TrajectoryStore.create(path, flush_every=5)
i = store.n_episodes
while True:
    store.add_episode(deterministic_episode(i))
    print(i, flush=True)  # add_episode returned: the episode is durable
    i += 1
"""


def check_store(path: Path, mode: str = "r") -> TrajectoryStore:
    store = TrajectoryStore.open(path, mode=mode)
    ends = store.episode_ends
    assert len(ends) == store.n_episodes
    assert (np.diff(ends, prepend=0) > 0).all()
    obs = store.load(["obs"])["obs"]
    for i in range(store.n_episodes):
        want, got = deterministic_episode(i), store.episode(i)
        for k in want.data:
            np.testing.assert_array_equal(got.data[k], want.data[k], err_msg=f"episode {i} {k}")
        np.testing.assert_array_equal(got.final["obs"], want.final["obs"])
        assert (got.seed, got.env_id, got.success) == (i, f"env-{i}", bool(i % 2))
        start = ends[i - 1] if i else 0
        np.testing.assert_array_equal(obs[start : ends[i]], want.data["obs"])
    return store


def test_kill_9_loses_at_most_the_episode_in_flight(tmp_path):
    path = tmp_path / "crash.zarr"
    script = WRITER.format(repo=str(REPO), tests=str(REPO / "tests"), path=str(path))
    rng = np.random.default_rng(0)
    for _round in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        reported: list[int] = []
        try:
            deadline = time.monotonic() + 60
            while len(reported) < 12:
                line = proc.stdout.readline()
                if not line:
                    pytest.fail(f"writer died: {proc.stderr.read()}")
                reported.append(int(line))
                assert time.monotonic() < deadline, "writer too slow"
            # Land the kill at varying points of the append/merge cycle.
            time.sleep(rng.uniform(0, 0.05))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        # Lines printed after our last read are durable too.
        reported += [int(x) for x in proc.stdout.read().split()]
        proc.stdout.close()
        proc.stderr.close()
        reader = check_store(path, mode="r")  # read-only view before any recovery
        assert reader.n_episodes >= reported[-1] + 1
        store = check_store(path, mode="a")
        assert store.n_episodes == reader.n_episodes
        store.close()
    with TrajectoryStore.open(path, mode="a") as store:
        n = store.n_episodes
        store.add_episodes([deterministic_episode(i) for i in range(n, n + 3)])
    assert check_store(path).n_episodes == n + 3


def fill(path: Path, n: int, flush_every: int = 4) -> TrajectoryStore:
    store = TrajectoryStore.create(path, flush_every=flush_every)
    store.add_episodes([deterministic_episode(i) for i in range(n)])
    return store


@pytest.mark.parametrize("fail_at", ["_commit", "_write_batch_meta", "journal_cleanup"])
def test_torn_merge_recovers(tmp_path, monkeypatch, fail_at):
    path = tmp_path / "torn.zarr"
    store = fill(path, 6)  # 4 committed, 2 in the journal
    if fail_at == "_commit":  # data, meta and episode_ends written, commit point not reached
        monkeypatch.setattr(TrajectoryStore, "_commit", lambda *a: _boom())
    elif fail_at == "_write_batch_meta":  # data arrays extended, meta not
        import robodistill.data.store as mod

        real = mod._append
        monkeypatch.setattr(
            mod, "_append", lambda arr, *a: _boom() if "meta" in arr.path else real(arr, *a)
        )
    else:  # commit done, deleting merged journal files fails
        monkeypatch.setattr(Path, "unlink", lambda *a, **k: _boom())
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.add_episodes([deterministic_episode(i) for i in range(6, 9)])
    with pytest.raises(StoreError, match="earlier merge"):
        store.add_episode(deterministic_episode(9))
    store.close()  # releases the writer lock without merging
    monkeypatch.undo()
    root = zarr.open_group(path, mode="r")
    if fail_at != "journal_cleanup":
        assert root.attrs["committed"]["episodes"] == 4
        assert root["data/obs"].shape[0] > root.attrs["committed"]["steps"]  # torn tail
    assert check_store(path).n_episodes == 8
    store = check_store(path, mode="a")
    assert store.n_episodes == 8
    assert not list((path / "pending").glob("*.npz"))
    store.add_episode(deterministic_episode(8))
    store.close()
    root = zarr.open_group(path, mode="r")
    assert root.attrs["committed"] == {"episodes": 9, "steps": int(check_store(path).n_steps)}
    assert root["data/obs"].shape[0] == root.attrs["committed"]["steps"]


def _boom():
    raise RuntimeError("simulated crash")


def test_half_written_journal_file_is_ignored(tmp_path):
    path = tmp_path / "s.zarr"
    fill(path, 3, flush_every=2).close()
    tmp = path / "pending" / ".000000003.123.tmp"
    tmp.write_bytes(b"PK\x03\x04 half a zip")
    assert check_store(path).n_episodes == 3
    assert tmp.exists()  # mode "r" never writes
    check_store(path, mode="a").close()
    assert not tmp.exists()


def test_first_merge_torn_while_creating_arrays(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    store = TrajectoryStore.create(path, flush_every=2)
    import robodistill.data.store as mod

    real = mod._append
    monkeypatch.setattr(
        mod, "_append", lambda arr, *a: _boom() if "action" in arr.path else real(arr, *a)
    )
    with pytest.raises(RuntimeError):
        store.add_episodes([deterministic_episode(i) for i in range(2)])
    store.close()
    monkeypatch.undo()
    assert check_store(path).n_episodes == 2
    check_store(path, mode="a").close()
    assert check_store(path).n_episodes == 2


def test_journal_gap_is_reported(tmp_path):
    path = tmp_path / "s.zarr"
    store = fill(path, 3, flush_every=10)
    store._release_lock()  # simulate a dead writer without merging
    (path / "pending" / "000000001.npz").unlink()
    with pytest.raises(StoreError, match="gaps"):
        TrajectoryStore.open(path)
