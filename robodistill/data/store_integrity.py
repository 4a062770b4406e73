"""Store integrity: checksummed chunks, chunk presence, per-episode digests, named damage.

A store written with integrity (format 2, root attribute ``"integrity"``) differs from a
format-1 store in three ways:

- every array is compressed with zstd carrying its frame checksum (``checksum: true``), so a
  flipped or truncated chunk fails to decode instead of reading as other numbers;
- every chunk is written, even one that equals the fill value (``write_empty_chunks``), so a
  chunk file missing inside the committed rows is damage, never an all-fill chunk: zarr reads a
  missing chunk as the fill value (zeros), so the store checks on open that the file of every
  chunk covering the committed rows exists;
- ``meta/episode_digest`` uint32 (E, K) holds, per episode, the CRC-32C of its rows of each
  of K arrays (``data/<key>`` (T, ...), ``meta/final_<obs key>`` (...), and ``meta/episode``:
  its seed, success, return, max score, env id, embodiment, source policy, score source and
  length); the array's attribute ``keys`` lists the K names in order. ``load`` and ``episode``
  compare what they read with it.

Every read goes through :meth:`IntegrityMixin._read`, which turns a chunk that cannot be decoded
into a :class:`~robodistill.data.store_recovery.StoreError` naming the chunk's file. Metadata
documents (``zarr.json``) are parsed before zarr opens the store, so a truncated one is a
``StoreError`` naming it too.

Format-1 stores (written before this, or with ``TrajectoryStore.create(integrity=False)``)
still open and append as before: no checksums, no digests, and no presence check, because zarr
skipped writing their all-fill chunks (a ``truncated`` chunk that is all False), so a missing
chunk cannot be told from a deleted one. ``robodistill store verify`` says so for them.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from robodistill.data.episode import Episode, score_code, success_code
from robodistill.data.store_recovery import StoreError

try:  # zarr >= 3.1.4 depends on google-crc32c, older zarr 3 on crc32c: the same CRC-32C
    from google_crc32c import extend as _extend

    def _crc32c(data: Any, crc: int = 0) -> int:
        return _extend(crc, data)
except ImportError:  # pragma: no cover - depends on the installed zarr
    from crc32c import crc32c as _crc32c

INTEGRITY = {"chunks": "zstd checksum, every chunk written", "digest": "crc32c"}
DIGEST = "episode_digest"  # meta/episode_digest
DIGEST_CHUNK = 1024
METADATA_FILES = ("zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata")


def array_kwargs(integrity: bool) -> dict[str, Any]:
    """Extra ``create_array`` arguments of a store with (or without) integrity."""
    if not integrity:
        return {}
    return {
        "compressors": ZstdCodec(level=0, checksum=True),
        "config": {"write_empty_chunks": True},
    }


def check_metadata(path: Path) -> list[tuple[Path, str]]:
    """Parse every zarr metadata document of the store at ``path`` (root, groups, arrays: two
    levels down, never into chunk folders or the journal); returns ``(file, why)`` for each
    that is not JSON."""
    if not path.is_dir():
        return []  # opening it says what is wrong
    names = ("zarr.json",) if (path / "zarr.json").is_file() else METADATA_FILES[1:]  # v3 / v2
    groups = [d for d in path.iterdir() if d.is_dir() and d.name != "pending"]
    folders = [path, *groups, *(a for g in groups for a in g.iterdir() if a.is_dir())]
    problems = []
    for f in (d / name for d in folders for name in names):
        try:
            json.loads(f.read_bytes())
        except FileNotFoundError:
            continue
        except (ValueError, OSError) as e:  # UnicodeDecodeError is a ValueError
            problems.append((f, f"not valid JSON ({type(e).__name__}: {e})"))
    return problems


def chunk_files(store: Path, arr: zarr.Array, index: int) -> list[Path]:
    """The files of time-axis chunk ``index`` of ``arr`` (one per chunk of the feature axes)."""
    grid = [range(-(-s // c)) for s, c in zip(arr.shape[1:], arr.chunks[1:], strict=True)]
    return [
        store / arr.path / arr.metadata.encode_chunk_key((index, *rest))
        for rest in itertools.product(*grid)
    ]


def n_chunks(arr: zarr.Array, rows: int) -> int:
    """How many time-axis chunks cover the first ``rows`` rows of ``arr``."""
    return -(-min(rows, arr.shape[0]) // arr.chunks[0])


def chunk_rows(arr: zarr.Array, index: int, rows: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of chunk ``index``, clipped to the first ``rows`` rows."""
    r = arr.chunks[0]
    return index * r, min((index + 1) * r, rows, arr.shape[0])


def undecodable(store: Path, arr: zarr.Array, lo: int, hi: int) -> tuple[int, Exception] | None:
    """The first chunk among those holding rows ``[lo, hi)`` that fails to decode alone."""
    r = arr.chunks[0]
    for c in range(lo // r, -(-hi // r)):
        try:
            arr[slice(*chunk_rows(arr, c, arr.shape[0]))]
        except Exception as e:  # noqa: BLE001 - any decoder's error means a damaged chunk
            return c, e
    return None


def verify_hint(store: Path) -> str:
    return (
        f"run `robodistill store verify {store}` to list every damaged chunk and episode, then "
        "restore the store from a copy or re-collect it"
    )


def array_digest(v: np.ndarray) -> int:
    """CRC-32C of an array's dtype, shape and contents (little-endian bytes, so a digest does
    not depend on the machine that computes it); strings hash their UTF-8 text."""
    v = np.asarray(v)
    if v.dtype.kind in "biufc":
        little = v.dtype.newbyteorder("<")
        if v.dtype != little or not v.flags.c_contiguous:  # rare: copy only then
            v = np.ascontiguousarray(v, little)
        head, body = f"{v.dtype.str}{v.shape}", v  # CRC of the array's buffer, no copy
    else:
        head, body = f"str{v.shape}", "\x1f".join(map(str, v.reshape(-1).tolist())).encode()
    return _crc32c(body, _crc32c(head.encode()))


# The scalar metadata an episode's "meta/episode" digest covers, in hashed order, and its types.
META_FIELDS = {"seed": int, "success": int, "return": float, "max_score": float, "env_id": str,
               "embodiment": str, "source_policy": str, "score_source": str, "length": int}  # fmt: skip


def meta_digest(fields: dict[str, Any]) -> int:
    """CRC-32C of one episode's scalar metadata (``META_FIELDS``) as stored: success -1/0/1,
    max score NaN when none (the repr of a Python float round-trips exactly)."""
    return _crc32c("\x1f".join(repr(cast(fields[n])) for n, cast in META_FIELDS.items()).encode())


def episode_meta_digest(ep: Episode) -> int:
    fields = {n: getattr(ep, n) for n in ("seed", "env_id", "embodiment", "source_policy")}
    fields.update(success=success_code(ep.success), max_score=score_code(ep.max_score))
    fields.update({"return": ep.return_, "score_source": ep.score_source, "length": ep.length})
    return meta_digest(fields)


def digest_keys(schema: dict) -> list[str]:
    """The K digest names of a store with data keys ``schema``, in stored order."""
    keys = sorted(schema)
    return [f"data/{k}" for k in keys] + [
        f"meta/final_{k}" for k in keys if k.startswith("obs")
    ] + ["meta/episode"]  # fmt: skip


def episode_digests(ep: Episode, keys: list[str]) -> list[int]:
    """The K digests of ``ep`` named by ``keys``."""
    return [
        episode_meta_digest(ep)
        if key == "meta/episode"
        else array_digest(ep.data[key[5:]] if key.startswith("data/") else ep.final[key[11:]])
        for key in keys
    ]


def episode_ranges(episodes: Any) -> str:
    """Compact episode list: ``0-3, 7, 9-12``."""
    ids = sorted({int(i) for i in episodes})
    parts = []
    for _, grp in itertools.groupby(enumerate(ids), lambda p: p[1] - p[0]):
        run = [i for _, i in grp]
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(parts)


class IntegrityMixin:
    """The integrity half of ``TrajectoryStore``: checked reads, chunk presence, digests.

    Uses the attributes ``TrajectoryStore`` sets (``path``, ``mode``, ``_root``, ``_integrity``,
    ``_data``, ``_meta``, ``_schema``, ``_n_committed``, ``_ends``).
    """

    def _read(self, arr: zarr.Array, sel: slice | int) -> Any:
        """``arr[sel]`` (rows of the time axis); a chunk that fails to decode is a StoreError
        naming its file."""
        try:
            return arr[sel]
        except Exception as e:
            lo, hi = (sel, sel + 1) if isinstance(sel, int) else sel.indices(arr.shape[0])[:2]
            found = undecodable(self.path, arr, lo, hi)
            if found is None:
                raise  # not a damaged chunk
            c, err = found
            files = ", ".join(str(f) for f in chunk_files(self.path, arr, c))
            a, b = chunk_rows(arr, c, arr.shape[0])
            unit = "steps" if arr.path.startswith("data/") else "episodes"
            raise StoreError(
                f"{files} is damaged: chunk {c} of {arr.path} ({unit} {a}-{b - 1}) cannot be "
                f"decoded ({type(err).__name__}: {err}); {verify_hint(self.path)}"
            ) from e

    def _new_array(self, group: str, name: str, shape: tuple, chunks: tuple, dtype: Any,
                   attributes: dict | None = None) -> zarr.Array:  # fmt: skip
        return self._root[group].create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, attributes=attributes,
            **array_kwargs(self._integrity),
        )  # fmt: skip

    def _check_integrity(self, n_eps: int, n_steps: int) -> None:
        """On open, before anything is read: a store with integrity has every chunk file of
        its committed rows (``n_steps`` data rows, ``n_eps`` meta rows) and, once it holds
        episodes, digests covering exactly its data arrays."""
        self._digest_keys: list[str] | None = None
        self._digests = np.zeros((0, 0), np.uint32)
        if not self._integrity:
            return
        if self.mode == "a":  # zarr's config is per opened array, not stored in the store
            cfg = {"write_empty_chunks": True}
            self._data = {k: a.with_config(cfg) for k, a in self._data.items()}
            self._meta = {k: a.with_config(cfg) for k, a in self._meta.items()}
        groups = [("data", self._data, n_steps), ("meta", self._meta, n_eps)]
        for group, arrays, rows in groups:
            for name, arr in arrays.items():
                for c in range(n_chunks(arr, rows)):
                    gone = [f for f in chunk_files(self.path, arr, c) if not f.is_file()]
                    if gone:
                        lo, hi = chunk_rows(arr, c, rows)
                        unit = "steps" if group == "data" else "episodes"
                        raise StoreError(
                            f"{gone[0]} is missing: chunk {c} of {group}/{name} ({unit} "
                            f"{lo}-{hi - 1}) would read as fill values; the store is damaged — "
                            f"{verify_hint(self.path)}"
                        )
        digest = self._meta.get(DIGEST)
        if digest is not None:
            self._digest_keys = list(digest.attrs.get("keys", []))
        if not n_eps:
            return
        if digest is None or digest.shape[0] < n_eps:
            got = "no" if digest is None else digest.shape[0]
            raise StoreError(
                f"meta/{DIGEST} has {got} entries but the store commits {n_eps} episodes; "
                f"the store is damaged — {verify_hint(self.path)}"
            )
        listed = {k[5:] for k in self._digest_keys if k.startswith("data/")}
        if listed != set(self._data):
            lost, extra = sorted(listed - set(self._data)), sorted(set(self._data) - listed)
            raise StoreError(
                f"{self.path}: the episode digests cover data arrays {sorted(listed)} but the "
                f"store has {sorted(self._data)} (missing {lost}: their zarr.json is gone; "
                f"unexpected {extra}); the store is damaged — {verify_hint(self.path)}"
            )

    def _check_metadata(self) -> None:
        for file, why in check_metadata(self.path):
            raise StoreError(f"{file} is {why}; the store's metadata is damaged — restore it")

    def _digest_batch(self, eps: list[Episode]) -> list[tuple[zarr.Array, np.ndarray]]:
        """``[(meta/episode_digest, uint32 (n, K))]`` to append for ``eps`` (creating the
        array on the first merge); ``[]`` for a store without integrity."""
        if not self._integrity:
            return []
        if DIGEST not in self._meta:
            keys = digest_keys(self._schema)
            self._meta[DIGEST] = self._new_array(
                "meta", DIGEST, (0, len(keys)), (DIGEST_CHUNK, len(keys)), "uint32",
                attributes={"digest": "crc32c", "keys": keys},
            )  # fmt: skip
            self._digest_keys = keys
        digests = np.array([episode_digests(ep, self._digest_keys) for ep in eps], np.uint32)
        return [(self._meta[DIGEST], digests)]

    def _stored_digests(self, n: int) -> np.ndarray:
        """uint32 (>= n, K) digests of the first ``n`` committed episodes (cached)."""
        if self._digests.shape[0] < n:
            self._digests = self._read(self._meta[DIGEST], slice(0, self._n_committed))
        return self._digests

    def _digest_mismatch(self, key: str, episodes: list[int]) -> StoreError:
        return StoreError(
            f"{self.path}: the contents of {key} differ from their recorded digest in episodes "
            f"{episode_ranges(episodes)}; the store is damaged — {verify_hint(self.path)}"
        )

    def _checked_episode(self, i: int, ep: Episode) -> Episode:
        """``ep``, committed episode ``i`` as read, once compared with its recorded digests."""
        if not self._digest_keys:
            return ep
        got = np.array(episode_digests(ep, self._digest_keys), np.uint32)
        bad = got != self._stored_digests(i + 1)[i]
        if bad.any():
            raise self._digest_mismatch(self._digest_keys[int(np.argmax(bad))], [i])
        return ep

    def _checked_rows(self, key: str) -> np.ndarray:
        """The committed rows (N, ...) of ``data/<key>``, checked against the digests."""
        values = self._read(self._data[key], slice(0, self._steps_committed))
        name = f"data/{key}"
        if not self._digest_keys or name not in self._digest_keys or not self._n_committed:
            return values
        j, n = self._digest_keys.index(name), self._n_committed
        stored = self._stored_digests(n)[:n, j]
        starts = np.concatenate([[0], self._ends[:-1]])
        bad = [
            e
            for e, (s, t) in enumerate(zip(starts.tolist(), self._ends.tolist(), strict=True))
            if array_digest(values[s:t]) != stored[e]
        ]
        if bad:
            raise self._digest_mismatch(name, bad)
        return values
