"""What every format shares: episodes in seed order, per-episode records, the defaults for what a
foreign file does not record, staged (all-or-nothing) output, and writing the imported store.

An export never changes the store it reads; an import always creates a new store. Both write
into a hidden sibling folder first and rename it into place when everything is written, so a
failed or interrupted run leaves no half-written dataset behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from robodistill.data.episode import REQUIRED_KEYS, STR_META, Episode
from robodistill.data.store import _RESERVED_ATTRS, StoreError, TrajectoryStore

FORMAT_VERSION = 1
"""Version of the ``robodistill`` block each export writes next to the format's own metadata."""
RECORD_FIELDS = ("seed", "success", *STR_META, "max_score", "score_source")
"""Per-episode metadata kept by every format (the return is the reward's sum, recomputed)."""
DEFAULTS: dict[str, Any] = {"seed": -1, "success": None, "env_id": "", "embodiment": "",
                            "source_policy": "", "max_score": None, "score_source": ""}  # fmt: skip
"""What an imported episode gets where the file records nothing: no seed (-1), no notion of
success (None), empty strings, no max score."""
BATCH_EPISODES = 64
IN_RAM_BYTES = 1 << 30


class FormatError(StoreError):
    """A file cannot be exported to or imported from another tool's format."""


def seed_order(seeds: np.ndarray) -> np.ndarray:
    """Episode indices sorted by seed (stable); episodes without a seed (-1) go last."""
    seeds = np.asarray(seeds, dtype=np.int64)
    key = np.where(seeds < 0, np.iinfo(np.int64).max, seeds)
    return np.argsort(key, kind="stable")


def open_for_export(path: str | os.PathLike) -> tuple[TrajectoryStore, np.ndarray]:
    """The store opened read-only and its episode indices in seed order."""
    store = TrajectoryStore.open(path, mode="r")
    problem = "holds no episodes; there is nothing to export" if store.n_episodes == 0 else ""
    if not problem:
        ep = store.episode(0)
        obs = {k for k in ep.data if k.startswith("obs")}
        if set(REQUIRED_KEYS) - set(ep.data) or set(ep.final) != obs:
            problem = (
                f"is a plain diffusion_policy-style store (data keys {sorted(ep.data)}, no final "
                "observations); import it into a robodistill store first (store import "
                "--format zarr2), then export that"
            )
    if problem:
        store.close()
        raise FormatError(f"{path} {problem}")
    return store, seed_order(store.episode_meta()["seed"])


def iter_episodes(store: TrajectoryStore, order: np.ndarray) -> Iterator[Episode]:
    """Episodes ``order`` of ``store``, each checked as ``store.episode(i)`` checks it.

    Up to :data:`IN_RAM_BYTES` of data the committed episodes come from one bulk read (chunk
    checked, data digests checked by ``load``, each episode's digests by ``_checked_episode``):
    ``episode(i)`` costs ~14 small zarr reads, 30x slower on 500 episodes. Bigger stores are
    read episode by episode."""
    first = store.episode(int(order[0]))
    row_bytes = sum(v[:1].nbytes for v in first.data.values())
    if row_bytes * store.n_steps > IN_RAM_BYTES:
        for i in order:
            yield store.episode(int(i))
        return
    data = store.load()
    ends = data.pop("episode_ends")
    meta = store.episode_meta()
    n = store._n_committed  # episodes beyond it are in the journal (in RAM already)
    finals = (
        {k: store._read(store._meta[f"final_{k}"], slice(0, n)) for k in first.final} if n else {}
    )
    for i in map(int, order):
        if i >= n:
            yield store.episode(i)
            continue
        start, succ, score = (
            int(ends[i - 1]) if i else 0,
            int(meta["success"][i]),
            float(meta["max_score"][i]),
        )
        ep = Episode._trusted(
            data={k: v[start : int(ends[i])] for k, v in data.items()},
            final={k: v[i] for k, v in finals.items()},
            seed=int(meta["seed"][i]),
            success=None if succ < 0 else bool(succ),
            return_=float(meta["return"][i]),
            max_score=None if np.isnan(score) else score,
            score_source=str(meta["score_source"][i]),
            **{k: str(meta[k][i]) for k in STR_META},
        )
        yield store._checked_episode(i, ep)


def episode_record(ep: Episode) -> dict[str, Any]:
    """The episode's metadata as plain JSON values (``str``, ``int``, ``float``, ``None``)."""
    return {name: getattr(ep, name) for name in RECORD_FIELDS}


def make_episode(
    data: dict[str, np.ndarray],
    final: dict[str, np.ndarray],
    record: dict[str, Any],
    where: str,
) -> Episode:
    """An :class:`Episode` from imported arrays; missing metadata takes :data:`DEFAULTS`.

    A :class:`FormatError` naming ``where`` (file and episode) replaces the validation error.
    """
    meta = {k: DEFAULTS[k] if record.get(k) is None else record[k] for k in RECORD_FIELDS}
    meta = {k: str(v) if isinstance(v, (str, np.str_)) else v for k, v in meta.items()}
    try:
        return Episode(data=data, final=final, **meta)
    except (ValueError, TypeError) as e:
        raise FormatError(f"{where}: {e}") from e


def default_final(data: dict[str, np.ndarray], final: dict[str, np.ndarray]) -> dict:
    """``final`` completed for every obs key: the last observation where none was recorded."""
    out = {k: np.asarray(v) for k, v in final.items() if k in data}
    for k, v in data.items():
        if k.startswith("obs") and k not in out:
            out[k] = v[-1].copy()
    return out


def default_done(t: int, data: dict[str, np.ndarray]) -> None:
    """Fill missing ``reward`` (zeros), ``terminated`` and ``truncated`` in place.

    Without a record of why the episode ended, it counts as truncated at its last step (not
    terminated: no learner should treat the last state as terminal on a guess)."""
    data.setdefault("reward", np.zeros(t, dtype=np.float64))
    if "terminated" not in data:
        data["terminated"] = np.zeros(t, dtype=bool)
        if "truncated" not in data:
            data["truncated"] = np.arange(t) == t - 1
    data.setdefault("truncated", np.zeros(t, dtype=bool))
    for k in ("terminated", "truncated"):
        data[k] = np.asarray(data[k]).reshape(t).astype(bool)


def rename_obs(keys: Iterable[str], obs_key: str | None, candidates: tuple[str, ...]) -> str:
    """The source key that becomes ``obs``: ``obs_key`` when given, else the first candidate
    present; a :class:`FormatError` lists the keys when there is none."""
    keys = list(keys)
    if obs_key is not None:
        if obs_key not in keys:
            raise FormatError(f"obs key {obs_key!r} is not in the file; it has {sorted(keys)}")
        return obs_key
    for name in candidates:
        if name in keys:
            return name
    raise FormatError(
        f"the file has no observation key ({' or '.join(candidates)}); it has {sorted(keys)}: "
        "name the one to use as observations with --obs-key (obs_key=...)"
    )


def user_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` without the keys a trajectory store reserves for itself."""
    return {k: v for k, v in attrs.items() if k not in _RESERVED_ATTRS}


@contextlib.contextmanager
def staged(out: str | os.PathLike, overwrite: bool, looks_like: Callable[[Path], bool]):
    """Yield a fresh hidden folder next to ``out``; rename it to ``out`` on success.

    An existing ``out`` is an error unless ``overwrite``, and even then it is replaced only
    when it is empty or ``looks_like`` recognises it (never an unrelated folder)."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FormatError(f"{out} already exists; pass --overwrite (overwrite=True) to replace")
        empty = out.is_dir() and not any(out.iterdir())
        if not (empty or looks_like(out)):
            raise FormatError(f"refusing to overwrite {out}: it does not look like the format's")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)
    elif out.exists() or out.is_symlink():
        out.unlink()
    os.replace(tmp, out)


def is_store(path: Path) -> bool:
    return (path / "zarr.json").exists() or (path / ".zgroup").exists()


def write_store(
    path: str | os.PathLike,
    episodes: Iterator[Episode],
    attrs: dict[str, Any],
    chunk_steps: int | None = None,
    overwrite: bool = False,
    stats: bool = True,
) -> dict[str, Any]:
    """Create the store at ``path`` from ``episodes`` (all or nothing) and return a summary.

    ``stats``: compute ``attrs["normalizer"]`` as ``collect`` does (for foreign files; our own
    exports bring the store's attrs back exactly, stats included where it had them)."""
    attrs = user_attrs(attrs)
    with staged(path, overwrite, is_store) as tmp:
        kw = {"chunk_steps": int(chunk_steps)} if chunk_steps else {}
        with TrajectoryStore.create(tmp, attrs=attrs, flush_every=BATCH_EPISODES, **kw) as store:
            batch: list[Episode] = []
            for ep in episodes:
                batch.append(ep)
                if len(batch) >= BATCH_EPISODES:
                    store.add_episodes(batch)
                    batch = []
            store.add_episodes(batch)
            if store.n_episodes == 0:
                raise FormatError("the file holds no episodes; there is nothing to import")
            store.flush()
            if stats:
                store.save_stats()
            summary = {"episodes": store.n_episodes, "steps": store.n_steps}
    return summary | {"store": str(path)}


def store_chunk_steps(path: str | os.PathLike) -> int:
    """The store's time-axis chunk (``chunk_steps``), so an import can keep it."""
    return int(zarr.open_group(Path(path), mode="r").attrs.get("chunk_steps", 4096))
