"""Crash-safe trajectory store on zarr 3, in the diffusion_policy replay-buffer layout.

::

    <path>.zarr/
      zarr.json              root attrs {"robodistill_store": 2, "committed": {"episodes": E,
                             "steps": N}, "chunk_steps": ..., "integrity": {...},
                             user attrs (e.g. "normalizer")}
      data/<key>             (N, *feature_shape)   all episodes concatenated over time
      meta/episode_ends      int64 (E,)            cumulative ends: episode i = [ends[i-1], ends[i])
      meta/episode_seed      int64 (E,)
      meta/episode_success   int8 (E,)             -1 = no notion of success, else 0/1
      meta/episode_return    float64 (E,)
      meta/episode_env_id, meta/episode_embodiment, meta/episode_source_policy   str (E,)
      meta/episode_max_score float64 (E,)          NaN = none recorded (older stores lack it)
      meta/episode_score_source str (E,)           "info.score" / "reward" / ""
      meta/final_<obs key>   (E, *feature_shape)   observation after the last action
      meta/episode_digest    uint32 (E, K)         CRC-32C of each episode's rows of K arrays
      pending/<idx:09d>.npz  write-ahead journal: one file = one whole episode, not yet merged

    time ─►  data/obs  |ep0 ......|ep1 ...|ep2 ..........|  (torn tail beyond N is ignored)
                                 ▲        ▲              ▲
                   episode_ends  ends[0]  ends[1]        ends[2] = N = committed["steps"]

Writes: ``add_episode`` makes the episode durable in the journal (temp file +
``os.replace``), and every ``flush_every`` episodes the journal is merged into zarr in one batch:
data arrays, meta arrays, ``meta/episode_ends``, then the root attribute ``committed`` — the
commit point, one atomic file write — and finally the merged journal files are deleted. Zarr
per-call overhead is milliseconds, so batching is what makes appends fast.

Recovery: opening with ``mode="a"`` trims arrays back to ``committed`` (torn merge), drops
journal files already merged, removes half-written temp files and merges the rest. ``mode="r"``
never writes and shows committed + journal episodes. A ``kill -9`` at any moment therefore
loses at most the episode in flight. Durability is against process crashes: neither the journal
nor zarr fsyncs, so a power loss may lose the episodes of the last seconds.

Integrity (format 2, :mod:`robodistill.data.store_integrity`): checksummed chunks, all written,
and per-episode digests, so damage is a :class:`StoreError` naming the file, never zeros;
``robodistill store verify PATH`` checks everything. Format-1 stores still open and append.

Opening (layout checks, recovery, the writer lock) lives in
:mod:`robodistill.data.store_recovery`, a mixin of :class:`TrajectoryStore`, together with
:class:`StoreError` and the format constants, which this module re-exports.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.storage import LocalStore

from robodistill.data.episode import STR_META, Episode, score_code, success_code, write_journal
from robodistill.data.store_integrity import INTEGRITY, IntegrityMixin, array_kwargs
from robodistill.data.store_recovery import (
    _META_DTYPES,
    _OPTIONAL_META,
    FORMAT_VERSION,
    RecoveryMixin,
    StoreError,
    _missing,
)

_RESERVED_ATTRS = frozenset({"robodistill_store", "committed", "chunk_steps", "integrity"})
_MAX_CHUNK_BYTES = 16 << 20
_META_CHUNK = 1024


def _append(arr: zarr.Array, start: int, values: np.ndarray) -> None:
    arr.resize((start + len(values), *arr.shape[1:]))
    arr[start : start + len(values)] = values


def _chunk_rows(rows: int, feature_shape: tuple, dtype: np.dtype) -> int:
    row_bytes = max(1, int(np.prod(feature_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return max(1, min(rows, _MAX_CHUNK_BYTES // row_bytes))


class TrajectoryStore(RecoveryMixin, IntegrityMixin):
    """Append-only episode store. Create with :meth:`create`, open with :meth:`open`.

    Single writer (``mode="a"``, guarded by an advisory lock), any number of readers.
    """

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        attrs: dict | None = None,
        chunk_steps: int = 4096,
        flush_every: int = 64,
        overwrite: bool = False,
        integrity: bool = True,
    ) -> TrajectoryStore:
        """Create an empty store at ``path`` and return it opened with ``mode="a"``.

        ``attrs`` are JSON-serializable user attributes; ``chunk_steps`` is the time-axis chunk
        of data arrays (capped at 16 MiB per chunk); ``flush_every`` episodes are journaled
        before one batched merge into zarr. ``integrity=False`` writes format 1 (no chunk
        checksums, no digests), as before integrity checks: to measure them, to test old stores.
        """
        path = Path(path)
        attrs = dict(attrs or {})
        bad = _RESERVED_ATTRS & set(attrs)
        if bad:
            raise StoreError(f"attrs {sorted(bad)} are reserved by the store; rename them")
        _check_json(attrs)
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise StoreError(
                    f"{path} already exists; open it with TrajectoryStore.open(path, mode='a') "
                    "to append or pass overwrite=True"
                )
            is_zarr = (path / "zarr.json").exists() or (path / ".zgroup").exists()
            if path.is_dir() and not is_zarr and any(path.iterdir()):
                raise StoreError(f"refusing to overwrite {path}: it is a non-empty non-zarr folder")
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        root = zarr.open_group(path, mode="w")
        root.create_group("data")
        root.create_group("pending")  # a zarr group, so listing the root does not warn
        meta, kw = root.create_group("meta"), array_kwargs(integrity)
        for name, dtype in {"ends": "int64", **_META_DTYPES}.items():
            meta.create_array(f"episode_{name}", shape=(0,), chunks=(_META_CHUNK,), dtype=dtype,
                              **kw)  # fmt: skip
        # The format marker goes last: a crash during create leaves an empty plain store that
        # open(mode="a") rejects, never a half-initialised robodistill store.
        root.attrs.update({**attrs, "chunk_steps": int(chunk_steps),
                           "committed": {"episodes": 0, "steps": 0},
                           **({"integrity": INTEGRITY} if integrity else {}),
                           "robodistill_store": FORMAT_VERSION if integrity else 1})  # fmt: skip
        return cls(path, mode="a", flush_every=flush_every)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", flush_every: int = 64):
        """Open an existing store; ``mode="a"`` recovers from crashes and allows appends."""
        return cls(path, mode=mode, flush_every=flush_every)

    def __init__(self, path: str | os.PathLike, mode: str = "r", flush_every: int = 64) -> None:
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if int(flush_every) < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.path, self.mode, self._flush_every = Path(path), mode, int(flush_every)
        self._pending: list[Episode] = []
        self._lock_fd: int | None = None
        self._broken = self._closed = False
        if not self.path.exists():
            raise StoreError(
                f"{self.path} does not exist; create a store with TrajectoryStore.create(path)"
            )
        self._open_root()
        if self._plain and mode == "a":
            raise StoreError(
                f"{self.path} is a plain diffusion_policy-style store (no 'committed' attribute), "
                "which opens read-only; use mode='r' or copy its episodes into a new store"
            )
        if mode == "a":
            self._acquire_lock()
        try:
            for attempt in range(3):
                try:
                    self._load_state()
                    break
                except FileNotFoundError:
                    # A reader raced a writer that merged and deleted journal files between
                    # our reading `committed` and the journal: look again.
                    if mode == "a" or attempt == 2:
                        raise
                    self._pending = []
                    self._open_root()
        except BaseException:
            self._release_lock()
            raise

    def _open_root(self) -> None:
        self._check_metadata()
        try:
            self._root = zarr.open_group(
                store=LocalStore(self.path, read_only=self.mode == "r"),
                mode="r" if self.mode == "r" else "r+",
            )
        except (zarr.errors.BaseZarrError, FileNotFoundError, NotADirectoryError) as e:
            raise StoreError(
                f"{self.path} is not a zarr group ({type(e).__name__}: {e}); "
                "point at the store's top-level .zarr folder"
            ) from e
        self._plain = "robodistill_store" not in self._root.attrs
        self._integrity = "integrity" in self._root.attrs

    # ------------------------------------------------------------------ writing
    def _check_writable(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path} is closed; reopen it with TrajectoryStore.open()")
        if self.mode != "a":
            raise StoreError(
                f"{self.path} is opened read-only (mode='r'); reopen it with "
                "TrajectoryStore.open(path, mode='a') to write"
            )
        if self._broken:
            raise StoreError(
                f"an earlier merge into {self.path} failed; close and reopen the store with "
                "mode='a' to recover (no journaled episode is lost)"
            )

    def _check_schema(self, eps: list[Episode]) -> dict:
        schema = self._schema or {k: (v.dtype, v.shape[1:]) for k, v in eps[0].data.items()}
        for ep in eps:
            if set(ep.data) != set(schema):
                lost, extra = sorted(set(schema) - set(ep.data)), sorted(set(ep.data) - set(schema))
                raise StoreError(
                    f"Episode.data keys {sorted(ep.data)} differ from the store's "
                    f"{sorted(schema)} (fixed by the first episode): missing {lost}, "
                    f"unexpected {extra}"
                )
            for k, (dtype, shape) in schema.items():
                v = ep.data[k]
                if v.dtype != dtype or v.shape[1:] != shape:
                    raise StoreError(
                        f"Episode.data[{k!r}] has steps of shape {v.shape[1:]} and dtype {v.dtype} "
                        f"but the store expects {shape} {dtype} (fixed by the first episode)"
                    )
        self._schema = schema
        return schema

    def add_episode(self, ep: Episode) -> int:
        """Journal ``ep`` durably (merging every ``flush_every``); returns its episode index."""
        return self.add_episodes([ep])[0]

    def add_episodes(self, eps: list[Episode]) -> list[int]:
        """Add several episodes; all are checked against the schema before any is written."""
        self._check_writable()
        eps = list(eps)
        if not eps:
            return []
        if not all(isinstance(ep, Episode) for ep in eps):
            raise TypeError("add_episodes expects robodistill.data.store.Episode objects")
        self._check_schema(eps)
        indices = []
        for ep in eps:
            index = self._n_committed + len(self._pending)
            write_journal(self._pending_dir, index, ep)
            # Copy so that a caller reusing its buffers cannot change what we merge later.
            self._pending.append(copy.deepcopy(ep))
            indices.append(index)
            if len(self._pending) >= self._flush_every:
                self._merge()
        return indices

    def flush(self) -> None:
        """Merge all journaled episodes into zarr now."""
        self._check_writable()
        self._merge()

    def _merge(self) -> None:
        eps = self._pending
        if not eps:
            return
        e0, n0 = self._n_committed, self._steps_committed
        lengths = np.array([ep.length for ep in eps], dtype=np.int64)
        ends = n0 + np.cumsum(lengths)
        try:
            self._write_batch(eps, e0, n0, ends)
            self._commit(e0 + len(eps), int(ends[-1]))
        except BaseException:
            self._broken = True
            raise
        self._ends = np.concatenate([self._ends, ends])
        self._n_committed, self._steps_committed = e0 + len(eps), int(ends[-1])
        self._pending = []
        try:
            for i in range(e0, self._n_committed):
                (self._pending_dir / f"{i:09d}.npz").unlink(missing_ok=True)
        except BaseException:
            self._broken = True
            raise

    def _write_batch(self, eps: list[Episode], e0: int, n0: int, ends: np.ndarray) -> None:
        chunk_steps = int(self._root.attrs.get("chunk_steps", 4096))
        for k, (dtype, shape) in self._schema.items():
            if k not in self._data:
                rows = _chunk_rows(chunk_steps, shape, dtype)
                self._data[k] = self._new_array("data", k, (0, *shape), (rows, *shape), dtype)
            if k.startswith("obs") and f"final_{k}" not in self._meta:
                rows = _chunk_rows(_META_CHUNK, shape, dtype)
                self._meta[f"final_{k}"] = self._new_array(
                    "meta", f"final_{k}", (0, *shape), (rows, *shape), dtype
                )
        for k, arr in self._data.items():
            _append(arr, n0, np.concatenate([ep.data[k] for ep in eps]))
        meta = {
            "seed": np.array([ep.seed for ep in eps], dtype=np.int64),
            "success": np.array([success_code(ep.success) for ep in eps], dtype=np.int8),
            "return": np.array([ep.return_ for ep in eps], dtype=np.float64),
            "max_score": np.array([score_code(ep.max_score) for ep in eps], dtype=np.float64),
        }
        meta.update({k: np.array([getattr(ep, k) for ep in eps], dtype=str)
                     for k in (*STR_META, "score_source")})  # fmt: skip
        for name in _OPTIONAL_META:
            self._backfill(name, e0)
        for name, values in meta.items():
            _append(self._meta[f"episode_{name}"], e0, values)
        for k in self._schema:
            if k.startswith("obs"):
                _append(self._meta[f"final_{k}"], e0, np.stack([ep.final[k] for ep in eps]))
        for arr, digests in self._digest_batch(eps):
            _append(arr, e0, digests)
        _append(self._meta["episode_ends"], e0, ends)

    def _commit(self, n_episodes: int, n_steps: int) -> None:
        self._root.attrs.update({"committed": {"episodes": n_episodes, "steps": n_steps}})

    def close(self) -> None:
        """Merge pending episodes (mode "a") and release the writer lock. Idempotent."""
        if self._closed:
            return
        try:
            if self.mode == "a" and not self._broken:
                self._merge()
        finally:
            self._release_lock()
            self._closed = True

    def __enter__(self) -> TrajectoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TrajectoryStore({str(self.path)!r}, mode={self.mode!r}, episodes={self.n_episodes}, "
            f"steps={self.n_steps}, pending={len(self._pending)})"
        )

    # ------------------------------------------------------------------ reading
    @property
    def n_episodes(self) -> int:
        """Committed plus journaled episodes (E)."""
        return self._n_committed + len(self._pending)

    @property
    def n_steps(self) -> int:
        """Committed plus journaled steps (N = episode_ends[-1])."""
        return self._steps_committed + sum(ep.length for ep in self._pending)

    @property
    def keys(self) -> tuple[str, ...]:
        """Data keys (empty until the first episode fixes them)."""
        return tuple(sorted(self._schema or ()))

    @property
    def episode_ends(self) -> np.ndarray:
        """int64 (E,) cumulative episode ends, committed and journaled."""
        lengths = [ep.length for ep in self._pending]
        tail = self._steps_committed + np.cumsum(lengths, dtype=np.int64)
        return np.concatenate([self._ends, tail]).astype(np.int64)

    def episode_meta(self) -> dict[str, np.ndarray]:
        """Per-episode arrays (E,): seed, success (-1/0/1), return, length, env_id, embodiment,
        source_policy, max_score (NaN = none), score_source. Plain diffusion_policy stores (and
        older stores, for max_score) get -1 / NaN / "" where meta is missing."""
        e, out = self._n_committed, {}
        for name, dtype in _META_DTYPES.items():
            arr = self._meta.get(f"episode_{name}")
            have = min(arr.shape[0], e) if arr is not None else 0
            values = self._read(arr, slice(0, have)).tolist() if have else []
            values += [_missing(dtype)] * (e - have)
            for ep in self._pending:
                v = {
                    "return": ep.return_,
                    "success": success_code(ep.success),
                    "max_score": score_code(ep.max_score),
                }.get(name)
                values.append(getattr(ep, name) if v is None else v)
            out[name] = np.array(values, dtype=dtype)
        out["length"] = np.diff(self.episode_ends, prepend=0)
        return out

    def episode(self, i: int) -> Episode:
        """Episode ``i`` (negative counts from the end) with data, final obs and meta."""
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"episode index {i} out of range for a store of {n} episodes")
        i %= n
        if i >= self._n_committed:
            return self._pending[i - self._n_committed]
        start, end = (int(self._ends[i - 1]) if i else 0), int(self._ends[i])

        def meta(name: str, default: Any) -> Any:
            arr = self._meta.get(f"episode_{name}")
            return self._read(arr, i).item() if arr is not None and arr.shape[0] > i else default

        succ = int(meta("success", -1))
        max_score = float(meta("max_score", np.nan))
        fin = {k[6:]: self._read(a, i) for k, a in self._meta.items() if k.startswith("final_")}
        return self._checked_episode(i, Episode._trusted(
            data={k: self._read(a, slice(start, end)) for k, a in self._data.items()},
            final=fin,
            seed=int(meta("seed", -1)),
            success=None if succ < 0 else bool(succ),
            return_=float(meta("return", np.nan)),
            max_score=None if np.isnan(max_score) else max_score,
            score_source=str(meta("score_source", "")),
            **{k: str(meta(k, "")) for k in STR_META},
        ))  # fmt: skip

    def load(self, keys: list[str] | tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Everything in RAM: ``{key: (N, *feature_shape)}`` plus ``"episode_ends"`` (E,).
        Committed rows are checked against the episode digests (format 2)."""
        keys = self.keys if keys is None else tuple(keys)
        unknown = [k for k in keys if k not in (self._schema or {})]
        if unknown:
            raise StoreError(f"unknown data keys {unknown}; the store has {list(self.keys)}")
        out = {}
        for k in keys:
            parts = [self._checked_rows(k)] if k in self._data else []
            parts += [ep.data[k] for ep in self._pending]
            dtype, shape = self._schema[k]
            out[k] = np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=dtype)
        out["episode_ends"] = self.episode_ends
        return out

    @property
    def attrs(self) -> dict[str, Any]:
        """User attributes (a copy; the store's own bookkeeping keys are left out)."""
        return {k: v for k, v in self._root.attrs.asdict().items() if k not in _RESERVED_ATTRS}

    def set_attrs(self, **kw: Any) -> None:
        """Set JSON-serializable user attributes (mode "a" only)."""
        self._check_writable()
        bad = _RESERVED_ATTRS & set(kw)
        if bad:
            raise StoreError(f"attrs {sorted(bad)} are reserved by the store; rename them")
        _check_json(kw)
        self._root.attrs.update(kw)

    def compute_stats(self, keys: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Feature-wise min/max/mean/std over all steps: ``{key: {"min": list, ..., "count": N}}``.

        Streams zarr in blocks, merging partial moments (Chan et al.) so huge stores fit in RAM.
        Scalar features give 1-element lists. Defaults to every numeric or bool data key.
        """
        if keys is None:
            keys = [k for k in self.keys if np.dtype(self._schema[k][0]).kind in "biuf"]
        stats = {}
        for k in keys:
            if k not in (self._schema or {}):
                raise StoreError(f"unknown data key {k!r}; the store has {list(self.keys)}")
            n, mean, m2, lo, hi = 0, 0.0, 0.0, None, None
            for block in self._blocks(k):
                x = block.astype(np.float64)
                bn, bmean = len(x), x.mean(axis=0)
                bm2 = ((x - bmean) ** 2).sum(axis=0)
                delta, total = bmean - mean, n + bn
                mean = mean + delta * bn / total
                m2 = m2 + bm2 + delta**2 * n * bn / total
                n = total
                lo = x.min(axis=0) if lo is None else np.minimum(lo, x.min(axis=0))
                hi = x.max(axis=0) if hi is None else np.maximum(hi, x.max(axis=0))
            if n == 0:
                raise StoreError(f"cannot compute stats for {k!r}: the store has no steps")
            std = np.sqrt(m2 / n)
            stats[k] = {
                name: np.atleast_1d(v).tolist()
                for name, v in (("min", lo), ("max", hi), ("mean", mean), ("std", std))
            }
            stats[k]["count"] = int(n)
        return stats

    def _blocks(self, key: str):
        arr = self._data.get(key)
        if arr is not None:
            step = max(arr.chunks[0], 1 << 16)
            for s in range(0, self._steps_committed, step):
                yield self._read(arr, slice(s, min(s + step, self._steps_committed)))
        for ep in self._pending:
            yield ep.data[key]

    def save_stats(self, keys: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Compute stats and store them in ``attrs["normalizer"]`` (mode "a" only)."""
        self._check_writable()
        stats = self.compute_stats(keys)
        self.set_attrs(normalizer=stats)
        return stats


def _check_json(attrs: dict) -> None:
    try:
        json.dumps(attrs, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StoreError(f"store attrs must be JSON-serializable (no NaN): {e}") from e
