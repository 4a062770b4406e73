"""The resumable state of a history student's DAgger rounds (safetensors + JSON, no pickle).

::

    ckpt = DAggerCheckpoint(out / "dagger", settings)
    state = ckpt.load()                # None: start at round 0
    ...                                # after round r (and the caller's on_round):
    ckpt.save(r, new_rows, trained, rng, log)

What a round's result depends on, and where it lives::

    <dir>/rows-NNN.safetensors   round NNN's new rows (obs (N, D), history (N, k, D + A),
                                 target_mean (N, A), target_z (N, L)); the aggregated
                                 dataset after round r is rows 0..r concatenated
    <dir>/state/                 replaced whole after each round (a crash keeps the last):
      config.json                round, the mixing RNG's bit-generator state, the per-round
                                 log, the caller's ``extra`` (the distill stage: its best
                                 validation result), the settings, each rows file's SHA-256
      model.safetensors          the trained modules' state_dict (the student's net; HIB's
                                 critic)

Nothing else carries over between rounds: each round trains with a fresh Adam
(:func:`robodistill.training.epochs.train_epochs`, so there is no optimizer state to keep),
torch's RNG is re-seeded from ``[seed, round]`` there, episode seeds are a function of the
round, and the envs are reset with those seeds. Resumed from the state after round ``r``,
rounds ``r + 1, ...`` therefore repeat an uninterrupted run's bit for bit on the same
machine and thread count (tested); only wall times differ.

A state whose settings differ from the run's (another budget, teacher or seed), or whose
rows files are missing or changed, is not resumed from: the student starts over.
``rounds`` is not part of the comparison (nothing before round ``r`` depends on it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy

from robodistill.core.rundir import committed_dir, replace_dir, staging_dir
from robodistill.policies.checkpoint import (
    CheckpointError,
    file_sha256,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)

log = logging.getLogger(__name__)

STATE_KIND = "history_dagger_state"
STATE_DIR = "state"
ROWS_KEYS = ("obs", "history", "target_mean", "target_z")


def _rows_name(r: int) -> str:
    return f"rows-{r:03d}.safetensors"


class DAggerCheckpoint:
    """Save and load the state after each finished DAgger round (module docstring).

    Args:
        directory: where the state lives (the distill stage: ``<student>/dagger``).
        settings: JSON-able description of everything the rounds depend on; a saved state
            with other settings (``rounds`` aside) is not resumed from.
    """

    def __init__(self, directory: str | os.PathLike, settings: dict[str, Any]):
        self.dir = Path(directory)
        self.settings = json.loads(json.dumps(settings, default=str))
        self.extra: dict[str, Any] = {}
        """The caller's own state, saved with every round and restored by :meth:`load`."""

    def save(self, r: int, new_rows: dict[str, np.ndarray], trained: torch.nn.Module,
             rng: np.random.Generator, log_rows: list[dict[str, Any]]) -> None:  # fmt: skip
        """Round ``r`` is finished: its new rows, the trained modules, the mixing RNG, the
        log so far and :attr:`extra` become the state a resume starts from."""
        self.dir.mkdir(parents=True, exist_ok=True)
        rows_path = self.dir / _rows_name(r)
        tmp = rows_path.with_name(f".{rows_path.name}.tmp-{os.getpid()}")
        save_numpy({k: np.ascontiguousarray(new_rows[k]) for k in ROWS_KEYS}, str(tmp))
        os.replace(tmp, rows_path)
        digests = list(self._read_digests(r)) + [file_sha256(rows_path)]
        config = {
            "kind": STATE_KIND, "round": int(r), "rng": rng.bit_generator.state,
            "log": log_rows, "extra": self.extra, "settings": self.settings,
            "rows_sha256": digests,
        }  # fmt: skip
        config = json.loads(json.dumps(config, default=float))  # numpy scalars -> JSON
        state = self.dir / STATE_DIR
        staging = staging_dir(state)
        save_checkpoint(staging, config, dict(trained.state_dict()))
        replace_dir(staging, state)
        for old in self.dir.glob("rows-*.safetensors"):  # rows of rounds a restart redid
            if int(old.name[5:8]) > r:
                old.unlink()

    def _read_digests(self, r: int) -> list[str]:
        """The SHA-256 of rows 0..r-1 as the saved state recorded them (round r - 1's)."""
        if r == 0:
            return []
        source = committed_dir(self.dir / STATE_DIR, "config.json")
        config = json.loads((source / "config.json").read_text())
        if config.get("round") != r - 1:
            raise RuntimeError(f"{self.dir}: saving round {r} after round {config.get('round')}")
        return list(config["rows_sha256"])

    def load(self, trained: torch.nn.Module) -> dict[str, Any] | None:
        """The saved state, its weights loaded into ``trained`` and :attr:`extra` restored,
        as ``{"round", "rng" (bit-generator state), "log", "dataset"}``; or None when there
        is nothing to resume from (no state, other settings, missing or changed rows: the
        directory is then cleared)."""
        source = committed_dir(self.dir / STATE_DIR, "config.json")
        if source is None:
            return None
        try:
            config, tensors = load_checkpoint(source, kind=STATE_KIND)
            reason = self._mismatch(config)
            if reason is None:
                rows = self._rows(config)
                load_state_dict_strict(trained, tensors, source)
        except (CheckpointError, OSError, ValueError, KeyError) as e:
            reason = f"unreadable ({e})"
        if reason is not None:
            log.warning("history: not resuming from %s: %s; starting over", source, reason)
            shutil.rmtree(self.dir, ignore_errors=True)
            return None
        self.extra = dict(config.get("extra") or {})
        dataset = {k: np.concatenate([r[k] for r in rows]) for k in ROWS_KEYS}
        return {"round": int(config["round"]), "rng": config["rng"], "log": config["log"],
                "dataset": dataset}  # fmt: skip

    def _mismatch(self, config: dict[str, Any]) -> str | None:
        saved = dict(config.get("settings") or {})
        mine = dict(self.settings)
        saved.pop("rounds", None)
        mine.pop("rounds", None)
        if saved != mine:
            changed = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            return f"it was made with other settings ({', '.join(changed)})"
        if len(config["rows_sha256"]) != int(config["round"]) + 1:
            return "its rows do not match its round"
        return None

    def _rows(self, config: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        rows = []
        for r, digest in enumerate(config["rows_sha256"]):
            path = self.dir / _rows_name(r)
            if file_sha256(path) != digest:
                raise ValueError(f"{path.name} changed since it was saved")
            rows.append(load_numpy(str(path)))
        return rows


__all__ = ["DAggerCheckpoint", "ROWS_KEYS", "STATE_KIND"]
