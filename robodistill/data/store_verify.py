"""``robodistill store verify PATH``: check every chunk and every episode of a trajectory store.

::

    report = verify_store("runs/default/collect/demos.zarr")
    print(report.text())           # one line per damaged chunk / array / episode group
    sys.exit(0 if report.ok else 1)

The check works below :class:`~robodistill.data.store.TrajectoryStore` (which refuses to open a
damaged store) and reads the store without writing: every metadata document is parsed, every
chunk covering the committed rows of every array is decoded on its own (a checksum mismatch, a
truncated chunk or, in a store with integrity, a missing chunk file is damage), and every
episode's rows are hashed and compared with ``meta/episode_digest``. Damage names the array,
the chunk and its file, and the episodes it touches. Journal files (episodes not merged yet)
are read too; their zip CRCs catch flipped bytes.

Stores without integrity (format 1) get the checks that apply: chunks that decode, and a note
that they record no digests and that their absent chunks cannot be told from the all-fill
chunks zarr skipped writing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from robodistill.data.episode import JournalError, journal_files, read_journal
from robodistill.data.store_integrity import (
    DIGEST,
    array_digest,
    check_metadata,
    chunk_files,
    chunk_rows,
    episode_ranges,
    meta_digest,
    n_chunks,
)
from robodistill.data.store_recovery import _META_DTYPES, StoreError


@dataclass
class Damage:
    """One damaged thing: ``what`` (an array like ``data/obs``, a file), optionally its
    ``chunk`` index and ``file``, why, and the episodes affected (None: unknown)."""

    what: str
    why: str
    chunk: int | None = None
    file: str | None = None
    episodes: list[int] | None = None

    def line(self) -> str:
        where = self.what + (f" chunk {self.chunk}" if self.chunk is not None else "")
        where += f" ({self.file})" if self.file else ""
        if self.episodes is None:
            eps = "episodes unknown"
        else:
            eps = f"episodes {episode_ranges(self.episodes)}" if self.episodes else "no episode"
        return f"DAMAGED {where}: {self.why} — {eps}"


@dataclass
class Report:
    """What :func:`verify_store` found; ``ok`` when nothing is damaged."""

    path: Path
    damage: list[Damage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: str = ""
    digests: bool = False

    @property
    def ok(self) -> bool:
        return not self.damage

    @property
    def episodes(self) -> list[int]:
        """Damaged episode indices (sorted)."""
        return sorted({e for d in self.damage for e in d.episodes or ()})

    def text(self) -> str:
        lines = [f"store {self.path}", f"  checked: {self.checked}" if self.checked else ""]
        lines += [f"  note: {n}" for n in self.notes] + [f"  {d.line()}" for d in self.damage]
        if self.ok and self.digests:
            lines.append("OK: every chunk decodes and every episode matches its digests")
        elif self.ok:
            lines.append("OK: every chunk decodes (no digests recorded to compare episodes with)")
        else:
            eps = episode_ranges(self.episodes) or "none known"
            lines.append(f"DAMAGED: {len(self.damage)} problem(s); episodes affected: {eps}")
        return "\n".join(line for line in lines if line)


def _touching(bounds: np.ndarray | None, lo: int, hi: int) -> list[int] | None:
    """Episodes whose rows ``[bounds[e], bounds[e+1])`` overlap rows ``[lo, hi)``."""
    if bounds is None:
        return None
    first = int(np.searchsorted(bounds[1:], lo, side="right"))
    last = int(np.searchsorted(bounds[:-1], hi, side="left"))
    return list(range(first, last))


class _Verifier:
    """One pass over a store; fills ``report``. The methods run in the order of ``run``."""

    def __init__(self, path: Path) -> None:
        self.path, self.report = path, Report(path)
        self.chunks, self.n_eps, self.n_steps = 0, 0, 0
        self.plain, self.integrity, self.committed = False, False, {}  # set by open()
        self.bounds: np.ndarray | None = None  # (E+1,) row offsets of the episodes
        self.keys: list[str] = []  # digest names
        self.stored: dict[int, np.ndarray] = {}  # episode -> uint32 (K,) recorded digests
        self.mismatch: dict[str, list[int]] = {}  # digest name -> episodes that differ

    def damage(self, what: str, why: str, chunk: int | None = None, file: Path | None = None,
               eps: list[int] | None = None) -> Damage:  # fmt: skip
        d = Damage(what, why, chunk, None if file is None else str(file), eps)
        self.report.damage.append(d)
        return d

    def run(self) -> Report:
        arrays = self.open()
        if arrays is None:
            return self.report
        n_arrays = len(arrays)
        self.episode_bounds(arrays.pop("meta/episode_ends"))
        self.recorded_digests(arrays.pop(f"meta/{DIGEST}", None))
        scalars: dict[str, dict[int, object]] = {n: {} for n in _META_DTYPES}
        every = np.arange(self.n_eps + 1)  # meta arrays: one row per episode
        for name, arr in arrays.items():
            if name.startswith("data/"):
                self.scan(name, arr, self.n_steps, self.bounds, self.compare(name, True))
            elif name.startswith("meta/episode_") and name[13:] in scalars:
                self.scan(name, arr, self.n_eps, every,
                          lambda e, x, d=scalars[name[13:]]: d.__setitem__(e, x[0]))  # fmt: skip
            else:
                self.scan(name, arr, self.n_eps, every, self.compare(name, False))
        self.digest_coverage(arrays)
        self.meta_records(scalars)
        for key, eps in self.mismatch.items():
            self.damage(key, "contents differ from the recorded episode digest", eps=eps)
        if not self.plain:
            self.journal()
        r = self.report
        if not self.integrity:
            r.notes.insert(0, "store written without integrity (format 1 or a plain zarr "
                           "store): no chunk checksums and no digests recorded, so flipped "
                           "bytes may go unnoticed; only chunks that fail to decode are found")  # fmt: skip
        r.digests = bool(self.keys)
        how = f"{len(self.stored)} episode digests ({len(self.keys)} arrays each)"
        r.checked = (f"{self.n_eps} episodes, {self.n_steps} steps committed, {n_arrays} "
                     f"arrays, {self.chunks} chunks, {how if self.keys else 'no digests'}")  # fmt: skip
        return r

    def open(self) -> dict[str, zarr.Array] | None:
        """Parse the metadata and open every array (None: nothing more can be checked)."""
        path = self.path
        bad_metadata = check_metadata(path)
        whole = []  # array-level damage: every episode has rows there
        for file, why in bad_metadata:
            where = file.parent.relative_to(path).as_posix()
            whole.append(
                self.damage("root" if where == "." else where, f"metadata {why}", file=file)
            )
        try:
            root = zarr.open_group(store=LocalStore(path, read_only=True), mode="r")
            attrs = root.attrs.asdict()
        except Exception as e:
            if self.report.damage:
                return None  # the root metadata is what failed
            raise StoreError(f"{path} is not a zarr group ({type(e).__name__}: {e})") from e
        self.plain, self.integrity = "robodistill_store" not in attrs, "integrity" in attrs
        self.committed = attrs.get("committed") or {}
        bad_dirs = {file.parent for file, _ in bad_metadata}
        arrays: dict[str, zarr.Array] = {}
        for group in ("data", "meta"):
            for d in sorted((path / group).iterdir()) if (path / group).is_dir() else []:
                name = f"{group}/{d.name}"
                if not d.is_dir() or d in bad_dirs:
                    continue
                if not any((d / f).is_file() for f in ("zarr.json", ".zarray")):
                    whole.append(self.damage(name, "its zarr.json is missing"))
                    continue
                try:
                    arrays[name] = root[name]
                except Exception as e:  # noqa: BLE001 - reported, the rest is still checked
                    whole.append(self.damage(name, f"cannot be opened ({e})"))
        ends = arrays.get("meta/episode_ends")
        if ends is None:
            if not any(d.what == "meta/episode_ends" for d in self.report.damage):
                self.damage("meta/episode_ends", "missing: episodes cannot be told apart")
            return None
        self.n_eps = ends.shape[0] if self.plain else int(self.committed.get("episodes", 0))
        for d in whole:
            d.episodes = None if d.what in ("root", "data", "meta") else list(range(self.n_eps))
        return arrays

    def episode_bounds(self, arr: zarr.Array) -> None:
        """Read and check ``meta/episode_ends``; set ``bounds`` when it is sound."""
        got: dict[int, int] = {}
        self.scan("meta/episode_ends", arr, self.n_eps, np.arange(self.n_eps + 1),
                  lambda e, x: got.__setitem__(e, int(x[0])))  # fmt: skip
        self.n_steps = int(self.committed.get("steps", 0))
        if len(got) < self.n_eps:
            return  # a damaged chunk, already reported
        ends = np.array([got[e] for e in range(self.n_eps)], dtype=np.int64)
        last = int(ends[-1]) if self.n_eps else 0
        if (np.diff(ends, prepend=0) <= 0).any():
            self.damage("meta/episode_ends", "not strictly increasing")
            self.n_steps = self.n_steps or int(ends.max(initial=0))  # still check data chunks
        elif not self.plain and self.n_steps != last:
            self.damage("meta/episode_ends", f"ends at {last}, the store commits "
                        f"{self.n_steps} steps")  # fmt: skip
        else:
            self.n_steps, self.bounds = last, np.concatenate([[0], ends])

    def recorded_digests(self, arr: zarr.Array | None) -> None:
        if arr is not None:
            self.keys = list(arr.attrs.get("keys", []))
            self.scan(f"meta/{DIGEST}", arr, self.n_eps, np.arange(self.n_eps + 1),
                      lambda e, x: self.stored.__setitem__(e, x[0]))  # fmt: skip
        elif self.integrity and self.n_eps:
            self.damage(f"meta/{DIGEST}", "missing: episode contents cannot be verified",
                        eps=list(range(self.n_eps)))  # fmt: skip

    def compare(self, key: str, rows: bool) -> Callable[[int, np.ndarray], None] | None:
        """A callback comparing an episode's rows of ``key`` (``rows``: all its rows, else its
        one row) with the recorded digest; None when ``key`` has no digest."""
        if key not in self.keys:
            return None
        j = self.keys.index(key)

        def check(e: int, x: np.ndarray) -> None:
            if e in self.stored and array_digest(x if rows else x[0]) != self.stored[e][j]:
                self.mismatch.setdefault(key, []).append(e)

        return check

    def digest_coverage(self, arrays: dict[str, zarr.Array]) -> None:
        """The digests name exactly the data arrays there are."""
        reported = {d.what for d in self.report.damage}
        for key in self.keys:
            if key != "meta/episode" and key not in arrays and key not in reported:
                self.damage(key, "listed in the episode digests but missing",
                            eps=list(range(self.n_eps)))  # fmt: skip
        extra = [k for k in arrays if k.startswith("data/") and k not in self.keys]
        if self.keys and extra:
            self.damage(", ".join(extra), "not covered by the episode digests")

    def meta_records(self, scalars: dict[str, dict[int, object]]) -> None:
        """Compare each episode's scalar metadata and length with its ``meta/episode`` digest."""
        if "meta/episode" not in self.keys or self.bounds is None:
            return
        j = self.keys.index("meta/episode")
        for e in range(self.n_eps):
            fields = {n: scalars[n].get(e) for n in _META_DTYPES}
            fields["length"] = int(self.bounds[e + 1] - self.bounds[e])
            known = e in self.stored and None not in fields.values()
            if known and meta_digest(fields) != self.stored[e][j]:
                self.mismatch.setdefault("meta/episode", []).append(e)

    def journal(self) -> None:
        """Journal files of episodes not merged yet: each must read back (zip CRCs)."""
        done, _ = journal_files(self.path / "pending")
        for i in sorted(i for i in done if i >= self.n_eps):
            try:
                read_journal(done[i])
            except JournalError as e:
                self.damage("journal", str(e), file=done[i], eps=[i])

    def scan(
        self,
        name: str,
        arr: zarr.Array,
        rows: int,
        bounds: np.ndarray | None,
        on_episode: Callable[[int, np.ndarray], None] | None = None,
    ) -> None:
        """Decode every chunk of ``arr`` covering rows [0, rows) one by one, reporting damage;
        call ``on_episode(e, rows of e)`` for each episode (row offsets ``bounds`` (E+1,))
        whose rows all decoded. In a store with integrity a missing chunk file is damage."""
        if arr.shape[0] < rows:
            lost = _touching(bounds, arr.shape[0], rows)
            self.damage(name, f"has {arr.shape[0]} rows but the store commits {rows}", eps=lost)
        absent, n_ep = 0, len(bounds) - 1 if bounds is not None else 0
        buf, buf_lo, e = None, 0, 0  # decoded rows [buf_lo, buf_lo + len(buf)), next episode
        for c in range(n_chunks(arr, rows)):
            lo, hi = chunk_rows(arr, c, rows)
            files = chunk_files(self.path, arr, c)
            gone = [f for f in files if not f.is_file()]
            block, self.chunks = None, self.chunks + 1
            if gone and self.integrity:
                why = "chunk file missing (it would read as fill values)"
                self.damage(name, why, c, gone[0], _touching(bounds, lo, hi))
            else:
                absent += bool(gone)
                try:
                    block = arr[lo:hi]
                except Exception as err:  # noqa: BLE001 - any decoder's error is damage
                    why = f"cannot be decoded ({type(err).__name__}: {err})"
                    self.damage(name, why, c, files[0], _touching(bounds, lo, hi))
            if block is None:
                buf, buf_lo = None, hi
            else:
                buf = block if buf is None else np.concatenate([buf, block])
            while e < n_ep and bounds[e + 1] <= hi:
                s, t = int(bounds[e]), int(bounds[e + 1])
                if buf is not None and s >= buf_lo and on_episode is not None:
                    on_episode(e, buf[s - buf_lo : t - buf_lo])
                e += 1
            if buf is not None:  # keep only rows of episodes not yet complete
                drop = (int(bounds[e]) if e < n_ep else hi) - buf_lo
                buf, buf_lo = buf[drop:], buf_lo + drop
        if absent:
            self.report.notes.append(
                f"{name}: {absent} chunk(s) absent; a store without integrity skips writing "
                "all-fill chunks, so a deleted chunk cannot be told from one (both read as "
                f"the fill value {np.asarray(arr.fill_value).item()!r})"
            )


def verify_store(path: str | os.PathLike) -> Report:
    """Check every chunk and every episode of the store at ``path`` (read-only)."""
    path = Path(path)
    if not path.is_dir():
        raise StoreError(f"{path} is not a store folder (point at the top-level .zarr folder)")
    return _Verifier(path).run()
