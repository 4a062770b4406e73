"""RL-100 stage 2: offline RL on the DDIM denoising chain, gated by off-policy evaluation.

The K-step stochastic DDIM chain is an MDP whose actions are the denoising steps; each step
is a Gaussian with std ``max(sigma, min_std)``, so it has a log-probability
(:meth:`DiffusionPolicy.sample_chain`). One round of the loop::

    reference  = frozen copy of the policy (the PPO ratio's behaviour policy)
    repeat K (updates_per_round) times:
        s          ~ decision states of the store                    obs (B, To, O)
        chain      ~ reference.sample_chain(s)                       latents (B, K+1, H, A)
        chunk      = chain.actions[:, To-1 : To-1+Ta]                executed chunk (B, Ta, A)
        adv        = normalize(min Q(s, chunk) - V(s))               IQL critics (B,)
        ratio_k    = exp(log pi(x_{k-1}|x_k) - log pi_ref(x_{k-1}|x_k))    (B, K)
        loss       = -sum_k mean_B min(ratio_k adv, clip(ratio_k, 1-eps, 1+eps) adv)
    J_hat = OPE(candidate)                       dynamics-ensemble rollouts scored by Q
    OPEGate: J_hat > best + margin + z * SE ? reference <- candidate (saved)
                                              : candidate <- reference
    (SE: standard error of the paired per-start difference, same starts and noise)

Every verdict goes to ``stage.log_metrics`` (``offline_step``, ``gate_estimate``,
``gate_best``, ``gate_accepted``). The initial (imitation) policy is evaluated first and
sets the bar. A rejected round restores the reference weights exactly and restarts Adam
(its moments point in the rejected direction).

Data flywheel (``flywheel_every > 0``): every N rounds the current reference policy is
rolled out in the env, the episodes are folded into the decisions (``Decisions.concat``)
and critics and dynamics are refit (critics continue from their weights).

EMA: RL updates train ``net`` directly (no EMA). At the start ``net`` <- ``ema_net`` (the
imitation policy that was evaluated and selected), and ``ema_net`` is kept equal to
``net`` whenever the policy is evaluated or saved, so ``act`` runs the trained weights.

Artifacts in ``out_dir``: ``policy/`` (the last accepted policy: the next stage's start),
``critics/``, ``dynamics/``, ``gate.json`` (every verdict), ``result.json`` (present =
done; a second call returns it).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodistill.config import ConfigError
from robodistill.core.rollout import rollout
from robodistill.core.rundir import write_json_atomic
from robodistill.core.seeds import FLYWHEEL_SEED_OFFSET, VALIDATION_SEED_OFFSET, episode_seeds
from robodistill.policies.diffusion import DiffusionPolicy
from robodistill.teach.rl100.critics import IQLConfig, IQLCritics, critics_config, train_iql
from robodistill.teach.rl100.decisions import (
    DecisionConfig,
    Decisions,
    build_decisions,
    decisions_from_store,
)
from robodistill.teach.rl100.ope import (
    DynamicsConfig,
    OffPolicyEvaluator,
    OPEConfig,
    OPEGate,
    OPEResult,
    train_dynamics,
)
from robodistill.training.checkpoint import result_or_workdir

log = logging.getLogger(__name__)


def sync_ema(policy: DiffusionPolicy) -> None:
    """``ema_net`` <- ``net``: RL stages evaluate and save the weights they train."""
    policy.ema_net.load_state_dict(policy.net.state_dict())


def executed_chunk(policy: DiffusionPolicy, actions: torch.Tensor) -> torch.Tensor:
    """(..., H, A) predicted chunk -> (..., Ta, A) executed part, from index To - 1."""
    c = policy.config
    return actions[..., c.obs_horizon - 1 : c.obs_horizon - 1 + c.action_horizon, :]


def clipped_surrogate(new_lp, old_lp, adv, clip) -> tuple[torch.Tensor, dict]:
    """PPO loss over denoising steps.

    ``new_lp`` / ``old_lp`` (B, k) per-step log-probabilities; ``adv`` (B,) one advantage
    per chain shared by its steps, or (B, k) one per step; ``clip`` a float or (k,) one
    per step (DPPO's schedule). Each step's clipped objective is averaged over the batch
    and summed over steps (RL-100). Returns the loss and stats (ratio mean, clip fraction,
    approximate KL per step).
    """
    log_ratio = new_lp - old_lp
    ratio = log_ratio.exp()
    a = adv[:, None] if adv.ndim == 1 else adv
    clip = torch.as_tensor(clip, dtype=ratio.dtype, device=ratio.device)
    clipped = torch.minimum(torch.maximum(ratio, 1.0 - clip), 1.0 + clip)
    surrogate = torch.minimum(ratio * a, clipped * a)
    loss = -surrogate.mean(0).sum()
    with torch.no_grad():
        stats = {
            "ratio_mean": float(ratio.mean()),
            "clip_frac": float(((ratio - 1.0).abs() > clip).float().mean()),
            "approx_kl": float(((ratio - 1.0) - log_ratio).mean()),
        }
    return loss, stats


def make_policy_fn(policy: DiffusionPolicy, mode: str, seed: int):
    """OPE's ``policy_fn``: (S, To*O) histories -> (S, Ta*A) executed chunks.

    The chain's noise comes from a generator seeded afresh for every estimate, so two
    candidates are compared on the same noise (common random numbers).
    """
    c = policy.config
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def policy_fn(obs_flat: torch.Tensor) -> torch.Tensor:
        obs = obs_flat.reshape(len(obs_flat), c.obs_horizon, c.obs_dim)
        if mode == "deterministic":
            chunk = policy.predict_action_chunk(obs, generator=gen, use_ema=False)
        else:
            chunk = policy.sample_chain(obs, generator=gen).actions
        return executed_chunk(policy, chunk).reshape(len(obs), -1).cpu()

    return policy_fn


class OfflineRL:
    """The stage's state and its two moves, :meth:`update` and :meth:`gate_round`.

    ``policy`` is the candidate being trained, ``reference`` the last accepted policy.
    ``advantage_sign`` = -1 turns updates into deliberately harmful ones (tests).
    """

    def __init__(self, cfg, stage, policy: DiffusionPolicy, decisions: Decisions, out_dir: Path):
        self.o, self.stage, self.out_dir = cfg.teach.offline, stage, Path(out_dir)
        self.cfg = cfg
        self.policy, self.decisions = policy, decisions
        policy.net.load_state_dict(policy.ema_net.state_dict())  # start from the evaluated net
        sync_ema(policy)
        policy.net.train()
        self.reference = copy.deepcopy(policy)
        self.reference.net.requires_grad_(False)
        self.optimizer = self._optimizer()
        self.gen = torch.Generator().manual_seed(self.o.seed)
        self.step, self.advantage_sign = 0, 1.0
        self.gate = OPEGate(margin=self.o.gate_margin, z=self.o.gate_z,
                            on_decision=self._log_verdict)  # fmt: skip
        self.critics: IQLCritics | None = None
        self.fit_models()

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.policy.net.parameters(), lr=self.o.learning_rate)

    def _log_verdict(self, d: dict) -> None:
        self.stage.log_metrics(d["step"], {
            "stage": "offline", "gate_estimate": d["estimate"], "gate_best": d["best_before"],
            "gate_accepted": d["accepted"], "gate_margin": d["margin"],
            "gate_stderr": d["stderr"],
        })  # fmt: skip

    def fit_models(self) -> None:
        """(Re)fit IQL critics and the dynamics ensemble, rebuild the evaluator."""
        o, d, c = self.o, self.decisions, self.policy.config
        iql = IQLConfig(expectile=o.iql_expectile, hidden=tuple(o.critic_hidden),
                        steps=o.iql_steps, batch_size=256, seed=o.seed,
                        log_every=max(1, o.iql_steps // 5))  # fmt: skip
        self.iql_cfg = iql
        self.critics, self.iql_history = train_iql(d, iql, critics=self.critics)
        dyn = DynamicsConfig(members=o.dynamics_members, elites=o.dynamics_elites,
                             hidden=tuple(o.dynamics_hidden), steps=o.dynamics_steps,
                             eval_every=max(1, o.dynamics_steps // 5),
                             angle_dims=tuple(o.angle_dims), seed=o.seed)  # fmt: skip
        self.model, self.dynamics_history = train_dynamics(d, dyn)
        ope = OPEConfig(horizon=o.ope_horizon, n_starts=o.ope_starts, seed=o.seed,
                        action_low=c.action_low, action_high=c.action_high)  # fmt: skip
        self.evaluator = OffPolicyEvaluator(self.model, self.critics, d, ope)

    def estimate(self, policy: DiffusionPolicy) -> OPEResult:
        fn = make_policy_fn(policy, self.o.ope_policy, self.o.seed + 1)
        was_training = policy.net.training
        policy.net.eval()
        try:
            return self.evaluator.evaluate(fn)
        finally:
            policy.net.train(was_training)

    def update(self) -> dict[str, float]:
        """One clipped-surrogate step on chains sampled by the reference policy."""
        o, d = self.o, self.decisions
        idx = torch.randint(len(d), (o.batch_size,), generator=self.gen)
        obs = d.obs[idx]  # (B, To, O)
        chain = self.reference.sample_chain(obs, generator=self.gen)
        chunk = executed_chunk(self.policy, chain.actions).reshape(len(idx), -1)  # (B, Ta*A)
        with torch.no_grad():
            adv = self.critics.advantage(obs.reshape(len(idx), -1), chunk)
            adv = self.advantage_sign * (adv - adv.mean()) / (adv.std() + 1e-8)
        new_lp = self.policy.chain_log_prob(obs, chain.latents)  # (B, K), same eta/min_std
        loss, stats = clipped_surrogate(new_lp, chain.log_probs, adv, o.clip)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.net.parameters(), o.max_grad_norm)
        self.optimizer.step()
        self.step += 1
        return {"loss": float(loss.detach()), "grad_norm": float(grad_norm), **stats}

    def gate_round(self) -> bool:
        """Estimate the candidate; accept (reference <- candidate, save) or reject (restore)."""
        estimate = self.estimate(self.policy)
        accepted = self.gate.consider(estimate.value, self.step, estimate.per_start)
        if accepted:
            self.reference.net.load_state_dict(self.policy.net.state_dict())
            sync_ema(self.policy)
            self.policy.save(self.out_dir / "policy")
        else:
            self.policy.net.load_state_dict(self.reference.net.state_dict())
            self.optimizer = self._optimizer()
        write_json_atomic(self.out_dir / "gate.json", self.gate.state())
        return accepted

    def flywheel(self, index: int) -> int:
        """Roll the reference policy out (the ``index``-th collection, from 0), fold the
        episodes in, refit; returns the count."""
        cfg, o = self.cfg, self.o
        # Its own seed block (the old 900000 + step * 1000 met the evaluation seeds at step 0).
        first = FLYWHEEL_SEED_OFFSET + index * o.flywheel_episodes
        if first + o.flywheel_episodes > VALIDATION_SEED_OFFSET:
            raise ConfigError(
                "teach.offline: rounds / flywheel_every * flywheel_episodes must stay below "
                f"{VALIDATION_SEED_OFFSET - FLYWHEEL_SEED_OFFSET} (the flywheel's seeds would "
                "reach the validation seeds); collect fewer or less often"
            )
        base = episode_seeds(cfg, 1, first)[0]
        sync_ema(self.reference)
        episodes = rollout(cfg.env.id, self.reference, range(base, base + o.flywheel_episodes),
                           num_envs=cfg.env.num_envs, max_episode_steps=cfg.env.max_episode_steps,
                           env_kwargs=cfg.env.make_kwargs(), source_policy="rl100-offline")  # fmt: skip
        dc = DecisionConfig(self.decisions.obs_horizon, self.decisions.action_horizon,
                            self.decisions.gamma)  # fmt: skip
        self.decisions = Decisions.concat([self.decisions, build_decisions(episodes, dc)])
        self.fit_models()
        # The evaluator changed: the bar is the reference's value under the new estimate.
        ref = self.estimate(self.reference)
        self.gate.rebase(ref.value, ref.per_start)
        return len(episodes)


def run_offline_rl(cfg, stage, policy_dir, demos_path, out_dir) -> dict[str, Any]:
    """Stage 2 of RL-100 (module docstring). ``cfg``: RunConfig (``teach.offline``);
    ``stage``: anything with ``log_metrics(step, dict)``; ``policy_dir``: the imitation
    policy; ``demos_path``: the trajectory store; ``out_dir``: this sub-stage's folder.
    Returns the metrics also written to ``out_dir/result.json``."""
    out_dir = Path(out_dir)
    if (done := result_or_workdir(out_dir)) is not None:
        return done
    t0 = time.monotonic()
    o = cfg.teach.offline
    torch.manual_seed(o.seed)
    policy = DiffusionPolicy.load(policy_dir)
    c = policy.config
    decisions = decisions_from_store(
        demos_path, DecisionConfig(obs_horizon=c.obs_horizon, action_horizon=c.action_horizon,
                                   gamma=o.gamma),
    )  # fmt: skip
    rl = OfflineRL(cfg, stage, policy, decisions, out_dir)
    rl.critics.save(out_dir / "critics", extra={"iql": critics_config(rl.iql_cfg)})
    rl.model.save(out_dir / "dynamics")
    rl.gate_round()  # step 0: the imitation policy sets the bar (always accepted)
    accepted, flywheel_episodes = 0, 0
    for rnd in range(1, o.rounds + 1):
        stats = [rl.update() for _ in range(o.updates_per_round)]
        mean = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
        stage.log_metrics(rl.step, {"stage": "offline", **{f"offline_{k}": v
                                                           for k, v in mean.items()}})  # fmt: skip
        accepted += rl.gate_round()
        if o.flywheel_every and rnd % o.flywheel_every == 0 and rnd < o.rounds:
            flywheel_episodes += rl.flywheel(rnd // o.flywheel_every - 1)
    sync_ema(rl.reference)
    rl.reference.save(out_dir / "policy")  # the last accepted policy
    result = {
        "updates": rl.step,
        "rounds": o.rounds,
        "accepted": int(accepted),
        "rejected": int(o.rounds - accepted),
        "initial_estimate": rl.gate.history[0].estimate,
        "best_estimate": rl.gate.best,
        "decisions": len(rl.decisions),
        "flywheel_episodes": flywheel_episodes,
        "iql_final": rl.iql_history[-1] if rl.iql_history else None,
        "dynamics_val_best": rl.dynamics_history[-1]["val_best"],
        "policy": str(out_dir / "policy"),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    write_json_atomic(out_dir / "result.json", result)
    return result
