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

With ``trajectory_weight`` > 0 the student's one jump is also regressed on the teacher's
DDIM chunk from the same noise. That term needs observations only, so with
``visited_every`` > 0 it also trains on the states the student itself visits: every
``visited_every`` steps the acting student plays ``visited_episodes`` training episodes
(seeds :data:`~robodistill.core.seeds.STUDENT_ROLLOUT_SEED_OFFSET` on) and their observation
windows join a pool (checkpointed) that supplies ``visited_fraction`` of the term's batch —
DAgger's remedy for a student that drifts where the demonstrator never went.

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

import numpy as np
import torch

from robodistill.config import ConfigError, RunConfig
from robodistill.core.rundir import StageRun
from robodistill.core.seeds import STUDENT_ROLLOUT_SEED_OFFSET, RNGStream, episode_seeds, stream_rng
from robodistill.data.demos import load_demos
from robodistill.data.sampler import SequenceSampler
from robodistill.data.store import StoreError
from robodistill.distill.teachers import load_diffusion_teacher
from robodistill.policies.consistency import ConsistencyStudent, update_target
from robodistill.training.loop import Trainer, train_student
from robodistill.training.optim import adamw_with_schedule, resolve_device
from robodistill.training.selection import rollout_summary

log = logging.getLogger(__name__)

WEIGHT_DECAY = 1e-6
"""AdamW weight decay (diffusion policy's; the student starts from the teacher's weights)."""


def observation_windows(obs: np.ndarray, horizon: int) -> np.ndarray:
    """(T, D) one episode's observations -> (T, horizon, D): at each step the last
    ``horizon`` observations, the first repeated before the start (the policies' padding)."""
    idx = np.clip(np.arange(len(obs))[:, None] + np.arange(1 - horizon, 1)[None, :], 0, None)
    return obs[idx]


def _build(cfg: RunConfig, teacher_path: Path) -> tuple[Any, ConsistencyStudent]:
    cc = cfg.distill.consistency
    if cc.visited_every and cc.trajectory_weight <= 0:
        raise ConfigError("distill.consistency.visited_every > 0 trains the trajectory term on "
                          "the student's visited states: set distill.consistency."
                          "trajectory_weight > 0, or visited_every: 0")  # fmt: skip
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
    shardable = True

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
        self.batch_seed = (cfg.seed, int(RNGStream.STUDENT_BATCHES))
        self.gen = torch.Generator().manual_seed(cfg.seed)  # grid indices and noise
        self.cfg = cfg
        # (N, To, D) observation windows the student visited, oldest first.
        self.visited = np.zeros((0, c.obs_horizon, c.obs_dim), np.float32)
        self.visited_rounds = 0

    def _visit(self) -> None:
        """The acting student plays the next round's episodes; their windows join the pool."""
        cc, c = self.cc, self.policy.config
        first = self.visited_rounds * cc.visited_episodes
        seeds = episode_seeds(self.cfg, first + cc.visited_episodes,
                              STUDENT_ROLLOUT_SEED_OFFSET)[first:]  # fmt: skip
        policy = self.acting_policy()
        policy.net.eval()
        summary, episodes = rollout_summary(self.cfg, policy, seeds, "distill-consistency")
        policy.net.train()
        windows = [observation_windows(ep.data["obs"].astype(np.float32), c.obs_horizon)
                   for ep in sorted(episodes, key=lambda ep: ep.seed)]  # fmt: skip
        self.visited = np.concatenate([self.visited, *windows])[-cc.visited_capacity :]
        self.visited_rounds += 1
        log.info("consistency: round %d visited %d windows (pool %d), success %.2f",
                 self.visited_rounds, sum(map(len, windows)), len(self.visited),
                 summary.get("success_rate") or 0.0)  # fmt: skip

    def _trajectory_obs(self, demo_obs: torch.Tensor) -> torch.Tensor:
        """(B, To, D): the batch's demonstration windows, ``visited_fraction`` of them
        replaced by windows from the visited pool once it has any."""
        n = int(round(self.cc.visited_fraction * len(demo_obs))) if len(self.visited) else 0
        if n == 0:
            return demo_obs
        rows = self.rng.integers(0, len(self.visited), size=n)
        pool = torch.as_tensor(self.visited[rows], dtype=demo_obs.dtype, device=demo_obs.device)
        return torch.cat([demo_obs[n:], pool])

    def loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        cc = self.cc
        batch = self.sampler.get_batch(self.batch_indices(len(self.sampler), cc.batch_size))
        total, logs = self.policy.compute_loss(batch, self.teacher_net, self.target, self.gen,
                                               loss=cc.loss, dsm_weight=cc.dsm_weight)  # fmt: skip
        if cc.trajectory_weight > 0:
            obs = self._trajectory_obs(torch.as_tensor(batch["obs"]))
            trajectory = self.policy.trajectory_loss(obs, self.teacher, self.gen, cc.loss)
            total = total + cc.trajectory_weight * trajectory
            logs["trajectory"] = float(trajectory.detach())
            logs["loss"] = float(total.detach())
        return total, logs

    def after_step(self) -> None:
        update_target(self.target, self.policy.net, self.cc.target_ema)
        done = self.step + 1  # the loop sets `step` to the step just taken
        every = self.cc.visited_every
        if every and done % every == 0 and done < self.cc.steps:
            self._visit()

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"target.{k}": v for k, v in self.target.state_dict().items()}
        tensors["visited.rounds"] = torch.tensor([self.visited_rounds])
        tensors["visited.windows"] = torch.from_numpy(self.visited.copy())
        return tensors

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.target.load_state_dict({k[len("target.") :]: v.to(self.device)
                                     for k, v in tensors.items() if k.startswith("target.")})  # fmt: skip
        if "visited.windows" in tensors:  # checkpoints from before the pool lack it
            # Pilot checkpoints of 2026-12-07 stored [steps, rounds] under another key.
            rounds = tensors.get("visited.rounds", tensors.get("visited.steps_rounds"))
            self.visited_rounds = int(rounds[-1])
            self.visited = tensors["visited.windows"].cpu().numpy().astype(np.float32)

    def finish(self, out: Path, keeper: Any, evals: list[dict[str, Any]]) -> dict[str, Any]:
        c = self.policy.config
        return {"student": "consistency", "teacher": str(self.teacher_path), "loss": self.cc.loss,
                "trajectory_weight": self.cc.trajectory_weight,
                "inference_steps": self.policy.inference_steps,
                "inference_timesteps": list(c.inference_timesteps), "ode_steps": c.ode_steps,
                "demo_episodes": self.episodes, "windows": len(self.sampler),
                "visited_rounds": self.visited_rounds,
                "visited_windows": len(self.visited)}  # fmt: skip


def run_distill_consistency(cfg: RunConfig, stage: StageRun, teacher: str | Path) -> dict[str, Any]:
    """Distill the diffusion policy at ``teacher`` into a :class:`ConsistencyStudent` in
    ``stage.dir / "consistency"``; returns the student's metrics (module docstring)."""
    return train_student(cfg, stage, stage.dir / "consistency", cfg.distill.consistency,
                         lambda: ConsistencyTrainer(cfg, Path(teacher)),
                         device=cfg.teach.rl100.device, source="distill-consistency")  # fmt: skip
