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
rate, then return) is kept.

Artifacts in ``<run>/distill/streaming/``::

    policy/        best student on validation (what eval / export take), best.json its result
    policy_last/   the student when training ended
    checkpoint/    resumable: policy/ (net, EMA, normalizer), optimizer.safetensors (+ torch
                   RNG), state.json (step, evals, EMA step, scheduler, numpy RNG)
    result.json    the metrics; present = done (a resume returns them)
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_scheduler

from robodistill.config import ConfigError, RunConfig
from robodistill.core.rundir import StageRun, progress, write_json_atomic
from robodistill.data.demos import demos_path, load_demos
from robodistill.data.sampler import SequenceSampler
from robodistill.data.store import StoreError
from robodistill.policies.checkpoint import CheckpointError
from robodistill.policies.diffusion import DiffusionPolicy
from robodistill.policies.streaming import StreamingStudent, StreamingStudentConfig
from robodistill.training.checkpoint import save_train_checkpoint
from robodistill.training.selection import is_better, rollout_summary

log = logging.getLogger(__name__)

TARGET_BATCH = 256
WEIGHT_DECAY = 1e-6  # diffusion policy's AdamW weight decay (as teach.rl100.weight_decay)


def load_teacher(path: str | Path) -> DiffusionPolicy:
    try:
        return DiffusionPolicy.load(path)
    except CheckpointError as e:
        raise ConfigError(f"distill.teacher: the streaming student needs a diffusion teacher "
                          f"(teach.algo=rl100), but {path} cannot be loaded as one: {e}") from e  # fmt: skip


def build_student(teacher: DiffusionPolicy, cfg: RunConfig) -> StreamingStudent:
    """A student with the teacher's network shape, schedule, horizons and normalizer."""
    t, sc = teacher.config, cfg.distill.streaming
    try:
        config = StreamingStudentConfig(
            obs_dim=t.obs_dim, action_dim=t.action_dim, obs_horizon=t.obs_horizon,
            buffer_horizon=sc.buffer_horizon, calls_per_step=sc.calls_per_step,
            down_dims=t.down_dims, kernel_size=t.kernel_size, n_groups=t.n_groups,
            step_embed_dim=t.step_embed_dim, num_train_timesteps=t.num_train_timesteps,
            beta_schedule=t.beta_schedule, clip_sample=t.clip_sample,
            mask_padded_actions=t.mask_padded_actions, action_low=t.action_low,
            action_high=t.action_high, seed=cfg.seed,
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


def validate(cfg: RunConfig, policy: StreamingStudent, seeds: list[int]) -> dict[str, Any]:
    """Roll out on ``seeds``: return/length/success summary plus the measured network calls
    per decision over these episodes."""
    policy.network_calls = policy.decisions = 0
    result, _ = rollout_summary(cfg, policy, seeds, "distill-streaming")
    return result | {"network_calls_per_decision": policy.measured_calls_per_decision}


def run_distill_streaming(cfg: RunConfig, stage: StageRun, teacher: Path) -> dict[str, Any]:
    """Train the streaming student of ``teacher`` in ``stage.dir / "streaming"``; returns the
    metrics (also in ``result.json``). Resumes from the last checkpoint."""
    out = stage.dir / "streaming"
    if (out / "result.json").is_file():
        log.info("distill: streaming already done in %s", out)
        return json.loads((out / "result.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if cfg.distill.streaming.torch_threads:
        torch.set_num_threads(cfg.distill.streaming.torch_threads)
    try:
        return _train(cfg, stage, Path(teacher), out)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: RunConfig, stage: StageRun, teacher_dir: Path, out: Path) -> dict[str, Any]:
    from robodistill.core.seeds import VALIDATION_SEED_OFFSET, episode_seeds

    t0 = time.monotonic()
    sc = cfg.distill.streaming
    teacher = load_teacher(teacher_dir)
    data, _, _ = load_demos(cfg)
    tc = teacher.config
    if (data["obs"].shape[1], data["action"].shape[1]) != (tc.obs_dim, tc.action_dim):
        raise ConfigError(f"distill.teacher: {teacher_dir} acts on obs/action of size "
                          f"{tc.obs_dim}/{tc.action_dim}, but the demonstrations have "
                          f"{data['obs'].shape[1]}/{data['action'].shape[1]}")  # fmt: skip
    to, hb = tc.obs_horizon, sc.buffer_horizon
    sampler = SequenceSampler(data, data["episode_ends"], obs_horizon=to, pred_horizon=to - 1 + hb)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student = build_student(teacher, cfg)
    init = init_from_teacher(student, teacher) if sc.init_from_teacher else None
    targets = None
    if sc.targets == "teacher":
        if tc.pred_horizon - to + 1 < hb:
            log.warning("distill: streaming buffer_horizon %d exceeds the teacher's %d actions "
                        "from the current step; the tail repeats its last action (as padding)",
                        hb, tc.pred_horizon - to + 1)  # fmt: skip
        targets = teacher_targets(teacher, sampler, hb, cfg.seed)
    del teacher
    student.net.train()
    # Betas (0.95, 0.999) as the teacher: a shorter first-moment memory suits the noisy loss.
    optimizer = torch.optim.AdamW(student.net.parameters(), lr=sc.learning_rate,
                                  betas=(0.95, 0.999), weight_decay=WEIGHT_DECAY)  # fmt: skip
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=sc.warmup_steps,
                                 num_training_steps=sc.steps)  # fmt: skip
    ema = student.make_ema(decay=sc.ema_decay)
    rng = np.random.default_rng([cfg.seed, 6])  # batches
    gen = torch.Generator().manual_seed(cfg.seed)  # levels and noise

    ckpt = out / "checkpoint"
    state = restore_checkpoint(ckpt, student, optimizer, lr_scheduler, ema, rng, gen)
    step = state["step"] if state else 0
    evals: list[dict[str, Any]] = state["evals"] if state else []
    resumed_from = step
    if state:
        log.info("distill: streaming resumed from %s at step %d", ckpt, step)
    seeds = episode_seeds(cfg, sc.eval_episodes, VALIDATION_SEED_OFFSET)
    best_path = out / "best.json"
    best = json.loads(best_path.read_text()) if best_path.is_file() else None

    def evaluate() -> None:
        nonlocal best
        student.load_ema(ema)
        result = validate(cfg, student, seeds) | {"step": step}
        if is_better(result, best):
            student.save(out / "policy")
            best = result
            write_json_atomic(best_path, result)  # after policy/: it always describes it
        row = {f"eval_{k}": v for k, v in result.items() if k not in ("step", "episodes")}
        stage.log_metrics(step, {"stage": "streaming", **row,
                                 "eval_best_return_mean": best["return_mean"]})  # fmt: skip
        evals.append({k: result[k] for k in ("step", "success_rate", "return_mean",
                                             "network_calls_per_decision")})  # fmt: skip

    bar = progress(sc.steps, f"distill streaming {cfg.env.id}", initial=step, unit="step")
    losses: list[float] = []
    t_train = time.monotonic()
    try:
        while step < sc.steps:
            idx = rng.integers(0, len(sampler), size=sc.batch_size)
            window = sampler.get_batch(idx)
            batch = {"obs": window["obs"], "action": window["action"][:, to - 1 :],
                     "action_is_pad": window["action_is_pad"][:, to - 1 :]}  # fmt: skip
            if targets is not None:
                batch["action"], batch["action_is_pad"] = targets[0][idx], targets[1][idx]
            loss, _ = student.compute_loss(batch, generator=gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            lr_scheduler.step()
            ema.step(student.net.parameters())
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            if step % sc.log_every == 0 or step == sc.steps:
                rate = (step - resumed_from) / max(time.monotonic() - t_train, 1e-9)
                stage.log_metrics(step, {"stage": "streaming", "loss": float(np.mean(losses)),
                                         "lr": lr, "ema_decay": ema.cur_decay_value,
                                         "steps_per_s": round(rate, 3)})  # fmt: skip
                bar.set_postfix(loss=f"{np.mean(losses):.4f}", refresh=False)
                losses.clear()
            if step % sc.eval_every == 0 or step == sc.steps:
                evaluate()
            if step % sc.checkpoint_every == 0 or step == sc.steps:
                student.load_ema(ema)
                save_train_checkpoint(ckpt, student, optimizer, lr_scheduler, ema, rng, gen,
                                      {"step": step, "evals": evals})  # fmt: skip
    finally:
        bar.close()
    if not evals or evals[-1]["step"] != step:  # resumed after the last step's checkpoint
        evaluate()
    train_s = time.monotonic() - t_train
    student.load_ema(ema)
    student.save(out / "policy_last")
    result = {
        "student": "streaming",
        "policy": str(out / "policy"),
        "policy_last": str(out / "policy_last"),
        "teacher": str(teacher_dir),
        "targets": sc.targets,
        "buffer_horizon": hb,
        "calls_per_step": sc.calls_per_step,
        "steps": step,
        "resumed_from_step": resumed_from,
        "final_loss": _last_logged_loss(stage.dir),
        "evals": evals,
        "best_success_rate": best["success_rate"],
        "best_return_mean": best["return_mean"],
        "best_step": best["step"],
        "network_calls_per_decision": student.network_calls_per_decision,
        "network_calls_per_decision_measured": float(
            np.mean([e["network_calls_per_decision"] for e in evals])
        ),
        "init_from_teacher": init,
        "num_parameters": student.num_parameters,
        "demos": str(demos_path(cfg)),
        "windows": len(sampler),
        "train_s": round(train_s, 1),
        "steps_per_s": round((step - resumed_from) / max(train_s, 1e-9), 2),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    write_json_atomic(out / "result.json", result)
    log.info("distill: streaming %s", json.dumps(result))
    return result


def _last_logged_loss(stage_dir: Path) -> float | None:
    """The last logged mean loss of this student (metrics.jsonl survives resumes)."""
    path, loss = stage_dir / "metrics.jsonl", None
    for line in path.read_text().splitlines() if path.is_file() else ():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("stage") == "streaming" and "loss" in row:
            loss = row["loss"]
    return loss


def restore_checkpoint(directory: Path, policy: StreamingStudent, optimizer, lr_scheduler, ema,
                       rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any] | None:  # fmt: skip
    """Load ``teach_rl100.save_train_checkpoint``'s files (written for this student) into
    the given objects; returns the state document, or ``None`` when there is none."""
    from safetensors.torch import load_file

    from robodistill.training.checkpoint import (
        CHECKPOINT_FORMAT,
        OPTIMIZER_NAME,
        POLICY_DIR,
        STATE_NAME,
        load_optimizer_state,
    )

    if not (directory / STATE_NAME).is_file():
        directory = directory.with_name(f".{directory.name}.old")  # a crash between renames
        if not (directory / STATE_NAME).is_file():
            return None
    state = json.loads((directory / STATE_NAME).read_text())
    if state.get("format") != CHECKPOINT_FORMAT:
        raise StoreError(f"{directory} is a training checkpoint of format {state.get('format')!r}; "
                         f"this version reads {CHECKPOINT_FORMAT}")  # fmt: skip
    saved = StreamingStudent.load(directory / POLICY_DIR)
    if saved.config.to_dict() != policy.config.to_dict():
        raise StoreError(f"{directory} was trained with another student config; move "
                         f"{directory.parent} aside (or use --overwrite) to start over")  # fmt: skip
    for name in ("net", "ema_net", "normalizer"):
        getattr(policy, name).load_state_dict(getattr(saved, name).state_dict())
    ema.load_state_dict({
        "optimization_step": int(state["ema_optimization_step"]),
        "shadow_params": [p.detach().clone() for p in policy.ema_net.parameters()],
    })  # fmt: skip
    tensors = load_file(str(directory / OPTIMIZER_NAME))
    gen.set_state(tensors.pop("rng.torch"))
    load_optimizer_state(optimizer, tensors, state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    rng.bit_generator.state = state["rng_numpy"]
    return state
