"""LeRobot datasets (LeRobotDataset v3, ``codebase_version`` "v3.0"), written with pyarrow.

::

    OUT/meta/info.json           codebase_version, fps, features, totals, chunks_size,
                                 data_path / video_path templates, splits
    OUT/meta/stats.json          per feature: min, max, mean, std, count, q01 q10 q50 q90 q99
    OUT/meta/tasks.parquet       task_index, indexed by the task string (the env id)
    OUT/meta/episodes/chunk-000/file-000.parquet
                                 one row per episode: episode_index, tasks, length,
                                 data/chunk_index, data/file_index, dataset_from_index,
                                 dataset_to_index, meta/episodes/*, stats/<feature>/<stat>,
                                 and robodistill's: seed, success, return, max_score,
                                 score_source, env_id, embodiment, source_policy,
                                 final/<feature> (the observation after the last action)
    OUT/data/chunk-000/file-000.parquet
                                 frames: observation.state, action, next.reward, next.done,
                                 next.terminated, next.truncated, other data keys, timestamp,
                                 frame_index, episode_index, index, task_index
    OUT/meta/robodistill.json    store attrs, chunk_steps, feature -> store key, dtype, shape

Features of shape (1,) are plain columns, vectors fixed-size lists, higher ranks nested lists
(what LeRobot's ``Value`` / ``Sequence`` / ``ArrayND`` features read). Data files roll over at
100 MB (``data_files_size_in_mb``), as LeRobot's writer does. No videos: every feature is
numeric. Episodes are written in seed order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from robodistill.data.episode import STR_META, Episode
from robodistill.data.formats.common import (
    FORMAT_VERSION,
    FormatError,
    default_done,
    default_final,
    episode_record,
    iter_episodes,
    make_episode,
    open_for_export,
    rename_obs,
    staged,
    store_chunk_steps,
    write_store,
)

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE, DATA_FILES_MB, VIDEO_FILES_MB = 1000, 100, 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
DEFAULT_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64",
                    "index": "int64", "task_index": "int64"}  # fmt: skip
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STANDARD = {"obs": "observation.state", "action": "action", "reward": "next.reward",
            "terminated": "next.terminated", "truncated": "next.truncated"}  # fmt: skip
_SCALAR_KEYS = ("reward", "terminated", "truncated")
DEFAULT_FPS = 10


def require_pyarrow():
    """``(pyarrow, pyarrow.parquet)``, or a :class:`FormatError` saying how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise FormatError(
            f"the lerobot format needs pyarrow ({e}); install it with "
            '`pip install "robodistill[formats]"`'
        ) from e
    return pa, pq


def feature_names(keys: list[str]) -> dict[str, str]:
    """Store data key -> LeRobot feature name (``obs`` -> ``observation.state``, ``obs_x`` ->
    ``observation.x``, ``reward`` -> ``next.reward``, ...; other keys keep their name)."""
    out = {}
    for k in keys:
        if k in STANDARD:
            out[k] = STANDARD[k]
        elif k.startswith("obs_") and k[4:] and k[4:] != "state":
            out[k] = f"observation.{k[4:]}"
        elif k.startswith("obs"):
            out[k] = f"observation.{k}"
        else:
            out[k] = k
    taken = [f for f in out.values() if f in DEFAULT_FEATURES or f in ("task", "next.done")]
    if taken or len(set(out.values())) < len(out):
        raise FormatError(f"data keys {sorted(keys)} collide with LeRobot's feature names")
    return out


def _shape(v: np.ndarray) -> list[int]:
    return list(v.shape[1:]) or [1]


def _column(pa, v: np.ndarray):
    """(n, *shape) -> a plain column for shape () or (1,), else nested fixed-size lists."""
    n, shape = len(v), v.shape[1:]
    if int(np.prod(shape, dtype=np.int64)) == 1 and len(shape) <= 1:
        return pa.array(v.reshape(n))
    arr = pa.array(np.ascontiguousarray(v).reshape(-1))
    for dim in reversed(shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, int(dim))
    return arr


def _array(col, rows: int, shape: list[int], dtype: str) -> np.ndarray:
    """Inverse of :func:`_column` for a (chunked) arrow column, fixed-size or plain lists."""
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    while (
        pa.types.is_list(col.type)
        or pa.types.is_fixed_size_list(col.type)
        or (pa.types.is_large_list(col.type))
    ):
        col = col.flatten()
    return col.to_numpy(zero_copy_only=False).astype(dtype).reshape(rows, *shape)


def feature_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot's per-feature stats of (n, *shape) frames: min, max, mean, std, count and the
    quantiles (exact here; LeRobot estimates them from histograms). Scalars give (1,) arrays."""
    x = x.astype(np.float64)
    if x.ndim == 1:
        x = x[:, None]
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0),
           "count": np.array([len(x)])}  # fmt: skip
    out |= {name: np.quantile(x, q, axis=0) for name, q in QUANTILES.items()}
    return out


class _StatsSum:
    """Aggregates per-episode stats as LeRobot's ``aggregate_stats`` does: count-weighted
    mean and variance, min of mins, max of maxes, and the quantiles' envelope (min for q <= 50,
    max above)."""

    def __init__(self) -> None:
        self.parts: dict[str, dict[str, Any]] = {}

    def add(self, name: str, s: dict[str, np.ndarray]) -> None:
        n = float(s["count"][0])
        p = self.parts.setdefault(name, {"n": 0.0, "s1": 0.0, "s2": 0.0})
        p["n"] += n
        p["s1"] = p["s1"] + n * s["mean"]
        p["s2"] = p["s2"] + n * (s["std"] ** 2 + s["mean"] ** 2)
        for key, fold in [("min", np.minimum), ("max", np.maximum)] + [
            (q, np.minimum if int(q[1:]) <= 50 else np.maximum) for q in QUANTILES
        ]:
            p[key] = s[key] if key not in p else fold(p[key], s[key])

    def result(self) -> dict[str, dict[str, list]]:
        out = {}
        for name, p in self.parts.items():
            mean = p["s1"] / p["n"]
            std = np.sqrt(np.maximum(p["s2"] / p["n"] - mean**2, 0.0))
            stats = {"min": p["min"], "max": p["max"], "mean": mean, "std": std}
            stats |= {q: p[q] for q in QUANTILES}
            out[name] = {k: np.asarray(v).tolist() for k, v in stats.items()}
            out[name]["count"] = [int(p["n"])]
        return out


def _looks_like(path: Path) -> bool:
    return (path / "meta" / "info.json").exists()


def _fps(attrs: dict, fps: float | None) -> float | int:
    rate = fps if fps is not None else attrs.get("control_rate_hz") or DEFAULT_FPS
    rate = float(rate)
    if rate <= 0:
        raise FormatError(f"fps must be positive, got {rate}")
    return int(rate) if rate.is_integer() else rate


def _chunk_file(chunk: int, file: int) -> tuple[int, int]:
    file += 1
    return (chunk + 1, 0) if file >= CHUNKS_SIZE else (chunk, file)


def _write_tasks(pa, pq, path: Path, tasks: dict[str, int]) -> None:
    """``meta/tasks.parquet`` as pandas writes a DataFrame indexed by "task" (LeRobot reads it
    with ``pandas.read_parquet``), without needing pandas."""
    table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()),
                      "task": pa.array(list(tasks), pa.string())})  # fmt: skip
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.0.0",
    }  # fmt: skip
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), path)


def export_lerobot(
    store_path: str | os.PathLike,
    out: str | os.PathLike,
    overwrite: bool = False,
    fps: float | None = None,
) -> dict[str, Any]:
    """Write the store at ``store_path`` as a LeRobot v3 dataset at ``out``.

    ``fps`` defaults to the store's ``control_rate_hz`` attribute, else 10."""
    pa, pq = require_pyarrow()
    store, order = open_for_export(store_path)
    with store, staged(out, overwrite, _looks_like) as tmp:
        tmp = Path(tmp)
        attrs, first = store.attrs, store.episode(int(order[0]))
        names = feature_names(list(first.data))
        rate = _fps(attrs, fps)
        features = {names[k]: {"dtype": str(v.dtype), "shape": _shape(v), "names": None}
                    for k, v in first.data.items()}  # fmt: skip
        features["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
        features |= {k: {"dtype": d, "shape": [1], "names": None}
                     for k, d in DEFAULT_FEATURES.items()}  # fmt: skip
        stats, tasks = _StatsSum(), {}
        rows: dict[str, list] = {}
        buf: list[dict[str, np.ndarray]] = []
        chunk = file = index = size = 0

        def flush() -> None:
            nonlocal chunk, file, size
            if not buf:
                return
            path = tmp / DATA_PATH.format(chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            cols = {f: _column(pa, np.concatenate([b[f] for b in buf])) for f in features}
            pq.write_table(pa.table(cols), path, compression="snappy")
            chunk, file = _chunk_file(chunk, file)
            buf.clear()
            size = 0

        for e, ep in enumerate(iter_episodes(store, order)):
            t, task = ep.length, ep.env_id or "robodistill"
            tasks.setdefault(task, len(tasks))
            frames = {names[k]: v for k, v in ep.data.items()}
            frames["next.done"] = ep.data["terminated"] | ep.data["truncated"]
            frames |= {"timestamp": (np.arange(t) / rate).astype(np.float32),
                       "frame_index": np.arange(t, dtype=np.int64),
                       "episode_index": np.full(t, e, dtype=np.int64),
                       "index": np.arange(index, index + t, dtype=np.int64),
                       "task_index": np.full(t, tasks[task], dtype=np.int64)}  # fmt: skip
            ep_stats = {f: feature_stats(v) for f, v in frames.items()}
            for f, s in ep_stats.items():
                stats.add(f, s)
            row = {"episode_index": e, "tasks": [task], "length": t, "data/chunk_index": chunk,
                   "data/file_index": file, "dataset_from_index": index,
                   "dataset_to_index": index + t, "meta/episodes/chunk_index": 0,
                   "meta/episodes/file_index": 0}  # fmt: skip
            row |= {f"stats/{f}/{k}": v.tolist() for f, s in ep_stats.items() for k, v in s.items()}
            row |= episode_record(ep) | {"return": ep.return_}
            row |= {f"final/{names[k]}": v.tolist() for k, v in ep.final.items()}
            for k, v in row.items():
                rows.setdefault(k, []).append(v)
            buf.append(frames)
            index += t
            size += sum(v.nbytes for v in frames.values())
            if size >= DATA_FILES_MB << 20:
                flush()
        flush()
        (tmp / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
        types = {"success": pa.bool_(), "max_score": pa.float64(), "seed": pa.int64()}
        table = pa.table({k: pa.array(v, type=types.get(k)) for k, v in rows.items()})
        pq.write_table(table, tmp / EPISODES_PATH.format(chunk_index=0, file_index=0))
        _write_tasks(pa, pq, tmp / "meta" / "tasks.parquet", tasks)
        embodiments = {str(v) for v in rows["embodiment"]}
        info = {"codebase_version": CODEBASE_VERSION,
                "robot_type": embodiments.pop() if len(embodiments) == 1 else None,
                "total_episodes": len(order), "total_frames": index, "total_tasks": len(tasks),
                "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILES_MB,
                "video_files_size_in_mb": VIDEO_FILES_MB, "fps": rate,
                "splits": {"train": f"0:{len(order)}"}, "data_path": DATA_PATH,
                "video_path": None, "features": features}  # fmt: skip
        if info["robot_type"] == "":
            info["robot_type"] = None
        _dump(tmp / "meta" / "info.json", info)
        _dump(tmp / "meta" / "stats.json", stats.result())
        keys = {names[k]: {"key": k, "dtype": str(v.dtype), "shape": list(v.shape[1:])}
                for k, v in first.data.items()}  # fmt: skip
        _dump(tmp / "meta" / "robodistill.json",
              {"format": "lerobot", "version": FORMAT_VERSION, "attrs": attrs,
               "chunk_steps": store_chunk_steps(store_path), "keys": keys})  # fmt: skip
    return {"format": "lerobot", "episodes": len(order), "steps": index, "out": str(out)}


def _dump(path: Path, doc: Any) -> None:
    # NaN only where a data key other than obs / action / reward holds one (in its stats).
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _foreign_keys(features: dict, obs_key: str | None) -> dict[str, dict]:
    """feature -> {key, dtype, shape} for a dataset robodistill did not write."""
    numeric = {f: ft for f, ft in features.items() if f not in DEFAULT_FEATURES
               and ft.get("dtype") not in ("video", "image", "string", "language")}  # fmt: skip
    source = rename_obs(numeric, obs_key, ("observation.state",))
    out = {}
    for f, ft in numeric.items():
        shape = [int(d) for d in ft.get("shape") or [1]]
        if f == source:
            key = "obs"
        elif f in STANDARD.values() and f != "observation.state":  # (not the obs: obs_state)
            key = next(k for k, v in STANDARD.items() if v == f)
        elif f.startswith("observation."):
            key = "obs_" + f[len("observation.") :].replace(".", "_").replace("/", "_")
        else:
            key = f.replace("/", "_")
        if key in _SCALAR_KEYS or f == "next.done":
            shape = [] if shape == [1] else shape
        out[f] = {"key": key, "dtype": ft["dtype"], "shape": shape}
    if "next.terminated" not in out and "next.done" in out:
        out["next.done"]["key"] = "terminated"
    else:
        out.pop("next.done", None)
    return out


def import_lerobot(
    src: str | os.PathLike,
    store_path: str | os.PathLike,
    obs_key: str | None = None,
    env_id: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Create a trajectory store at ``store_path`` from the LeRobot v3 dataset at ``src``.

    Our own exports come back losslessly (``meta/robodistill.json`` maps every feature back).
    Foreign datasets: ``obs`` is ``obs_key``, else ``observation.state``; other
    ``observation.x`` features become ``obs_x``, ``next.reward`` the reward (else zeros),
    ``next.terminated`` / ``next.truncated`` or else ``next.done`` the terminations (else
    truncated at the last step); other numeric features keep their names; video, image and
    string features are not imported. The final observation is the last one; the success is
    the last ``next.success`` when there is one; seeds -1; the env id is ``env_id`` or ""."""
    pa, pq = require_pyarrow()
    root = Path(src)
    try:
        info = json.loads((root / "meta" / "info.json").read_text())
    except (OSError, ValueError) as e:
        raise FormatError(f"{src} is not a LeRobot dataset (meta/info.json: {e})") from e
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise FormatError(
            f"{src} is a LeRobot {version or 'unversioned'} dataset; this reads v3.0 — convert "
            "it with `python -m lerobot.scripts.convert_dataset_v21_to_v30`"
        )
    rd_path = root / "meta" / "robodistill.json"
    rd = json.loads(rd_path.read_text()) if rd_path.exists() else {}
    keys = rd.get("keys") or _foreign_keys(info["features"], obs_key)
    ep_files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    episodes_meta: dict[int, dict] = {}
    for path in ep_files:
        for row in pq.read_table(path).to_pylist():
            episodes_meta[int(row["episode_index"])] = row
    attrs = rd.get("attrs") if rd else {
        "imported_from": {"format": "lerobot", "path": str(src)},
        **({"env_id": env_id} if env_id else {}),
    }  # fmt: skip
    data_files = sorted(root.glob("data/chunk-*/file-*.parquet"))
    if not data_files:
        raise FormatError(f"{src} has no data/chunk-*/file-*.parquet files")

    def episodes() -> Iterator[Episode]:
        for path in data_files:
            table = pq.read_table(path, columns=[*keys, "episode_index", "index"])
            table = table.sort_by([("index", "ascending")])
            ep_index = table.column("episode_index").to_numpy()
            starts = np.flatnonzero(np.r_[True, ep_index[1:] != ep_index[:-1]])
            for s, t in zip(starts, np.r_[starts[1:], len(ep_index)], strict=True):
                e = int(ep_index[s])
                part = table.slice(int(s), int(t - s))
                data = {m["key"]: _array(part.column(f), int(t - s), m["shape"], m["dtype"])
                        for f, m in keys.items()}  # fmt: skip
                yield _episode(
                    data, episodes_meta.get(e, {}), keys, rd, env_id, f"{src} episode {e}"
                )

    summary = write_store(store_path, episodes(), attrs, rd.get("chunk_steps"), overwrite,
                          stats=not rd)  # fmt: skip
    return {"format": "lerobot"} | summary


def _episode(data: dict, row: dict, keys: dict, rd: dict, env_id: str | None,
             where: str) -> Episode:  # fmt: skip
    t = len(next(iter(data.values())))
    if row.get("length") is not None and int(row["length"]) != t:
        raise FormatError(f"{where}: {t} frames but meta/episodes says length {row['length']}")
    default_done(t, data)
    final = {}
    for f, m in keys.items():
        v = row.get(f"final/{f}")
        if v is not None:
            final[m["key"]] = np.asarray(v, dtype=m["dtype"]).reshape(m["shape"])
    record = {k: row.get(k) for k in ("seed", "success", *STR_META, "max_score", "score_source")}
    if not rd and "next.success" in data:
        record["success"] = bool(np.asarray(data["next.success"]).reshape(t, -1)[-1].any())
    if not record.get("env_id"):
        record["env_id"] = env_id or ""
    return make_episode(data, default_final(data, final), record, where)
