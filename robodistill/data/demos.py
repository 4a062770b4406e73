"""Demonstrations for every trainer: where a run's demos are, their fingerprint, and the
arrays the trainers read.

::

    data, stats, attrs = load_demos(cfg)        # RL-100 teacher and its students
    transitions, info = load_transitions(cfg)   # the COMPASS base

Both read the run's ``collect/demos.zarr`` unless the config names another store
(``teach.rl100.demos`` / ``teach.compass.demos``). A missing or empty store, another env's
demos or arrays of the wrong size are a :class:`~robodistill.data.store.StoreError` naming
the path and the fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from robodistill.config import RunConfig
from robodistill.core.rollout import env_spaces
from robodistill.data.store import StoreError, TrajectoryStore


def demos_path(cfg: RunConfig) -> Path:
    """``teach.rl100.demos``, else this run's collected store."""
    if cfg.teach.rl100.demos:
        return Path(cfg.teach.rl100.demos)
    return Path(cfg.runs_dir) / cfg.name / "collect" / "demos.zarr"


def _open_demos(cfg: RunConfig) -> TrajectoryStore:
    path = demos_path(cfg)
    if not path.exists():
        raise StoreError(
            f"the RL-100 teacher imitates demonstrations first, but {path} does not exist. Run "
            f"`robodistill collect` for this run first (same --name / --config), or point "
            f"teach.rl100.demos at a trajectory store"
        )
    store = TrajectoryStore.open(path)
    if store.n_episodes == 0:
        store.close()
        raise StoreError(f"{path} holds no episodes; collect demonstrations into it first")
    return store


def demos_inputs(cfg: RunConfig) -> dict[str, Any]:
    """What the teacher depends on besides the config: the store's path and a fingerprint
    (episode ends + normalizer statistics), so re-collected demos are not silently reused."""
    with _open_demos(cfg) as store:
        digest = hashlib.sha256(store.episode_ends.tobytes())
        digest.update(json.dumps(store.attrs.get("normalizer"), sort_keys=True).encode())
        return {"demos": str(demos_path(cfg)), "demos_episodes": int(store.n_episodes),
                "demos_digest": digest.hexdigest()[:16]}  # fmt: skip


def load_demos(cfg: RunConfig) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """``(data, stats, attrs)``: obs (N, D) and action (N, A) in RAM, their statistics."""
    path = demos_path(cfg)
    with _open_demos(cfg) as store:
        attrs = store.attrs
        missing = {"obs", "action"} - set(store.keys)
        if missing:
            raise StoreError(f"{path} has no {sorted(missing)} arrays; it has {store.keys}")
        data = store.load(["obs", "action"])
        stats = attrs.get("normalizer") or {}
        if not {"obs", "action"} <= set(stats):
            stats = store.compute_stats(["obs", "action"])
    stored_env = attrs.get("env_id")
    if stored_env and stored_env != cfg.env.id:
        raise StoreError(
            f"{path} holds demonstrations of {stored_env!r} but env.id is {cfg.env.id!r}; set "
            f"env.id={stored_env} or point teach.rl100.demos at a store of {cfg.env.id}"
        )
    for key in ("obs", "action"):
        if data[key].ndim != 2:
            raise StoreError(
                f"{path}: the diffusion teacher needs flat {key} arrays (N, dim), got "
                f"{data[key].shape}; image observations are not supported yet"
            )
    obs_space, action_space, _ = env_spaces(cfg.env.id, cfg.env.kwargs)
    if data["obs"].shape[1] != int(np.prod(obs_space.shape)) or data["action"].shape[1] != int(
        np.prod(action_space.shape)
    ):
        raise StoreError(
            f"{path} has obs/action of size {data['obs'].shape[1]}/{data['action'].shape[1]} "
            f"but {cfg.env.id} (env.kwargs {cfg.env.kwargs}) has {obs_space.shape}/"
            f"{action_space.shape}; collect demos with the same env settings"
        )
    attrs["action_low"] = np.asarray(action_space.low, np.float64).reshape(-1).tolist()
    attrs["action_high"] = np.asarray(action_space.high, np.float64).reshape(-1).tolist()
    return data, {k: stats[k] for k in ("obs", "action")}, attrs


def compass_demos_path(cfg: RunConfig) -> Path:
    """``teach.compass.demos``, else this run's ``collect/demos.zarr``."""
    return Path(cfg.teach.compass.demos or Path(cfg.runs_dir) / cfg.name / "collect" / "demos.zarr")


def load_transitions(cfg: RunConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``({"obs" (N, D), "action" (N, A), "next_obs" (N, D), "has_next" (N,)}, info)`` from
    the base embodiment's demonstrations; ``has_next`` is False on each episode's last step
    (its successor is not stored), which the world-model losses skip."""
    path, base = compass_demos_path(cfg), cfg.teach.compass.base_embodiment
    if not path.exists():
        raise StoreError(
            f"teach.compass.demos: {path} does not exist. Collect expert demonstrations of the "
            f"base embodiment first (robodistill collect --config <this config>, with "
            f"env.kwargs.embodiment={base} and collect.policy=expert) or point "
            "teach.compass.demos at a trajectory store"
        )
    with TrajectoryStore.open(path) as store:
        if store.n_episodes == 0:
            raise StoreError(f"{path} holds no episodes; collect demonstrations into it first")
        data, env_id = store.load(["obs", "action"]), store.attrs.get("env_id")
        bodies = sorted(set(store.episode_meta()["embodiment"].tolist()) - {""})
    if env_id and env_id != cfg.env.id:
        raise StoreError(f"{path} holds {env_id!r} demonstrations but env.id is {cfg.env.id!r}")
    if bodies and bodies != [base]:
        raise StoreError(
            f"{path} holds demonstrations of {bodies}, but teach.compass.base_embodiment is "
            f"{base!r}: the base imitates one embodiment; collect with "
            f"env.kwargs.embodiment={base} or change teach.compass.base_embodiment"
        )
    obs = data["obs"].reshape(len(data["obs"]), -1).astype(np.float32)
    ends = data["episode_ends"]
    has_next = np.ones(len(obs), bool)
    has_next[ends - 1] = False
    next_obs = np.concatenate([obs[1:], obs[-1:]])
    action = data["action"].reshape(len(obs), -1).astype(np.float32)
    info = {"demos": str(path), "episodes": int(len(ends)), "transitions": int(len(obs))}
    return {"obs": obs, "action": action, "next_obs": next_obs, "has_next": has_next}, info


def compass_inputs(cfg: RunConfig) -> dict[str, Any]:
    """The teach stage's extra inputs: the demonstrations' path and a fingerprint."""
    path = compass_demos_path(cfg)
    if not path.exists():
        load_transitions(cfg)  # raises the precise error
    with TrajectoryStore.open(path) as store:
        digest = hashlib.sha256(store.episode_ends.tobytes()).hexdigest()[:16]
        return {"demos": str(path), "demos_episodes": int(store.n_episodes), "demos_digest": digest}
