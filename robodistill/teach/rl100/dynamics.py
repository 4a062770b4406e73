"""The learned dynamics ensemble that off-policy evaluation rolls out.

Split out of :mod:`robodistill.teach.rl100.ope`, whose docstring gives the design (decision
level, deterministic members, elites, clipped and wrapped imagined histories) and the estimate
this model feeds. Here: :class:`DynamicsConfig` (training), :class:`EnsembleLinear` (``M``
linear layers in one batched matmul), :class:`DynamicsEnsemble` (the model, with its
checkpoint format) and :func:`train_dynamics` (fit on decisions, choose the elites). The model
works on the transitions of :mod:`robodistill.teach.rl100.decisions`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robodistill.policies.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from robodistill.teach.rl100.critics import Standardizer, check_fields, flat_batch
from robodistill.teach.rl100.decisions import Decisions

log = logging.getLogger(__name__)

DYNAMICS_KIND = "dynamics/ensemble"


@dataclass
class DynamicsConfig:
    """Training of the dynamics ensemble (RL-100's published code: 7 members, 5 elites)."""

    members: int = 7
    """Independently initialised and independently batched networks."""
    elites: int = 5
    """Members with the lowest validation loss used in rollouts."""
    hidden: tuple[int, ...] = (256, 256, 256)
    """Hidden layer widths of every member."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 1e-5
    """Adam (L2) weight decay, a mild guard against fitting the training episodes' noise."""
    batch_size: int = 256
    """Transitions per member per gradient step."""
    steps: int = 5000
    """Gradient steps of one :func:`train_dynamics` call."""
    val_fraction: float = 0.1
    """Share of episodes held out to choose each member's best snapshot and the elites."""
    eval_every: int = 250
    """Steps between validation passes (and progress records)."""
    done_weight: float = 1.0
    """Weight of the termination cross-entropy next to the standardized-target MSE."""
    seed: int = 0
    """Seeds initialisation, minibatches and the train / validation split."""
    angle_dims: tuple[int, ...] = ()
    """Indices within one observation frame (O) of angles in radians, e.g. (4,) for Push-T's
    block angle: the model sees their sin / cos, learns wrapped deltas and wraps its
    predictions, so crossing 0 = 2 pi is a small step rather than a jump of 2 pi."""

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.angle_dims = tuple(int(i) for i in self.angle_dims)
        checks = [
            ("members", self.members >= 1, ">= 1"),
            ("elites", 1 <= self.elites <= self.members, f"in [1, members={self.members}]"),
            ("lr", self.lr > 0, "> 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("steps", self.steps >= 1, ">= 1"),
            ("val_fraction", 0.0 < self.val_fraction < 1.0, "in (0, 1)"),
            ("eval_every", self.eval_every >= 1, ">= 1"),
            ("done_weight", self.done_weight >= 0, ">= 0"),
            ("hidden", len(self.hidden) > 0 and min(self.hidden) >= 1, "non-empty positive"),
        ]
        check_fields(self, checks)


class EnsembleLinear(nn.Module):
    """``M`` independent linear layers in one batched matmul: ``(M, B, I) -> (M, B, O)``."""

    def __init__(self, members: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, per member
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class DynamicsEnsemble(nn.Module):
    """Decision-level model ``(obs_hist, chunk) -> (next_obs_hist, chunk reward, p_done)``.

    Each member predicts, standardized, the change of every next-history frame relative to
    the current newest frame ``(To*O)`` plus the chunk reward ``(1)``, and a termination
    logit. Inputs are raw ``obs`` ``(B, To*O)`` and ``chunk`` ``(B, Ta*A)``.
    """

    def __init__(
        self,
        obs_horizon: int,
        obs_dim: int,
        chunk_dim: int,
        gamma_chunk: float,
        members: int = 7,
        elites: int = 5,
        hidden: Sequence[int] = (256, 256, 256),
        angle_dims: Sequence[int] = (),
    ):
        super().__init__()
        self.obs_horizon, self.obs_dim = int(obs_horizon), int(obs_dim)
        self.chunk_dim, self.gamma_chunk = int(chunk_dim), float(gamma_chunk)
        self.members, self.hidden = int(members), tuple(int(h) for h in hidden)
        self.angle_dims = tuple(sorted({int(i) for i in angle_dims}))
        if any(not 0 <= i < self.obs_dim for i in self.angle_dims):
            raise ValueError(
                f"DynamicsConfig.angle_dims {self.angle_dims} must index one observation "
                f"frame of {self.obs_dim} features (0..{self.obs_dim - 1})"
            )
        flat = self.obs_horizon * self.obs_dim
        frame_mask = torch.zeros(self.obs_dim, dtype=torch.bool)
        frame_mask[list(self.angle_dims)] = True
        self.register_buffer("angle_mask", frame_mask.repeat(self.obs_horizon))  # (To*O,)
        n_feat = flat + 2 * int(self.angle_mask.sum())  # history, then sin and cos of angles
        self.obs_norm, self.chunk_norm = Standardizer(n_feat), Standardizer(self.chunk_dim)
        self.target_norm = Standardizer(flat + 1)  # next-history delta, then chunk reward
        dims = [n_feat + self.chunk_dim, *self.hidden]
        self.layers = nn.ModuleList(
            EnsembleLinear(members, a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.head = EnsembleLinear(members, dims[-1], flat + 2)  # + termination logit
        self.register_buffer("elites", torch.arange(int(elites)))
        self.register_buffer("val_loss", torch.full((members,), float("inf")))
        self.register_buffer("obs_low", torch.full((flat,), -float("inf")))
        self.register_buffer("obs_high", torch.full((flat,), float("inf")))

    def fit_normalizers(self, d: Decisions) -> None:
        """Standardize inputs and targets, and bound imagined histories, by ``d``'s data."""
        self.obs_norm.fit(self.features(d.obs_flat))
        self.chunk_norm.fit(d.chunk_flat)
        self.target_norm.fit(self.targets(d))
        # Per feature over every frame seen (histories and next histories), same for all To.
        frames = torch.cat([d.obs, d.next_obs], dim=1).reshape(-1, self.obs_dim)
        self.obs_low.copy_(frames.min(0).values.repeat(self.obs_horizon))
        self.obs_high.copy_(frames.max(0).values.repeat(self.obs_horizon))

    def targets(self, d: Decisions) -> torch.Tensor:
        """Raw regression targets ``(N, To*O + 1)``: next history minus newest frame, reward."""
        newest = d.obs[:, -1:, :]  # (N, 1, O), broadcast over the To next frames
        delta = (d.next_obs - newest).reshape(len(d), -1).to(self.angle_mask.device)
        wrapped = torch.remainder(delta + math.pi, 2 * math.pi) - math.pi
        delta = torch.where(self.angle_mask, wrapped, delta)
        return torch.cat([delta, d.reward[:, None].to(delta.device)], dim=-1)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """Model input for histories ``(B, To*O)``: ``(B, To*O + 2 * To * n_angles)``."""
        obs = obs.to(self.angle_mask.device)
        angles = obs[:, self.angle_mask]
        return torch.cat([obs, torch.sin(angles), torch.cos(angles)], dim=-1)

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        """Standardized predictions ``(M, B, To*O + 2)`` (last column: done logit).

        ``obs`` / ``chunk`` are ``(B, D)`` (every member sees the same rows) or ``(M, B, D)``
        (member m sees row block m, as in training where each member has its own batch).
        """
        device = self.obs_norm.mean.device
        feats = self.features(obs.reshape(-1, obs.shape[-1])).reshape(*obs.shape[:-1], -1)
        x = torch.cat([self.obs_norm(feats), self.chunk_norm(chunk.to(device))], -1)
        if x.ndim == 2:
            x = x.unsqueeze(0).expand(self.members, -1, -1)
        for layer in self.layers:
            x = F.silu(layer(x))  # swish, as in MBPO / MOPO ensembles
        return self.head(x)

    @torch.no_grad()
    def predict(self, obs: torch.Tensor, chunk: torch.Tensor, member: torch.Tensor):
        """One step with member ``member`` (B,) per row (indices into all members).

        Returns next history ``(B, To*O)`` clipped to the data's range, chunk reward ``(B,)``,
        termination probability ``(B,)`` and the elites' disagreement ``(B,)``: the std over
        elites of the standardized predictions, root-mean-squared over outputs (0 = agree).
        """
        device = self.obs_norm.mean.device
        obs = flat_batch(obs, self.obs_horizon * self.obs_dim, "obs").to(device)
        chunk = flat_batch(chunk, self.chunk_dim, "chunk").to(device)
        every = self(obs, chunk)  # (M, B, To*O + 2): members are evaluated together anyway
        spread = every[self.elites, :, :-1].std(dim=0, unbiased=False).pow(2).mean(-1).sqrt()
        out = every[member.to(device), torch.arange(len(obs), device=device)]
        raw = self.target_norm.inverse(out[:, :-1])
        nxt = obs[:, -self.obs_dim :].repeat(1, self.obs_horizon) + raw[:, :-1]
        # Angles wrap into the data's convention ([0, 2 pi) or [-pi, pi)); the rest is clipped.
        shift = torch.where(self.obs_low >= 0, 0.0, math.pi)
        wrapped = torch.remainder(nxt + shift, 2 * math.pi) - shift
        clipped = torch.maximum(torch.minimum(nxt, self.obs_high), self.obs_low)
        nxt = torch.where(self.angle_mask, wrapped, clipped)
        return nxt, raw[:, -1], torch.sigmoid(out[:, -1]), spread

    def losses(self, d: Decisions) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member ``(M,)`` standardized-target MSE and termination cross-entropy on ``d``."""
        out = self(d.obs_flat, d.chunk_flat)
        target = self.target_norm(self.targets(d).to(out.device))
        mse = (out[..., :-1] - target).pow(2).mean(dim=(1, 2))
        done = d.done.to(out.device).expand(self.members, -1)
        ce = F.binary_cross_entropy_with_logits(out[..., -1], done, reduction="none").mean(1)
        return mse, ce

    _ARGS = (
        "obs_horizon",
        "obs_dim",
        "chunk_dim",
        "gamma_chunk",
        "members",
        "hidden",
        "angle_dims",
    )

    def save(self, directory: str | os.PathLike, extra: dict | None = None) -> Path:
        """``config.json`` (constructor arguments, ``extra``) + ``model.safetensors``."""
        config = {k: getattr(self, k) for k in self._ARGS} | {"elites": len(self.elites)}
        return save_checkpoint(directory, {"kind": DYNAMICS_KIND, **config, **(extra or {})},
                               self.state_dict())  # fmt: skip

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu"):
        """Rebuild an ensemble written by :meth:`save` (elites and statistics included)."""
        config, tensors = load_checkpoint(directory, kind=DYNAMICS_KIND)
        missing = [k for k in (*cls._ARGS, "elites") if k not in config]
        if missing:
            raise CheckpointError(f"{directory}/config.json lacks {missing}")
        model = cls(**{k: config[k] for k in (*cls._ARGS, "elites")})
        load_state_dict_strict(model, tensors, directory)
        return model.to(device)


def train_dynamics(
    decisions: Decisions,
    cfg: DynamicsConfig | None = None,
    on_log: Callable[[dict], None] | None = None,
) -> tuple[DynamicsEnsemble, list[dict]]:
    """Fit a :class:`DynamicsEnsemble` to ``decisions`` and choose its elites.

    Only decisions whose chunk ran all Ta steps (or ended in a termination) are used.
    Episodes are split into train / validation. Every member draws its own minibatches,
    keeps the snapshot with its lowest validation loss, and the ``cfg.elites`` members with
    the lowest such loss become elites. Progress records ``{"step", "train_loss",
    "val_loss" (list per member), "val_best"}`` go to ``on_log`` every ``cfg.eval_every``.
    """
    cfg = cfg or DynamicsConfig()
    # Imagined chunks always run Ta steps, so a chunk cut short by a time limit (padded, not
    # terminated) is a different transition than the model predicts: leave those out.
    whole = decisions.chunk_mask.all(dim=1) | (decisions.done > 0)
    if not whole.any():
        raise ValueError(
            f"no decision has a whole chunk of Ta={decisions.action_horizon} steps; episodes "
            "are shorter than the action horizon — collect longer episodes or lower Ta"
        )
    train, val = decisions.select(whole).split_episodes(cfg.val_fraction, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = DynamicsEnsemble(
        decisions.obs_horizon,
        decisions.obs_dim,
        decisions.chunk_flat.shape[1],
        decisions.gamma**decisions.action_horizon,
        cfg.members,
        cfg.elites,
        cfg.hidden,
        cfg.angle_dims,
    )
    model.fit_normalizers(train)
    params = [p for layer in [*model.layers, model.head] for p in layer.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    best = [p.detach().clone() for p in params]
    best_loss = torch.full((cfg.members,), float("inf"))
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    running, since = 0.0, 0
    for step in range(1, cfg.steps + 1):
        # (M, B) indices: each member sees its own stream of minibatches.
        idx = torch.randint(len(train), (cfg.members, cfg.batch_size), generator=gen)
        batch = train.select(idx.reshape(-1))
        shape = (cfg.members, cfg.batch_size, -1)
        out = model(batch.obs_flat.reshape(shape), batch.chunk_flat.reshape(shape))
        target = model.target_norm(model.targets(batch)).reshape(shape)
        done = batch.done.reshape(cfg.members, cfg.batch_size)
        loss = (out[..., :-1] - target).pow(2).mean()
        loss = loss + cfg.done_weight * F.binary_cross_entropy_with_logits(out[..., -1], done)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running, since = running + float(loss.detach()), since + 1

        if step % cfg.eval_every == 0 or step == cfg.steps:
            with torch.no_grad():
                mse, ce = model.losses(val)
                val_loss = (mse + cfg.done_weight * ce).cpu()
                improved = val_loss < best_loss
                best_loss = torch.where(improved, val_loss, best_loss)
                for b, p in zip(best, params, strict=True):
                    b[improved] = p.detach()[improved]  # per-member snapshot
            record = {
                "step": step,
                "train_loss": running / since,
                "val_loss": val_loss.tolist(),
                "val_best": float(best_loss.min()),
            }
            history.append(record)
            log.info(
                "dynamics step %d/%d: train %.4g, val best %.4g",
                step,
                cfg.steps,
                record["train_loss"],
                record["val_best"],
            )
            if on_log is not None:
                on_log(record)
            running, since = 0.0, 0
    with torch.no_grad():
        for b, p in zip(best, params, strict=True):
            p.copy_(b)
    model.val_loss.copy_(best_loss)
    model.elites.copy_(torch.argsort(best_loss)[: cfg.elites])
    return model, history
