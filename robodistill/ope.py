"""Off-policy evaluation with a learned dynamics ensemble, and the gate it drives.

RL-100's offline stage only lets the reference policy advance when an off-policy estimate
of the new policy's value beats the best so far. The estimate follows its published code:
a dynamics ensemble learned from the store is rolled out under the candidate policy for
``H`` decisions from fixed start states and scored with the IQL Q-function::

    J(pi) = mean_s0 [ sum_{h<H} gc^h * alive_h * r_h  +  gc^H * alive_H * Q(s_H, pi(s_H)) ]
    gc = gamma**Ta (one decision = Ta env steps); alive_h = prod_{j<h} (1 - p_done_j)

Design choices (and why):

* **Decision level.** The model maps (obs history, executed chunk) to the next decision's
  history, the chunk's discounted reward and a termination probability: exactly the
  transitions of :mod:`robodistill.decisions`, so model, critics and policy agree on one MDP.
* **Deterministic members.** Each member predicts the mean (MSE on standardized targets,
  cross-entropy for termination). Simulators here are deterministic given the state, so
  the spread worth modelling is epistemic — the members' disagreement — and each rollout
  step uses one elite chosen by a generator fixed at construction. Sampling aleatoric
  noise as well (MOPO-style Gaussians) would only add variance to a *comparison* of two
  policies. Every call replays the same start states and elite choices (common random
  numbers), so two policies differ in the estimate only through their actions.
* **Horizon 2 decisions** by default (16 env steps at Ta = 8) instead of RL-100's 20: a
  decision here is a whole chunk, and on Push-T with rollouts folded into the data
  (``benchmarks/ope_ranking.py``) the model's compounding error flipped expert vs noisy
  expert from 6-7 decisions on, while H <= 5 ranked right and H = 1..2 came closest to
  the true values; the Q bootstrap carries the value beyond H.
* Imagined histories are clipped to the data's range (angles named in ``angle_dims`` are
  wrapped instead), so critics and model are never queried far outside what they saw.
* Optional pessimism (``OPEConfig.uncertainty_penalty``, off by default as in RL-100):
  rewards lose a multiple of the elites' disagreement, MOPO-style.

The estimate is only as good as the data's support: on expert-only Push-T data it ranks
far-off policies (noisy, random) *above* the expert, because model and Q extrapolate
optimistically off the data (``benchmarks/ope_ranking.py``). The gate is meant for the
small, clipped steps of the offline stage, and rollouts folded into the store widen it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from robodistill.decisions import Decisions
from robodistill.offline_critics import IQLCritics, Standardizer, flat_batch
from robodistill.policies.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)

log = logging.getLogger(__name__)

DYNAMICS_KIND = "dynamics/ensemble"
PolicyFn = Callable[[torch.Tensor], torch.Tensor]
"""``policy_fn(obs_hist_flat (B, To*O)) -> chunk_flat (B, Ta*A)``, raw units, no grad needed."""


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
        for name, ok, want in checks:
            if not ok:
                raise ValueError(
                    f"DynamicsConfig.{name} must be {want}, got {getattr(self, name)!r}"
                )


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


@dataclass
class OPEConfig:
    """Off-policy evaluation by ensemble rollouts scored with the IQL Q-function."""

    horizon: int = 2
    """H: imagined decisions per rollout before bootstrapping (see the module docstring)."""
    n_starts: int = 256
    """Start histories sampled (without replacement where possible) from the decisions."""
    seed: int = 0
    """Fixes the start states and each step's elite: equal footing for every policy."""
    terminal: Literal["q", "v", "none"] = "q"
    """Bootstrap at H: "q" = min Q(s_H, pi(s_H)), "v" = V(s_H) (policy-free), "none" = 0."""
    action_low: float | list[float] | None = None
    """Clip the policy's chunk to the action space first (the env would clip it too)."""
    action_high: float | list[float] | None = None
    """Upper bound matching ``action_low``; per action dimension or one number."""
    uncertainty_penalty: float = 0.0
    """lambda of a MOPO-style pessimism: each imagined chunk reward loses lambda * (elite
    disagreement) * (the data's chunk-reward std), so policies that drive the model where
    its members disagree (off the data) are not credited with its guesses. 0 = RL-100."""

    def __post_init__(self) -> None:
        if self.horizon < 0 or self.n_starts < 1:
            raise ValueError(
                f"OPEConfig needs horizon >= 0 and n_starts >= 1, got horizon={self.horizon}, "
                f"n_starts={self.n_starts}"
            )
        if self.uncertainty_penalty < 0:
            raise ValueError(
                f"OPEConfig.uncertainty_penalty must be >= 0, got {self.uncertainty_penalty}"
            )
        if self.terminal not in ("q", "v", "none"):
            raise ValueError(
                f"OPEConfig.terminal must be 'q', 'v' or 'none', got {self.terminal!r}"
            )


@dataclass
class OPEResult:
    """One estimate: ``value`` = mean of ``per_start`` (S,) = ``reward_part + terminal_part``.

    ``by_horizon[h]`` is the estimate had the rollout stopped after ``h`` decisions
    (h = 0..H, bootstrapping there), free because the bootstrap ``Q(s_h, pi(s_h))`` uses
    the chunk the rollout executes next; ``by_horizon[-1] == value``.
    """

    value: float
    per_start: torch.Tensor
    reward_part: float
    terminal_part: float
    by_horizon: list[float]


class OffPolicyEvaluator:
    """Estimate ``J(pi)`` for any ``policy_fn`` on the same start states and model noise.

    ``starts`` gives the candidate start histories (``Decisions``; their ``obs``).
    """

    def __init__(
        self,
        model: DynamicsEnsemble,
        critics: IQLCritics | None,
        starts: Decisions,
        cfg: OPEConfig | None = None,
    ):
        self.model, self.critics, self.cfg = model, critics, cfg or OPEConfig()
        if self.cfg.terminal != "none" and critics is None:
            raise ValueError(
                f"OPEConfig.terminal={self.cfg.terminal!r} needs critics; pass IQLCritics or "
                "set terminal='none'"
            )
        want = (starts.obs_flat.shape[1], starts.chunk_flat.shape[1])
        parts = {"dynamics model": (model.obs_horizon * model.obs_dim, model.chunk_dim)}
        if critics is not None:
            parts["critics"] = (critics.obs_dim, critics.chunk_dim)
        bad = {name: dims for name, dims in parts.items() if dims != want}
        if bad:
            raise ValueError(
                f"start decisions have (To*O, Ta*A) = {want} but {bad}; train the model and "
                "critics on decisions built with the same DecisionConfig as the start states"
            )
        gen = torch.Generator().manual_seed(self.cfg.seed)
        n = len(starts)
        if n >= self.cfg.n_starts:
            idx = torch.randperm(n, generator=gen)[: self.cfg.n_starts]
        else:  # fewer decisions than starts asked for: draw with replacement
            idx = torch.randint(n, (self.cfg.n_starts,), generator=gen)
        self.start_obs = starts.obs_flat[idx].clone()  # (S, To*O)
        elites = model.elites.cpu()
        pick = torch.randint(len(elites), (self.cfg.horizon, len(idx)), generator=gen)
        self.members = elites[pick]  # (H, S): the elite used at each step of each rollout
        self.chunk_dim = model.chunk_dim
        self.reward_std = float(model.target_norm.std[-1])

    def _act(self, policy_fn: PolicyFn, obs: torch.Tensor) -> torch.Tensor:
        chunk = torch.as_tensor(policy_fn(obs.clone()))  # a clone: the policy may not edit ours
        if chunk.shape != (len(obs), self.chunk_dim):
            raise ValueError(
                f"policy_fn returned shape {tuple(chunk.shape)}; OPE expects (B, Ta*A) = "
                f"({len(obs)}, {self.chunk_dim}) for obs {tuple(obs.shape)}"
            )
        if not torch.isfinite(chunk).all():
            raise ValueError("policy_fn returned NaN or inf actions")
        lo, hi = self.cfg.action_low, self.cfg.action_high
        if lo is not None or hi is not None:
            lo_t = torch.as_tensor(-math.inf if lo is None else lo, dtype=chunk.dtype).reshape(-1)
            hi_t = torch.as_tensor(math.inf if hi is None else hi, dtype=chunk.dtype).reshape(-1)
            a_dim = max(lo_t.numel(), hi_t.numel())  # per-dimension bounds set A; scalars: 1
            if self.chunk_dim % a_dim:
                raise ValueError(
                    f"OPEConfig.action_low/high have {a_dim} entries, which does not divide "
                    f"the chunk size {self.chunk_dim} (= Ta*A); give one bound or one per action"
                )
            steps = chunk.reshape(len(chunk), -1, a_dim)
            chunk = torch.maximum(torch.minimum(steps, hi_t), lo_t).reshape(len(chunk), -1)
        return chunk.float()

    @torch.no_grad()
    def evaluate(self, policy_fn: PolicyFn) -> OPEResult:
        """Roll ``policy_fn`` out in the model from the fixed starts; see the module docstring."""
        obs = self.start_obs
        s, horizon = len(obs), self.cfg.horizon
        alive, scale = torch.ones(s), 1.0
        rewards, by_horizon = torch.zeros(s), []
        for h in range(horizon + 1):
            chunk = self._act(policy_fn, obs)
            if self.cfg.terminal == "q":
                tail = self.critics.q(obs, chunk).cpu()
            elif self.cfg.terminal == "v":
                tail = self.critics.value(obs).cpu()
            else:
                tail = torch.zeros(s)
            terminal = scale * alive * tail
            by_horizon.append(float((rewards + terminal).mean()))
            if h == horizon:
                break
            obs, r, p_done, spread = (
                x.cpu() for x in self.model.predict(obs, chunk, self.members[h])
            )
            r = r - self.cfg.uncertainty_penalty * spread * self.reward_std
            rewards += scale * alive * r
            alive = alive * (1.0 - p_done)
            scale *= self.model.gamma_chunk
        total = rewards + terminal
        return OPEResult(
            float(total.mean()), total, float(rewards.mean()), float(terminal.mean()), by_horizon
        )


@dataclass
class GateDecision:
    """One gate verdict, as written to metrics.jsonl. ``stderr``: standard error of the
    paired per-start difference to the best (None without per-start values or ``z``)."""

    step: int
    estimate: float
    best_before: float | None
    accepted: bool
    margin: float
    stderr: float | None = None


@dataclass
class OPEGate:
    """Accept a policy update only when its estimate beats the best so far by ``margin``,
    plus ``z`` standard errors of the paired difference when ``z > 0``.

    Why the paired test: every estimate replays the same start states, elites and chain
    noise (common random numbers), so ``per_start`` values of two policies pair up and
    their difference's standard error, ``std(d) / sqrt(S)``, measures how much of an
    improvement the S starts can resolve. On Nav diffdrive the plain ``>`` accepted steps of
    0.001 while one estimate's own noise (another chain-noise seed) moved it by 0.09: the
    reference drifted on noise. With ``z = 2`` a step is taken only when the estimate's
    gain is about 2 standard errors above zero (one-sided, ~98 %).

    ``consider`` appends a :class:`GateDecision` to ``history``, logs it and hands its dict
    to ``on_decision`` (e.g. ``StageRun.log_metrics``-style writers). The first estimate is
    always accepted: it sets the reference. :meth:`rebase` replaces the bar (the evaluator
    changed) without a verdict.
    """

    margin: float = 0.0
    on_decision: Callable[[dict], None] | None = None
    best: float | None = None
    history: list[GateDecision] = field(default_factory=list)
    z: float = 0.0
    best_per_start: list[float] | None = None

    def consider(self, estimate: float, step: int, per_start=None) -> bool:
        """``estimate``: the candidate's value; ``per_start`` (S,): its per-start values
        (:attr:`OPEResult.per_start`), needed when ``z > 0``."""
        estimate = float(estimate)
        if not math.isfinite(estimate):
            raise ValueError(
                f"OPE estimate at step {step} is {estimate}; the model or critics "
                "diverged — check their training losses"
            )
        per_start = None if per_start is None else [float(v) for v in per_start]
        if self.z > 0 and per_start is None:
            raise ValueError("OPEGate with z > 0 needs per_start values (OPEResult.per_start)")
        stderr, accepted = None, self.best is None
        if not accepted:
            bar = self.best + self.margin
            if self.z > 0 and self.best_per_start is not None:
                if len(per_start) != len(self.best_per_start):
                    raise ValueError(
                        f"per_start has {len(per_start)} values, the best's {len(self.best_per_start)}:"
                        " every estimate must use the same start states"
                    )
                diff = torch.tensor(per_start) - torch.tensor(self.best_per_start)
                stderr = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
                bar += self.z * stderr
            accepted = estimate > bar
        decision = GateDecision(int(step), estimate, self.best, accepted, float(self.margin),
                                stderr)  # fmt: skip
        self.history.append(decision)
        if accepted:
            self.best, self.best_per_start = estimate, per_start
        log.info("OPE gate step %d: estimate %.5g, best %s, stderr %s: %s", step, estimate,
                 decision.best_before, stderr, "accept" if accepted else "reject")  # fmt: skip
        if self.on_decision is not None:
            self.on_decision(asdict(decision))
        return accepted

    def rebase(self, estimate: float, per_start=None) -> None:
        """The reference's value under a new evaluator becomes the bar (no verdict)."""
        self.best = float(estimate)
        self.best_per_start = None if per_start is None else [float(v) for v in per_start]

    def state(self) -> dict:
        """JSON-serializable state, to resume a run."""
        return {
            "margin": self.margin,
            "z": self.z,
            "best": self.best,
            "best_per_start": self.best_per_start,
            "history": list(map(asdict, self.history)),
        }

    @classmethod
    def from_state(cls, state: dict, on_decision: Callable[[dict], None] | None = None):
        return cls(
            margin=float(state["margin"]),
            on_decision=on_decision,
            best=state["best"],
            history=[GateDecision(**d) for d in state["history"]],
            z=float(state.get("z", 0.0)),
            best_per_start=state.get("best_per_start"),
        )
