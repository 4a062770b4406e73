"""The RL-100 teacher: a diffusion policy trained by imitation, then by RL on its denoising
chain. ``teach.rl100.stages`` lists the sub-stages run in order inside the ``teach`` stage;
``il`` (imitation), ``offline`` (OPE-gated RL on the denoising chain,
:mod:`robodistill.rl100_offline`) and ``online`` (DPPO, :mod:`robodistill.rl100_online`);
each is a function in :data:`SUBSTAGES`::

    with StageRun(cfg, "teach", inputs=demos_inputs(cfg)) as stage:
        metrics = run_teach_rl100(cfg, stage)
        stage.finish(metrics)

Artifacts in ``<run>/teach/``::

    policy/              best policy by validation success so far, over all sub-stages
                         (what later stages load as the teacher)
    best.json            the validation result that chose policy/
    il/
      checkpoint/        resumable training state: policy/ (net, EMA, normalizers),
                         optimizer.safetensors, state.json (step, EMA, RNG, scheduler)
      policy/            best imitation policy (the starting point of the RL sub-stages)
      policy_last/       the imitation policy when training ended
      result.json        the sub-stage's metrics; present = done (a resume skips it)

Imitation (``run_il``): windows of (To observations, H actions) from the demonstrations
(:class:`robodistill.sampler.SequenceSampler`), denoising loss, AdamW with a warm-up +
cosine learning rate (diffusers ``get_scheduler``), diffusers ``EMAModel``; every
``eval_every`` steps the EMA policy is rolled out on the validation seeds and kept when its
success rate beats the best (:class:`robodistill.validation.BestPolicyKeeper`), so the
teacher is chosen by success, not by loss. An interrupted run resumes from the last
checkpoint with the same batches and noise it would have drawn (RNG states are saved).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file, save_file

from robodistill.config import ConfigError, RunConfig
from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from robodistill.policies.normalizer import Normalizer
from robodistill.run import StageRun, committed_dir, progress, replace_dir, write_json_atomic
from robodistill.sampler import SequenceSampler
from robodistill.store import StoreError, TrajectoryStore
from robodistill.validation import BestPolicyKeeper

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
STATE_NAME, OPTIMIZER_NAME, POLICY_DIR = "state.json", "optimizer.safetensors", "policy"


# -- demonstrations ------------------------------------------------------------------------


def demos_path(cfg: RunConfig) -> Path:
    """``teach.rl100.demos``, else this run's collected store."""
    if cfg.teach.rl100.demos:
        return Path(cfg.teach.rl100.demos)
    return Path(cfg.runs_dir) / cfg.name / "collect" / "demos.zarr"


def _open_demos(cfg: RunConfig) -> TrajectoryStore:
    path = demos_path(cfg)
    if not path.exists():
        raise StoreError(
            f"the RL-100 teacher imitates demonstrations first, but {path} does not exist. Run "
            f"`robodistill collect` for this run first (same --name / --config), or point "
            f"teach.rl100.demos at a trajectory store"
        )
    store = TrajectoryStore.open(path)
    if store.n_episodes == 0:
        store.close()
        raise StoreError(f"{path} holds no episodes; collect demonstrations into it first")
    return store


def demos_inputs(cfg: RunConfig) -> dict[str, Any]:
    """What the teacher depends on besides the config: the store's path and a fingerprint
    (episode ends + normalizer statistics), so re-collected demos are not silently reused."""
    with _open_demos(cfg) as store:
        digest = hashlib.sha256(store.episode_ends.tobytes())
        digest.update(json.dumps(store.attrs.get("normalizer"), sort_keys=True).encode())
        return {"demos": str(demos_path(cfg)), "demos_episodes": int(store.n_episodes),
                "demos_digest": digest.hexdigest()[:16]}  # fmt: skip


def load_demos(cfg: RunConfig) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """``(data, stats, attrs)``: obs (N, D) and action (N, A) in RAM, their statistics."""
    from robodistill.rollout import env_spaces

    path = demos_path(cfg)
    with _open_demos(cfg) as store:
        attrs = store.attrs
        missing = {"obs", "action"} - set(store.keys)
        if missing:
            raise StoreError(f"{path} has no {sorted(missing)} arrays; it has {store.keys}")
        data = store.load(["obs", "action"])
        stats = attrs.get("normalizer") or {}
        if not {"obs", "action"} <= set(stats):
            stats = store.compute_stats(["obs", "action"])
    stored_env = attrs.get("env_id")
    if stored_env and stored_env != cfg.env.id:
        raise StoreError(
            f"{path} holds demonstrations of {stored_env!r} but env.id is {cfg.env.id!r}; set "
            f"env.id={stored_env} or point teach.rl100.demos at a store of {cfg.env.id}"
        )
    for key in ("obs", "action"):
        if data[key].ndim != 2:
            raise StoreError(
                f"{path}: the diffusion teacher needs flat {key} arrays (N, dim), got "
                f"{data[key].shape}; image observations are not supported yet"
            )
    obs_space, action_space, _ = env_spaces(cfg.env.id, cfg.env.kwargs)
    if data["obs"].shape[1] != int(np.prod(obs_space.shape)) or data["action"].shape[1] != int(
        np.prod(action_space.shape)
    ):
        raise StoreError(
            f"{path} has obs/action of size {data['obs'].shape[1]}/{data['action'].shape[1]} "
            f"but {cfg.env.id} (env.kwargs {cfg.env.kwargs}) has {obs_space.shape}/"
            f"{action_space.shape}; collect demos with the same env settings"
        )
    attrs["action_low"] = np.asarray(action_space.low, np.float64).reshape(-1).tolist()
    attrs["action_high"] = np.asarray(action_space.high, np.float64).reshape(-1).tolist()
    return data, {k: stats[k] for k in ("obs", "action")}, attrs


def build_policy(cfg: RunConfig, obs_dim: int, action_dim: int, stats: dict[str, Any],
                 action_low=None, action_high=None) -> DiffusionPolicy:  # fmt: skip
    """A fresh :class:`DiffusionPolicy` from ``teach.diffusion`` with min-max normalizers
    (actions and observations to [-1, 1], diffusion policy's choice) from ``stats``."""
    d = cfg.teach.diffusion
    bounded = action_low is not None and bool(
        np.isfinite(np.asarray([*action_low, *action_high], dtype=np.float64)).all()
    )
    config = DiffusionPolicyConfig(
        obs_dim=obs_dim, action_dim=action_dim, obs_horizon=d.obs_horizon,
        pred_horizon=d.pred_horizon, action_horizon=d.action_horizon,
        down_dims=tuple(d.down_dims), kernel_size=d.kernel_size, n_groups=d.n_groups,
        step_embed_dim=d.step_embed_dim, num_train_timesteps=d.num_train_timesteps,
        beta_schedule=d.beta_schedule, num_inference_steps=d.num_inference_steps,
        timestep_spacing=d.timestep_spacing, clip_sample=d.clip_sample, chain_eta=d.chain_eta,
        min_std=d.min_std, temporal_ensemble=d.temporal_ensemble,
        mask_padded_actions=d.mask_padded_actions,
        action_low=list(action_low) if bounded else None,
        action_high=list(action_high) if bounded else None, seed=cfg.seed,
    )  # fmt: skip
    return DiffusionPolicy(config, Normalizer.from_stats(stats, mode="minmax"))


# -- the teach stage -----------------------------------------------------------------------


def run_teach_rl100(cfg: RunConfig, stage: StageRun) -> dict[str, Any]:
    """Run ``teach.rl100.stages`` in order; returns the teach stage's metrics.

    Each sub-stage resumes from its own checkpoint and is skipped once its
    ``<sub>/result.json`` exists. The top-level ``success_rate`` / ``return_mean`` are the
    selected policy's numbers on the validation seeds (``robodistill eval`` reports the
    held-out evaluation seeds).
    """
    t0 = time.monotonic()
    results = {name: SUBSTAGES[name](cfg, stage) for name in cfg.teach.rl100.stages}
    best = json.loads((stage.dir / "best.json").read_text())
    metrics = {
        "algo": "rl100",
        "stages": list(results),
        **{
            k: best.get(k)
            for k in ("episodes", "return_mean", "return_std", "length_mean", "success_rate")
        },  # fmt: skip
        "selected_on": "validation seeds",
        "best_stage": best.get("stage"),
        "best_step": best.get("step"),
        "policy": str(stage.dir / "policy"),
        **{name: r for name, r in results.items()},
        "wall_s": round(time.monotonic() - t0, 3),
    }
    log.info("teach: %s", json.dumps(metrics))
    return metrics


def run_il(cfg: RunConfig, stage: StageRun) -> dict[str, Any]:
    """Imitation learning of the diffusion policy on the demonstrations (module docstring)."""
    rl = cfg.teach.rl100
    sub = stage.dir / "il"
    if (sub / "result.json").is_file():
        log.info("teach: rl100 il already done in %s", sub)
        return json.loads((sub / "result.json").read_text())
    sub.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if rl.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "teach.rl100.device is 'cuda' but torch sees no CUDA device; set it to auto or cpu"
        )
    device = torch.device("cuda" if rl.device != "cpu" and torch.cuda.is_available() else "cpu")

    threads = torch.get_num_threads()
    if rl.torch_threads:
        torch.set_num_threads(rl.torch_threads)
    try:
        return _train_il(cfg, stage, sub, device, t0)
    finally:
        torch.set_num_threads(threads)


def _train_il(cfg: RunConfig, stage: StageRun, sub: Path, device: torch.device,
              t0: float) -> dict[str, Any]:  # fmt: skip
    rl = cfg.teach.rl100
    data, stats, attrs = load_demos(cfg)
    d = cfg.teach.diffusion
    sampler = SequenceSampler(data, data["episode_ends"], obs_horizon=d.obs_horizon,
                              pred_horizon=d.pred_horizon)  # fmt: skip
    # The initial weights come from cfg.seed (without touching torch's global RNG stream).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        policy = build_policy(cfg, data["obs"].shape[1], data["action"].shape[1], stats,
                              attrs["action_low"], attrs["action_high"]).to(device)  # fmt: skip
    policy.net.train()
    # Betas (0.95, 0.999) as in diffusion policy: a shorter first-moment memory than Adam's
    # default suits the noisy per-timestep denoising loss.
    optimizer = torch.optim.AdamW(policy.net.parameters(), lr=rl.learning_rate,
                                  betas=(0.95, 0.999), weight_decay=rl.weight_decay)  # fmt: skip
    lr_scheduler = get_scheduler(rl.lr_schedule, optimizer, num_warmup_steps=rl.warmup_steps,
                                 num_training_steps=rl.il_steps)  # fmt: skip
    ema = policy.make_ema(decay=rl.ema_decay, power=rl.ema_power)
    rng = np.random.default_rng([cfg.seed, 1])  # batches
    gen = torch.Generator().manual_seed(cfg.seed)  # noise and timesteps

    ckpt = sub / "checkpoint"
    state = restore_train_checkpoint(ckpt, policy, optimizer, lr_scheduler, ema, rng, gen)
    step = state["step"] if state else 0
    evals: list[dict[str, Any]] = state["evals"] if state else []
    if state:
        log.info("teach: rl100 il resumed from %s at step %d", ckpt, step)
    resumed_from = step
    keeper = BestPolicyKeeper(cfg, stage)

    def evaluate() -> None:
        policy.load_ema(ema)
        result, row = keeper.evaluate(policy, step)
        if keeper.best is result:  # a new best: record which sub-stage made it
            result["stage"] = "il"
            write_json_atomic(keeper.best_path, result)
        row["stage"] = "il"
        stage.log_metrics(step, row)
        evals.append({k: result[k] for k in ("step", "success_rate", "return_mean")})
        log.info("teach: rl100 il eval at step %d: %s", step, json.dumps(row))

    def checkpoint() -> None:
        policy.load_ema(ema)
        save_train_checkpoint(ckpt, policy, optimizer, lr_scheduler, ema, rng, gen,
                              {"step": step, "evals": evals})  # fmt: skip

    bar = progress(rl.il_steps, f"teach rl100 il {cfg.env.id}", initial=step, unit="step")
    losses: list[float] = []
    t_train = time.monotonic()
    try:
        while step < rl.il_steps:
            batch = sampler.sample(rl.batch_size, rng)
            loss, _ = policy.compute_loss(batch, generator=gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used (logged below)
            lr_scheduler.step()
            ema.step(policy.net.parameters())
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            if step % rl.log_every == 0 or step == rl.il_steps:
                rate = (step - resumed_from) / max(time.monotonic() - t_train, 1e-9)
                stage.log_metrics(step, {"stage": "il", "loss": float(np.mean(losses)),
                                         "lr": lr,
                                         "ema_decay": ema.cur_decay_value,
                                         "steps_per_s": round(rate, 3)})  # fmt: skip
                bar.set_postfix(loss=f"{np.mean(losses):.4f}", refresh=False)
                losses.clear()
            if step % rl.eval_every == 0 or step == rl.il_steps:
                evaluate()
            if step % rl.checkpoint_every == 0 or step == rl.il_steps:
                checkpoint()
    finally:
        bar.close()
    if not evals or evals[-1]["step"] != step:  # resumed after the last step's checkpoint
        evaluate()
    train_s = time.monotonic() - t_train

    policy.load_ema(ema)
    policy.save(sub / "policy_last")
    copy_dir(stage.dir / "policy", sub / "policy")
    shutil.copyfile(stage.dir / "best.json", sub / "best.json")
    best = keeper.best
    result = {
        "steps": step,
        "resumed_from_step": resumed_from,
        "final_loss": _last_logged_loss(stage.dir),
        "num_parameters": policy.num_parameters,
        "demos": str(demos_path(cfg)),
        "demo_episodes": int(len(data["episode_ends"])),
        "windows": len(sampler),
        "evals": evals,
        "final_success_rate": evals[-1]["success_rate"],
        "best_success_rate": best["success_rate"],
        "best_step": best["step"],
        "policy": str(sub / "policy"),
        "policy_last": str(sub / "policy_last"),
        "device": str(device),
        "train_s": round(train_s, 1),
        "steps_per_s": round((step - resumed_from) / max(train_s, 1e-9), 2),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    write_json_atomic(sub / "result.json", result)
    return result


def _with_threads(cfg: RunConfig, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    threads = torch.get_num_threads()
    if cfg.teach.rl100.torch_threads:
        torch.set_num_threads(cfg.teach.rl100.torch_threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def run_offline(cfg: RunConfig, stage: StageRun) -> dict[str, Any]:
    """Offline RL on the denoising chain, gated by OPE (:mod:`robodistill.rl100_offline`).

    It starts from the imitation policy; its accepted policy is then rolled out on the
    validation seeds, so ``teach/policy`` advances only if it also wins in simulation.
    """
    from robodistill.policies.diffusion import DiffusionPolicy
    from robodistill.rl100_offline import run_offline_rl

    sub = stage.dir / "offline"
    done = (sub / "result.json").is_file()
    result = _with_threads(
        cfg, lambda: run_offline_rl(cfg, stage, stage.dir / "il" / "policy", demos_path(cfg), sub)
    )
    if not done and (sub / "policy").is_dir():
        keeper = BestPolicyKeeper(cfg, stage)
        evaluated, row = keeper.evaluate(DiffusionPolicy.load(sub / "policy"), 0)
        if keeper.best is evaluated:
            evaluated["stage"] = "offline"
            write_json_atomic(keeper.best_path, evaluated)
        row["stage"] = "offline"
        stage.log_metrics(int(result.get("updates", 0) or 0), row)
        result["validation"] = {k: evaluated[k] for k in ("success_rate", "return_mean")}
        write_json_atomic(sub / "result.json", result)
    return result


def run_online(cfg: RunConfig, stage: StageRun) -> dict[str, Any]:
    """Online DPPO on the denoising chain (:mod:`robodistill.rl100_online`), from the offline
    policy when that sub-stage ran, else from the imitation policy."""
    from robodistill.rl100_online import run_online_rl

    prior = "offline" if "offline" in cfg.teach.rl100.stages else "il"
    start = stage.dir / prior / "policy"
    if not start.is_dir():  # offline RL accepted no update: it wrote no policy of its own
        start = stage.dir / "il" / "policy"
    return _with_threads(cfg, lambda: run_online_rl(cfg, stage, start, stage.dir / "online"))


SUBSTAGES: dict[str, Callable[[RunConfig, StageRun], dict[str, Any]]] = {
    "il": run_il,
    "offline": run_offline,
    "online": run_online,
}
"""Sub-stage name (``teach.rl100.stages`` entries) -> function(cfg, stage) -> metrics."""


def _last_logged_loss(stage_dir: Path) -> float | None:
    """The last logged mean training loss (metrics.jsonl survives resumes)."""
    path = stage_dir / "metrics.jsonl"
    loss = None
    for line in path.read_text().splitlines() if path.is_file() else ():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("stage") == "il" and "loss" in row:
            loss = row["loss"]
    return loss


# -- resumable training checkpoints --------------------------------------------------------


def copy_dir(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
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
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for key, value in doc["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": doc["param_groups"]})


def save_train_checkpoint(directory: Path, policy: DiffusionPolicy, optimizer, lr_scheduler,
                          ema, rng: np.random.Generator, gen: torch.Generator,
                          extra: dict[str, Any]) -> Path:  # fmt: skip
    """Write ``policy/`` (net, EMA net = the EMA's shadow weights, normalizers),
    ``optimizer.safetensors`` and ``state.json`` (step, EMA step, scheduler, numpy RNG) into
    ``directory``, built aside and renamed into place. No pickle anywhere."""
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy.save(tmp / POLICY_DIR)
    tensors, optim_doc = optimizer_state(optimizer)
    tensors["rng.torch"] = gen.get_state()
    save_file(tensors, str(tmp / OPTIMIZER_NAME))
    state = {
        "format": CHECKPOINT_FORMAT,
        **extra,
        "ema_optimization_step": int(ema.optimization_step),
        "lr_scheduler": lr_scheduler.state_dict(),
        "optimizer": optim_doc,
        "rng_numpy": rng.bit_generator.state,
    }
    write_json_atomic(tmp / STATE_NAME, state)
    replace_dir(tmp, directory)
    return directory


def restore_train_checkpoint(directory: Path, policy: DiffusionPolicy, optimizer, lr_scheduler,
                             ema, rng: np.random.Generator,
                             gen: torch.Generator) -> dict[str, Any] | None:  # fmt: skip
    """Load :func:`save_train_checkpoint`'s files into the given objects; returns the state
    document, or ``None`` when there is no checkpoint."""
    directory = committed_dir(directory, STATE_NAME)
    if directory is None:
        return None
    state = json.loads((directory / STATE_NAME).read_text())
    if state.get("format") != CHECKPOINT_FORMAT:
        raise StoreError(f"{directory} is a training checkpoint of format "
                         f"{state.get('format')!r}; this version reads {CHECKPOINT_FORMAT}")  # fmt: skip
    saved = DiffusionPolicy.load(directory / POLICY_DIR)
    if saved.config.to_dict() != policy.config.to_dict():
        raise StoreError(
            f"{directory} was trained with another policy config; move {directory.parent} "
            "aside (or use --overwrite) to start over"
        )
    device = policy.device
    for name in ("net", "ema_net", "normalizer"):
        getattr(policy, name).load_state_dict(getattr(saved, name).state_dict())
    policy.to(device)
    ema.load_state_dict({
        "optimization_step": int(state["ema_optimization_step"]),
        "shadow_params": [p.detach().clone().to(device) for p in policy.ema_net.parameters()],
    })  # fmt: skip
    tensors = load_file(str(directory / OPTIMIZER_NAME))
    gen.set_state(tensors.pop("rng.torch"))
    load_optimizer_state(optimizer, tensors, state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    rng.bit_generator.state = state["rng_numpy"]
    return state
