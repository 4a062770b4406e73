"""Formats other tools read (issue 23, point 7): ``robodistill store export / import`` for zarr v2
(diffusion_policy's replay buffer), Minari and LeRobot v3. Every export -> import round trip is
lossless (arrays and dtypes, episode boundaries, per-episode metadata, store attrs), episodes are
exported in seed order, and metadata comes back as plain ``str``.

zarr-python 2 cannot be installed next to zarr 3 and ``lerobot`` pins an older torch, so their
side is checked against the documented on-disk formats: the zarr v2 files are decoded here with
numcodecs alone, following the rules diffusion_policy's ``ReplayBuffer`` applies, and a buffer
written byte by byte the way zarr-python 2 writes one is imported; the LeRobot files are checked
against the v3 layout (``meta/info.json``, ``stats.json``, ``tasks.parquet``, ``episodes``)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numcodecs
import numpy as np
import pytest

from robodistill.cli import EXIT_OK, EXIT_USAGE, main
from robodistill.data.formats import FORMATS, export_store, import_store
from robodistill.data.formats.common import FormatError, seed_order
from robodistill.data.store import Episode, StoreError, TrajectoryStore

LENGTHS = [5, 7, 3, 9, 4, 6]
SEEDS = [30, 10, -1, 0, 20, 5]  # collected out of order; one episode without a seed (-1)
ATTRS = {
    "env_id": "Pendulum-v1",
    "control_rate_hz": 20.0,
    "observation_space": {"type": "Box", "shape": [3], "dtype": "float32",
                          "low": [-1.0, -1.0, None], "high": [1.0, 1.0, None]},
    "action_space": {"type": "Box", "shape": [1], "dtype": "float32", "low": [-2.0],
                     "high": [2.0]},
}  # fmt: skip
RECORD = ("seed", "success", "env_id", "embodiment", "source_policy", "max_score", "score_source")


def make_episode(
    rng: np.random.Generator, t: int, i: int, goal: bool = True, env_id: str = "Pendulum-v1"
) -> Episode:
    data = {
        "obs": rng.normal(size=(t, 3)).astype(np.float32),
        "action": rng.normal(size=(t, 1)).astype(np.float32),
        "reward": rng.normal(size=t),
        "terminated": np.arange(t) == t - 1 if i % 2 else np.zeros(t, dtype=bool),
        "truncated": np.zeros(t, dtype=bool) if i % 2 else np.arange(t) == t - 1,
        "contacts": rng.integers(-3, 3, size=(t, 2, 2)).astype(np.int16),  # extra, rank 3
        "grasped": rng.random(t) > 0.5,  # extra, one bool per step
    }
    final = {"obs": rng.normal(size=3).astype(np.float32)}
    if goal:
        data["obs_goal"] = rng.normal(size=(t, 2)).astype(np.float64)
        final["obs_goal"] = rng.normal(size=2)
    return Episode(data=data, final=final, seed=SEEDS[i], env_id=env_id,
                   embodiment="arm" if i % 3 else "", source_policy="expert",
                   success=[None, True, False][i % 3], max_score=None if i % 2 else 0.5 * i,
                   score_source="" if i % 2 else "reward")  # fmt: skip


def fill(path: Path, goal: bool = True, env_ids: tuple[str, ...] = ("Pendulum-v1",)) -> Path:
    rng = np.random.default_rng(0)
    eps = [make_episode(rng, t, i, goal, env_ids[i % len(env_ids)]) for i, t in enumerate(LENGTHS)]
    with TrajectoryStore.create(path, attrs=ATTRS, chunk_steps=8, flush_every=4) as store:
        store.add_episodes(eps)
        store.save_stats()
    return path


@pytest.fixture
def store(tmp_path) -> Path:
    return fill(tmp_path / "demos.zarr")


def assert_same(src: Path, dst: Path) -> None:
    """``dst`` holds ``src``'s episodes in seed order: equal arrays (and dtypes), episode
    boundaries, final observations, metadata (plain ``str``), attrs and chunking."""
    with TrajectoryStore.open(src) as a, TrajectoryStore.open(dst) as b:
        order = seed_order(a.episode_meta()["seed"])
        assert b.n_episodes == a.n_episodes and b.n_steps == a.n_steps
        assert np.array_equal(np.diff(b.episode_ends, prepend=0), a.episode_meta()["length"][order])
        assert b.attrs == a.attrs
        assert set(b.keys) == set(a.keys)
        for j, i in enumerate(order):
            x, y = a.episode(int(i)), b.episode(j)
            for k, v in x.data.items():
                assert y.data[k].dtype == v.dtype and y.data[k].shape == v.shape, k
                assert np.array_equal(y.data[k], v), (j, k)
            for k, v in x.final.items():
                assert y.final[k].dtype == v.dtype and np.array_equal(y.final[k], v), (j, k)
            for name in RECORD:
                assert getattr(y, name) == getattr(x, name), (j, name)
            assert y.return_ == x.return_
            for name in ("env_id", "embodiment", "source_policy", "score_source"):
                assert type(getattr(y, name)) is str
        assert b.episode_meta()["seed"].tolist() == sorted(SEEDS[:2] + SEEDS[3:]) + [-1]
    chunks = [json.loads((p / "data/obs/zarr.json").read_text())["chunk_grid"] for p in (src, dst)]
    assert chunks[0] == chunks[1]


@pytest.mark.parametrize("mixed", [False, True], ids=["one-env", "mixed-env-ids"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_is_lossless(store, tmp_path, fmt, mixed):
    pytest.importorskip({"minari": "minari", "lerobot": "pyarrow"}.get(fmt, "zarr"))
    if mixed:  # episodes of several envs, and some without an env id: each keeps its own
        store = fill(tmp_path / "mixed.zarr", env_ids=("Pendulum-v1", "", "MountainCar-v0"))
    out = tmp_path / f"out-{fmt}"
    r = export_store(store, out, fmt)
    assert r == {"format": fmt, "episodes": 6, "steps": sum(LENGTHS), "out": str(out)}
    back = import_store(out, tmp_path / "back.zarr", fmt)
    assert back["episodes"] == 6 and back["steps"] == sum(LENGTHS)
    assert_same(store, tmp_path / "back.zarr")
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


# ---------------------------------------------------------------- zarr v2 (diffusion_policy)
def read_v2(path: Path) -> np.ndarray:
    """One zarr v2 array decoded from its files with numcodecs alone (what zarr-python 2
    does): the ``.zarray`` JSON, then every chunk, which must all be present."""
    meta = json.loads((path / ".zarray").read_text())
    assert meta["zarr_format"] == 2 and meta["order"] == "C" and meta["filters"] is None
    dtype, shape, chunks = np.dtype(meta["dtype"]), tuple(meta["shape"]), tuple(meta["chunks"])
    assert dtype.kind != "O"  # no object codec needed
    codec = numcodecs.get_codec(meta["compressor"]) if meta["compressor"] else None
    sep = meta.get("dimension_separator", ".")
    out = np.empty(shape, dtype)
    grid = [math.ceil(s / c) for s, c in zip(shape, chunks, strict=True)]
    for idx in np.ndindex(*grid):
        raw = (path / sep.join(map(str, idx))).read_bytes()
        block = np.frombuffer(codec.decode(raw) if codec else raw, dtype).reshape(chunks)
        where = tuple(
            slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape, strict=True)
        )
        out[where] = block[tuple(slice(0, w.stop - w.start) for w in where)]
    return out


def open_replay_buffer(path: Path) -> dict:
    """``ReplayBuffer.copy_from_path`` with the numpy backend, on the raw files: the root, data
    and meta groups are zarr v2 groups, ``meta/episode_ends`` exists, every data array has
    exactly ``episode_ends[-1]`` rows, and every meta array loads with ``value[:]``."""
    for group in (path, path / "data", path / "meta"):
        assert json.loads((group / ".zgroup").read_text()) == {"zarr_format": 2}
    assert not list(path.rglob("zarr.json"))
    data = {p.name: read_v2(p) for p in sorted((path / "data").iterdir()) if p.is_dir()}
    meta = {p.name: read_v2(p) for p in sorted((path / "meta").iterdir()) if p.is_dir()}
    assert all(v.shape[0] == meta["episode_ends"][-1] for v in data.values())
    attrs = path / ".zattrs"  # zarr-python 2 writes none for a group without attributes
    return {
        "data": data,
        "meta": meta,
        "attrs": json.loads(attrs.read_text()) if attrs.exists() else {},
    }


def test_zarr2_files_follow_diffusion_policy_layout(store, tmp_path):
    export_store(store, tmp_path / "dp.zarr", "zarr2")
    buf = open_replay_buffer(tmp_path / "dp.zarr")
    zarray = json.loads((tmp_path / "dp.zarr/data/obs/.zarray").read_text())
    assert zarray["compressor"]["id"] == "blosc" and zarray["chunks"] == [8, 3]
    with TrajectoryStore.open(store) as s:
        meta = s.episode_meta()
        order = seed_order(meta["seed"])
        eps = [s.episode(int(i)) for i in order]
        attrs = s.attrs
    assert buf["meta"]["episode_seed"].tolist() == [ep.seed for ep in eps]  # seed order
    assert buf["meta"]["episode_ends"].tolist() == np.cumsum([ep.length for ep in eps]).tolist()
    for k in eps[0].data:
        assert np.array_equal(buf["data"][k], np.concatenate([ep.data[k] for ep in eps])), k
    assert np.array_equal(buf["meta"]["final_obs_goal"], [ep.final["obs_goal"] for ep in eps])
    assert buf["meta"]["episode_env_id"].dtype.kind == "U"  # fixed width, no object codec
    assert buf["meta"]["episode_success"].tolist() == [
        -1 if ep.success is None else int(ep.success) for ep in eps
    ]
    assert buf["attrs"]["robodistill_export"]["chunk_steps"] == 8
    assert {k: v for k, v in buf["attrs"].items() if k != "robodistill_export"} == attrs


def write_zarr2_like_zarr_python_2(path: Path, data: dict, episode_ends: np.ndarray) -> None:
    """A replay buffer as diffusion_policy writes one with zarr-python 2: ``.zgroup`` files,
    ``.zarray`` without ``dimension_separator``, Blosc lz4 chunks padded to the full chunk,
    ``episode_ends`` uncompressed, no attributes and no robodistill metadata."""
    blosc = {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 0, "blocksize": 0}

    def array(where: Path, v: np.ndarray, chunk: int, compressor) -> None:
        where.mkdir(parents=True)
        chunks = (chunk, *v.shape[1:])
        (where / ".zarray").write_text(json.dumps({
            "chunks": list(chunks), "compressor": compressor, "dtype": v.dtype.str,
            "fill_value": 0, "filters": None, "order": "C", "shape": list(v.shape),
            "zarr_format": 2}))  # fmt: skip
        codec = numcodecs.get_codec(compressor) if compressor else None
        for c in range(math.ceil(len(v) / chunk)):
            block = np.zeros(chunks, v.dtype)
            part = v[c * chunk : (c + 1) * chunk]
            block[: len(part)] = part
            raw = block.tobytes()
            key = ".".join(["0"] * (v.ndim - 1))
            (where / (f"{c}.{key}" if key else str(c))).write_bytes(
                codec.encode(raw) if codec else raw
            )

    for group in (path, path / "data", path / "meta"):
        group.mkdir(parents=True, exist_ok=True)
        (group / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    for k, v in data.items():
        array(path / "data" / k, v, 16, blosc)
    array(path / "meta" / "episode_ends", episode_ends, len(episode_ends), None)


def test_zarr2_import_reads_a_diffusion_policy_buffer(tmp_path):
    rng = np.random.default_rng(1)
    ends = np.array([10, 25, 31], dtype=np.int64)
    data = {"state": rng.normal(size=(31, 5)).astype(np.float32),
            "action": rng.normal(size=(31, 2)).astype(np.float32),
            "keypoint": rng.normal(size=(31, 9, 2)).astype(np.float32)}  # fmt: skip
    src = tmp_path / "pusht_cchi_v7_replay.zarr"
    write_zarr2_like_zarr_python_2(src, data, ends)
    assert open_replay_buffer(src)["meta"]["episode_ends"].tolist() == ends.tolist()
    rc = main(["store", "import", "--format", "zarr2", str(src), str(tmp_path / "s.zarr"),
               "--env-id", "robodistill/PushT-v0"])  # fmt: skip
    assert rc == EXIT_OK
    with TrajectoryStore.open(tmp_path / "s.zarr") as s:
        assert s.n_episodes == 3 and s.episode_ends.tolist() == ends.tolist()
        loaded = s.load()
        assert np.array_equal(loaded["obs"], data["state"])  # state -> obs
        assert np.array_equal(loaded["keypoint"], data["keypoint"])
        assert np.array_equal(loaded["action"], data["action"])
        # The documented defaults for what a diffusion_policy buffer does not record:
        assert not loaded["reward"].any() and not loaded["terminated"].any()
        assert np.flatnonzero(loaded["truncated"]).tolist() == (ends - 1).tolist()
        meta = s.episode_meta()
        assert meta["seed"].tolist() == [-1] * 3 and meta["success"].tolist() == [-1] * 3
        ep = s.episode(1)
        assert ep.env_id == "robodistill/PushT-v0" and type(ep.env_id) is str
        assert np.array_equal(ep.final["obs"], data["state"][24])  # the last observation
        assert s.attrs["imported_from"]["format"] == "zarr2" and "obs" in s.attrs["normalizer"]


def test_zarr2_import_names_a_missing_observation_key(tmp_path):
    src = tmp_path / "buf.zarr"
    write_zarr2_like_zarr_python_2(src, {"img": np.zeros((4, 2), np.float32),
                                         "action": np.zeros((4, 1), np.float32)},
                                   np.array([4]))  # fmt: skip
    with pytest.raises(FormatError, match=r"--obs-key.*") as e:
        import_store(src, tmp_path / "s.zarr", "zarr2")
    assert "'img'" in str(e.value)
    r = import_store(src, tmp_path / "s.zarr", "zarr2", obs_key="img")
    assert r["episodes"] == 1


# ---------------------------------------------------------------- LeRobot v3
def test_lerobot_files_follow_the_v3_layout(store, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")  # the formats extra
    out = tmp_path / "lerobot"
    export_store(store, out, "lerobot")
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20
    assert info["total_episodes"] == 6 and info["total_frames"] == sum(LENGTHS)
    assert info["total_tasks"] == 1 and info["chunks_size"] == 1000
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] is None and info["splits"] == {"train": "0:6"}
    features = info["features"]
    for name, dtype in {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64",
                        "index": "int64", "task_index": "int64", "next.done": "bool",
                        "next.reward": "float64", "action": "float32"}.items():  # fmt: skip
        assert features[name] == {"dtype": dtype, "shape": [1], "names": None}, name
    assert features["observation.state"]["shape"] == [3]
    assert features["observation.goal"] == {"dtype": "float64", "shape": [2], "names": None}
    assert features["contacts"]["shape"] == [2, 2]
    frames = pq.read_table(out / "data/chunk-000/file-000.parquet").to_pydict()
    assert set(frames) == set(features)
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in episodes] == list(range(6))
    assert [e["seed"] for e in episodes] == [0, 5, 10, 20, 30, -1]  # seed order
    with TrajectoryStore.open(store) as s:
        order = seed_order(s.episode_meta()["seed"])
        eps = [s.episode(int(i)) for i in order]
    states = np.concatenate([ep.data["obs"] for ep in eps])
    assert np.array_equal(np.array(frames["observation.state"], np.float32), states)
    assert frames["index"] == list(range(sum(LENGTHS)))
    for e, ep in zip(episodes, eps, strict=True):
        lo, hi = e["dataset_from_index"], e["dataset_to_index"]
        assert hi - lo == e["length"] == ep.length and e["tasks"] == ["Pendulum-v1"]
        assert (e["data/chunk_index"], e["data/file_index"]) == (0, 0)
        assert frames["episode_index"][lo:hi] == [e["episode_index"]] * ep.length
        assert frames["frame_index"][lo:hi] == list(range(ep.length))
        assert np.allclose(frames["timestamp"][lo:hi], np.arange(ep.length) / 20)
        assert frames["next.done"][lo:hi][-1] and not any(frames["next.done"][lo:hi][:-1])
        assert e["stats/observation.state/count"] == [ep.length]
        assert np.allclose(e["stats/observation.state/mean"], ep.data["obs"].mean(0))
        assert e["success"] == ep.success and e["env_id"] == ep.env_id
    stats = json.loads((out / "meta/stats.json").read_text())
    assert set(stats) == set(features)
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50",
                                    "q90", "q99"}  # fmt: skip
    assert stats["observation.state"]["count"] == [sum(LENGTHS)]
    assert np.allclose(stats["observation.state"]["mean"], states.mean(0))
    assert np.allclose(stats["observation.state"]["std"], states.std(0))
    assert np.allclose(stats["observation.state"]["min"], states.min(0))
    tasks = pq.read_table(out / "meta/tasks.parquet").to_pydict()
    assert tasks == {"task_index": [0], "task": ["Pendulum-v1"]}
    pd = pytest.importorskip("pandas")  # LeRobot reads tasks with pandas, indexed by task
    assert int(pd.read_parquet(out / "meta/tasks.parquet").loc["Pendulum-v1"].task_index) == 0


def test_lerobot_import_of_a_dataset_robodistill_did_not_write(store, tmp_path):
    """Without meta/robodistill.json and robodistill's episode columns (as in a dataset
    recorded with LeRobot): documented defaults, observation.state -> obs."""
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "lerobot"
    export_store(store, out, "lerobot")
    (out / "meta/robodistill.json").unlink()
    path = out / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    keep = [c for c in table.column_names if c == "episode_index" or "/" in c and not
            c.startswith("final/") or c in ("tasks", "length")]  # fmt: skip
    pq.write_table(table.select(keep), path)
    import_store(out, tmp_path / "s.zarr", "lerobot", env_id="Pendulum-v1")
    with TrajectoryStore.open(store) as a, TrajectoryStore.open(tmp_path / "s.zarr") as b:
        order = seed_order(a.episode_meta()["seed"])
        assert b.episode_meta()["seed"].tolist() == [-1] * 6
        assert set(b.keys) == {"obs", "obs_goal", "action", "reward", "terminated", "truncated",
                               "contacts", "grasped"}  # fmt: skip
        for j, i in enumerate(order):
            x, y = a.episode(int(i)), b.episode(j)
            for k in ("obs", "obs_goal", "action", "reward", "terminated", "truncated", "contacts"):
                assert np.array_equal(y.data[k], x.data[k]), k
            assert np.array_equal(y.data["grasped"][:, 0], x.data["grasped"])  # (1,) feature
            assert np.array_equal(y.final["obs"], x.data["obs"][-1])  # no final: the last
            assert y.success is None and y.env_id == "Pendulum-v1"


# ---------------------------------------------------------------- Minari
def test_minari_reads_the_export(store, tmp_path):
    minari = pytest.importorskip("minari")
    export_store(store, tmp_path / "pendulum-expert", "minari")
    ds = minari.MinariDataset(tmp_path / "pendulum-expert" / "data")
    assert ds.total_episodes == 6 and ds.total_steps == sum(LENGTHS)
    assert ds.id == "pendulum-expert-v0" and ds.env_spec.id == "Pendulum-v1"
    assert set(ds.observation_space.spaces) == {"obs", "obs_goal"}
    metas = list(ds.storage.get_episode_metadata(range(6)))
    assert [m.get("seed") for m in metas] == [0, 5, 10, 20, 30, None]  # seed order
    with TrajectoryStore.open(store) as s:
        first = s.episode(int(seed_order(s.episode_meta()["seed"])[0]))
    ep = ds[0]
    assert np.array_equal(ep.observations["obs"][:-1], first.data["obs"])
    assert np.array_equal(ep.observations["obs"][-1], first.final["obs"])
    assert np.array_equal(ep.actions, first.data["action"])
    assert metas[0]["robodistill"]["env_id"] == "Pendulum-v1"


def test_minari_import_of_a_dataset_minari_wrote(tmp_path, monkeypatch):
    """A Dict-observation dataset made with minari's own API: flattened to float32 in
    gymnasium's order, success from infos["success"], seeds from the episode metadata."""
    minari = pytest.importorskip("minari")
    import gymnasium as gym
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    space = gym.spaces.Dict({"observation": gym.spaces.Box(-5, 5, (3,), np.float64),
                             "desired_goal": gym.spaces.Box(-5, 5, (2,), np.float64)})  # fmt: skip
    rng = np.random.default_rng(2)
    buffers = []
    for i, t in enumerate([4, 6]):
        obs = {k: rng.normal(size=(t + 1, *s.shape)) for k, s in space.spaces.items()}
        buffers.append(EpisodeBuffer(
            id=i, seed=7 + i, observations=obs, actions=rng.normal(size=(t, 1)).astype(np.float32),
            rewards=rng.normal(size=t), terminations=np.arange(t) == t - 1,
            truncations=np.zeros(t, bool), infos={"success": [bool(i) and j == t for j in range(t + 1)]}))  # fmt: skip
    with pytest.warns(UserWarning):  # minari asks for author, permalink, ...
        minari.create_dataset_from_buffers("test/fetch-v0", buffers, observation_space=space,
                                           action_space=gym.spaces.Box(-1, 1, (1,), np.float32),
                                           data_format="arrow")  # fmt: skip
    import_store("test/fetch-v0", tmp_path / "s.zarr", "minari")  # a local dataset id
    with TrajectoryStore.open(tmp_path / "s.zarr") as s:
        assert s.episode_meta()["seed"].tolist() == [7, 8]
        ep = s.episode(1)
        want = np.concatenate([buffers[1].observations["desired_goal"],
                               buffers[1].observations["observation"]], axis=1)  # fmt: skip
        assert ep.data["obs"].dtype == np.float32
        assert np.array_equal(ep.data["obs"], want[:-1].astype(np.float32))
        assert np.array_equal(ep.final["obs"], want[-1].astype(np.float32))
        assert s.episode(0).success is False and ep.success is True


def test_minari_missing_says_which_extra(monkeypatch):
    from robodistill.data.formats.minari_format import require_minari

    monkeypatch.setitem(__import__("sys").modules, "minari", None)
    with pytest.raises(FormatError, match=r"robodistill\[formats\]"):
        require_minari()


# ---------------------------------------------------------------- CLI, overwrite, failures
def test_cli_export_and_import(store, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    out, back = tmp_path / "lr", tmp_path / "back.zarr"
    assert main(["store", "export", "--format", "lerobot", str(store), str(out)]) == EXIT_OK
    assert "exported 6 episodes (34 steps)" in capsys.readouterr().out
    assert main(["store", "import", "-f", "lerobot", str(out), str(back)]) == EXIT_OK
    assert "imported 6 episodes" in capsys.readouterr().out
    assert_same(store, back)
    # An existing OUT needs --overwrite; an option of another format is refused.
    assert main(["store", "export", "--format", "lerobot", str(store), str(out)]) == EXIT_USAGE
    assert "--overwrite" in capsys.readouterr().err
    assert main(["store", "export", "-f", "lerobot", str(store), str(out), "--fps", "50",
                 "--overwrite"]) == EXIT_OK  # fmt: skip
    assert json.loads((out / "meta/info.json").read_text())["fps"] == 50
    assert main(["store", "export", "-f", "zarr2", str(store), str(out), "--fps", "5"]) == (
        EXIT_USAGE
    )
    assert "fps does not apply to the zarr2 format" in capsys.readouterr().err


def test_overwrite_never_replaces_an_unrelated_folder(store, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("keep me")
    pytest.importorskip("pyarrow")
    for fmt in ("zarr2", "lerobot"):
        with pytest.raises(FormatError, match="refusing to overwrite"):
            export_store(store, out, fmt, overwrite=True)
    assert (out / "todo.txt").read_text() == "keep me"


def test_a_failed_export_leaves_nothing_behind(tmp_path):
    pytest.importorskip("pyarrow")
    rng = np.random.default_rng(3)
    ep = make_episode(rng, 5, 0, goal=False)
    ep.data["index"] = np.arange(5)  # a LeRobot default feature's name
    with TrajectoryStore.create(tmp_path / "s.zarr") as s:
        s.add_episode(ep)
    with pytest.raises(FormatError, match="collide"):
        export_store(tmp_path / "s.zarr", tmp_path / "out", "lerobot")
    assert sorted(os.listdir(tmp_path)) == ["s.zarr"]
    with TrajectoryStore.create(tmp_path / "empty.zarr"):
        pass
    with pytest.raises(FormatError, match="no episodes"):
        export_store(tmp_path / "empty.zarr", tmp_path / "out", "zarr2")


@pytest.mark.parametrize("in_ram", [True, False])
def test_export_reads_journaled_episodes_either_way(tmp_path, monkeypatch, in_ram):
    """Episodes still in the journal (a writer that has not merged them) are exported too; the
    bulk read (small stores) and the episode-by-episode read (big ones) give the same files."""
    from robodistill.data.formats import common

    if not in_ram:
        monkeypatch.setattr(common, "IN_RAM_BYTES", 0)
    rng = np.random.default_rng(0)
    writer = TrajectoryStore.create(tmp_path / "s.zarr", attrs=ATTRS, chunk_steps=8, flush_every=4)
    try:
        writer.add_episodes([make_episode(rng, t, i) for i, t in enumerate(LENGTHS)])
        assert writer.n_episodes == 6  # 4 merged, 2 in the journal
        export_store(tmp_path / "s.zarr", tmp_path / "out", "zarr2")
        import_store(tmp_path / "out", tmp_path / "back.zarr", "zarr2")
        assert_same(tmp_path / "s.zarr", tmp_path / "back.zarr")
    finally:
        writer.close()


def test_export_checks_episode_digests(store, tmp_path):
    import zarr

    zarr.open_group(store, mode="r+")["meta/episode_env_id"][2] = "Tampered-v0"
    with pytest.raises(StoreError, match="differ from their recorded digest"):
        export_store(store, tmp_path / "out", "zarr2")
    assert not (tmp_path / "out").exists()
