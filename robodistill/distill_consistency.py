"""Consistency distillation: the diffusion teacher into a one-step student.

::

    with StageRun(cfg, "distill") as stage:
        metrics = run_distill_consistency(cfg, stage, teacher_dir)  # in stage.dir/"consistency"

The student (:class:`robodistill.policies.consistency.ConsistencyStudent`, method in its
module docstring) starts from the teacher's EMA weights and trains on the teacher's
demonstrations (``teach.rl100.demos`` or this run's collected store, as the teacher did):
each step draws windows, noises their action chunks to a grid timestep ``t_{n+1}``, lets the
teacher's EMA network take one DDIM step to ``t_n`` and pulls the student's output at
``t_{n+1}`` towards the target network's output at ``t_n``. AdamW with warm-up + cosine
learning rate; the target network follows the student with decay ``target_ema`` after every
step; a separate diffusers EMA (``ema_decay``) is what acts, is evaluated and is saved.

Artifacts in ``<run>/distill/consistency/``::

    policy/         the best student on the validation seeds (success rate, then return)
    best.json       the validation result that chose policy/
    checkpoint/     resumable state: policy/ (net, EMA net, normalizer), train.safetensors
                    (target net, optimizer, torch RNG), state.json (step, evals, scheduler,
                    EMA step, numpy RNG, last logged losses)
    result.json     the student's metrics; present = done (a resume returns it)

An interrupted run resumes from the last checkpoint and draws the same batches and noise it
would have drawn, so it ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file, save_file

from robodistill.config import ConfigError, RunConfig
from robodistill.policies.consistency import ConsistencyStudent, update_target
from robodistill.run import StageRun, committed_dir, progress, replace_dir, write_json_atomic
from robodistill.sampler import SequenceSampler
from robodistill.store import StoreError
from robodistill.teach_rl100 import load_demos, load_optimizer_state, optimizer_state
from robodistill.validation import is_better, rollout_summary

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
STATE_NAME, TRAIN_NAME, POLICY_DIR = "state.json", "train.safetensors", "policy"
WEIGHT_DECAY = 1e-6
"""AdamW weight decay (diffusion policy's; the student starts from the teacher's weights)."""


def load_teacher(path: str | Path):
    """The :class:`DiffusionPolicy` at ``path``; a :class:`ConfigError` naming
    ``distill.teacher`` for any other kind."""
    from robodistill.policies import load_policy
    from robodistill.policies.diffusion import DiffusionPolicy

    teacher = load_policy(path)
    if not isinstance(teacher, DiffusionPolicy):
        raise ConfigError(
            f"distill.teacher: {path} holds a {teacher.kind!r} policy, but the consistency "
            "student distills the denoising chain of a diffusion teacher (teach.algo=rl100); "
            "point distill.teacher at one, or drop consistency from distill.students"
        )
    return teacher


def run_distill_consistency(cfg: RunConfig, stage: StageRun, teacher: str | Path) -> dict[str, Any]:
    """Distill the diffusion policy at ``teacher`` into a :class:`ConsistencyStudent` in
    ``stage.dir / "consistency"``; returns the student's metrics (module docstring)."""
    cc = cfg.distill.consistency
    out = stage.dir / "consistency"
    if (out / "result.json").is_file():
        log.info("distill: consistency student already done in %s", out)
        return json.loads((out / "result.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if cc.torch_threads:
        torch.set_num_threads(cc.torch_threads)
    try:
        return _train(cfg, stage, Path(teacher), out)
    finally:
        torch.set_num_threads(threads)


def _build(cfg: RunConfig, teacher_path: Path) -> tuple[Any, ConsistencyStudent]:
    cc = cfg.distill.consistency
    teacher = load_teacher(teacher_path)
    t_max = teacher.config.num_train_timesteps - 1
    if cc.ode_steps > t_max:
        raise ConfigError(f"distill.consistency.ode_steps must be <= {t_max} (the teacher's "
                          f"num_train_timesteps - 1), got {cc.ode_steps}")  # fmt: skip
    if cc.inference_steps > cc.ode_steps:
        raise ConfigError(f"distill.consistency.inference_steps ({cc.inference_steps}) must be "
                          f"<= distill.consistency.ode_steps ({cc.ode_steps})")  # fmt: skip
    # Fresh weights (init_from_teacher: false) come from cfg.seed, not torch's global stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student = ConsistencyStudent.from_teacher(
            teacher, ode_steps=cc.ode_steps, sigma_data=cc.sigma_data,
            inference_steps=cc.inference_steps, init_from_teacher=cc.init_from_teacher,
            seed=cfg.seed,
        )  # fmt: skip
    return teacher, student


def _train(cfg: RunConfig, stage: StageRun, teacher_path: Path, out: Path) -> dict[str, Any]:
    from robodistill.stages import VALIDATION_SEED_OFFSET, episode_seeds

    cc, t0 = cfg.distill.consistency, time.monotonic()
    teacher, student = _build(cfg, teacher_path)
    data, _, _ = load_demos(cfg)
    c = student.config
    if data["obs"].shape[1] != c.obs_dim or data["action"].shape[1] != c.action_dim:
        raise StoreError(
            f"the demonstrations have obs/action of size {data['obs'].shape[1]}/"
            f"{data['action'].shape[1]} but the teacher {teacher_path} was trained on "
            f"{c.obs_dim}/{c.action_dim}; distill with the teacher's demonstrations"
        )
    sampler = SequenceSampler(data, data["episode_ends"], obs_horizon=c.obs_horizon,
                              pred_horizon=c.pred_horizon)  # fmt: skip
    rl = cfg.teach.rl100  # the diffusion stack's device setting, shared with the teacher
    use_cuda = rl.device != "cpu" and torch.cuda.is_available()
    if rl.device == "cuda" and not use_cuda:
        raise ConfigError("teach.rl100.device is 'cuda' but torch sees no CUDA device")
    device = torch.device("cuda" if use_cuda else "cpu")
    teacher.to(device)
    student.to(device)
    teacher.ema_net.eval().requires_grad_(False)
    student.net.train()
    target = copy.deepcopy(student.net).requires_grad_(False)
    # Betas (0.95, 0.999) as the teacher's: a short first-moment memory suits the noisy
    # per-timestep loss.
    optimizer = torch.optim.AdamW(student.net.parameters(), lr=cc.learning_rate,
                                  betas=(0.95, 0.999), weight_decay=WEIGHT_DECAY)  # fmt: skip
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=cc.warmup_steps,
                                 num_training_steps=cc.steps)  # fmt: skip
    ema = student.make_ema(decay=cc.ema_decay)
    rng = np.random.default_rng([cfg.seed, 6])  # batches
    gen = torch.Generator().manual_seed(cfg.seed)  # grid indices and noise

    ckpt = out / "checkpoint"
    state = restore_checkpoint(ckpt, student, target, optimizer, lr_scheduler, ema, rng, gen)
    step = state["step"] if state else 0
    evals: list[dict[str, Any]] = state["evals"] if state else []
    logged: dict[str, float] = state["logged"] if state else {}
    if state:
        log.info("distill: consistency resumed from %s at step %d", ckpt, step)
    resumed_from = step
    seeds = episode_seeds(cfg, cc.eval_episodes, VALIDATION_SEED_OFFSET)
    best_path = out / "best.json"
    best = json.loads(best_path.read_text()) if best_path.is_file() else None

    def evaluate() -> None:
        nonlocal best
        student.load_ema(ema)
        result = rollout_summary(cfg, student, seeds, "distill-consistency")[0] | {"step": step}
        if is_better(result, best):
            student.save(out / POLICY_DIR)
            best = result
            write_json_atomic(best_path, result)  # after policy/: it always describes it
        row = {f"eval_{k}": v for k, v in result.items() if k not in ("step", "episodes")}
        stage.log_metrics(step, {"stage": "consistency", **row,
                                 "eval_best_return_mean": best["return_mean"]})  # fmt: skip
        evals.append({k: result[k] for k in ("step", "success_rate", "return_mean")})
        log.info("distill: consistency eval at step %d: %s", step, json.dumps(row))

    bar = progress(cc.steps, f"distill consistency {cfg.env.id}", initial=step, unit="step")
    sums: dict[str, float] = {}
    count, t_train = 0, time.monotonic()
    try:
        while step < cc.steps:
            batch = sampler.sample(cc.batch_size, rng)
            loss, logs = student.compute_loss(batch, teacher.ema_net, target, gen,
                                              loss=cc.loss, dsm_weight=cc.dsm_weight)  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used
            lr_scheduler.step()
            update_target(target, student.net, cc.target_ema)
            ema.step(student.net.parameters())
            step += 1
            count += 1
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(1)
            if step % cc.log_every == 0 or step == cc.steps:
                logged = {k: v / count for k, v in sums.items()}
                rate = (step - resumed_from) / max(time.monotonic() - t_train, 1e-9)
                stage.log_metrics(step, {"stage": "consistency", **logged, "lr": lr,
                                         "ema_decay": ema.cur_decay_value,
                                         "steps_per_s": round(rate, 3)})  # fmt: skip
                bar.set_postfix(loss=f"{logged['loss']:.4f}", refresh=False)
                sums, count = {}, 0
            if step % cc.eval_every == 0 or step == cc.steps:
                evaluate()
            if step % cc.checkpoint_every == 0 or step == cc.steps:
                student.load_ema(ema)
                save_checkpoint(ckpt, student, target, optimizer, lr_scheduler, ema, rng, gen,
                                {"step": step, "evals": evals, "logged": logged})  # fmt: skip
    finally:
        bar.close()
    if not evals or evals[-1]["step"] != step:  # resumed after the last step's checkpoint
        evaluate()
    train_s = time.monotonic() - t_train
    result = {
        "student": "consistency",
        "policy": str(out / POLICY_DIR),
        "teacher": str(teacher_path),
        "steps": step,
        "resumed_from_step": resumed_from,
        "final_loss": logged.get("loss"),
        "final_consistency_loss": logged.get("consistency"),
        "final_dsm_loss": logged.get("dsm"),
        "loss": cc.loss,
        "evals": evals,
        "best_success_rate": best["success_rate"],
        "best_return_mean": best["return_mean"],
        "best_step": best["step"],
        "num_parameters": student.num_parameters,
        "inference_steps": student.inference_steps,
        "inference_timesteps": list(c.inference_timesteps),
        "ode_steps": c.ode_steps,
        "demo_episodes": int(len(data["episode_ends"])),
        "windows": len(sampler),
        "device": str(device),
        "train_s": round(train_s, 1),
        "steps_per_s": round((step - resumed_from) / max(train_s, 1e-9), 2),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    write_json_atomic(out / "result.json", result)
    log.info("distill: consistency %s", json.dumps({k: v for k, v in result.items()
                                                    if k != "evals"}))  # fmt: skip
    return result


# -- resumable training checkpoints --------------------------------------------------------


def save_checkpoint(directory: Path, student: ConsistencyStudent, target: torch.nn.Module,
                    optimizer, lr_scheduler, ema, rng: np.random.Generator,
                    gen: torch.Generator, extra: dict[str, Any]) -> Path:  # fmt: skip
    """``policy/`` (its ``ema_net`` holds the EMA's shadow weights: load the EMA first),
    ``train.safetensors`` and ``state.json``, built aside and renamed into place. No pickle."""
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    student.save(tmp / POLICY_DIR)
    tensors, optim_doc = optimizer_state(optimizer)
    tensors |= {f"target.{k}": v.detach().cpu().contiguous()
                for k, v in target.state_dict().items()}  # fmt: skip
    tensors["rng.torch"] = gen.get_state()
    save_file(tensors, str(tmp / TRAIN_NAME))
    write_json_atomic(tmp / STATE_NAME, {
        "format": CHECKPOINT_FORMAT, **extra,
        "ema_optimization_step": int(ema.optimization_step),
        "lr_scheduler": lr_scheduler.state_dict(), "optimizer": optim_doc,
        "rng_numpy": rng.bit_generator.state,
    })  # fmt: skip
    replace_dir(tmp, directory)
    return directory


def restore_checkpoint(directory: Path, student: ConsistencyStudent, target: torch.nn.Module,
                       optimizer, lr_scheduler, ema, rng: np.random.Generator,
                       gen: torch.Generator) -> dict[str, Any] | None:  # fmt: skip
    """Load :func:`save_checkpoint`'s files into the given objects; the state document, or
    ``None`` when there is no checkpoint."""
    directory = committed_dir(directory, STATE_NAME)
    if directory is None:
        return None
    state = json.loads((directory / STATE_NAME).read_text())
    if state.get("format") != CHECKPOINT_FORMAT:
        raise StoreError(f"{directory} is a training checkpoint of format "
                         f"{state.get('format')!r}; this version reads {CHECKPOINT_FORMAT}")  # fmt: skip
    saved = ConsistencyStudent.load(directory / POLICY_DIR)
    if saved.config.to_dict() != student.config.to_dict():
        raise StoreError(f"{directory} was trained with another student config; move "
                         f"{directory.parent} aside (or use --overwrite) to start over")  # fmt: skip
    device = student.device
    for name in ("net", "ema_net", "normalizer"):
        getattr(student, name).load_state_dict(getattr(saved, name).state_dict())
    student.to(device)
    ema.load_state_dict({
        "optimization_step": int(state["ema_optimization_step"]),
        "shadow_params": [p.detach().clone() for p in student.ema_net.parameters()],
    })  # fmt: skip
    tensors = load_file(str(directory / TRAIN_NAME))
    gen.set_state(tensors.pop("rng.torch"))
    target.load_state_dict({k[len("target.") :]: v.to(device) for k, v in tensors.items()
                            if k.startswith("target.")})  # fmt: skip
    load_optimizer_state(optimizer, {k: v for k, v in tensors.items()
                                      if k.startswith("state.")}, state["optimizer"])  # fmt: skip
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    rng.bit_generator.state = state["rng_numpy"]
    return state
