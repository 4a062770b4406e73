"""``teach.training`` and ``distill.training``: how a stage runs its gradient-step trainers
(the one training loop, :mod:`robodistill.training.loop`): data-parallel workers on Ray
Train, what a lost worker costs, and the autocast precision."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from robodistill.config.base import Section

SHARDED_TEACHERS = ("rl100", "compass")
"""``teach.algo`` values whose gradient-step trainer runs data-parallel (the RL-100
imitation sub-stage, the COMPASS base); ``ppo`` on ``backend: rllib`` maps the workers to
RLlib learners instead."""
SHARDED_STUDENTS = ("consistency", "streaming")
"""``distill.students`` that run data-parallel; DAgger, RTI and the generalist train in
rounds of their own (:mod:`robodistill.training.epochs`) and refuse ``workers > 1``."""


class TrainingConfig(Section):
    """The one training loop's run settings for this stage's gradient-step trainers."""

    workers: int = Field(1, ge=1, le=1024)
    """Data-parallel training processes (``--workers``). 1: the trainer runs in this
    process. More: Ray Train's ``TorchTrainer`` runs the same loop in that many workers
    (PyTorch DDP's gradient averaging over gloo on CPU, NCCL with a GPU per worker where
    the Ray cluster has GPUs), joining ``RAY_ADDRESS`` / ``--ray-address`` or starting a
    local Ray. The trainer's ``batch_size`` stays the global batch, split across the
    workers; rank 0 alone writes checkpoints, metrics and validates (docs/concepts/
    data_parallel.md). ``teach.backend: rllib``: the number of RLlib learners."""
    max_failures: int = Field(2, ge=0, le=1000)
    """``workers > 1``: times Ray Train restarts the worker group after a worker dies; each
    restart resumes from the trainer's last checkpoint (``checkpoint_every``)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """``bf16``: the trainer's loss runs under ``torch.autocast(dtype=bfloat16)`` (weights,
    optimizer and gradients stay float32; no loss scaling is needed for bf16). Tested on CPU
    only; CPUs without bf16 instructions run it slower than fp32."""


def training_errors(prefix: str, workers: int, what: str, why: str) -> str:
    """The message of a ``workers > 1`` that the stage's trainer cannot honour."""
    return (f"{prefix}.training.workers={workers}, but {what} cannot train data-parallel "
            f"({why}); set {prefix}.training.workers to 1")  # fmt: skip
