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
    checkpoint/     resumable state (robodistill.training.checkpoint; the target network
                    is among its tensors)
    policy_last/    the student when training ended
    result.json     the student's metrics; present = done (a resume returns it)

An interrupted run resumes from the last checkpoint and draws the same batches and noise it
would have drawn, so it ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from robodistill.config import ConfigError, RunConfig
from robodistill.core.rundir import StageRun
from robodistill.core.seeds import RNGStream, stream_rng
from robodistill.data.demos import load_demos
from robodistill.data.sampler import SequenceSampler
from robodistill.data.store import StoreError
from robodistill.distill.teachers import load_diffusion_teacher
from robodistill.policies.consistency import ConsistencyStudent, update_target
from robodistill.training.loop import Trainer, train_student
from robodistill.training.optim import adamw_with_schedule, resolve_device

log = logging.getLogger(__name__)

WEIGHT_DECAY = 1e-6
"""AdamW weight decay (diffusion policy's; the student starts from the teacher's weights)."""


def _build(cfg: RunConfig, teacher_path: Path) -> tuple[Any, ConsistencyStudent]:
    cc = cfg.distill.consistency
    teacher = load_diffusion_teacher(teacher_path, "consistency")
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


class ConsistencyTrainer(Trainer):
    """Consistency distillation of the teacher's denoising chain (module docstring)."""

    name = "consistency"
    loss_parts = ("consistency", "dsm", "trajectory")

    def __init__(self, cfg: RunConfig, teacher_path: Path):
        cc = self.cc = cfg.distill.consistency
        self.teacher_path = teacher_path
        teacher, student = _build(cfg, teacher_path)
        data, _, _ = load_demos(cfg)
        c = student.config
        if data["obs"].shape[1] != c.obs_dim or data["action"].shape[1] != c.action_dim:
            raise StoreError(
                f"the demonstrations have obs/action of size {data['obs'].shape[1]}/"
                f"{data['action'].shape[1]} but the teacher {teacher_path} was trained on "
                f"{c.obs_dim}/{c.action_dim}; distill with the teacher's demonstrations"
            )
        self.episodes = int(len(data["episode_ends"]))
        self.sampler = SequenceSampler(data, data["episode_ends"], obs_horizon=c.obs_horizon,
                                       pred_horizon=c.pred_horizon)  # fmt: skip
        # The diffusion stack's device setting, shared with the teacher.
        self.device = resolve_device(cfg.teach.rl100.device, "teach.rl100.device")
        teacher.to(self.device)
        student.to(self.device)
        self.teacher = teacher
        self.teacher_net = teacher.ema_net.eval().requires_grad_(False)
        self.policy = student
        student.net.train()
        self.target = copy.deepcopy(student.net).requires_grad_(False)
        self.optimizer, self.lr_scheduler = adamw_with_schedule(
            student.net.parameters(), cc.learning_rate, WEIGHT_DECAY, cc.warmup_steps, cc.steps
        )
        self.ema = student.make_ema(decay=cc.ema_decay)
        self.rng = stream_rng(cfg.seed, RNGStream.STUDENT_BATCHES)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # grid indices and noise

    def loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        cc = self.cc
        batch = self.sampler.sample(cc.batch_size, self.rng)
        total, logs = self.policy.compute_loss(batch, self.teacher_net, self.target, self.gen,
                                               loss=cc.loss, dsm_weight=cc.dsm_weight)  # fmt: skip
        if cc.trajectory_weight > 0:
            trajectory = self.policy.trajectory_loss(batch["obs"], self.teacher, self.gen, cc.loss)
            total = total + cc.trajectory_weight * trajectory
            logs["trajectory"] = float(trajectory.detach())
            logs["loss"] = float(total.detach())
        return total, logs

    def after_step(self) -> None:
        update_target(self.target, self.policy.net, self.cc.target_ema)

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {f"target.{k}": v for k, v in self.target.state_dict().items()}

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.target.load_state_dict({k[len("target.") :]: v.to(self.device)
                                     for k, v in tensors.items() if k.startswith("target.")})  # fmt: skip

    def finish(self, out: Path, keeper: Any, evals: list[dict[str, Any]]) -> dict[str, Any]:
        c = self.policy.config
        return {"student": "consistency", "teacher": str(self.teacher_path), "loss": self.cc.loss,
                "trajectory_weight": self.cc.trajectory_weight,
                "inference_steps": self.policy.inference_steps,
                "inference_timesteps": list(c.inference_timesteps), "ode_steps": c.ode_steps,
                "demo_episodes": self.episodes, "windows": len(self.sampler)}  # fmt: skip


def run_distill_consistency(cfg: RunConfig, stage: StageRun, teacher: str | Path) -> dict[str, Any]:
    """Distill the diffusion policy at ``teacher`` into a :class:`ConsistencyStudent` in
    ``stage.dir / "consistency"``; returns the student's metrics (module docstring)."""
    return train_student(cfg, stage, stage.dir / "consistency", cfg.distill.consistency,
                         lambda: ConsistencyTrainer(cfg, Path(teacher)),
                         source="distill-consistency")  # fmt: skip
