"""One whole episode, and its write-ahead journal file (one ``.npz`` per episode).

The journal is how :class:`robodistill.data.store.TrajectoryStore` makes every finished episode
durable at once while merging into zarr only in batches: a journal file appears by atomic
rename, so a reader sees either no file or a whole episode. Loading never unpickles.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REQUIRED_KEYS = ("obs", "action", "reward", "terminated", "truncated")
STR_META = ("env_id", "embodiment", "source_policy")


class JournalError(ValueError):
    """A journal file cannot be read."""


def _shape(a: np.ndarray) -> str:
    return str(tuple(a.shape))


@dataclass
class Episode:
    """One whole episode of T >= 1 steps.

    ``data[key]`` has shape (T, *feature_shape) for every key; it must contain obs (T, D),
    action (T, A), reward (T,), terminated (T,) bool and truncated (T,) bool. ``final[key]``
    (*feature_shape) is the observation after the last action, one per data key starting with
    "obs". ``success`` is None when the env has no notion of success. ``return_`` is the reward sum.
    ``max_score`` is the episode's maximum of ``info["score"]`` over its steps where the env
    reports one, else of the reward; ``score_source`` says which (``"info.score"`` /
    ``"reward"``). Both are None / "" for episodes recorded before they existed.
    """

    data: dict[str, np.ndarray]
    final: dict[str, np.ndarray]
    seed: int
    env_id: str
    embodiment: str = ""
    source_policy: str = ""
    success: bool | None = None
    max_score: float | None = None
    score_source: str = ""
    return_: float = field(init=False)

    def __post_init__(self) -> None:
        self.data = {str(k): np.asarray(v) for k, v in self.data.items()}
        self.final = {str(k): np.asarray(v) for k, v in self.final.items()}
        bad = [
            k for k in self.data if not k or "/" in k or k.startswith(".") or k == "episode_ends"
        ]
        if bad:
            raise ValueError(f"Episode.data keys {bad} are not usable as zarr array names")
        missing = [k for k in REQUIRED_KEYS if k not in self.data]
        if missing:
            raise ValueError(f"Episode.data is missing {missing}; it needs {list(REQUIRED_KEYS)}")
        t = self.data["obs"].shape[0] if self.data["obs"].ndim else 0
        if t < 1:
            raise ValueError(
                f"Episode.data['obs'] has shape {_shape(self.data['obs'])}; need >= 1 step"
            )
        for k, v in self.data.items():
            if v.ndim == 0 or v.shape[0] != t:
                n = v.shape[0] if v.ndim else "no"
                raise ValueError(
                    f"Episode.data[{k!r}] has {n} steps but 'obs' has {t}; "
                    "every key needs the same leading length"
                )
        for k in ("terminated", "truncated"):
            if self.data[k].dtype != np.bool_:
                raise ValueError(f"Episode.data[{k!r}] has dtype {self.data[k].dtype}; need bool")
        if self.data["reward"].ndim != 1:
            raise ValueError(
                f"Episode.data['reward'] has shape {_shape(self.data['reward'])}; need (T,)"
            )
        obs_keys = {k for k in self.data if k.startswith("obs")}
        if set(self.final) != obs_keys:
            raise ValueError(
                f"Episode.final has keys {sorted(self.final)} but needs exactly the obs keys "
                f"{sorted(obs_keys)} (the observation after the last action)"
            )
        for k in obs_keys:
            want, got = self.data[k], self.final[k]
            if got.shape != want.shape[1:] or got.dtype != want.dtype:
                raise ValueError(
                    f"Episode.final[{k!r}] has shape {_shape(got)} {got.dtype} but one step of "
                    f"data[{k!r}] is {tuple(want.shape[1:])} {want.dtype}"
                )
        checks = [
            (f"data[{k!r}]", v) for k, v in self.data.items() if k.startswith(("obs", "action"))
        ]
        checks += [("data['reward']", self.data["reward"])]
        checks += [(f"final[{k!r}]", v) for k, v in self.final.items()]
        for name, v in checks:
            if np.issubdtype(v.dtype, np.inexact):
                bad = ~np.isfinite(v)
                if bad.any():
                    idx = np.unravel_index(int(np.argmax(bad)), v.shape)
                    raise ValueError(
                        f"Episode.{name} has non-finite value {v[idx]} at index "
                        f"{tuple(int(i) for i in idx)} (shape {_shape(v)})"
                    )
        self.seed = int(self.seed)
        self.env_id, self.embodiment = str(self.env_id), str(self.embodiment)
        self.source_policy = str(self.source_policy)
        self.success = None if self.success is None else bool(self.success)
        self.max_score = _optional_float(self.max_score)
        self.score_source = str(self.score_source)
        self.return_ = float(self.data["reward"].sum(dtype=np.float64))

    @property
    def length(self) -> int:
        return int(self.data["obs"].shape[0]) if "obs" in self.data else 0

    @classmethod
    def _trusted(cls, **fields: Any) -> Episode:
        # Skips validation: for episodes read back from our own store (validated when written)
        # and from foreign stores whose keys need not follow our naming.
        ep = object.__new__(cls)
        for k, v in fields.items():
            setattr(ep, k, v)
        return ep


def success_code(s: bool | None) -> int:
    return -1 if s is None else int(s)


def _optional_float(x: Any) -> float | None:
    """``None`` for None or NaN (how stores write a missing max score), else ``float(x)``."""
    return None if x is None or np.isnan(float(x)) else float(x)


def score_code(x: float | None) -> float:
    """A max score as stored: NaN stands for None."""
    return np.nan if x is None else float(x)


def write_journal(directory: Path, index: int, ep: Episode) -> None:
    arrays = {f"data/{k}": v for k, v in ep.data.items()}
    arrays.update({f"final/{k}": v for k, v in ep.final.items()})
    arrays.update(seed=np.int64(ep.seed), success=np.int8(success_code(ep.success)))
    arrays.update(max_score=np.float64(score_code(ep.max_score)))
    arrays.update(score_source=np.array(ep.score_source, dtype=str))
    arrays.update({k: np.array(getattr(ep, k), dtype=str) for k in STR_META})
    final = directory / f"{index:09d}.npz"
    tmp = directory / f".{index:09d}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    # The rename is the journal's commit: readers see either no file or a whole episode. No
    # fsync: the page cache outlives a killed process, and zarr does not fsync either, so the
    # guarantee is against process crashes (kill -9), not power loss; an fsync per episode
    # cost ~1 ms, 3-4 % of collecting a 100-step PushT episode.
    os.replace(tmp, final)


def read_journal(path: Path) -> Episode:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrs = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # torn or flipped (CRC)
        raise JournalError(
            f"journal file {path} is unreadable ({e}); move it away and reopen"
        ) from e
    succ = int(arrs["success"])
    return Episode(
        data={k[5:]: v for k, v in arrs.items() if k.startswith("data/")},
        final={k[6:]: v for k, v in arrs.items() if k.startswith("final/")},
        seed=int(arrs["seed"]),
        success=None if succ < 0 else bool(succ),
        # Journals written before max scores existed have neither key.
        max_score=_optional_float(arrs["max_score"]) if "max_score" in arrs else None,
        score_source=str(arrs["score_source"]) if "score_source" in arrs else "",
        **{k: str(arrs[k]) for k in STR_META},
    )


def journal_files(directory: Path) -> tuple[dict[int, Path], list[Path]]:
    """Finished journal files by episode index, and leftover temp files."""
    done, tmp = {}, []
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.endswith(".tmp"):
                tmp.append(p)
            elif p.suffix == ".npz" and p.stem.isdigit():
                done[int(p.stem)] = p
    return done, tmp
