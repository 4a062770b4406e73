"""Policy checkpoints: ``config.json`` + ``model.safetensors``, never pickle.

A checkpoint is a directory::

    <dir>/
      config.json          {"format": 1, "kind": "<policy kind>", "weights_sha256": "<hex>",
                            ...policy config}
      model.safetensors    every tensor the policy needs, normalizer statistics included

Both files are written to temporary names and renamed into place, so an interrupted
save leaves the previous checkpoint intact rather than half of a new one.

``weights_sha256`` is the SHA-256 of ``model.safetensors`` as written; :func:`load_checkpoint`
recomputes it and refuses a file whose bytes changed (safetensors itself checks only the
header, so a flipped weight byte would otherwise load and act differently). Checkpoints
written before the digest existed have no ``weights_sha256`` and load unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CHECKPOINT_FORMAT = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DIGEST_KEY = "weights_sha256"
_HASH_BLOCK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match what loads it."""


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    directory: str | os.PathLike, config: dict[str, Any], tensors: dict[str, Any]
) -> Path:
    """Write ``config`` (JSON-serializable, must contain ``kind``) and ``tensors``.

    ``tensors`` maps names to torch tensors or numpy arrays; they are stored contiguous
    and on the CPU. ``config.json`` records the SHA-256 of the weights file under
    ``weights_sha256`` (:func:`load_checkpoint` verifies it). Returns the checkpoint directory.
    """
    if "kind" not in config:
        raise CheckpointError("save_checkpoint: config needs a 'kind' entry naming the policy")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cpu = {
        name: (torch.from_numpy(np.ascontiguousarray(t)) if isinstance(t, np.ndarray) else t)
        .detach()
        .cpu()
        .contiguous()
        for name, t in tensors.items()
    }
    weights_tmp = directory / f".{WEIGHTS_NAME}.tmp-{os.getpid()}"
    save_file(cpu, str(weights_tmp), metadata={"format": "pt"})
    # Hashed from the file on disk, not from the tensors: what load reads is what is checked.
    digest = file_sha256(weights_tmp)
    os.replace(weights_tmp, directory / WEIGHTS_NAME)
    document = {"format": CHECKPOINT_FORMAT, **config, DIGEST_KEY: digest}
    _atomic_write_bytes(
        directory / CONFIG_NAME, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    )
    return directory


def load_checkpoint(
    directory: str | os.PathLike, kind: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns ``(config, tensors)``; ``config`` is the document as saved, without the
    ``weights_sha256`` entry. Raises :class:`CheckpointError` that names the file and the
    problem when the directory or a file is missing, corrupt, of another format, of another
    policy ``kind`` than the one asked for, or when the weights file's SHA-256 differs from
    the one recorded at save (naming both digests). A checkpoint without a recorded digest
    (written before digests existed) loads unchecked.
    """
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint {directory} has no {path.name}; a checkpoint needs both "
                f"{CONFIG_NAME} and {WEIGHTS_NAME} (was the save interrupted?)"
            )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({e}); the file is corrupt") from e
    if not isinstance(config, dict) or "kind" not in config:
        raise CheckpointError(f"{config_path} has no 'kind' entry; it is not a policy checkpoint")
    if config.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{config_path} has format {config.get('format')!r}; this version reads format "
            f"{CHECKPOINT_FORMAT}"
        )
    if kind is not None and config["kind"] != kind:
        raise CheckpointError(
            f"checkpoint {directory} holds a {config['kind']!r} policy, not a {kind!r} policy"
        )
    expected = config.pop(DIGEST_KEY, None)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{weights_path} cannot be read ({e}); the file is corrupt or truncated"
        ) from e
    # After the load, so that a truncated file is reported as truncated; the digest catches
    # what safetensors cannot see (it checks the header, not the weight bytes).
    if expected is not None:
        _verify_weights(weights_path, config_path, expected)
    return config, tensors


def _verify_weights(weights_path: Path, config_path: Path, expected: Any) -> None:
    if not isinstance(expected, str) or len(expected) != 64:
        raise CheckpointError(f"{config_path}: {DIGEST_KEY} must be a 64-digit hex SHA-256, got "
                              f"{expected!r}; the file is corrupt")  # fmt: skip
    try:
        actual = file_sha256(weights_path)
    except OSError as e:
        raise CheckpointError(f"{weights_path} cannot be read ({e})") from e
    if actual != expected.lower():
        raise CheckpointError(
            f"{weights_path} does not match the digest recorded at save: SHA-256 {actual}, "
            f"{config_path.name} records {expected}. The weights were modified or corrupted "
            "after saving (or a save was interrupted between the two files); restore the "
            "checkpoint or save it again"
        )


def load_state_dict_strict(
    module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str | os.PathLike
) -> None:
    """``module.load_state_dict`` with an error that lists what is missing or mismatched."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:8]}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:8]}")
        if mismatched:
            parts.append(f"shape mismatches {mismatched[:8]}")
        raise CheckpointError(f"checkpoint {source} does not match the model: " + "; ".join(parts))
    module.load_state_dict(tensors, strict=True)


def save_net_checkpoint(directory: str | os.PathLike, config: dict[str, Any],
                        observation_space: Any, action_space: Any, net: torch.nn.Module
                        ) -> Path:  # fmt: skip
    """A policy that is one network over gymnasium spaces: ``config`` (with its ``kind``)
    plus both spaces as JSON, and ``net``'s tensors under ``net.``."""
    from robodistill.envs.spaces import space_to_json  # the spaces' JSON form

    config = {**config, "observation_space": space_to_json(observation_space),
              "action_space": space_to_json(action_space)}  # fmt: skip
    return save_checkpoint(directory, config, {f"net.{k}": v for k, v in net.state_dict().items()})


def load_net_checkpoint(directory: str | os.PathLike, kind: str
                        ) -> tuple[dict[str, Any], dict[str, torch.Tensor], Any, Any]:  # fmt: skip
    """What :func:`save_net_checkpoint` wrote: ``(config without kind and spaces, the net's
    tensors with the ``net.`` prefix dropped, observation space, action space)``."""
    from robodistill.envs.spaces import space_from_json

    config, tensors = load_checkpoint(directory, kind=kind)
    try:
        obs_space = space_from_json(config.pop("observation_space"))
        act_space = space_from_json(config.pop("action_space"))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{directory}: not a valid {kind}: {e}") from e
    config.pop("kind", None)
    return config, {k[len("net.") :]: v for k, v in tensors.items()}, obs_space, act_space
