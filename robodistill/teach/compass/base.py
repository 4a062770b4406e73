"""COMPASS stage 1: the imitation-learned base with a latent world model.

:func:`run_base` trains on transitions ``(o_t, a_t, o_{t+1})`` of the expert's
demonstrations: ``bc(head(z_t), a_t) + world_model_coef * (|f(z_t, a_t) - sg(z_{t+1})|² +
|dec(f(z_t, a_t)) - norm(o_{t+1})|²)`` with ``z = enc(o)``, through the one training loop
(:func:`robodistill.training.loop.train`; Adam, no schedule, no EMA). Artifacts in
``<run>/teach/compass/base/``: ``checkpoint/``, ``policy/`` + ``best.json`` (best base by
validation success on ``teach.compass.base_embodiment``), ``policy_last/``,
``result.json`` (present = done).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodistill.config import RunConfig
from robodistill.core.rollout import env_spaces
from robodistill.core.rundir import StageRun
from robodistill.core.seeds import RNGStream, stream_rng
from robodistill.data.demos import load_transitions
from robodistill.data.store import StoreError
from robodistill.policies.compass import CompassBase
from robodistill.policies.mlp_student import array_stats
from robodistill.teach.compass.evaluation import embodiment_kwargs, validate_on_embodiment
from robodistill.training.checkpoint import finished_result
from robodistill.training.loop import LoopSettings, Trainer, train
from robodistill.training.selection import BestPolicyKeeper

LOG_EVERY = 50
"""Steps between two metrics rows of the base's losses."""


def base_loss(base: CompassBase, batch: dict[str, torch.Tensor], bc_loss: str,
              wm_coef: float) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """Stage 1's loss on a batch (obs, action, next_obs (B, ·), has_next (B,)): imitation of
    the expert action by the policy head + the world model's next-latent and next-observation
    prediction errors. Returns the total and its parts."""
    net = base.net
    z = net.latent(batch["obs"])
    mean, log_std = net.head(z)
    err = net.normalizer.normalize("action", mean) - net.normalizer.normalize(
        "action", batch["action"]
    )
    if bc_loss == "nll":  # Gaussian NLL in normalized units (drops the constant)
        bc = (0.5 * err.pow(2) * torch.exp(-2 * net.log_std) + net.log_std).sum(-1).mean()
    else:
        bc = err.pow(2).mean()
    parts = {"bc": float(bc.detach())}
    total = bc
    valid = batch["has_next"]
    if wm_coef > 0 and bool(valid.any()):
        z_pred = net.predict_next(z[valid], batch["action"][valid])
        with torch.no_grad():  # the target latent is a fixed point, as in latent world models
            z_next = net.latent(batch["next_obs"][valid])
        latent = (z_pred - z_next).pow(2).mean()
        recon = (net.decode(z_pred) - net.normalized_obs(batch["next_obs"][valid])).pow(2).mean()
        total = total + wm_coef * (latent + recon)
        parts |= {"latent": float(latent.detach()), "obs_pred": float(recon.detach())}
    return total, parts


class BaseTrainer(Trainer):
    """The base's imitation + world-model loss on random transitions (module docstring)."""

    name = "compass_base"
    loss_parts = ("bc", "latent", "obs_pred")
    shardable = True

    def __init__(self, cfg: RunConfig):
        c = self.c = cfg.teach.compass
        data, self.demo_info = load_transitions(cfg)
        obs_space, act_space, _ = env_spaces(cfg.env.id, embodiment_kwargs(cfg, c.base_embodiment))
        if data["obs"].shape[1] != int(np.prod(obs_space.shape)):
            raise StoreError(f"{self.demo_info['demos']} has observations of size "
                             f"{data['obs'].shape[1]}, {cfg.env.id} gives {obs_space.shape}; "
                             "collect with the same env")  # fmt: skip
        self.policy = CompassBase.build(obs_space, act_space, array_stats(data["obs"]),
                                        array_stats(data["action"]), c.hidden, c.latent_dim,
                                        c.activation, seed=cfg.seed)  # fmt: skip
        self.optimizer = torch.optim.Adam(self.policy.net.parameters(), lr=c.base_learning_rate)
        self.rng = stream_rng(cfg.seed, RNGStream.COMPASS_BASE_BATCHES)
        self.batch_seed = (cfg.seed, int(RNGStream.COMPASS_BASE_BATCHES))
        self.tensors = {k: torch.from_numpy(v) for k, v in data.items()}
        self.n = len(data["obs"])

    def loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.c
        idx = torch.from_numpy(self.batch_indices(self.n, c.base_batch_size))
        batch = {k: v[idx] for k, v in self.tensors.items()}
        total, parts = base_loss(self.policy, batch, c.bc_loss, c.world_model_coef)
        return total, {"loss": float(total.detach()), **parts}

    def finish(self, out: Path, keeper: Any, evals: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(self.demo_info)


def run_base(cfg: RunConfig, stage: StageRun) -> dict[str, Any]:
    """Stage 1: train the base (module docstring) into ``teach/compass/base``; resumable."""
    c = cfg.teach.compass
    sub = stage.dir / "compass" / "base"
    if (done := finished_result(sub)) is not None:
        return done
    keeper = BestPolicyKeeper(
        cfg,
        sub,
        validate=lambda policy, seeds: validate_on_embodiment(
            cfg, policy, c.base_embodiment, seeds
        ),
    )
    settings = LoopSettings(steps=c.base_steps, eval_every=c.base_eval_every,
                            checkpoint_every=c.base_checkpoint_every, log_every=LOG_EVERY
                            ).with_training(cfg.teach.training, "teach", "cpu")  # fmt: skip
    return train(cfg, stage, lambda: BaseTrainer(cfg), settings, sub, keeper)
