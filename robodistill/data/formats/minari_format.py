"""Farama Minari datasets, written and read through the ``minari`` package (its arrow storage).

::

    OUT/data/metadata.json       dataset_id, minari_version, observation_space, action_space,
                                 env_spec (when the env id resolves), totals, and "robodistill":
                                 {store attrs, chunk_steps, every key's dtype and shape}
    OUT/data/<i>/                episode i (seed order): observations = obs rows + the final
                                 observation (T + 1), actions, rewards, terminations,
                                 truncations; other data keys in infos (last row repeated)
    OUT/data/<i>/metadata.json   {"id", "total_steps", "seed", "robodistill": {success,
                                 env_id, embodiment, source_policy, max_score, score_source}}

``minari.MinariDataset("OUT/data")`` opens it; placed at ``$MINARI_DATASETS_PATH/<dataset_id>``
``minari.load_dataset(dataset_id)`` finds it. One obs key gives a Box observation space, several
(``obs``, ``obs_*``) a Dict space. Needs ``pip install "robodistill[formats]"``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from robodistill.data.episode import Episode
from robodistill.data.formats.common import (
    FORMAT_VERSION,
    RECORD_FIELDS,
    FormatError,
    episode_record,
    iter_episodes,
    make_episode,
    open_for_export,
    staged,
    store_chunk_steps,
    write_store,
)

_BATCH = 64
_STANDARD = ("action", "reward", "terminated", "truncated")


def require_minari():
    """The ``minari`` module, or a :class:`FormatError` saying how to install it."""
    try:
        import gymnasium  # noqa: F401
        import minari
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise FormatError(
            f"the minari format needs the minari package with its arrow storage ({e}); install "
            'it with `pip install "robodistill[formats]"` (Python >= 3.11)'
        ) from e
    return minari


def _looks_like(path: Path) -> bool:
    return (path / "data" / "metadata.json").exists()


def _bounds(doc: Any, shape: tuple, dtype: np.dtype) -> tuple[Any, Any]:
    """Box bounds from a store's JSON space when it describes exactly this box, else the
    widest the dtype allows."""
    if isinstance(doc, dict) and doc.get("type") == "Box" and tuple(doc.get("shape", ())) == shape:
        lo = [-np.inf if v is None else v for v in doc["low"]]
        hi = [np.inf if v is None else v for v in doc["high"]]
        lo, hi = np.array(lo).reshape(shape), np.array(hi).reshape(shape)
        return (lo.astype(dtype), hi.astype(dtype)) if dtype.kind == "f" else (lo, hi)
    if dtype.kind == "b":
        return 0, 1
    if dtype.kind in "iu":
        return np.iinfo(dtype).min, np.iinfo(dtype).max
    return -np.inf, np.inf


def _space(doc: Any, v: np.ndarray):
    import gymnasium as gym

    shape, dtype = tuple(v.shape[1:]), v.dtype
    if (
        isinstance(doc, dict)
        and doc.get("type") == "Discrete"
        and shape == ()
        and dtype.kind in "iu"
    ):
        return gym.spaces.Discrete(int(doc["n"]), start=int(doc.get("start", 0)))
    lo, hi = _bounds(doc, shape, dtype)
    return gym.spaces.Box(lo, hi, shape=shape, dtype=dtype)


def _dataset_id(out: Path, dataset_id: str | None) -> str:
    if dataset_id:
        return dataset_id
    name = re.sub(r"[^-\w]", "_", out.name) or "robodistill"
    return name if re.search(r"-v\d+$", name) else f"{name}-v0"


def _env_spec(env_ids: set[str]):
    """The gymnasium spec of the one env id every episode shares, when it resolves."""
    if len(env_ids) != 1:
        return None
    import gymnasium as gym

    (env_id,) = env_ids
    try:
        if env_id.startswith("robodistill/") and env_id not in gym.registry:
            import robodistill.envs  # noqa: F401  (registers the project's ids)
        return gym.spec(env_id)
    except Exception:  # an id gymnasium cannot resolve here: no spec, the id stays in metadata
        return None


def export_minari(
    store_path: str | os.PathLike,
    out: str | os.PathLike,
    overwrite: bool = False,
    dataset_id: str | None = None,
) -> dict[str, Any]:
    """Write the store at ``store_path`` as a Minari dataset at ``out`` (``out/data/...``)."""
    minari = require_minari()
    import gymnasium as gym
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    store, order = open_for_export(store_path)
    with store, staged(out, overwrite, _looks_like) as tmp:
        attrs, first = store.attrs, store.episode(int(order[0]))
        obs_keys = sorted(k for k in first.data if k.startswith("obs"))
        extra = sorted(k for k in first.data if k not in obs_keys and k not in _STANDARD)
        if obs_keys == ["obs"]:
            obs_space = _space(attrs.get("observation_space"), first.data["obs"])
        else:
            obs_space = gym.spaces.Dict({k: _space(None, first.data[k]) for k in obs_keys})
        action_space = _space(attrs.get("action_space"), first.data["action"])
        meta = store.episode_meta()
        spec = _env_spec({str(v) for v in meta["env_id"]})
        Path(tmp).mkdir()
        storage = MinariStorage.new(Path(tmp) / "data", observation_space=obs_space,
                                    action_space=action_space, env_spec=spec,
                                    data_format="arrow", jpeg_encoding=False)  # fmt: skip
        keys = {k: {"dtype": str(v.dtype), "shape": list(v.shape[1:])}
                for k, v in first.data.items()}  # fmt: skip
        block = {"format": "minari", "version": FORMAT_VERSION, "attrs": attrs,
                 "chunk_steps": store_chunk_steps(store_path), "obs_keys": obs_keys,
                 "info_keys": extra, "keys": keys}  # fmt: skip
        sources = sorted({str(v) for v in meta["source_policy"]} - {""})
        storage.update_metadata({"dataset_id": _dataset_id(Path(out), dataset_id),
                                 "minari_version": minari.__version__, "robodistill": block,
                                 "description": f"exported by robodistill from {store_path}",
                                 **({"algorithm_name": sources[0]} if len(sources) == 1 else {})})  # fmt: skip
        episodes = iter_episodes(store, order)
        # minari re-measures the whole dataset folder after every episode it writes (quadratic:
        # 15 s for 500 episodes, minutes for thousands); measure once, at the end.
        storage.get_size = lambda: 0.0
        for b0 in range(0, len(order), _BATCH):
            ids = list(range(b0, min(b0 + _BATCH, len(order))))
            eps = [next(episodes) for _ in ids]
            storage.update_episodes([_buffer(EpisodeBuffer, j, ep, obs_keys, extra)
                                     for j, ep in zip(ids, eps, strict=True)])  # fmt: skip
            storage.update_episode_metadata([{"robodistill": episode_record(ep)} for ep in eps],
                                            ids)  # fmt: skip
        del storage.get_size
        storage.update_metadata({"dataset_size": storage.get_size()})
    return {"format": "minari", "episodes": len(order), "steps": store.n_steps, "out": str(out)}


def _buffer(cls, j: int, ep: Episode, obs_keys: list[str], extra: list[str]):
    def with_final(k: str) -> np.ndarray:
        return np.concatenate([ep.data[k], ep.final[k][None]])

    obs = with_final("obs") if obs_keys == ["obs"] else {k: with_final(k) for k in obs_keys}
    infos = {}
    for k in extra:  # (T + 1, size) rows: minari keeps infos as long as observations
        v = ep.data[k].reshape(ep.length, -1)
        infos[k] = np.concatenate([v, v[-1:]])
    return cls(id=j, seed=None if ep.seed < 0 else ep.seed, observations=obs,
               actions=ep.data["action"], rewards=ep.data["reward"],
               terminations=ep.data["terminated"], truncations=ep.data["truncated"],
               infos=infos or None)  # fmt: skip


def _open(src: str | os.PathLike):
    minari = require_minari()
    path = Path(src)
    for candidate in (path / "data", path):
        if (candidate / "metadata.json").exists():
            try:
                return minari.MinariDataset(candidate)
            except (ValueError, KeyError, AssertionError) as e:
                raise FormatError(f"{candidate} is not a Minari dataset Minari reads: {e}") from e
    try:
        return minari.load_dataset(str(src))  # a local dataset id
    except Exception as e:
        raise FormatError(
            f"{src} is neither a Minari dataset folder (with data/metadata.json) nor the id of "
            f"a local Minari dataset ({type(e).__name__}: {e})"
        ) from e


def _flat(space, values) -> np.ndarray:
    """(n, D) float32 as ``gymnasium.spaces.flatten`` lays a Dict / Tuple observation out
    (what robodistill's FlattenDictObservation feeds policies)."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Dict):
        return np.concatenate([_flat(s, values[k]) for k, s in space.spaces.items()], axis=1)
    if isinstance(space, gym.spaces.Tuple):
        return np.concatenate(
            [_flat(s, v) for s, v in zip(space.spaces, values, strict=True)], axis=1
        )
    if isinstance(space, (gym.spaces.Box, gym.spaces.MultiBinary)):
        v = np.asarray(values)
        return v.reshape(len(v), -1).astype(np.float32)
    if isinstance(space, gym.spaces.Discrete):
        v = np.asarray(values).astype(np.int64) - int(space.start)
        return np.eye(int(space.n), dtype=np.float32)[v]
    raise FormatError(f"cannot import {type(space).__name__} observations from Minari")


def import_minari(
    src: str | os.PathLike,
    store_path: str | os.PathLike,
    env_id: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Create a trajectory store at ``store_path`` from the Minari dataset ``src`` (a folder,
    its ``data/`` folder or a local dataset id).

    Our own exports come back losslessly. Foreign datasets: a Box (or Discrete) observation
    becomes ``obs`` as is, a Dict / Tuple one is flattened to float32 as gymnasium flattens it;
    the observation after the last action (Minari keeps T + 1) is the final one; the success is ``infos["is_success"]`` or
    ``infos["success"]`` at the last step when recorded (else None); the episode seed when
    recorded (else -1); the env id is ``env_id``, else the dataset's env spec id, else "".
    Other infos are not imported."""
    ds = _open(src)
    storage = ds.storage
    metadata = storage.metadata
    block = metadata.get("robodistill") or {}
    records = list(storage.get_episode_metadata(range(storage.total_episodes)))
    if env_id is None:  # for episodes without one; our own exports keep theirs, even ""
        env_id = ds.env_spec.id if ds.env_spec is not None and not block else ""
    attrs = block.get("attrs") if block else {
        "imported_from": {"format": "minari", "dataset_id": str(metadata.get("dataset_id"))},
        **({"env_id": env_id} if env_id else {}),
    }  # fmt: skip
    keys = block.get("keys", {})

    def cast(k: str, v: Any, rows: int) -> np.ndarray:
        v = np.asarray(v)
        if k in keys:
            v = v.astype(keys[k]["dtype"], copy=False).reshape(rows, *keys[k]["shape"])
        return v

    def episodes() -> Iterator[Episode]:
        for j, e in enumerate(ds.iterate_episodes()):
            t = len(e.rewards)
            if block:
                obs = e.observations
                obs = {"obs": obs} if block["obs_keys"] == ["obs"] else obs
            elif isinstance(e.observations, (dict, tuple)):
                obs = {"obs": _flat(ds.observation_space, e.observations)}
            else:
                obs = {"obs": np.asarray(e.observations)}
            obs = {k: cast(k, v, t + 1) for k, v in obs.items()}
            data = {k: v[:t] for k, v in obs.items()}
            final = {k: v[t] for k, v in obs.items()}  # minari keeps T + 1 observations
            data |= {"action": cast("action", e.actions, t), "reward": cast("reward", e.rewards, t),
                     "terminated": np.asarray(e.terminations, bool).reshape(t),
                     "truncated": np.asarray(e.truncations, bool).reshape(t)}  # fmt: skip
            for k in block.get("info_keys", []):
                data[k] = cast(k, np.asarray(e.infos[k])[:t], t)
            meta = records[j] if j < len(records) else {}
            record = dict(meta.get("robodistill") or {})
            record = {k: record[k] for k in RECORD_FIELDS if k in record}
            record.setdefault("seed", meta.get("seed"))
            if not block:
                record["success"] = _success(e.infos)
            if not record.get("env_id"):
                record["env_id"] = env_id
            yield make_episode(data, final, record, f"{src} episode {j}")

    chunks = block.get("chunk_steps")
    summary = write_store(store_path, episodes(), attrs, chunks, overwrite, stats=not block)
    return {"format": "minari"} | summary


def _success(infos: dict) -> bool | None:
    for key in ("is_success", "success"):
        v = infos.get(key) if isinstance(infos, dict) else None
        if v is not None and len(np.atleast_1d(v)):
            return bool(np.atleast_1d(v)[-1])
    return None
