"""Opening a trajectory store: layout checks, crash recovery and the writer lock.

Split out of :mod:`robodistill.data.store` (whose docstring describes the layout and the
commit protocol these methods rely on). :class:`RecoveryMixin` holds the open-time half of the
store: ``_load_state`` validates the layout against the ``committed`` root attribute and loads
the journal, ``_recover`` (``mode="a"`` only) trims a torn merge, drops merged and half-written
journal files, and ``_acquire_lock`` / ``_release_lock`` hold the single writer's advisory lock.
The methods use the attributes ``TrajectoryStore.__init__`` sets (``path``, ``mode``, ``_root``,
``_plain``, ``_pending``, ``_lock_fd``), its ``_check_schema`` and ``_merge``, and the
checked reads of :class:`~robodistill.data.store_integrity.IntegrityMixin` (``_read``,
``_check_integrity``).

:class:`StoreError` and the format constants live here because both modules need them and this
one must not import :mod:`~robodistill.data.store`; import them from
:mod:`robodistill.data.store`, which re-exports them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors

from robodistill.data.episode import JournalError, journal_files, read_journal

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, single-writer discipline is up to the user
    fcntl = None

logger = logging.getLogger(__name__)

# 2: checksummed chunks and episode digests (robodistill.data.store_integrity); 1 still opens.
FORMAT_VERSION = 2
_META_DTYPES: dict[str, Any] = {
    "seed": "int64",
    "success": "int8",
    "return": "float64",
    "env_id": str,
    "embodiment": str,
    "source_policy": str,
    "max_score": "float64",
    "score_source": str,
}
# Meta arrays added after format 1 shipped: stores written before them lack them (read as
# NaN / ""), and the first append to such a store creates them, back-filled.
_OPTIONAL_META = frozenset({"max_score", "score_source"})


def _missing(dtype: Any) -> Any:
    """The value a meta array of ``dtype`` holds where nothing was recorded."""
    return "" if dtype is str else -1 if np.dtype(dtype).kind == "i" else np.nan


class StoreError(ValueError):
    """A trajectory store is missing, malformed, or used in a way its mode forbids."""


class RecoveryMixin:
    """The open-time half of ``TrajectoryStore`` (see the module docstring)."""

    def _load_state(self) -> None:
        root, where = self._root, self.path
        missing = [n for n in ("data", "meta/episode_ends") if n not in root]
        if missing:
            raise StoreError(
                f"{where} has no {' or '.join(missing)}; a trajectory store needs data/<key> "
                "arrays and meta/episode_ends (the diffusion_policy replay-buffer layout)"
            )
        version = int(root.attrs.get("robodistill_store", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise StoreError(f"{where} has store format {version}; upgrade robodistill to read it")
        try:
            self._data: dict[str, zarr.Array] = dict(root["data"].arrays())
            self._meta: dict[str, zarr.Array] = dict(root["meta"].arrays())
        except (zarr.errors.BaseZarrError, ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{where}: an array's zarr.json is damaged ({e}); restore it") from e
        # Before any read: in a store with integrity a missing chunk would read as zeros.
        committed = {} if self._plain else root.attrs["committed"]
        self._check_integrity(int(committed.get("episodes", 0)), int(committed.get("steps", 0)))
        ends = np.asarray(self._read(self._meta["episode_ends"], slice(None)), dtype=np.int64)
        if self._plain:
            n_eps = len(ends)
        else:
            n_eps = int(root.attrs["committed"]["episodes"])
            if len(ends) < n_eps:
                raise StoreError(
                    f"meta/episode_ends has {len(ends)} entries but the store commits {n_eps} "
                    "episodes; the store is truncated — re-collect or restore it"
                )
            ends = ends[:n_eps]
        diffs = np.diff(ends, prepend=0)
        if (diffs <= 0).any():
            i = int(np.argmax(diffs <= 0))
            prev = int(ends[i - 1]) if i else 0
            raise StoreError(
                f"meta/episode_ends is not strictly increasing at index {i} ({prev} -> "
                f"{int(ends[i])}); it must hold cumulative episode ends — the store is corrupt"
            )
        n_steps = int(ends[-1]) if n_eps else 0
        if not self._plain and int(root.attrs["committed"]["steps"]) != n_steps:
            raise StoreError(
                f"the store commits {root.attrs['committed']['steps']} steps but "
                f"episode_ends[-1] is {n_steps}; the store is corrupt — restore it"
            )
        for k, arr in self._data.items():
            if arr.shape[0] < n_steps or (self._plain and arr.shape[0] != n_steps):
                raise StoreError(
                    f"data/{k} has {arr.shape[0]} steps but the store commits {n_steps} "
                    f"(episode_ends[-1]); "
                    + (
                        "the store is truncated — re-collect or restore it"
                        if arr.shape[0] < n_steps
                        else "every data array needs exactly one row per step"
                    )
                )
        obs_finals = [f"final_{k}" for k in self._data if k.startswith("obs")]
        # Before the first commit the final_* arrays may not exist yet (torn first merge).
        needed = [f"episode_{n}" for n in _META_DTYPES if n not in _OPTIONAL_META]
        needed += obs_finals if n_eps else []
        needed = [] if self._plain else needed
        for name in needed:
            got = self._meta[name].shape[0] if name in self._meta else "no"
            if name not in self._meta or self._meta[name].shape[0] < n_eps:
                raise StoreError(
                    f"meta/{name} has {got} entries but the store commits {n_eps} episodes; "
                    "the store is truncated — re-collect or restore it"
                )
        self._ends, self._n_committed, self._steps_committed = ends, n_eps, n_steps
        self._schema = None
        if n_eps or self._plain:
            self._schema = {k: (a.dtype, tuple(a.shape[1:])) for k, a in self._data.items()}
        if self._plain:
            return
        self._pending_dir = self.path / "pending"
        done, tmp = journal_files(self._pending_dir)
        if self.mode == "a":
            self._recover(done, tmp)
        live = sorted(i for i in done if i >= n_eps)
        if live and live != list(range(n_eps, n_eps + len(live))):
            raise StoreError(
                f"the journal in {self._pending_dir} has gaps (committed {n_eps} episodes, journal "
                f"files {live[:5]}...); move the stray .npz files away and reopen"
            )
        for i in live:
            try:
                ep = read_journal(done[i])
            except JournalError as e:
                raise StoreError(str(e)) from e
            self._check_schema([ep])
            self._pending.append(ep)
        if self.mode == "a" and self._pending:
            logger.info("merging %d journal episodes into %s", len(self._pending), self.path)
            self._merge()

    def _backfill(self, name: str, e0: int) -> None:
        """Before appending at episode ``e0``: give a store written before the optional
        ``meta/episode_<name>`` existed that array, holding "missing" for its ``e0`` episodes."""
        key, dtype = f"episode_{name}", _META_DTYPES[name]
        if key not in self._meta:
            self._meta[key] = self._root["meta"].create_array(
                key, shape=(0,), chunks=(self._meta["episode_ends"].chunks[0],), dtype=dtype
            )
        arr, have = self._meta[key], self._meta[key].shape[0]
        if have < e0:
            arr.resize((e0,))
            arr[have:e0] = np.array([_missing(dtype)] * (e0 - have), dtype=dtype)

    def _recover(self, done: dict[int, Path], tmp: list[Path]) -> None:
        n_eps, n_steps = self._n_committed, self._steps_committed
        for p in tmp:
            logger.warning("removing half-written journal file %s", p)
            p.unlink(missing_ok=True)
        for i in [i for i in done if i < n_eps]:
            done.pop(i).unlink(missing_ok=True)  # merged, but cleanup did not finish
        if n_eps == 0:  # a first merge died while creating arrays: the journal recreates them
            for k in list(self._data):
                del self._root["data"][k]
            # The digests are created with the data arrays, from the first episode's keys.
            fresh = [k for k in self._meta if k.startswith("final_") or k == "episode_digest"]
            for k in fresh:
                del self._root["meta"][k]
            self._data = {}
            self._meta = {k: v for k, v in self._meta.items() if k not in fresh}
        torn = [
            (arr, n)
            for group, n in ((self._data, n_steps), (self._meta, n_eps))
            for arr in group.values()
            if arr.shape[0] > n
        ]
        if torn:
            logger.warning("%s: trimming a torn merge back to %d episodes", self.path, n_eps)
        for arr, n in torn:
            arr.resize((n, *arr.shape[1:]))
        self._pending_dir.mkdir(exist_ok=True)

    def _acquire_lock(self) -> None:
        if fcntl is None:
            return
        (self.path / "pending").mkdir(exist_ok=True)
        fd = os.open(self.path / "pending" / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise StoreError(
                f"{self.path} is already open for appending by another writer; close it first"
            ) from e
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None
