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
  transitions of :mod:`robodistill.teach.rl100.decisions`, so model, critics and policy
  agree on one MDP.
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

The model itself (``DynamicsConfig``, ``DynamicsEnsemble``, ``train_dynamics``) lives in
:mod:`robodistill.teach.rl100.dynamics`; this module holds the estimator and the gate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from robodistill.teach.rl100.critics import IQLCritics
from robodistill.teach.rl100.decisions import Decisions

# The dynamics ensemble lives in its own module; its names stay importable from here.
from robodistill.teach.rl100.dynamics import DynamicsConfig as DynamicsConfig
from robodistill.teach.rl100.dynamics import DynamicsEnsemble
from robodistill.teach.rl100.dynamics import train_dynamics as train_dynamics

log = logging.getLogger(__name__)

PolicyFn = Callable[[torch.Tensor], torch.Tensor]
"""``policy_fn(obs_hist_flat (B, To*O)) -> chunk_flat (B, Ta*A)``, raw units, no grad needed."""


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
