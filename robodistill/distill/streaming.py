"""Streaming Diffusion Policy student: trained on the demonstrations (or the teacher's chunks)
with chunk-wise increasing noise levels (:mod:`robodistill.policies.streaming`).

::

    with StageRun(cfg, "distill") as stage:
        metrics = run_distill_streaming(cfg, stage, teacher_dir)  # in stage.dir / "streaming"

Windows of To observations and To - 1 + Hb actions from the demonstrations
(:class:`robodistill.data.sampler.SequenceSampler`); the buffer is the Hb actions from the current
step (index To - 1) on. ``targets: teacher`` replaces them by the teacher's deterministic DDIM
chunks (EMA weights) for the same observation histories, computed once and kept in memory
(where the teacher's chunk is shorter than the buffer, its last action is repeated and
flagged as padding). Padded actions (past an episode's end: its last action repeated) are
left out of the loss only when the teacher's were (``teach.diffusion.mask_padded_actions``),
so the student learns the same targets as its teacher; the observation history's padding
(the first observation repeated) is what ``act`` does at an episode's start. The student copies the teacher's architecture, horizons, noise schedule
and normalizer, and with ``init_from_teacher`` its weights (see :func:`init_from_teacher`).
AdamW + warm-up/cosine learning rate, diffusers ``EMAModel``; the EMA student is rolled out
on the validation seeds every ``eval_every`` steps and at the end, and the best (success
rate, then return) is kept. Each validation measures ``network_calls_per_step``, the
denoiser's forward calls per control step of one env row (a forward hook); the metrics give
their mean and max (``network_calls_per_step_measured[_max]``) beside the configured
``calls_per_step``.

Artifacts in ``<run>/distill/streaming/``::

    policy/        best student on validation (what eval / export take), best.json its result
    policy_last/   the student when training ended
    checkpoint/    resumable: policy/ (net, EMA, normalizer), optimizer.safetensors (+ torch
                   RNG), state.json (step, evals, EMA step, scheduler, numpy RNG)
    result.json    the metrics; present = done (a resume returns them)
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodistill.config import ConfigError, RunConfig
from robodistill.core.latency import count_network_calls
from robodistill.core.rundir import StageRun, progress
from robodistill.core.seeds import RNGStream, stream_rng
from robodistill.data.demos import demos_path, load_demos
from robodistill.data.sampler import SequenceSampler
from robodistill.distill.teachers import load_diffusion_teacher
from robodistill.policies.diffusion import DiffusionPolicy
from robodistill.policies.diffusion_nets import network_fields
from robodistill.policies.streaming import StreamingStudent, StreamingStudentConfig
from robodistill.training.loop import Trainer, train_student
from robodistill.training.optim import adamw_with_schedule, resolve_device
from robodistill.training.selection import rollout_summary

log = logging.getLogger(__name__)

TARGET_BATCH = 256
WEIGHT_DECAY = 1e-6  # diffusion policy's AdamW weight decay (as teach.rl100.weight_decay)


def build_student(teacher: DiffusionPolicy, cfg: RunConfig) -> StreamingStudent:
    """A student with the teacher's network shape, schedule, horizons and normalizer."""
    t, sc = teacher.config, cfg.distill.streaming
    try:
        config = StreamingStudentConfig(
            obs_dim=t.obs_dim, action_dim=t.action_dim, obs_horizon=t.obs_horizon,
            buffer_horizon=sc.buffer_horizon, calls_per_step=sc.calls_per_step,
            **network_fields(t), num_train_timesteps=t.num_train_timesteps,
            beta_schedule=t.beta_schedule, clip_sample=t.clip_sample,
            mask_padded_actions=t.mask_padded_actions, action_low=t.action_low,
            action_high=t.action_high, constant_prob=sc.constant_prob, seed=cfg.seed,
        )  # fmt: skip
    except ValueError as e:
        raise ConfigError(f"distill.streaming.buffer_horizon: {e} (the student has the "
                          f"teacher's down_dims {list(t.down_dims)})") from e  # fmt: skip
    return StreamingStudent(config, copy.deepcopy(teacher.normalizer).cpu())


@torch.no_grad()
def init_from_teacher(student: StreamingStudent, teacher: DiffusionPolicy) -> dict[str, int]:
    """Copy every teacher EMA tensor whose name and shape match into ``net`` and ``ema_net``.
    The input convolutions, which have ``local_cond`` channels beyond the actions, take the
    teacher's weights on the action channels and zeros on the others, so the student starts
    as the teacher's network (conditioned on the mean level) and learns the levels' use."""
    src = teacher.ema_net.state_dict()
    dst = student.net.state_dict()
    a = student.config.action_dim
    counts = {"copied": 0, "partial": 0, "kept": 0}
    for name, value in dst.items():
        theirs = src.get(name)
        if theirs is not None and theirs.shape == value.shape:
            value.copy_(theirs)
            counts["copied"] += 1
        elif (theirs is not None and value.ndim == 3 and theirs.shape[0] == value.shape[0]
              and theirs.shape[1] == a and theirs.shape[2:] == value.shape[2:]):  # fmt: skip
            value.zero_()
            value[:, :a] = theirs
            counts["partial"] += 1
        else:
            counts["kept"] += 1
    student.ema_net.load_state_dict(student.net.state_dict())
    return counts


@torch.no_grad()
def teacher_targets(teacher: DiffusionPolicy, sampler: SequenceSampler, buffer_horizon: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The teacher's deterministic DDIM chunks for every window's history, cut to the buffer:
    (W, Hb, A) float32 actions and (W, Hb) bool padding (past the teacher's horizon)."""
    t = teacher.config
    start = t.obs_horizon - 1
    have = min(buffer_horizon, t.pred_horizon - start)
    gen = torch.Generator().manual_seed(seed)
    n = len(sampler)
    actions = np.empty((n, buffer_horizon, t.action_dim), np.float32)
    bar = progress(n, "streaming: teacher targets", unit="window")
    try:
        for lo in range(0, n, TARGET_BATCH):
            idx = np.arange(lo, min(n, lo + TARGET_BATCH))
            obs = sampler.get_batch(idx)["obs"]
            noise = torch.randn((len(idx), t.pred_horizon, t.action_dim), generator=gen)
            chunk = teacher.predict_action_chunk(obs, noise=noise).cpu().numpy()
            actions[idx, :have] = chunk[:, start : start + have]
            actions[idx, have:] = chunk[:, start + have - 1 : start + have]
            bar.update(len(idx))
    finally:
        bar.close()
    pad = np.zeros((n, buffer_horizon), bool)
    pad[:, have:] = True
    return actions, pad


def validate_counting_calls(
    cfg: RunConfig, policy: StreamingStudent, seeds: list[int]
) -> dict[str, Any]:
    """Roll out on ``seeds``: return/length/success summary plus ``network_calls_per_step``,
    the denoiser evaluations per control step of one env row over these episodes, measured
    (:func:`robodistill.core.latency.count_network_calls`: a forward hook on the network)."""
    with count_network_calls(policy) as calls:
        result, _ = rollout_summary(cfg, policy, seeds, "distill-streaming")
    return result | {"network_calls_per_step": calls.per_step}


class StreamingTrainer(Trainer):
    """The streaming student on demonstration windows or the teacher's chunks (module
    docstring)."""

    name = "streaming"
    eval_keys = ("network_calls_per_step",)
    shardable = True

    def __init__(self, cfg: RunConfig, teacher_dir: Path):
        sc = self.sc = cfg.distill.streaming
        self.teacher_dir = teacher_dir
        teacher = load_diffusion_teacher(teacher_dir, "streaming")
        data, _, _ = load_demos(cfg)
        tc = teacher.config
        if (data["obs"].shape[1], data["action"].shape[1]) != (tc.obs_dim, tc.action_dim):
            raise ConfigError(f"distill.teacher: {teacher_dir} acts on obs/action of size "
                              f"{tc.obs_dim}/{tc.action_dim}, but the demonstrations have "
                              f"{data['obs'].shape[1]}/{data['action'].shape[1]}")  # fmt: skip
        self.to, hb = tc.obs_horizon, sc.buffer_horizon
        self.sampler = SequenceSampler(data, data["episode_ends"], obs_horizon=self.to,
                                       pred_horizon=self.to - 1 + hb)  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.policy = build_student(teacher, cfg)
        self.init = init_from_teacher(self.policy, teacher) if sc.init_from_teacher else None
        self.targets = None
        if sc.targets == "teacher":
            if tc.pred_horizon - self.to + 1 < hb:
                log.warning("distill: streaming buffer_horizon %d exceeds the teacher's %d "
                            "actions from the current step; the tail repeats its last action "
                            "(as padding)", hb, tc.pred_horizon - self.to + 1)  # fmt: skip
            self.targets = teacher_targets(teacher, self.sampler, hb, cfg.seed)
        del teacher
        # The diffusion stack's device setting, shared with the teacher (as consistency's).
        self.device = resolve_device(cfg.teach.rl100.device, "teach.rl100.device")
        self.policy.to(self.device)
        self.policy.net.train()
        self.optimizer, self.lr_scheduler = adamw_with_schedule(
            self.policy.net.parameters(), sc.learning_rate, WEIGHT_DECAY, sc.warmup_steps, sc.steps
        )
        self.ema = self.policy.make_ema(decay=sc.ema_decay)
        self.rng = stream_rng(cfg.seed, RNGStream.STUDENT_BATCHES)
        self.batch_seed = (cfg.seed, int(RNGStream.STUDENT_BATCHES))
        self.gen = torch.Generator().manual_seed(cfg.seed)  # levels and noise
        self.demos = str(demos_path(cfg))

    def loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        to = self.to
        idx = self.batch_indices(len(self.sampler), self.sc.batch_size)
        window = self.sampler.get_batch(idx)
        batch = {"obs": window["obs"], "action": window["action"][:, to - 1 :],
                 "action_is_pad": window["action_is_pad"][:, to - 1 :]}  # fmt: skip
        if self.targets is not None:
            batch["action"], batch["action_is_pad"] = self.targets[0][idx], self.targets[1][idx]
        loss, _ = self.policy.compute_loss(batch, generator=self.gen)
        return loss, {"loss": float(loss.detach())}

    def finish(self, out: Path, keeper: Any, evals: list[dict[str, Any]]) -> dict[str, Any]:
        sc, student = self.sc, self.policy
        calls = [e["network_calls_per_step"] for e in evals
                 if e.get("network_calls_per_step") is not None]  # fmt: skip
        return {"student": "streaming", "teacher": str(self.teacher_dir), "targets": sc.targets,
                "buffer_horizon": sc.buffer_horizon,
                "calls_per_step": student.configured_calls_per_step,  # configured
                "network_calls_per_step_measured": float(np.mean(calls)) if calls else None,
                "network_calls_per_step_measured_max": max(calls) if calls else None,
                "init_from_teacher": self.init, "demos": self.demos,
                "windows": len(self.sampler)}  # fmt: skip


def run_distill_streaming(cfg: RunConfig, stage: StageRun, teacher: Path) -> dict[str, Any]:
    """Train the streaming student of ``teacher`` in ``stage.dir / "streaming"``; returns the
    metrics (also in ``result.json``). Resumes from the last checkpoint."""
    return train_student(cfg, stage, stage.dir / "streaming", cfg.distill.streaming,
                         lambda: StreamingTrainer(cfg, Path(teacher)),
                         device=cfg.teach.rl100.device,
                         validate=lambda policy, seeds: validate_counting_calls(cfg, policy, seeds))  # fmt: skip
