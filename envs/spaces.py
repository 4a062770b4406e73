"""gymnasium spaces as JSON, and the observation layout of flattened Dict spaces.

Stores and ONNX metadata describe spaces in JSON so that nothing needs pickle to read
them back::

    {"type": "Box", "shape": [3], "dtype": "float32", "low": [...], "high": [...]}
    {"type": "Discrete", "n": 4, "start": 0}
    {"type": "Dict", "spaces": {"goal": {...}, "ranges": {...}}}
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


def _bound_to_json(x: np.ndarray) -> list:
    # JSON has no inf; None stands for an unbounded entry.
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(x, np.float64).ravel()]


def _bound_from_json(values: list, shape: tuple[int, ...], sign: float) -> np.ndarray:
    arr = np.array([sign * np.inf if v is None else v for v in values], dtype=np.float64)
    return arr.reshape(shape)


def space_to_json(space: gym.Space) -> dict[str, Any]:
    """Describe ``space`` as JSON; raises ``TypeError`` for space types we cannot describe."""
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _bound_to_json(space.low),
            "high": _bound_to_json(space.high),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).tolist()}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(s) for k, s in space.spaces.items()}}
    raise TypeError(f"cannot describe a {type(space).__name__} space as JSON")


def space_from_json(doc: dict[str, Any]) -> gym.Space:
    """Inverse of :func:`space_to_json`."""
    kind = doc.get("type")
    if kind == "Box":
        shape = tuple(doc["shape"])
        return gym.spaces.Box(
            _bound_from_json(doc["low"], shape, -1.0).astype(doc["dtype"]),
            _bound_from_json(doc["high"], shape, 1.0).astype(doc["dtype"]),
            shape=shape,
            dtype=np.dtype(doc["dtype"]),
        )
    if kind == "Discrete":
        return gym.spaces.Discrete(doc["n"], start=doc.get("start", 0))
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(doc["nvec"])
    if kind == "MultiBinary":
        return gym.spaces.MultiBinary(doc["n"])
    if kind == "Dict":
        return gym.spaces.Dict({k: space_from_json(s) for k, s in doc["spaces"].items()})
    raise ValueError(f"unknown space type {kind!r} in {doc}")


def flat_layout(space: gym.Space) -> list[dict[str, Any]]:
    """Where each part of a (possibly Dict) observation lands in the flat vector.

    Returns ``[{"key": "goal", "start": 0, "stop": 2, "shape": [2]}, ...]`` in the order
    ``gymnasium.spaces.flatten`` uses (Dict keys sorted as the space stores them).
    """
    if isinstance(space, gym.spaces.Dict):
        layout, start = [], 0
        for key, sub in space.spaces.items():
            for part in flat_layout(sub):
                size = part["stop"] - part["start"]
                name = key if part["key"] == "" else f"{key}.{part['key']}"
                layout.append(
                    {"key": name, "start": start, "stop": start + size, "shape": part["shape"]}
                )
                start += size
        return layout
    size = int(gym.spaces.flatdim(space))
    return [{"key": "", "start": 0, "stop": size, "shape": list(space.shape or (size,))}]
