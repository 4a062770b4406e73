"""RL-100 stage 3: DPPO, PPO on the denoising chain in simulation.

Starts from the offline stage's policy, with the same chain (DDIM, K steps, eta) that
imitation and offline RL used. Each iteration::

    collect: N envs x T decisions; per decision
        chain  ~ policy.sample_chain(hist, K, eta, min_std)   latents (N, K+1, H, A)
        chunk  = chain.actions[:, To-1 : To-1+Ta]             Ta actions executed per env
        r      = sum_j gamma^j r_j  (j < n, n = steps run; an episode end stops the chunk)
        disc   = gamma^n;  a time-limit cut adds disc * V(final history) to r
    GAE over decisions: delta_t = r_t + disc_t (1 - end_t) V(s_{t+1}) - V(s_t)
                        A_t     = delta_t + disc_t lambda (1 - end_t) A_{t+1}
    update: epochs x minibatches of
        ratio_k = exp(log pi(x_{k-1}|x_k) - log pi_old(...))  for the last k' denoising steps
        actor  loss = -sum_k mean_B min(ratio_k A, clip(ratio_k, 1 +- eps) A)   (A normalized)
        critic loss = mean (V(s) - (A + V_old(s)))^2, V an MLP on the normalized history
        stop the epochs once approx KL per step > target_kl

Only the last ``ft_denoising_steps`` steps enter the loss (DPPO): earlier steps still run
with the current weights but are not optimized. As in DPPO, a step's log-probability is by
default the mean per-element log-density over the executed actions (``log_prob``), and the
first ``critic_warmup_iterations`` iterations fit only the value network. Every
``eval_every`` iterations (and before the first, and after the last) the policy runs on the
validation seeds; :class:`robodistill.training.selection.BestPolicyKeeper` keeps the best in
``<stage>/policy``.

Hand-off guards: the policy's chain (scheduler, K, eta, spacing, schedule) must be the one
``teach.diffusion`` describes, i.e. what the earlier stages trained and sampled, and a
:class:`CollapseDetector` stops training when the validation score stays below a fraction
of the best for ``collapse_patience`` evaluations in a row; the best checkpoint stays.

EMA: as in the offline stage, ``net`` is trained directly and ``ema_net`` is set equal to
it before every evaluation and save. Resume: ``out_dir/checkpoint`` (policy, value net,
``state.json``) is written after every iteration; Adam's moments restart on resume.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from robodistill.config import ConfigError
from robodistill.core.rundir import write_json_atomic
from robodistill.core.seeds import ONLINE_RL_SEED_OFFSET, episode_seeds
from robodistill.envs import make_env
from robodistill.policies.diffusion import DiffusionPolicy
from robodistill.teach.rl100.critics import mlp
from robodistill.teach.rl100.offline import (
    clipped_surrogate,
    executed_chunk,
    sync_ema,
)
from robodistill.training.checkpoint import result_or_workdir
from robodistill.training.selection import BestPolicyKeeper

log = logging.getLogger(__name__)


@dataclass
class CollapseDetector:
    """Stop when the score stays below ``best - (1 - fraction) * |best|`` for ``patience``
    consecutive evaluations (for a positive best: below ``fraction * best``)."""

    fraction: float = 0.5
    patience: int = 3
    best: float | None = None
    bad: int = 0

    def update(self, score: float) -> bool:
        """Record one evaluation's score; True = collapsed."""
        if self.best is None or score > self.best:
            self.best, self.bad = float(score), 0
            return False
        floor = self.best - (1.0 - self.fraction) * abs(self.best)
        self.bad = self.bad + 1 if score < floor else 0
        return self.bad >= self.patience


def collapse_score(result: dict[str, Any]) -> float:
    """Success rate where the env reports one, else mean return."""
    s = result.get("success_rate")
    return float(result["return_mean"] if s is None else s)


def chain_spec(policy: DiffusionPolicy, min_std: float) -> dict[str, Any]:
    c = policy.config
    return {"scheduler": "ddim", "num_inference_steps": c.num_inference_steps,
            "eta": c.chain_eta, "min_std": min_std, "timestep_spacing": c.timestep_spacing,
            "beta_schedule": c.beta_schedule, "num_train_timesteps": c.num_train_timesteps}  # fmt: skip


def check_chain(cfg, policy: DiffusionPolicy) -> None:
    """The chain fine-tuned here must be the one the earlier stages used (see the docstring)."""
    d, c = cfg.teach.diffusion, policy.config
    keys = ("num_inference_steps", "chain_eta", "timestep_spacing", "beta_schedule",
            "num_train_timesteps")  # fmt: skip
    bad = {k: (getattr(c, k), getattr(d, k)) for k in keys if getattr(c, k) != getattr(d, k)}
    if bad:
        raise ConfigError(
            f"the policy's denoising chain differs from teach.diffusion: {bad} (policy, config); "
            "the online stage must fine-tune the chain the offline stage trained (mixing sampler "
            "settings between stages is RL-100's known collapse) — restore the settings"
        )
    if cfg.teach.online.ft_denoising_steps > c.num_inference_steps:
        raise ConfigError(
            f"teach.online.ft_denoising_steps={cfg.teach.online.ft_denoising_steps} exceeds the "
            f"chain's {c.num_inference_steps} denoising steps"
        )


def step_log_probs(policy, obs, latents, o, k_total: int, min_std: float) -> torch.Tensor:
    """(B, k') log-probabilities of the last k' = ``o.ft_denoising_steps`` denoising steps
    of chains ``latents`` (B, K+1, H, A), in the form ``o.log_prob`` names (config)."""
    per_element = o.log_prob == "executed_mean"
    lp = policy.chain_log_prob(obs, latents, num_inference_steps=k_total, min_std=min_std,
                               steps=range(k_total - o.ft_denoising_steps, k_total),
                               per_element=per_element)  # fmt: skip
    return executed_chunk(policy, lp).mean(dim=(-2, -1)) if per_element else lp


def dppo_loss(policy, value, batch: dict[str, torch.Tensor], o, k_total: int, min_std: float):
    """Actor and critic losses on a minibatch (module docstring).

    ``batch``: ``obs`` (B, To, O), ``latents`` (B, K+1, H, A), ``logp`` (B, k') old
    log-probs of the last k' steps (:func:`step_log_probs`), ``adv`` (B,), ``ret`` (B,).
    """
    new_lp = step_log_probs(policy, batch["obs"], batch["latents"], o, k_total, min_std)
    adv = batch["adv"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8) if len(adv) > 1 else adv
    actor_loss, stats = clipped_surrogate(new_lp, batch["logp"], adv, o.clip)
    v = value(policy.condition(batch["obs"]).detach()).squeeze(-1)
    critic_loss = (v - batch["ret"]).pow(2).mean()
    return actor_loss, critic_loss, stats


def gae(reward, disc, end, values, last_value, lam: float):
    """(T, N) decision rewards, discounts gamma^n, episode ends, values; (N,) bootstrap.
    Returns advantages (T, N)."""
    adv, running = torch.zeros_like(reward), torch.zeros_like(last_value)
    for t in reversed(range(len(reward))):
        next_v = last_value if t == len(reward) - 1 else values[t + 1]
        keep = disc[t] * (1.0 - end[t])
        delta = reward[t] + keep * next_v - values[t]
        running = delta + keep * lam * running
        adv[t] = running
    return adv


class ChunkEnvs:
    """N envs stepped in turn, one chunk at a time, with per-env observation histories."""

    def __init__(self, cfg, n: int, obs_horizon: int, max_steps: int | None, seed: int):
        self.envs = [make_env(cfg.env.id, max_episode_steps=max_steps, **cfg.env.kwargs)
                     for _ in range(n)]  # fmt: skip
        self.to, self.next_seed = obs_horizon, seed
        space = self.envs[0].action_space
        self.low, self.high = np.asarray(space.low), np.asarray(space.high)
        self.hist = np.stack([self._reset(i) for i in range(n)])  # (N, To, O)
        self.returns, self.finished = np.zeros(n), []  # finished: (return, success) per episode

    def _reset(self, i: int) -> np.ndarray:
        obs, _ = self.envs[i].reset(seed=self.next_seed)
        self.next_seed += 1
        return np.repeat(np.asarray(obs, np.float32).reshape(1, -1), self.to, axis=0)

    def step(self, chunks: np.ndarray, gamma: float):
        """``chunks`` (N, Ta, A) -> reward, disc, end, terminated, cut (N,), cut_hist (N, To, O)."""
        n = len(self.envs)
        reward, disc = np.zeros(n), np.ones(n)
        end, term, cut = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
        cut_hist = self.hist.copy()
        for i, env in enumerate(self.envs):
            for j, a in enumerate(np.clip(chunks[i], self.low, self.high)):
                obs, r, terminated, truncated, info = env.step(a)
                reward[i] += gamma**j * float(r)
                disc[i] = gamma ** (j + 1)
                self.returns[i] += float(r)
                self.hist[i] = np.roll(self.hist[i], -1, axis=0)
                self.hist[i, -1] = obs
                if terminated or truncated:
                    end[i], term[i], cut[i] = True, terminated, truncated and not terminated
                    cut_hist[i] = self.hist[i]
                    self.finished.append((self.returns[i], info.get("is_success")))
                    self.returns[i] = 0.0
                    self.hist[i] = self._reset(i)
                    break
        return reward, disc, end, term, cut, cut_hist

    def close(self) -> None:
        for env in self.envs:
            env.close()


def run_online_rl(cfg, stage, policy_dir, out_dir) -> dict[str, Any]:
    """Stage 3 of RL-100 (module docstring). ``cfg``: RunConfig (``teach.online``);
    ``stage``: the teach :class:`StageRun` (``dir``, ``log_metrics``); ``policy_dir``: the
    offline stage's policy; ``out_dir``: this sub-stage's folder. Returns the metrics also
    written to ``out_dir/result.json`` (present = done; a second call returns it)."""

    out_dir = Path(out_dir)
    if (done := result_or_workdir(out_dir)) is not None:
        return done
    t0 = time.monotonic()
    o = cfg.teach.online
    ckpt = out_dir / "checkpoint"
    resumed = (ckpt / "state.json").is_file()
    policy = DiffusionPolicy.load(ckpt / "policy" if resumed else policy_dir)
    check_chain(cfg, policy)
    c, k_total = policy.config, policy.config.num_inference_steps
    min_std = c.min_std if o.min_std is None else o.min_std
    if not resumed:
        policy.net.load_state_dict(policy.ema_net.state_dict())  # the evaluated weights
    sync_ema(policy)
    torch.manual_seed(o.seed)
    value = mlp(c.obs_dim * c.obs_horizon, o.value_hidden, 1)
    state = {"iteration": 0, "evals": [], "detector": asdict(CollapseDetector(
        o.collapse_fraction, o.collapse_patience)), "next_seed": None}  # fmt: skip
    if resumed:
        state = json.loads((ckpt / "state.json").read_text())
        value.load_state_dict(load_file(str(ckpt / "value.safetensors")))
        log.info("teach: rl100 online resumed at iteration %d", state["iteration"])
    detector = CollapseDetector(**state["detector"])
    actor_opt = torch.optim.Adam(policy.net.parameters(), lr=o.actor_lr)
    critic_opt = torch.optim.Adam(value.parameters(), lr=o.critic_lr)
    gen = torch.Generator().manual_seed(o.seed * 1_000_003 + state["iteration"])
    seed0 = state["next_seed"] or episode_seeds(cfg, 1, ONLINE_RL_SEED_OFFSET)[0]
    envs = ChunkEnvs(cfg, o.num_envs, c.obs_horizon,
                     o.max_episode_steps or cfg.env.max_episode_steps, seed0)  # fmt: skip
    keeper = BestPolicyKeeper(cfg, stage.dir)
    it, evals, collapsed = state["iteration"], state["evals"], False

    def evaluate() -> bool:
        sync_ema(policy)
        result, row = keeper.evaluate(policy, it, tag={"stage": "online"})
        stage.log_metrics(it, {"stage": "online", **row})
        evals.append({k: result[k] for k in ("step", "success_rate", "return_mean")})
        return detector.update(collapse_score(result))

    try:
        if it == 0:
            evaluate()  # the starting policy: the first bar for the collapse detector
        while it < o.iterations and not collapsed:
            # -- collect -----------------------------------------------------------------
            policy.net.eval()
            buf: dict[str, list] = {k: [] for k in ("obs", "latents", "logp", "reward", "disc",
                                                    "end", "cut", "cut_hist")}  # fmt: skip
            for _ in range(o.decisions_per_env):
                obs = torch.as_tensor(envs.hist.copy())
                with torch.no_grad():
                    chain = policy.sample_chain(obs, num_inference_steps=k_total,
                                                min_std=min_std, generator=gen)  # fmt: skip
                    logp = step_log_probs(policy, obs, chain.latents, o, k_total, min_std)
                chunk = executed_chunk(policy, chain.actions).cpu().numpy()
                reward, disc, end, _, cut, cut_hist = envs.step(chunk, o.gamma)
                for key, v in (("obs", obs), ("latents", chain.latents), ("logp", logp),
                               ("reward", reward), ("disc", disc), ("end", end), ("cut", cut),
                               ("cut_hist", cut_hist)):  # fmt: skip
                    buf[key].append(torch.as_tensor(np.asarray(v)))
            b = {k: torch.stack(v).float() for k, v in buf.items()}  # (T, N, ...)
            with torch.no_grad():
                flat = b["obs"].flatten(0, 1)
                values = value(policy.condition(flat)).reshape(b["reward"].shape)
                last_value = value(policy.condition(torch.as_tensor(envs.hist))).squeeze(-1)
                cut_v = value(policy.condition(b["cut_hist"].flatten(0, 1))).reshape(values.shape)
                reward = b["reward"] + b["cut"] * b["disc"] * cut_v  # bootstrap time-limit cuts
                adv = gae(reward, b["disc"], b["end"], values, last_value, o.gae_lambda)
            data = {"obs": flat, "latents": b["latents"].flatten(0, 1),
                    "logp": b["logp"].flatten(0, 1), "adv": adv.flatten(),
                    "ret": (adv + values).flatten()}  # fmt: skip
            # -- update ------------------------------------------------------------------
            policy.net.train()
            warmup = it < o.critic_warmup_iterations  # value net only (config docstring)
            n, stats_all, stop = len(data["adv"]), [], False
            for _ in range(o.epochs):
                perm = torch.randperm(n, generator=gen)
                for start in range(0, n, o.minibatch_size):
                    mb = {k: v[perm[start : start + o.minibatch_size]] for k, v in data.items()}
                    actor_loss, critic_loss, stats = dppo_loss(policy, value, mb, o, k_total,
                                                               min_std)  # fmt: skip
                    actor_opt.zero_grad(set_to_none=True)
                    critic_opt.zero_grad(set_to_none=True)
                    (critic_loss if warmup else actor_loss + critic_loss).backward()
                    torch.nn.utils.clip_grad_norm_(policy.net.parameters(), o.max_grad_norm)
                    torch.nn.utils.clip_grad_norm_(value.parameters(), o.max_grad_norm)
                    if not warmup:
                        actor_opt.step()
                    critic_opt.step()
                    stats_all.append({**stats, "actor_loss": float(actor_loss.detach()),
                                      "critic_loss": float(critic_loss.detach())})  # fmt: skip
                    if not warmup and o.target_kl is not None and stats["approx_kl"] > o.target_kl:
                        stop = True
                        break
                if stop:
                    break
            it += 1
            done_eps = envs.finished
            row = {f"online_{k}": float(np.mean([s[k] for s in stats_all])) for k in stats_all[0]}
            row |= {"online_decision_reward": float(b["reward"].mean()),
                    "online_episodes": len(done_eps), "online_kl_stop": stop,
                    "online_critic_warmup": warmup,
                    "online_return_mean": float(np.mean([r for r, _ in done_eps]))
                    if done_eps else None}  # fmt: skip
            envs.finished = []
            stage.log_metrics(it, {"stage": "online", **row})
            if it % o.eval_every == 0 or it == o.iterations:
                collapsed = evaluate()
            sync_ema(policy)
            policy.save(ckpt / "policy")
            save_file({k: v.contiguous() for k, v in value.state_dict().items()},
                      str(ckpt / "value.safetensors"))  # fmt: skip
            write_json_atomic(ckpt / "state.json", {"iteration": it, "evals": evals,
                                                    "detector": asdict(detector),
                                                    "next_seed": envs.next_seed})  # fmt: skip
    finally:
        envs.close()
    if collapsed:
        log.warning("teach: rl100 online collapsed at iteration %d (evals %s); keeping the best "
                    "checkpoint %s", it, evals[-o.collapse_patience :], stage.dir / "policy")  # fmt: skip
    sync_ema(policy)
    policy.save(out_dir / "policy_last")
    if (stage.dir / "policy").is_dir():
        shutil.copytree(stage.dir / "policy", out_dir / "policy", dirs_exist_ok=True)
    result = {
        "iterations": it,
        "collapsed": collapsed,
        "evals": evals,
        "best_score": detector.best,
        "chain": chain_spec(policy, min_std),
        "ft_denoising_steps": o.ft_denoising_steps,
        "policy": str(stage.dir / "policy"),
        "policy_last": str(out_dir / "policy_last"),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    write_json_atomic(out_dir / "result.json", result)
    return result
