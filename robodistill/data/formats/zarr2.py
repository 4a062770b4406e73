"""zarr v2 in the diffusion_policy replay-buffer layout, which diffusion_policy's ``ReplayBuffer``
and zarr-python 2 open.

::

    OUT/                         zarr v2: .zgroup, .zattrs (store attrs + "robodistill_export")
      data/<key>                 (N, ...) every data key, episodes concatenated in seed order
      meta/episode_ends          int64 (E,) cumulative ends
      meta/episode_seed          int64 (E,)    meta/episode_success  int8 (E,) (-1 = none)
      meta/episode_return        float64 (E,)  meta/episode_max_score float64 (E,) (NaN = none)
      meta/episode_env_id, episode_embodiment, episode_source_policy, episode_score_source
                                 fixed-width unicode (<U, no object codec needed)
      meta/final_<obs key>       (E, ...) observation after each episode's last action

Written with zarr-python 3's ``zarr_format=2``, chunks compressed with numcodecs' Blosc (lz4,
the codec diffusion_policy writes by default), every chunk written. Importing also reads a
replay buffer diffusion_policy wrote itself (no robodistill metadata): see
:func:`import_zarr2` for the defaults.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
import zarr.errors

from robodistill.data.episode import STR_META, Episode
from robodistill.data.formats.common import (
    FORMAT_VERSION,
    FormatError,
    default_done,
    default_final,
    iter_episodes,
    make_episode,
    open_for_export,
    rename_obs,
    staged,
    store_chunk_steps,
    write_store,
)

EXPORT_ATTR = "robodistill_export"
_COMPRESSOR = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
_FLUSH_BYTES = 64 << 20
_MAX_CHUNK_BYTES = 16 << 20
_META = {"seed": "int64", "success": "int8", "return": "float64", "max_score": "float64",
         **dict.fromkeys((*STR_META, "score_source"), str)}  # fmt: skip


def _looks_like(path: Path) -> bool:
    return (path / ".zgroup").exists()


def _array(group: zarr.Group, name: str, shape: tuple, dtype: Any, rows: int) -> zarr.Array:
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize)
    rows = max(1, min(rows, _MAX_CHUNK_BYTES // row_bytes, shape[0]))
    return group.create_array(name, shape=shape, chunks=(rows, *shape[1:]), dtype=dtype,
                              compressors=_COMPRESSOR, config={"write_empty_chunks": True})  # fmt: skip


def export_zarr2(store_path: str | os.PathLike, out: str | os.PathLike,
                 overwrite: bool = False) -> dict[str, Any]:  # fmt: skip
    """Write the store at ``store_path`` as a zarr v2 replay buffer at ``out``."""
    store, order = open_for_export(store_path)
    with store, staged(out, overwrite, _looks_like) as tmp:
        meta_all = store.episode_meta()
        lengths = meta_all["length"][order]
        ends = np.cumsum(lengths, dtype=np.int64)
        first = store.episode(int(order[0]))
        chunk_steps = store_chunk_steps(store_path)
        root = zarr.open_group(tmp, mode="w", zarr_format=2)
        block = {"format": "zarr2", "version": FORMAT_VERSION, "chunk_steps": chunk_steps}
        root.attrs.update({**store.attrs, EXPORT_ATTR: block})
        data, meta = root.create_group("data"), root.create_group("meta")
        n, e = int(ends[-1]), len(order)
        arrays = {k: _array(data, k, (n, *v.shape[1:]), v.dtype, chunk_steps)
                  for k, v in first.data.items()}  # fmt: skip
        finals = {k: _array(meta, f"final_{k}", (e, *v.shape), v.dtype, 1024)
                  for k, v in first.final.items()}  # fmt: skip
        _array(meta, "episode_ends", (e,), "int64", 1024)[:] = ends
        for name, dtype in _META.items():
            values = np.asarray(meta_all[name])[order]
            if dtype is str:
                values = np.array([str(v) for v in values], dtype=str)  # <U, min width 1
            _array(meta, f"episode_{name}", (e,), values.dtype, 1024)[:] = values
        start = row = size = 0
        buf: list[Episode] = []
        for j, ep in enumerate(iter_episodes(store, order)):
            buf.append(ep)
            size += sum(v.nbytes for v in buf[-1].data.values())
            if size >= _FLUSH_BYTES or j == e - 1:
                rows, size = sum(ep.length for ep in buf), 0
                for k, arr in arrays.items():
                    arr[row : row + rows] = np.concatenate([ep.data[k] for ep in buf])
                for k, arr in finals.items():
                    arr[start : start + len(buf)] = np.stack([ep.final[k] for ep in buf])
                start, row, buf = start + len(buf), row + rows, []
    return {"format": "zarr2", "episodes": e, "steps": n, "out": str(out)}


def import_zarr2(
    src: str | os.PathLike,
    store_path: str | os.PathLike,
    obs_key: str | None = None,
    env_id: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Create a trajectory store at ``store_path`` from the replay buffer at ``src``.

    Reads our own zarr2 exports losslessly and any diffusion_policy replay buffer (zarr v2, or
    v3 in the same layout). What a buffer does not record takes documented defaults: the
    observation key is ``obs_key``, else ``obs``, else ``state`` (renamed to ``obs``); no
    ``reward`` is zeros; no ``terminated`` / ``truncated`` means truncated at the last step;
    no ``meta/final_<key>`` repeats the last observation; seeds -1, success None, strings ""
    (env id: ``env_id``, else the buffer's ``env_id`` attribute). Other data keys are kept.
    """
    try:
        root = zarr.open_group(Path(src), mode="r")
    except (zarr.errors.BaseZarrError, FileNotFoundError, NotADirectoryError) as e:
        raise FormatError(f"{src} is not a zarr group ({type(e).__name__}: {e})") from e
    if "data" not in root or "meta" not in root or "episode_ends" not in root["meta"]:
        raise FormatError(f"{src} has no data/ and meta/episode_ends: not a replay buffer")
    attrs = root.attrs.asdict()
    block = attrs.pop(EXPORT_ATTR, None) or {}
    ends = np.asarray(root["meta/episode_ends"][:], dtype=np.int64)
    if len(ends) == 0 or (np.diff(ends, prepend=0) <= 0).any():
        raise FormatError(f"{src}: meta/episode_ends is empty or not strictly increasing")
    data = dict(root["data"].arrays())
    short = [k for k, a in data.items() if a.shape[0] < ends[-1]]
    if short:
        raise FormatError(f"{src}: data arrays {short} are shorter than episode_ends[-1]")
    meta = dict(root["meta"].arrays())
    source = rename_obs(data, obs_key, ("obs", "state"))
    names = {k: ("obs" if k == source else k) for k in data}
    if source != "obs" and "obs" in data:
        raise FormatError(f"{src} has both 'obs' and {source!r}; rename one first")
    # Episodes without an env id get ``env_id``; a foreign buffer's fall back to its attribute.
    env_id = env_id if env_id is not None else "" if block else str(attrs.get("env_id", ""))
    if not block:  # the buffer's own attributes (write_store drops the store's reserved ones)
        attrs |= {"imported_from": {"format": "zarr2", "path": str(src)}}
        attrs |= {"env_id": env_id} if env_id else {}

    row_bytes = sum(a.dtype.itemsize * int(np.prod(a.shape[1:], dtype=np.int64))
                    for a in data.values())  # fmt: skip

    def episodes() -> Iterator[Episode]:
        lo = b1 = 0
        while b1 < len(ends):  # batches of <= 64 episodes and ~_FLUSH_BYTES (at least one)
            b0, b1 = b1, b1 + 1
            while b1 < len(ends) and b1 - b0 < 64 and (ends[b1] - lo) * row_bytes < _FLUSH_BYTES:
                b1 += 1
            hi = int(ends[b1 - 1])
            rows = {names[k]: a[lo:hi] for k, a in data.items()}
            recs = {m: _column(meta, m, b0, b1) for m in _META}
            fins = {k: meta[f"final_{k}"][b0:b1] for k in data if f"final_{k}" in meta}
            for i in range(b0, b1):
                s, t = (int(ends[i - 1]) if i else 0) - lo, int(ends[i]) - lo
                d = {k: v[s:t] for k, v in rows.items()}
                default_done(t - s, d)
                final = {names[k]: v[i - b0] for k, v in fins.items()}
                record = {m: (None if v is None else v[i - b0]) for m, v in recs.items()}
                record = _record(record, env_id)
                yield make_episode(d, default_final(d, final), record, f"{src} episode {i}")
            lo = hi

    chunks = block.get("chunk_steps")
    summary = write_store(store_path, episodes(), attrs, chunks, overwrite, stats=not block)
    return {"format": "zarr2"} | summary


def _column(meta: dict, name: str, b0: int, b1: int) -> np.ndarray | None:
    arr = meta.get(f"episode_{name}")
    return None if arr is None or arr.shape[0] < b1 else np.asarray(arr[b0:b1])


def _record(raw: dict[str, Any], env_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, v in raw.items():
        if v is None:
            continue
        if _META[name] is str:
            out[name] = str(v)
        elif name == "success":
            out[name] = None if int(v) < 0 else bool(v)
        elif name == "max_score":
            out[name] = None if np.isnan(v) else float(v)
        elif name == "seed":
            out[name] = int(v)
    if not out.get("env_id"):
        out["env_id"] = env_id
    return out
