"""Store integrity: damaged, missing and swapped chunks, damaged metadata and journal files are
errors naming the file; ``robodistill store verify`` names array, chunk and episodes."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import zarr

from robodistill.cli import EXIT_DAMAGED, EXIT_OK, EXIT_USAGE, main
from robodistill.data.store import Episode, StoreError, TrajectoryStore
from robodistill.data.store_verify import verify_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the teach test runs torch

LENGTHS = [5, 7, 3, 9, 4, 6]  # with 8-step chunks: ends 5 12 15 24 28 34, chunks 0..4


def make_episode(rng: np.random.Generator, t: int, i: int) -> Episode:
    return Episode(
        data={
            "obs": rng.normal(size=(t, 3)).astype(np.float32),
            "action": rng.normal(size=(t, 1)).astype(np.float32),
            "reward": rng.normal(size=t),
            "terminated": np.arange(t) == t - 1,
            "truncated": np.zeros(t, dtype=bool),
        },
        final={"obs": rng.normal(size=3).astype(np.float32)},
        seed=i,
        env_id="Pendulum-v1",
        success=[None, True, False][i % 3],
        max_score=None if i % 2 else 0.5 * i,
        score_source="" if i % 2 else "reward",
    )


@pytest.fixture
def episodes() -> list[Episode]:
    rng = np.random.default_rng(0)
    return [make_episode(rng, t, i) for i, t in enumerate(LENGTHS)]


def fill(path, episodes, **kw):
    with TrajectoryStore.create(path, chunk_steps=8, flush_every=4, **kw) as store:
        store.add_episodes(episodes)
    return path


def flip(file, at: float = 0.5) -> None:
    data = bytearray(file.read_bytes())
    data[int(len(data) * at)] ^= 0x40
    file.write_bytes(bytes(data))


def truncate(file) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def verify_cli(path, capsys) -> tuple[int, str]:
    rc = main(["store", "verify", str(path)])
    return rc, capsys.readouterr().out


def test_clean_store_verifies_ok(tmp_path, episodes, capsys):
    path = fill(tmp_path / "s.zarr", episodes)
    codecs = json.loads((path / "data/obs/zarr.json").read_text())["codecs"]
    assert {"name": "zstd", "configuration": {"level": 0, "checksum": True}} in codecs
    # Every chunk is written, even the all-False ones of `truncated`.
    assert sorted(p.name for p in (path / "data/truncated/c").iterdir()) == list("01234")
    root = zarr.open_group(path, mode="r")
    assert root["meta/episode_digest"].shape == (6, 7)  # 5 data + final_obs + meta
    assert root["meta/episode_digest"].attrs["keys"][-1] == "meta/episode"
    report = verify_store(path)
    assert report.ok and report.episodes == [], report.text()
    rc, out = verify_cli(path, capsys)
    assert rc == EXIT_OK
    assert "6 episodes, 34 steps committed" in out and "6 episode digests" in out
    assert "OK: every chunk decodes and every episode matches its digests" in out
    store = TrajectoryStore.open(path)
    for i, ep in enumerate(episodes):
        np.testing.assert_array_equal(store.episode(i).data["obs"], ep.data["obs"])
    np.testing.assert_array_equal(store.load()["reward"], np.concatenate(
        [ep.data["reward"] for ep in episodes]))  # fmt: skip


@pytest.mark.parametrize("key", ["obs", "action", "reward"])
def test_deleted_chunk_is_an_error_naming_the_array(tmp_path, episodes, key, capsys):
    path = fill(tmp_path / "s.zarr", episodes)
    chunk = path / f"data/{key}" / ("c/1" if key == "reward" else "c/1/0")  # reward is 1-D
    chunk.unlink()
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match=rf"{re.escape(str(chunk))} is missing: chunk 1 of "
                           rf"data/{key} \(steps 8-15\) would read as fill values"):  # fmt: skip
            TrajectoryStore.open(path, mode=mode)
    rc, out = verify_cli(path, capsys)
    assert rc == EXIT_DAMAGED
    # Steps 8-15 belong to episodes 1 (5-11), 2 (12-14) and 3 (15-23).
    assert f"DAMAGED data/{key} chunk 1 ({chunk}): chunk file missing" in out
    assert out.rstrip().endswith("DAMAGED: 1 problem(s); episodes affected: 1-3")
    assert verify_store(path).episodes == [1, 2, 3]


def test_deleted_meta_chunk(tmp_path, episodes):
    path = fill(tmp_path / "s.zarr", episodes)
    (path / "meta/episode_seed/c/0").unlink()
    with pytest.raises(StoreError, match="chunk 0 of meta/episode_seed .episodes 0-5."):
        TrajectoryStore.open(path)
    damage = verify_store(path).damage
    assert [(d.what, d.chunk, d.episodes) for d in damage] == [
        ("meta/episode_seed", 0, list(range(6)))
    ]


def test_flipped_bytes_in_a_chunk(tmp_path, episodes, capsys):
    path = fill(tmp_path / "s.zarr", episodes)
    chunk = path / "data/action/c/2/0"
    flip(chunk)
    store = TrajectoryStore.open(path)  # the chunk is there; reading it fails
    message = rf"{re.escape(str(chunk))} is damaged: chunk 2 of data/action \(steps 16-23\) cannot "
    for read in (lambda: store.load(["action"]), lambda: store.episode(3)):
        with pytest.raises(StoreError, match=message + r"be decoded .*checksum.*store verify"):
            read()
    store.episode(2)  # other episodes still read
    rc, out = verify_cli(path, capsys)
    assert rc == EXIT_DAMAGED
    assert f"DAMAGED data/action chunk 2 ({chunk}): cannot be decoded" in out
    assert "— episodes 3\n" in out


def test_truncated_chunk_names_the_file(tmp_path, episodes, capsys):
    path = fill(tmp_path / "s.zarr", episodes)
    chunk = path / "data/reward/c/0"
    truncate(chunk)
    store = TrajectoryStore.open(path)
    with pytest.raises(StoreError, match=rf"{re.escape(str(chunk))} is damaged: chunk 0 of "
                       r"data/reward \(steps 0-7\) cannot be decoded \(RuntimeError: Zstd"):  # fmt: skip
        store.load()
    with pytest.raises(StoreError, match=re.escape(str(chunk))):
        store.compute_stats(["reward"])
    rc, out = verify_cli(path, capsys)
    assert rc == EXIT_DAMAGED and "DAMAGED data/reward chunk 0" in out and "episodes 0-1" in out


@pytest.mark.parametrize("doc", ["zarr.json", "data/obs/zarr.json", "meta/zarr.json"])
def test_truncated_metadata_names_the_file(tmp_path, episodes, doc, capsys):
    path = fill(tmp_path / "s.zarr", episodes)
    truncate(path / doc)
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match=rf"{re.escape(str(path / doc))} is not valid JSON "
                           r"\(JSONDecodeError: .*metadata is damaged"):  # fmt: skip
            TrajectoryStore.open(path, mode=mode)
    rc, out = verify_cli(path, capsys)
    assert rc == EXIT_DAMAGED and f"({path / doc}): metadata not valid JSON" in out


@pytest.mark.filterwarnings("ignore:Object at reward is not recognized")
def test_missing_array_metadata(tmp_path, episodes):
    path = fill(tmp_path / "s.zarr", episodes)
    (path / "data/reward/zarr.json").unlink()  # zarr would no longer list the array at all
    with pytest.raises(StoreError, match=r"digests cover data arrays .*missing \['reward'\]"):
        TrajectoryStore.open(path)
    assert any(d.what == "data/reward" for d in verify_store(path).damage)


def test_a_valid_chunk_in_the_wrong_place_is_a_digest_mismatch(tmp_path, episodes, capsys):
    path = fill(tmp_path / "s.zarr", episodes)
    # A whole, well-formed chunk with other numbers: only the episode digests can tell.
    shutil.copy(path / "data/obs/c/0/0", path / "data/obs/c/1/0")
    store = TrajectoryStore.open(path)
    with pytest.raises(StoreError, match=r"data/obs differ from their recorded digest in "
                       r"episodes 1-3; the store is damaged"):  # fmt: skip
        store.load(["obs"])
    with pytest.raises(StoreError, match="data/obs differ .* episodes 2;"):
        store.episode(2)
    store.load(["action"])  # arrays that are intact still load
    rc, out = verify_cli(path, capsys)
    assert rc == EXIT_DAMAGED
    assert (
        "DAMAGED data/obs: contents differ from the recorded episode digest — episodes 1-3" in out
    )


def test_changed_metadata_value_is_a_digest_mismatch(tmp_path, episodes):
    path = fill(tmp_path / "s.zarr", episodes)
    zarr.open_group(path, mode="r+")["meta/episode_return"][4] = 123.0
    store = TrajectoryStore.open(path)
    store.episode(3)
    with pytest.raises(StoreError, match="meta/episode differ .* episodes 4;"):
        store.episode(4)
    damage = verify_store(path).damage
    assert [(d.what, d.episodes) for d in damage] == [("meta/episode", [4])]


def test_damaged_journal_file(tmp_path, episodes, capsys):
    path = tmp_path / "s.zarr"
    store = TrajectoryStore.create(path, flush_every=10)
    store.add_episodes(episodes[:3])
    store._release_lock()  # a dead writer: three episodes only in the journal
    flip(path / "pending/000000001.npz", 0.3)
    with pytest.raises(StoreError, match=r"000000001.npz is unreadable"):
        TrajectoryStore.open(path)
    rc, out = verify_cli(path, capsys)
    assert rc == EXIT_DAMAGED and "DAMAGED journal (" in out and "episodes 1\n" in out


def test_store_without_integrity_still_opens(tmp_path, episodes, capsys):
    path = fill(tmp_path / "old.zarr", episodes, integrity=False)
    root = zarr.open_group(path, mode="r")
    assert root.attrs["robodistill_store"] == 1 and "integrity" not in root.attrs
    assert "meta/episode_digest" not in root
    codecs = json.loads((path / "data/obs/zarr.json").read_text())["codecs"]
    assert {"name": "zstd", "configuration": {"level": 0, "checksum": False}} in codecs
    assert not (path / "data/truncated/c").exists()  # all-False chunks were never written
    with TrajectoryStore.open(path, mode="a") as store:  # appends keep format 1
        store.add_episodes(episodes[:2])
    store = TrajectoryStore.open(path)
    assert store.n_episodes == 8
    np.testing.assert_array_equal(store.episode(7).data["obs"], episodes[1].data["obs"])
    assert "meta/episode_digest" not in zarr.open_group(path, mode="r")
    rc, out = verify_cli(path, capsys)
    assert rc == EXIT_OK
    assert "no digests recorded" in out and "data/truncated: 6 chunk(s) absent" in out
    truncate(path / "data/obs/c/0/0")  # undecodable chunks are still found
    with pytest.raises(StoreError, match=re.escape(str(path / "data/obs/c/0/0"))):
        TrajectoryStore.open(path).load()
    rc, out = verify_cli(path, capsys)
    assert rc == EXIT_DAMAGED and "DAMAGED data/obs chunk 0" in out


def test_recovered_store_is_identical_to_an_uninterrupted_one(tmp_path, episodes):
    whole = fill(tmp_path / "whole.zarr", episodes)
    path = tmp_path / "resumed.zarr"
    store = TrajectoryStore.create(path, chunk_steps=8, flush_every=4)
    store.add_episodes(episodes[:3])
    store._release_lock()  # killed with three episodes in the journal
    with TrajectoryStore.open(path, mode="a", flush_every=4) as store:
        store.add_episodes(episodes[3:])

    def files(p):
        return {f.relative_to(p).as_posix(): f.read_bytes() for f in p.rglob("*") if f.is_file()}

    assert files(path) == files(whole)
    assert verify_store(path).ok


def test_teach_refuses_a_damaged_store(tiny_overrides, tmp_path, episodes, capsys):
    path = fill(tmp_path / "demos.zarr", episodes)
    (path / "data/obs/c/1/0").unlink()
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    rc = main(["teach", "--algo", "rl100", *sets, "--set", f"teach.rl100.demos={path}"])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE
    assert f"error: {path}/data/obs/c/1/0 is missing: chunk 1 of data/obs" in err
    assert "Traceback" not in err
