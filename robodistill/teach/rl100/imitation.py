"""RL-100's first stage: imitation learning of the diffusion policy on the demonstrations.

Windows of (To observations, H actions) from the demonstrations
(:class:`robodistill.data.sampler.SequenceSampler`), denoising loss, AdamW with a warm-up +
cosine learning rate, diffusers ``EMAModel``; the one training loop
(:func:`robodistill.training.loop.train`) validates the EMA policy every ``eval_every``
steps and keeps it in ``teach/policy`` when its success rate beats the best, so the teacher
is chosen by success, not by loss. Artifacts in ``<run>/teach/il/``::

    checkpoint/        resumable training state (see robodistill.training.checkpoint)
    policy/            best imitation policy (the starting point of the RL sub-stages)
    policy_last/       the imitation policy when training ended
    best.json          the validation result that chose policy/
    result.json        the sub-stage's metrics; present = done (a resume skips it)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodistill.config import RunConfig
from robodistill.core.rundir import StageRun
from robodistill.core.seeds import RNGStream, stream_rng
from robodistill.data.demos import demos_path, load_demos
from robodistill.data.sampler import SequenceSampler
from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from robodistill.policies.normalizer import Normalizer
from robodistill.training.checkpoint import copy_dir, finished_result
from robodistill.training.loop import LoopSettings, Trainer, train
from robodistill.training.optim import adamw_with_schedule, resolve_device
from robodistill.training.selection import BestPolicyKeeper


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
        backbone=d.backbone, mlp_width=d.mlp_width, mlp_blocks=d.mlp_blocks,
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


class ImitationTrainer(Trainer):
    """Denoising loss on demonstration windows (module docstring)."""

    name = "il"
    shardable = True

    def __init__(self, cfg: RunConfig):
        rl, d = cfg.teach.rl100, cfg.teach.diffusion
        self.device = resolve_device(rl.device, "teach.rl100.device")
        data, stats, attrs = load_demos(cfg)
        self.demos, self.episodes = str(demos_path(cfg)), int(len(data["episode_ends"]))
        self.sampler = SequenceSampler(data, data["episode_ends"], obs_horizon=d.obs_horizon,
                                       pred_horizon=d.pred_horizon)  # fmt: skip
        # The initial weights come from cfg.seed (without touching torch's global RNG stream).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.policy = build_policy(cfg, data["obs"].shape[1], data["action"].shape[1],
                                       stats, attrs["action_low"], attrs["action_high"])  # fmt: skip
        self.policy.to(self.device)
        self.optimizer, self.lr_scheduler = adamw_with_schedule(
            self.policy.net.parameters(), rl.learning_rate, rl.weight_decay, rl.warmup_steps,
            rl.il_steps, rl.lr_schedule,
        )  # fmt: skip
        self.ema = self.policy.make_ema(decay=rl.ema_decay, power=rl.ema_power)
        self.rng = stream_rng(cfg.seed, RNGStream.IMITATION_BATCHES)
        self.batch_seed = (cfg.seed, int(RNGStream.IMITATION_BATCHES))
        self.gen = torch.Generator().manual_seed(cfg.seed)  # noise and timesteps
        self.batch_size = rl.batch_size

    def loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.sampler.get_batch(self.batch_indices(len(self.sampler), self.batch_size))
        loss, _ = self.policy.compute_loss(batch, generator=self.gen)
        return loss, {"loss": float(loss.detach())}

    def finish(self, out: Path, keeper: BestPolicyKeeper, evals: list[dict[str, Any]]
               ) -> dict[str, Any]:  # fmt: skip
        # The best imitation policy, kept apart: later sub-stages replace teach/policy.
        copy_dir(keeper.directory / "policy", out / "policy")
        shutil.copyfile(keeper.best_path, out / "best.json")
        return {"policy": str(out / "policy"), "demos": self.demos,
                "demo_episodes": self.episodes, "windows": len(self.sampler)}  # fmt: skip


def run_il(cfg: RunConfig, stage: StageRun) -> dict[str, Any]:
    """Imitation learning of the diffusion policy on the demonstrations (module docstring);
    its best policy competes in ``teach/policy`` with the later sub-stages'."""
    rl = cfg.teach.rl100
    sub = stage.dir / "il"
    if (done := finished_result(sub)) is not None:
        return done
    settings = LoopSettings(steps=rl.il_steps, eval_every=rl.eval_every,
                            checkpoint_every=rl.checkpoint_every, log_every=rl.log_every,
                            torch_threads=rl.torch_threads
                            ).with_training(cfg.teach.training, "teach", rl.device)  # fmt: skip
    return train(cfg, stage, lambda: ImitationTrainer(cfg), settings, sub,
                 BestPolicyKeeper(cfg, stage.dir), tag={"stage": "il"})  # fmt: skip
