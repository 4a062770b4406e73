"""IQL critics on decision-level transitions: twin Q(s, a), V(s), advantages.

Implicit Q-learning (Kostrikov et al., 2021) learns values from a fixed data set without
ever querying the policy, which is what RL-100's offline stage needs: advantages for the
PPO-style update over the denoising chain, and a Q-function that scores the dynamics
model's rollouts in off-policy evaluation (:mod:`robodistill.teach.rl100.ope`). Here ``s`` is the
flattened observation history ``(To*O)`` and ``a`` the executed action chunk ``(Ta*A)`` of
:class:`robodistill.teach.rl100.decisions.Decisions`, so one transition spans a whole chunk::

    V  <- expectile_tau( min_i Qtarget_i(s, a) - V(s) )        tau = 0.7: an upper expectile,
    Qi <- MSE( r + discount * (1 - done) * V(s') )               i.e. a soft max over the data's
    Qtarget <- polyak(Q, rate)                                   actions, in-support only
    advantage(s, a) = min_i Q_i(s, a) - V(s)

``discount`` is ``gamma**len`` per transition (shorter chunks at episode ends discount less).
Inputs are standardized with statistics fitted on the training data and saved with the
weights, so a loaded critic needs nothing else.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
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
from robodistill.teach.rl100.decisions import Decisions

log = logging.getLogger(__name__)

CRITICS_KIND = "critics/iql"


def check_fields(config: object, checks: Sequence[tuple[str, bool, str]]) -> None:
    """Raise ``ValueError("<Class>.<name> must be <want>, got <value>")`` for the first
    ``(name, ok, want)`` of ``checks`` that is not ok."""
    for name, ok, want in checks:
        if not ok:
            raise ValueError(
                f"{type(config).__name__}.{name} must be {want}, got {getattr(config, name)!r}"
            )


@dataclass
class IQLConfig:
    """Implicit Q-learning hyper-parameters (defaults follow the IQL paper's locomotion set)."""

    expectile: float = 0.7
    """tau of the expectile regression for V; 0.5 is the mean (SARSA), -> 1 approaches max Q."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden layer widths of each of the three MLPs (Q1, Q2, V)."""
    lr: float = 3e-4
    """Adam learning rate for both Q and V."""
    batch_size: int = 256
    """Transitions per gradient step."""
    steps: int = 10_000
    """Gradient steps of one :func:`train_iql` call."""
    polyak: float = 0.005
    """Rate at which the target Q networks follow the online ones each step."""
    log_every: int = 1000
    """Steps between progress records (loss, mean Q / V)."""
    seed: int = 0
    """Seeds minibatch sampling (and network init when the critics are built by train_iql)."""

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        checks = [
            ("expectile", 0.0 < self.expectile < 1.0, "in (0, 1); 0.7 is IQL's default"),
            ("lr", self.lr > 0, "> 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("steps", self.steps >= 0, ">= 0"),
            ("polyak", 0.0 < self.polyak <= 1.0, "in (0, 1]"),
            ("log_every", self.log_every >= 1, ">= 1"),
            ("hidden", len(self.hidden) > 0 and min(self.hidden) >= 1, "non-empty positive"),
        ]
        check_fields(self, checks)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """ReLU MLP ``(B, in_dim) -> (B, out_dim)``."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class Standardizer(nn.Module):
    """Feature-wise ``(x - mean) / std`` with statistics kept as buffers (saved with weights).

    Shapes: ``(..., D) -> (..., D)``. A constant feature gets std 1, not a division by zero.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> Standardizer:
        """Fit on ``x`` (N, D)."""
        x = x.to(self.mean.device, torch.float64)
        self.mean.copy_(x.mean(0))
        std = x.std(0, unbiased=False)
        self.std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


def flat_batch(x: torch.Tensor, dim: int, name: str) -> torch.Tensor:
    """Accept ``(B, D)`` or ``(B, T, F)`` with ``T*F == D``; return float32 ``(B, D)``."""
    x = torch.as_tensor(x)
    if x.ndim == 3:
        x = x.reshape(x.shape[0], -1)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}; expected (B, {dim}) or (B, T, F) with "
            f"T*F = {dim} (the flattened history / chunk the model was built for)"
        )
    return x.float()


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric squared loss ``mean(|tau - 1[diff < 0]| * diff**2)`` of ``diff`` (B,)."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


class IQLCritics(nn.Module):
    """Twin Q(s, a) and V(s) with their target Qs and input standardizers.

    ``obs`` is ``(B, To*O)`` (or ``(B, To, O)``), ``chunk`` is ``(B, Ta*A)`` (or ``(B, Ta, A)``),
    both in raw (unnormalized) units.
    """

    def __init__(self, obs_dim: int, chunk_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.obs_dim, self.chunk_dim, self.hidden = int(obs_dim), int(chunk_dim), tuple(hidden)
        self.obs_norm = Standardizer(self.obs_dim)
        self.chunk_norm = Standardizer(self.chunk_dim)
        self.q1 = mlp(self.obs_dim + self.chunk_dim, self.hidden, 1)
        self.q2 = mlp(self.obs_dim + self.chunk_dim, self.hidden, 1)
        self.v = mlp(self.obs_dim, self.hidden, 1)
        # Targets are copies updated by Polyak averaging only, never by the optimizer.
        self.q1_target = copy.deepcopy(self.q1).requires_grad_(False)
        self.q2_target = copy.deepcopy(self.q2).requires_grad_(False)

    @classmethod
    def for_decisions(cls, decisions: Decisions, hidden: Sequence[int] = (256, 256)):
        """Critics sized for ``decisions`` with standardizers fitted on them."""
        critics = cls(decisions.obs_flat.shape[1], decisions.chunk_flat.shape[1], hidden)
        critics.obs_norm.fit(decisions.obs_flat)
        critics.chunk_norm.fit(decisions.chunk_flat)
        return critics

    def _sa(self, obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        device = self.obs_norm.mean.device
        obs = self.obs_norm(flat_batch(obs, self.obs_dim, "obs").to(device))
        chunk = self.chunk_norm(flat_batch(chunk, self.chunk_dim, "chunk").to(device))
        return torch.cat([obs, chunk], dim=-1)

    def qs(self, obs: torch.Tensor, chunk: torch.Tensor, target: bool = False):
        """Both Q estimates, each ``(B,)``; ``target=True`` uses the target networks."""
        sa = self._sa(obs, chunk)
        q1, q2 = (self.q1_target, self.q2_target) if target else (self.q1, self.q2)
        return q1(sa).squeeze(-1), q2(sa).squeeze(-1)

    def q(self, obs: torch.Tensor, chunk: torch.Tensor, target: bool = False) -> torch.Tensor:
        """Pessimistic ``min(Q1, Q2)`` ``(B,)``."""
        return torch.minimum(*self.qs(obs, chunk, target))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s) ``(B,)``."""
        device = self.obs_norm.mean.device
        return self.v(self.obs_norm(flat_batch(obs, self.obs_dim, "obs").to(device))).squeeze(-1)

    def advantage(self, obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        """``min Q(s, a) - V(s)`` ``(B,)``: how much better the chunk is than the data's
        typical (expectile) chunk at that state."""
        return self.q(obs, chunk) - self.value(obs)

    @torch.no_grad()
    def update_targets(self, rate: float) -> None:
        for online, target in ((self.q1, self.q1_target), (self.q2, self.q2_target)):
            for p, tp in zip(online.parameters(), target.parameters(), strict=True):
                tp.lerp_(p, rate)

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | os.PathLike, extra: dict | None = None) -> Path:
        """``config.json`` (dims, hidden, ``extra``) + ``model.safetensors``; no pickle."""
        config = {
            "kind": CRITICS_KIND,
            "obs_dim": self.obs_dim,
            "chunk_dim": self.chunk_dim,
            "hidden": list(self.hidden),
            **(extra or {}),
        }
        return save_checkpoint(directory, config, self.state_dict())

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu"):
        """Rebuild critics written by :meth:`save`."""
        config, tensors = load_checkpoint(directory, kind=CRITICS_KIND)
        try:
            critics = cls(config["obs_dim"], config["chunk_dim"], config["hidden"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{directory}/config.json lacks critic sizes ({e})") from e
        load_state_dict_strict(critics, tensors, directory)
        return critics.to(device)


def train_iql(
    decisions: Decisions,
    cfg: IQLConfig | None = None,
    critics: IQLCritics | None = None,
    on_log: Callable[[dict], None] | None = None,
) -> tuple[IQLCritics, list[dict]]:
    """Train IQL critics on ``decisions`` for ``cfg.steps`` gradient steps.

    Pass ``critics`` to continue training (e.g. after folding new rollouts into the data;
    its standardizers are kept so earlier values stay comparable). Returns the critics and
    the progress records ``{"step", "q_loss", "v_loss", "q_mean", "v_mean"}`` also handed
    to ``on_log`` every ``cfg.log_every`` steps (and after the last).
    """
    cfg = cfg or IQLConfig()
    if len(decisions) == 0:
        raise ValueError("train_iql got no decisions; build them from a non-empty store")
    torch.manual_seed(cfg.seed)
    if critics is None:
        critics = IQLCritics.for_decisions(decisions, cfg.hidden)
    device = critics.obs_norm.mean.device
    q_opt = torch.optim.Adam([*critics.q1.parameters(), *critics.q2.parameters()], lr=cfg.lr)
    v_opt = torch.optim.Adam(critics.v.parameters(), lr=cfg.lr)
    # Standardize the whole data set once; the loop then works on normalized inputs only.
    with torch.no_grad():
        obs = critics.obs_norm(decisions.obs_flat.to(device))
        chunk = critics.chunk_norm(decisions.chunk_flat.to(device))
        next_obs = critics.obs_norm(decisions.next_obs_flat.to(device))
        # Bootstrapping weight per transition: gamma**len, and zero past a termination.
        not_done_discount = (decisions.discount * (1.0 - decisions.done)).to(device)
        reward = decisions.reward.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    sums = {"q_loss": 0.0, "v_loss": 0.0, "q_mean": 0.0, "v_mean": 0.0}
    since = 0
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(len(decisions), (cfg.batch_size,), generator=gen).to(device)
        s, s2, r, w = obs[idx], next_obs[idx], reward[idx], not_done_discount[idx]
        sa = torch.cat([s, chunk[idx]], dim=-1)

        # V: upper expectile of the (target) Q over the data's chunks at s.
        with torch.no_grad():
            q_target = torch.minimum(critics.q1_target(sa), critics.q2_target(sa)).squeeze(-1)
        v = critics.v(s).squeeze(-1)
        v_loss = expectile_loss(q_target - v, cfg.expectile)
        v_opt.zero_grad(set_to_none=True)
        v_loss.backward()
        v_opt.step()

        # Q: one-step TD target through V(s'), so no action outside the data is ever queried.
        with torch.no_grad():
            td_target = r + w * critics.v(s2).squeeze(-1)
        q1, q2 = critics.q1(sa).squeeze(-1), critics.q2(sa).squeeze(-1)
        q_loss = F.mse_loss(q1, td_target) + F.mse_loss(q2, td_target)
        q_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        q_opt.step()
        critics.update_targets(cfg.polyak)

        since += 1
        for k, val in (("q_loss", q_loss), ("v_loss", v_loss), ("q_mean", q1), ("v_mean", v)):
            sums[k] += float(val.detach().mean())
        if step % cfg.log_every == 0 or step == cfg.steps:
            record = {"step": step, **{k: v_ / since for k, v_ in sums.items()}}
            history.append(record)
            log.info(
                "iql step %d/%d: q_loss %.4g v_loss %.4g q %.4g v %.4g",
                step,
                cfg.steps,
                record["q_loss"],
                record["v_loss"],
                record["q_mean"],
                record["v_mean"],
            )
            if on_log is not None:
                on_log(record)
            sums, since = dict.fromkeys(sums, 0.0), 0
    return critics, history


def critics_config(cfg: IQLConfig) -> dict:
    """JSON form of ``cfg`` (for ``IQLCritics.save(extra=...)`` and run manifests)."""
    d = asdict(cfg)
    d["hidden"] = list(cfg.hidden)
    return d
