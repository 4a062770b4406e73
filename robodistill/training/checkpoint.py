"""Resumable training checkpoints: safetensors + JSON, built aside and renamed into place.

A checkpoint directory holds::

    policy/                   the policy as it acts (net, EMA net = the EMA's shadow
                              weights, normalizers), in its own save format
    optimizer.safetensors     optimizer tensors, the torch RNG state, the trainer's extra
                              tensors (e.g. a target network)
    state.json                step, evals, EMA step, scheduler, optimizer scalars, numpy RNG

No pickle anywhere. A crash between the two renames of ``replace_dir`` leaves the previous
checkpoint at ``.<name>.old``, which ``committed_dir`` finds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from robodistill.core.rundir import committed_dir, replace_dir, staging_dir, write_json_atomic
from robodistill.data.store import StoreError

CHECKPOINT_FORMAT = 1
STATE_NAME, OPTIMIZER_NAME, POLICY_DIR = "state.json", "optimizer.safetensors", "policy"
LEGACY_OPTIMIZER_NAME = "optimizer.pt"
"""Where the COMPASS base kept its optimizer before this format (torch.save, a pickle)."""
LEGACY_TENSORS_NAME = "train.safetensors"
"""What consistency checkpoints named their tensor file before the one training loop."""
RESULT_NAME = "result.json"


def finished_result(directory: Path) -> dict[str, Any] | None:
    """``directory/result.json`` when a trainer (or sub-stage) finished there, else ``None``:
    written last, so its presence means done."""
    path = Path(directory) / RESULT_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def result_or_workdir(directory: Path) -> dict[str, Any] | None:
    """:func:`finished_result`, or, when the work is not done, ``None`` with ``directory``
    created for a fresh or resumed run."""
    if (done := finished_result(directory)) is not None:
        return done
    Path(directory).mkdir(parents=True, exist_ok=True)
    return None


def copy_dir(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (built aside, renamed into place)."""
    tmp = staging_dir(dst)
    shutil.copytree(src, tmp)
    replace_dir(tmp, dst)


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (safetensors) and the rest (JSON)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, per_param in sd["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer, tensors: dict[str, torch.Tensor], doc: dict) -> None:
    """Restore what :func:`optimizer_state` split (``tensors`` may hold other keys too)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in doc["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": doc["param_groups"]})


def save_checkpoint(directory: Path, trainer, extra: dict[str, Any]) -> Path:
    """Write ``trainer``'s state (a :class:`robodistill.training.loop.Trainer`) and ``extra``
    (JSON: step, evals, ...) into ``directory`` (module docstring)."""
    tmp = staging_dir(directory)
    tmp.mkdir(parents=True)
    trainer.acting_policy().save(tmp / POLICY_DIR)
    tensors, optim_doc = optimizer_state(trainer.optimizer)
    tensors |= {k: v.detach().cpu().contiguous() for k, v in trainer.extra_tensors().items()}
    if trainer.gen is not None:
        tensors["rng.torch"] = trainer.gen.get_state()
    save_file(tensors, str(tmp / OPTIMIZER_NAME))
    state = {"format": CHECKPOINT_FORMAT, **extra, "optimizer": optim_doc,
             "rng_numpy": trainer.rng.bit_generator.state}  # fmt: skip
    if trainer.ema is not None:
        state["ema_optimization_step"] = int(trainer.ema.optimization_step)
    if trainer.lr_scheduler is not None:
        state["lr_scheduler"] = trainer.lr_scheduler.state_dict()
    write_json_atomic(tmp / STATE_NAME, state)
    replace_dir(tmp, directory)
    return directory


def _config_doc(policy) -> Any:
    """A policy's configuration as data: its config object's ``to_dict()``, or what its
    ``config()`` method writes to ``config.json``."""
    config = getattr(policy, "config", None)
    config = config() if callable(config) else config
    return config.to_dict() if hasattr(config, "to_dict") else config


def restore_checkpoint(directory: Path, trainer) -> dict[str, Any] | None:
    """Load :func:`save_checkpoint`'s files into ``trainer``; returns the state document,
    or ``None`` when there is no checkpoint."""
    directory = committed_dir(directory, STATE_NAME)
    if directory is None:
        return None
    if (directory / LEGACY_OPTIMIZER_NAME).is_file():
        raise StoreError(
            f"{directory} keeps its optimizer in {LEGACY_OPTIMIZER_NAME} (a pickle, written by an "
            "older version of the COMPASS base); this version reads safetensors + JSON only. "
            "Re-run the stage with --overwrite to start it over"
        )
    state = json.loads((directory / STATE_NAME).read_text())
    if state.get("format") != CHECKPOINT_FORMAT:
        raise StoreError(f"{directory} is a training checkpoint of format "
                         f"{state.get('format')!r}; this version reads {CHECKPOINT_FORMAT}")  # fmt: skip
    tensor_file = directory / OPTIMIZER_NAME
    if not tensor_file.is_file() and (directory / LEGACY_TENSORS_NAME).is_file():
        tensor_file = directory / LEGACY_TENSORS_NAME
    policy = trainer.policy
    saved = type(policy).load(directory / POLICY_DIR)
    if _config_doc(saved) != _config_doc(policy):
        raise StoreError(f"{directory} was trained with another policy config; move "
                         f"{directory.parent} aside (or use --overwrite) to start over")  # fmt: skip
    for name in ("net", "ema_net", "normalizer"):
        if hasattr(policy, name):
            getattr(policy, name).load_state_dict(getattr(saved, name).state_dict())
    (policy if hasattr(policy, "to") else policy.net).to(trainer.device)
    if trainer.ema is not None:
        trainer.ema.load_state_dict({
            "optimization_step": int(state["ema_optimization_step"]),
            "shadow_params": [p.detach().clone().to(trainer.device)
                              for p in policy.ema_net.parameters()],
        })  # fmt: skip
    tensors = load_file(str(tensor_file))
    if trainer.gen is not None:
        trainer.gen.set_state(tensors.pop("rng.torch"))
    trainer.load_extra_tensors(tensors)
    load_optimizer_state(trainer.optimizer, tensors, state["optimizer"])
    if trainer.lr_scheduler is not None:
        trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
    trainer.rng.bit_generator.state = state["rng_numpy"]
    return state
