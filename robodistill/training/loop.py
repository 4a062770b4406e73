"""The one gradient-step training loop.

A trainer (the RL-100 imitation teacher, the consistency and streaming students, the COMPASS
base, and any trainer added later) is a small :class:`Trainer`: it owns its policy, its
optimizer (from its config's preset), its random streams, and it computes one batch's loss.
:func:`train` does everything else, once for all of them::

    result = train(cfg, stage, trainer, out=stage.dir / "consistency", keeper=keeper)

- resume: the last checkpoint in ``out/checkpoint`` (policy, optimizer, scheduler, EMA,
  numpy and torch RNG states, the trainer's extra tensors) is restored first, so a resumed
  run draws the same batches and noise and ends with the same weights as one that never
  stopped;
- per step: loss, backward, optimizer and scheduler step, the trainer's ``after_step``
  (e.g. a target network), the EMA;
- every ``log_every`` steps a metrics row (mean of each logged part since the last row, the
  learning rate, the EMA decay, steps/s) and the progress bar's postfix;
- every ``eval_every`` steps validation through the one
  :class:`~robodistill.training.selection.BestPolicyKeeper`, which keeps the best policy;
- every ``checkpoint_every`` steps a checkpoint (:mod:`robodistill.training.checkpoint`);
- at the end: a final validation if the last step was not validated (a resume after the
  last checkpoint), ``out/policy_last``, the trainer's :meth:`Trainer.finish`, and
  ``out/result.json`` with the common fields and the trainer's own. ``result.json``
  present = done: a later call returns it.

Batches come from :meth:`Trainer.batch_indices` (the epoch-shuffled stream of
:mod:`robodistill.training.shards`). With ``settings.workers > 1`` this same loop runs in
every worker of a Ray Train ``TorchTrainer`` (:mod:`robodistill.training.data_parallel`):
each computes its rows of the global batch, gradients are combined before the optimizer
step, and rank 0 alone validates and writes. ``settings.precision == "bf16"`` runs the
trainer's loss under ``torch.autocast``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodistill.config import ConfigError, RunConfig
from robodistill.core.rundir import StageRun, progress, write_json_atomic
from robodistill.core.threads import torch_threads
from robodistill.training.checkpoint import finished_result, restore_checkpoint, save_checkpoint
from robodistill.training.data_parallel import run_data_parallel
from robodistill.training.selection import BestPolicyKeeper
from robodistill.training.shards import ProcessGroup, Shard, rank_noise_seed, shard_batch

log = logging.getLogger(__name__)


@dataclass
class LoopSettings:
    """How long and how often; read from the trainer's config section."""

    steps: int
    """Gradient steps in all."""
    eval_every: int
    """Validate (and maybe keep) the policy every this many steps, and after the last."""
    checkpoint_every: int
    """Write a resumable checkpoint every this many steps, and after the last."""
    log_every: int
    """Log a metrics row every this many steps, and after the last."""
    torch_threads: int | None = None
    """torch threads while training (``None`` / 0: unchanged); see
    :func:`robodistill.core.threads.torch_threads`."""
    workers: int = 1
    """Data-parallel workers (``teach.training.workers`` / ``distill.training.workers``)."""
    workers_key: str = "training.workers"
    """The config key ``workers`` came from, for error messages."""
    max_failures: int = 2
    """``workers > 1``: worker-group restarts Ray Train allows (each resumes the checkpoint)."""
    precision: str = "fp32"
    """``fp32`` or ``bf16`` (the loss under ``torch.autocast``)."""
    device: str = "auto"
    """The trainer's device setting: with ``workers > 1``, ``cpu`` keeps the workers off
    the cluster's GPUs; otherwise each worker gets one GPU where the cluster has them."""

    @classmethod
    def of(cls, section: Any, training: Any = None, stage: str = "distill",
           device: str = "auto") -> LoopSettings:  # fmt: skip
        """From a config section with ``steps``, ``eval_every``, ``checkpoint_every``,
        ``log_every`` and ``torch_threads`` (the students'), and the stage's ``training``
        section (:class:`robodistill.config.training.TrainingConfig`) named ``stage``."""
        return cls(steps=section.steps, eval_every=section.eval_every,
                   checkpoint_every=section.checkpoint_every, log_every=section.log_every,
                   torch_threads=section.torch_threads).with_training(training, stage, device)  # fmt: skip

    def with_training(self, training: Any, stage: str, device: str = "auto") -> LoopSettings:
        """These settings with the stage's ``training`` section (``None``: unchanged) and
        the trainer's ``device`` setting."""
        if training is not None:
            self.workers, self.max_failures = training.workers, training.max_failures
            self.precision, self.workers_key = training.precision, f"{stage}.training.workers"
        self.device = device
        return self


class Trainer:
    """What a gradient-step trainer supplies to :func:`train`. Subclasses set the
    attributes in ``__init__`` and write :meth:`loss`; the other hooks have defaults."""

    name: str
    """The ``stage`` field of its metrics rows and the prefix of its log lines."""
    policy: Any
    """The policy being trained: ``net`` (the trained module), ``save(dir)``,
    ``type(policy).load(dir)``; optionally ``ema_net`` + ``load_ema(ema)`` and ``normalizer``."""
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any = None
    """A torch / diffusers scheduler stepped after every optimizer step, or ``None``."""
    ema: Any = None
    """A diffusers ``EMAModel`` over ``policy.net`` stepped after every step, or ``None``."""
    rng: np.random.Generator
    """The trainer's batch stream (saved in checkpoints)."""
    gen: torch.Generator | None = None
    """The trainer's torch noise stream (saved in checkpoints), or ``None``."""
    device: torch.device = torch.device("cpu")
    eval_keys: tuple[str, ...] = ()
    """Keys of a validation result kept in ``evals`` beside step, success and return."""
    loss_parts: tuple[str, ...] = ()
    """Logged loss parts reported as ``final_<part>_loss`` in ``result.json`` (``None`` when
    the last row did not log one)."""
    shardable: bool = False
    """Whether :meth:`loss` draws its rows with :meth:`batch_indices` (and its loss is a
    mean over them), so it can run data-parallel."""
    batch_seed: tuple[int, ...] = (0,)
    """Seeds the epoch permutations of :meth:`batch_indices` (e.g. ``(cfg.seed, stream)``)."""
    shard: Shard = Shard()
    """This process's rank and world (set by the loop)."""
    step: int = 0
    """The step being computed (set by the loop before each :meth:`loss`)."""
    batch_weight: float = 1.0
    """This process's share of the global batch at the last :meth:`batch_indices`."""

    def loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        """One batch: the loss to minimize and its logged parts (``"loss"`` among them)."""
        raise NotImplementedError

    def batch_indices(self, n: int, batch_size: int) -> np.ndarray:
        """This process's window indices (n_r,) of the current step's global batch of
        ``batch_size`` out of ``n`` windows (:mod:`robodistill.training.shards`)."""
        idx = shard_batch(n, batch_size, self.step, self.batch_seed, self.shard)
        self.batch_weight = len(idx) / batch_size
        return idx

    def after_step(self) -> None:
        """Called after each optimizer step (e.g. to move a target network)."""

    def acting_policy(self) -> Any:
        """The policy as it acts and is saved: the EMA weights when there is an EMA."""
        if self.ema is not None:
            self.policy.load_ema(self.ema)
        return self.policy

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """Further state to checkpoint (e.g. a target network), keys unique to the trainer."""
        return {}

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`extra_tensors` saved."""

    def finish(self, out: Path, keeper: BestPolicyKeeper, evals: list[dict[str, Any]]
               ) -> dict[str, Any]:  # fmt: skip
        """Called once training is over, before ``result.json`` is written: do what must
        exist before the trainer counts as done (e.g. copies of the kept policy) and return
        the trainer's own fields of ``result.json``. ``evals``: every validation's
        ``step``, success, return and ``eval_keys``."""
        return {}


TrainerSource = Trainer | Callable[[], Trainer]
"""A trainer, or a function that builds one (what data-parallel workers need: each worker
builds its own from the function, pickled with its closure)."""


def train(cfg: RunConfig, stage: StageRun, trainer: TrainerSource, settings: LoopSettings,
          out: Path, keeper: BestPolicyKeeper, tag: dict[str, Any] | None = None
          ) -> dict[str, Any]:  # fmt: skip
    """Train ``trainer`` for ``settings.steps`` steps in ``out`` (module docstring); returns
    its ``result.json``. ``tag`` is recorded with each validation result (e.g. which
    sub-stage made a policy, when several share one keeper). ``settings.workers > 1`` runs
    it data-parallel (``trainer`` must then be a function that builds it)."""
    if (done := finished_result(out)) is not None:
        name = getattr(trainer, "name", "trainer")
        log.info("%s: already done in %s", name, out)
        return done
    if settings.workers > 1:
        if isinstance(trainer, Trainer):
            raise TypeError("data-parallel training builds the trainer in every worker: pass "
                            "a function that builds it, not a trainer")  # fmt: skip
        return run_data_parallel(cfg, stage, trainer, settings, out, keeper, tag or {},
                                 loop=run_loop)  # fmt: skip
    with torch_threads(settings.torch_threads):
        built = trainer if isinstance(trainer, Trainer) else trainer()
        return _train(cfg, stage, built, settings, out, keeper, tag or {})


def run_loop(cfg: RunConfig, stage: Any, make_trainer: Callable[[], Trainer],
             settings: LoopSettings, out: Path, keeper: BestPolicyKeeper, tag: dict[str, Any],
             group: ProcessGroup) -> dict[str, Any] | None:  # fmt: skip
    """One data-parallel worker's part: build the trainer, then the loop as rank
    ``group.shard.rank`` (what :mod:`robodistill.training.data_parallel` runs per worker).
    Rank 0 returns the result; the others ``None``."""
    with torch_threads(settings.torch_threads):
        trainer = make_trainer()
        if not trainer.shardable:
            raise ConfigError(
                f"{settings.workers_key}={settings.workers}, but the {trainer.name} trainer "
                "cannot shard its batches (its loss does not draw them with "
                f"Trainer.batch_indices); set {settings.workers_key} to 1"
            )
        return _train(cfg, stage, trainer, settings, out, keeper, tag, group)


def train_student(cfg: RunConfig, stage: StageRun, out: Path, section: Any,
                  make_trainer: Callable[[], Trainer], device: str = "auto",
                  **keeper_kwargs: Any) -> dict[str, Any]:  # fmt: skip
    """:func:`train` for a trainer whose config ``section`` has the loop's settings (see
    :meth:`LoopSettings.of`), ``eval_episodes`` and ``selection``, with
    ``distill.training``'s run settings: a finished ``out`` returns its result
    before ``make_trainer()`` loads anything; the trainer is built with the section's
    threads; ``keeper_kwargs`` go to the :class:`BestPolicyKeeper` over ``out``."""
    if (done := finished_result(out)) is not None:
        return done
    keeper = BestPolicyKeeper(cfg, out, section.eval_episodes, selection=section.selection,
                              **keeper_kwargs)  # fmt: skip
    settings = LoopSettings.of(section, cfg.distill.training, "distill", device)
    return train(cfg, stage, make_trainer, settings, out, keeper)


def _autocast(trainer: Trainer, precision: str):
    """bf16 autocast on the trainer's device type, or nothing."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=trainer.device.type, dtype=torch.bfloat16)


def _train(cfg: RunConfig, stage: Any, trainer: Trainer, settings: LoopSettings, out: Path,
           keeper: BestPolicyKeeper, tag: dict[str, Any],
           group: ProcessGroup | None = None) -> dict[str, Any] | None:  # fmt: skip
    t0 = time.monotonic()
    shard = trainer.shard = group.shard if group is not None else Shard()
    writer = shard.writer
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    state = restore_checkpoint(ckpt, trainer)
    if group is not None:  # all ranks read the same checkpoint; rank 0's weights decide
        group.broadcast(trainer.policy.net)
    step = state["step"] if state else 0
    evals: list[dict[str, Any]] = state["evals"] if state else []
    logged: dict[str, float] = (state or {}).get("logged", {})
    if state and writer:
        log.info("%s: resumed from %s at step %d", trainer.name, ckpt, step)
    resumed_from = step
    keys = ("step", "success_rate", "max_score_mean", "return_mean", *trainer.eval_keys)
    row_tag = {"stage": trainer.name}

    def evaluate() -> None:
        policy = trainer.acting_policy()
        policy.net.eval()
        result, row = keeper.evaluate(policy, step, tag)
        policy.net.train()
        stage.log_metrics(step, row_tag | row)
        evals.append({k: result.get(k) for k in keys})
        log.info("%s: eval at step %d: %s", trainer.name, step, json.dumps(row))

    trainer.policy.net.train()
    params = list(trainer.policy.net.parameters())
    bar = progress(settings.steps if writer else 0, f"{trainer.name} {cfg.env.id}",
                   initial=step, unit="step")  # fmt: skip
    # Parts a batch may lack (e.g. the world-model terms without a successor) are averaged
    # over the steps that logged them; each weighted by this process's share of the batch.
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    t_train = time.monotonic()
    try:
        while step < settings.steps:
            trainer.step = step
            if group is not None and shard.rank > 0 and trainer.gen is not None:
                trainer.gen.manual_seed(rank_noise_seed(cfg.seed, shard.rank, step))
            with _autocast(trainer, settings.precision):
                loss, parts = trainer.loss()
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if group is not None:
                group.combine_gradients(params, trainer.batch_weight)
            trainer.optimizer.step()
            lr = trainer.optimizer.param_groups[0]["lr"]  # the rate this step used
            if trainer.lr_scheduler is not None:
                trainer.lr_scheduler.step()
            trainer.after_step()
            if trainer.ema is not None:
                trainer.ema.step(trainer.policy.net.parameters())
            step += 1
            w = trainer.batch_weight if group is not None else 1.0
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + w * v
                weights[k] = weights.get(k, 0.0) + w
            bar.update(1)
            last = step == settings.steps
            if step % settings.log_every == 0 or last:
                if group is not None:
                    sums, weights = group.combine_logs(sums, weights)
                logged = {k: v / weights[k] for k, v in sums.items()}
                rate = (step - resumed_from) / max(time.monotonic() - t_train, 1e-9)
                row = {**logged, "lr": lr, "steps_per_s": round(rate, 3)}
                if trainer.ema is not None:
                    row["ema_decay"] = trainer.ema.cur_decay_value
                if writer:
                    stage.log_metrics(step, row_tag | row)
                bar.set_postfix(loss=f"{logged.get('loss', float('nan')):.4f}", refresh=False)
                sums, weights = {}, {}
            if writer and (step % settings.eval_every == 0 or last):
                evaluate()
            if writer and (step % settings.checkpoint_every == 0 or last):
                save_checkpoint(ckpt, trainer, {"step": step, "evals": evals, "logged": logged})
    finally:
        bar.close()
    if not writer:
        return None
    if not evals or evals[-1]["step"] != step:  # resumed after the last step's checkpoint
        evaluate()
    train_s = time.monotonic() - t_train
    trainer.acting_policy().save(out / "policy_last")
    own = trainer.finish(out, keeper, evals)
    best = keeper.best
    result = {
        "steps": step,
        "resumed_from_step": resumed_from,
        "final_loss": logged.get("loss"),
        **{f"final_{k}_loss": logged.get(k) for k in trainer.loss_parts},
        "evals": evals,
        "final_success_rate": evals[-1]["success_rate"],
        "best_success_rate": best["success_rate"],
        "best_return_mean": best["return_mean"],
        "best_max_score_mean": best.get("max_score_mean"),
        "selection": keeper.selection,
        "best_step": best["step"],
        "policy": str(keeper.directory / "policy"),
        "policy_last": str(out / "policy_last"),
        "num_parameters": sum(p.numel() for p in trainer.policy.net.parameters()),
        "device": str(trainer.device),
        "workers": shard.world,
        "precision": settings.precision,
        **own,
        "train_s": round(train_s, 1),
        "steps_per_s": round((step - resumed_from) / max(train_s, 1e-9), 2),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    write_json_atomic(out / "result.json", result)
    log.info("%s: %s", trainer.name, json.dumps({k: v for k, v in result.items() if k != "evals"}))
    return result
