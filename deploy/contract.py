"""The rules of format version 2 as fields of the metadata document, filled in one place.

:func:`complete_document` gives a document every field that ``metadata_schema.json``
requires, with the values this package's runtime follows (the history is oldest first and
padded with the first observation, state resets per episode, noise is normal, ...), derived
from what the document already says (its inputs, horizons, state, mode). It never changes a
field that is present. The exporter completes the policy's part with it; a reader upgrades
a version-1 file with :func:`upgrade_v1` (the same completion: the values version 1's
runtime behaved as). :func:`env_entry` describes an env id, with the module that registers
it.

Standard library only (the runtime imports it on a robot).
"""

from __future__ import annotations

import math
from typing import Any

HISTORY = {"order": "oldest_first", "padding": "repeat_first"}
ROBODISTILL_ENV_MODULE = "robodistill.envs"
"""Importing it registers the ``robodistill/...`` ids with gymnasium."""

_INT_DTYPES = {"timestep": "int64"}


def env_entry(
    env_id: str,
    *,
    kwargs: dict[str, Any] | None = None,
    max_episode_steps: int | None = None,
    embodiment: dict[str, Any] | None = None,
    module: str | None = None,
) -> dict[str, Any]:
    """``metadata.env`` for ``env_id`` (``"id"`` or ``"module:id"``).

    The registering module is the part before ``:``, else ``module``, else
    ``robodistill.envs`` for ``robodistill/...`` ids, else ``None`` (gymnasium's own ids,
    or unknown). ``make`` is what ``gymnasium.make`` accepts in a fresh process.
    """
    prefix, _, bare = env_id.rpartition(":")
    module = prefix or module
    if module is None and bare.startswith("robodistill/"):
        module = ROBODISTILL_ENV_MODULE
    return {
        "id": bare,
        "module": module,
        "make": f"{module}:{bare}" if module else bare,
        "kwargs": dict(kwargs or {}),
        "max_episode_steps": None if max_episode_steps is None else int(max_episode_steps),
        "embodiment": embodiment,
    }


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dim(shape: Any) -> int | None:
    if not isinstance(shape, list) or not all(_int(s) is not None for s in shape):
        return None
    return math.prod(shape) if shape else 1


def _entries(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    entries = doc.get(key)
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _io_dtype(doc: dict[str, Any], key: str, roles: tuple[str, ...]) -> str:
    return next((e["dtype"] for e in _entries(doc, key)
                 if e.get("role") in roles and isinstance(e.get("dtype"), str)), "float32")  # fmt: skip


def complete_document(doc: dict[str, Any]) -> dict[str, Any]:
    """Add every version-2 field ``doc`` lacks (in place; returns ``doc``). Values of the
    wrong type are left for the schema to report."""
    for key in ("inputs", "outputs"):
        for e in _entries(doc, key):
            e.setdefault("dtype", _INT_DTYPES.get(e.get("role"), "float32"))
    mode = doc.setdefault("mode", "direct")
    for part, roles, key in (("observation", ("observation",), "inputs"),
                             ("action", ("action", "chunk"), "outputs")):  # fmt: skip
        section = doc.get(part)
        if not isinstance(section, dict):
            continue
        dim = _dim(section.get("shape"))
        if dim is not None:
            section.setdefault("dim", dim)
        section.setdefault("dtype", _io_dtype(doc, key, roles))
        for field in ("low", "high", "units") + (("layout",) if part == "observation" else ()):
            section.setdefault(field, None)
    horizons = doc.setdefault("horizons", {})
    if isinstance(horizons, dict):
        for key, default in (("observation", 1), ("prediction", 1), ("execute", 1), ("start", 0)):
            horizons.setdefault(key, default)
    doc.setdefault("history", dict(HISTORY))
    chunked = any(e.get("role") == "chunk" for e in _entries(doc, "outputs"))
    if "chunk" not in doc:
        start = _int(horizons.get("start")) if isinstance(horizons, dict) else None
        execute = _int(horizons.get("execute")) if isinstance(horizons, dict) else None
        if not chunked:
            doc["chunk"] = None
        elif start is not None and execute is not None:
            doc["chunk"] = {"axis": 1, "current_index": start, "executed": [start, start + execute]}
    doc.setdefault("chunk_execution", "receding")
    doc.setdefault("ensemble_decay", 0.01)
    inputs = {e.get("name"): e for e in _entries(doc, "inputs")}
    for s in _entries(doc, "state"):
        s.setdefault("init", "zeros")
        s.setdefault("std", 1.0)
        s.setdefault("reset", "episode")
        shape = inputs.get(s.get("input"), {}).get("shape")
        if "shape" not in s and isinstance(shape, list):
            s["shape"] = shape[1:]
    doc.setdefault("state", [])
    noise_std = doc.setdefault("noise_std", 1.0)
    if "noise" not in doc:
        noisy = [{"name": e.get("name"), "shape": e.get("shape")}
                 for e in _entries(doc, "inputs") if e.get("role") == "noise"]  # fmt: skip
        denoise = mode == "denoise"
        doc["noise"] = None if not noisy else {
            "distribution": "normal", "mean": 0.0, "std": 1.0 if denoise else noise_std,
            "draw": "per_denoise_step" if denoise else "per_call", "inputs": noisy,
        }  # fmt: skip
    denoise = doc.get("denoise")
    if isinstance(denoise, dict):
        denoise.setdefault("init_std", 1.0)
        if isinstance(denoise.get("warm_start"), dict):
            denoise["warm_start"].setdefault("discrete_dims", [])
    embodiments = doc.setdefault("embodiments", None)
    if isinstance(embodiments, dict):
        embodiments.setdefault("default", None)
        embodiments.setdefault("descriptors", None)
    env_id = doc.setdefault("env_id", None)
    if "env" not in doc:
        doc["env"] = env_entry(env_id) if isinstance(env_id, str) and env_id else None
    if "episode" not in doc:
        doc["episode"] = {"reset": _resets(doc, horizons, chunked)}
    doc.setdefault("control_rate_hz", None)
    doc.setdefault("deterministic", False)
    doc.setdefault("integrity", None)
    return doc


def _resets(doc: dict[str, Any], horizons: Any, chunked: bool) -> list[str]:
    history = isinstance(horizons, dict) and (_int(horizons.get("observation")) or 1) > 1
    warm = isinstance(doc.get("denoise"), dict) and doc["denoise"].get("warm_start")
    parts = [("history", history), ("action_queue", chunked), ("ensemble", chunked),
             ("state", bool(doc.get("state"))), ("warm_start", bool(warm))]  # fmt: skip
    return [name for name, applies in parts if applies]


def upgrade_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """A format-1 document as format 2 (in place): completed with the rules version 1's
    runtime followed, marked ``upgraded_from: 1``."""
    complete_document(doc)
    doc["format_version"] = 2
    doc["upgraded_from"] = 1
    return doc
