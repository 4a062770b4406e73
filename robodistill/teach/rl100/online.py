"""RL-100 stage 3: DPPO, PPO on the denoising chain in simulation.

Starts from the offline stage's policy, with the same chain (DDIM, K steps, eta) that
imitation and offline RL used. Each iteration::

    collect: N envs x T decisions; per decision one batched chain for all N envs
        chain  ~ policy.sample_chain(hist, K, eta, min_std)   latents (N, K+1, H, A)
        logp   = its last k' steps' log-probs, from the same pass  (N, k')
        chunk  = chain.actions[:, To-1 : To-1+Ta]             Ta actions executed per env
        r      = sum_j gamma^j r_j  (j < n, n = steps run; an episode end stops the chunk)
        disc   = gamma^n;  a time-limit cut adds disc * V(final history) to r
    r     /= running std of the discounted return  (reward_scaling, DPPO's)
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
``teach.rl100.rl_eval_episodes`` validation seeds;
:class:`robodistill.training.selection.BestPolicyKeeper` keeps the best over all sub-stages
in ``<stage>/policy`` (after re-validating the policy kept so far on the same seeds).
``max_minutes`` bounds the stage's wall time.

The stage's own result, apart from the kept policy (which can be an earlier stage's):
``out_dir/policy`` is the best online iterate (iteration >= 1), ``out_dir/policy_last`` the
last one; ``result.json`` has both (``best_iterate``, ``last_iterate``), the kept policy
(``kept``), the policy it started from (``started_from``) and the env steps taken.

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
import math
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
from robodistill.policies.diffusion import DiffusionPolicy
from robodistill.teach.rl100.chunk_envs import ChunkEnvs
from robodistill.teach.rl100.critics import mlp
from robodistill.teach.rl100.offline import (
    clipped_surrogate,
    executed_chunk,
    sync_ema,
)
from robodistill.training.checkpoint import result_or_workdir
from robodistill.training.episodes import EPISODES_NAME, EpisodeLog
from robodistill.training.selection import BestPolicyKeeper, is_better

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


def reduce_log_probs(policy, lp: torch.Tensor, o) -> torch.Tensor:
    """Per-element log-probabilities (B, k', H, A) of k' denoising steps -> (B, k') in the
    form ``o.log_prob`` names (config): the mean over the executed actions, or the chunk's sum."""
    if o.log_prob == "executed_mean":
        return executed_chunk(policy, lp).mean(dim=(-2, -1))
    return lp.sum(dim=(-2, -1))


def step_log_probs(policy, obs, latents, o, k_total: int, min_std: float) -> torch.Tensor:
    """(B, k') log-probabilities of the last k' = ``o.ft_denoising_steps`` denoising steps
    of chains ``latents`` (B, K+1, H, A) under the current weights (:func:`reduce_log_probs`)."""
    lp = policy.chain_log_prob(obs, latents, num_inference_steps=k_total, min_std=min_std,
                               steps=range(k_total - o.ft_denoising_steps, k_total),
                               per_element=True)  # fmt: skip
    return reduce_log_probs(policy, lp, o)


def step_schedule(o) -> tuple[torch.Tensor, torch.Tensor]:
    """Per fine-tuned denoising step i = 0 (noisiest) .. k'-1 (last), both (k',): DPPO's clip
    ``clip_base + (clip - clip_base) (e^(rate s) - 1) / (e^rate - 1)``, s = i / (k' - 1)
    (``clip`` for every step when ``clip_base`` is null), and the advantage's denoising
    discount ``gamma_denoising ** (k' - 1 - i)``: the steps nearest the action get the full
    clip and advantage, the noisier ones a tighter clip and less credit."""
    k = o.ft_denoising_steps
    i = torch.arange(k, dtype=torch.float32)
    if o.clip_base is None:
        clips = torch.full((k,), float(o.clip))
    else:
        s = i / max(k - 1, 1)
        rise = (torch.exp(o.clip_rate * s) - 1) / math.expm1(o.clip_rate)
        clips = o.clip_base + (o.clip - o.clip_base) * rise
    return clips, o.gamma_denoising ** (k - 1 - i)


def dppo_loss(policy, value, batch: dict[str, torch.Tensor], o, k_total: int, min_std: float):
    """Actor and critic losses on a minibatch (module docstring).

    ``batch``: ``obs`` (B, To, O), ``latents`` (B, K+1, H, A), ``logp`` (B, k') old
    log-probs of the last k' steps (:func:`step_log_probs`), ``adv`` (B,), ``ret`` (B,).
    """
    new_lp = step_log_probs(policy, batch["obs"], batch["latents"], o, k_total, min_std)
    adv = batch["adv"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8) if len(adv) > 1 else adv
    clips, discounts = step_schedule(o)
    actor_loss, stats = clipped_surrogate(new_lp, batch["logp"], adv[:, None] * discounts, clips)
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


@dataclass
class ReturnScaler:
    """DPPO's running reward scaling: rewards are divided by the running std of each env's
    discounted return, so that the value net's targets stay O(1) whatever the reward's scale
    (Nav's dense returns reach +-25). Per decision: ``ret = ret * disc + r`` (reset at an
    episode end); the std is over every ``ret`` seen (Welford / Chan's parallel update)."""

    count: float = 0.0
    mean: float = 0.0
    var: float = 1.0
    ret: list[float] | None = None

    def scale(self, reward: np.ndarray, disc: np.ndarray, end: np.ndarray) -> np.ndarray:
        """``reward``, ``disc``, ``end`` (T, N) of one iteration -> scaled rewards (T, N)."""
        ret = np.zeros(reward.shape[1]) if self.ret is None else np.asarray(self.ret)
        seen = np.empty_like(reward)
        for t in range(len(reward)):
            ret = ret * disc[t] + reward[t]
            seen[t] = ret
            ret = np.where(end[t], 0.0, ret)
        self.ret = ret.tolist()
        n, mean, var = seen.size, float(seen.mean()), float(seen.var())
        total = self.count + n
        delta = mean - self.mean
        self.var = (self.var * self.count + var * n + delta**2 * self.count * n / total) / total
        self.mean, self.count = self.mean + delta * n / total, total
        return reward / np.sqrt(self.var + 1e-8)


def online_record(result: dict[str, Any], iteration: int, env_steps: int) -> dict[str, Any]:
    """The fields of a validation result an online evaluation keeps."""
    keep = ("success_rate", "return_mean", "max_score_mean", "length_mean", "episodes")
    return {"iteration": iteration, "env_steps": env_steps, **{k: result.get(k) for k in keep}}


def online_result(*, evals: list[dict], best_score, started_from, best_iterate, keeper,
                  out_dir: Path, kept_policy: Path, env_steps: int, train_s: float, t0: float,
                  **specific: Any) -> dict[str, Any]:  # fmt: skip
    """The online stage's ``result.json`` (either method): its own best and last iterates
    apart from the policy kept over all sub-stages, what it started from, env steps and
    times; ``specific`` adds the method's own fields (iterations, chain, ...)."""
    last = evals[-1]
    return {
        **specific,
        "evals": evals,
        "best_score": best_score,
        "started_from": str(started_from),
        "best_iterate": best_iterate,
        "last_iterate": {
            "iteration": last["step"],
            "env_steps": last["env_steps"],
            "success_rate": last["success_rate"],
            "return_mean": last["return_mean"],
        },  # fmt: skip
        "kept": {
            k: keeper.best.get(k)
            for k in ("stage", "step", "success_rate", "return_mean", "episodes")
        },  # fmt: skip
        "validation_episodes": len(keeper.seeds),
        "env_steps": env_steps,
        "env_steps_per_s": round(env_steps / train_s, 1) if train_s > 0 else None,
        "policy": str(out_dir / "policy") if best_iterate else None,
        "policy_last": str(out_dir / "policy_last"),
        "kept_policy": str(kept_policy),
        "train_s": round(train_s, 1),
        "wall_s": round(time.monotonic() - t0, 1),
    }


def run_online_rl(cfg, stage, policy_dir, out_dir) -> dict[str, Any]:
    """Stage 3 of RL-100 (module docstring). ``cfg``: RunConfig (``teach.online``);
    ``stage``: the teach :class:`StageRun` (``dir``, ``log_metrics``); ``policy_dir``: the
    policy it starts from; ``out_dir``: this sub-stage's folder. Returns the metrics also
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
    first_ft = k_total - o.ft_denoising_steps
    min_std = c.min_std if o.min_std is None else o.min_std
    if not resumed:
        policy.net.load_state_dict(policy.ema_net.state_dict())  # the evaluated weights
    sync_ema(policy)
    torch.manual_seed(o.seed)
    value = mlp(c.obs_dim * c.obs_horizon, o.value_hidden, 1)
    state = {"iteration": 0, "evals": [], "detector": asdict(CollapseDetector(
        o.collapse_fraction, o.collapse_patience)), "next_seed": None, "env_steps": 0,
        "train_s": 0.0, "scaler": asdict(ReturnScaler()), "best_iterate": None}  # fmt: skip
    if resumed:
        state |= json.loads((ckpt / "state.json").read_text())
        value.load_state_dict(load_file(str(ckpt / "value.safetensors")))
        log.info("teach: rl100 online resumed at iteration %d", state["iteration"])
    detector, scaler = CollapseDetector(**state["detector"]), ReturnScaler(**state["scaler"])
    actor_opt = torch.optim.Adam(policy.net.parameters(), lr=o.actor_lr)
    critic_opt = torch.optim.Adam(value.parameters(), lr=o.critic_lr)
    gen = torch.Generator().manual_seed(o.seed * 1_000_003 + state["iteration"])
    seed0 = state["next_seed"] or episode_seeds(cfg, 1, ONLINE_RL_SEED_OFFSET)[0]
    envs = ChunkEnvs(cfg, o.num_envs, c.obs_horizon,
                     o.max_episode_steps or cfg.env.max_episode_steps, seed0)  # fmt: skip
    keeper = BestPolicyKeeper(cfg, stage.dir, episodes=cfg.teach.rl100.rl_eval_episodes)
    keeper.revalidate()  # the kept policy, on the seeds the online iterates are judged on
    # The per-episode training record: rows past the checkpoint's env steps are dropped.
    episodes = EpisodeLog(stage.dir / EPISODES_NAME, state["env_steps"] if resumed else None)
    it, evals, collapsed = state["iteration"], state["evals"], False
    best_iterate, env_steps0 = state["best_iterate"], state["env_steps"]
    train_s0, t_run = state["train_s"], time.monotonic()

    def evaluate() -> bool:
        nonlocal best_iterate
        sync_ema(policy)
        result, row = keeper.evaluate(policy, it, tag={"stage": "online"})
        steps = env_steps0 + envs.env_steps
        stage.log_metrics(it, {"stage": "online", "online_env_steps": steps, **row})
        evals.append({"step": it, "env_steps": steps,
                      **{k: result[k] for k in ("success_rate", "return_mean")}})  # fmt: skip
        # The online stage's own best: its iterates only (the starting policy is iteration 0).
        if it > 0 and is_better(result, best_iterate, keeper.selection):
            policy.save(out_dir / "policy")
            best_iterate = online_record(result, it, steps)
        return detector.update(collapse_score(result))

    def over_budget() -> bool:
        spent = train_s0 + time.monotonic() - t_run
        return o.max_minutes is not None and spent >= 60.0 * o.max_minutes

    try:
        if it == 0:
            evaluate()  # the starting policy: the first bar for the collapse detector
        # At least one iteration: a budget spent before it would report nothing of online RL.
        while it < o.iterations and not collapsed and not (it > 0 and over_budget()):
            t_iter, steps_before = time.monotonic(), envs.env_steps
            # -- collect: one batched chain per decision for all envs ---------------------
            policy.net.eval()
            buf: dict[str, list] = {k: [] for k in ("obs", "latents", "logp", "reward", "disc",
                                                    "end", "cut", "cut_hist")}  # fmt: skip
            for _ in range(o.decisions_per_env):
                obs = torch.as_tensor(envs.hist.copy())
                with torch.no_grad():
                    chain = policy.sample_chain(obs, num_inference_steps=k_total,
                                                min_std=min_std, generator=gen,
                                                per_element=True)  # fmt: skip
                    logp = reduce_log_probs(policy, chain.log_probs[:, first_ft:], o)
                chunk = executed_chunk(policy, chain.actions).cpu().numpy()
                reward, disc, end, _, cut, cut_hist = envs.step(chunk, o.gamma)
                for key, v in (("obs", obs), ("latents", chain.latents), ("logp", logp),
                               ("reward", reward), ("disc", disc), ("end", end), ("cut", cut),
                               ("cut_hist", cut_hist)):  # fmt: skip
                    buf[key].append(torch.as_tensor(np.asarray(v)))
            collect_s = time.monotonic() - t_iter
            b = {k: torch.stack(v).float() for k, v in buf.items()}  # (T, N, ...)
            raw_reward = b["reward"]
            if o.reward_scaling:
                b["reward"] = torch.as_tensor(scaler.scale(raw_reward.numpy().astype(np.float64),
                                                           b["disc"].numpy(), b["end"].numpy()),
                                              dtype=torch.float32)  # fmt: skip
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
            done_eps, iter_s = envs.finished, time.monotonic() - t_iter
            steps = envs.env_steps - steps_before
            row = {f"online_{k}": float(np.mean([s[k] for s in stats_all])) for k in stats_all[0]}
            row |= {"online_decision_reward": float(raw_reward.mean()),
                    "online_reward_std": float(np.sqrt(scaler.var)) if o.reward_scaling else None,
                    "online_episodes": len(done_eps), "online_kl_stop": stop,
                    "online_critic_warmup": warmup,
                    "online_env_steps": env_steps0 + envs.env_steps,
                    "online_env_steps_per_s": steps / iter_s,
                    "online_collect_steps_per_s": steps / collect_s,
                    "online_return_mean": float(np.mean([e[0] for e in done_eps]))
                    if done_eps else None,
                    "online_success_rate": float(np.mean([bool(e[1]) for e in done_eps]))
                    if done_eps and done_eps[0][1] is not None else None}  # fmt: skip
            for ret, success, length, at in done_eps:
                episodes.add(ret, length, success, env_steps0 + at)
            episodes.flush()
            envs.finished = []
            stage.log_metrics(it, {"stage": "online", **row})
            if it % o.eval_every == 0 or it == o.iterations or over_budget():
                collapsed = evaluate()
            sync_ema(policy)
            policy.save(ckpt / "policy")
            save_file({k: v.contiguous() for k, v in value.state_dict().items()},
                      str(ckpt / "value.safetensors"))  # fmt: skip
            write_json_atomic(ckpt / "state.json", {
                "iteration": it, "evals": evals, "detector": asdict(detector),
                "next_seed": envs.next_seed, "env_steps": env_steps0 + envs.env_steps,
                "train_s": train_s0 + time.monotonic() - t_run, "scaler": asdict(scaler),
                "best_iterate": best_iterate})  # fmt: skip
    finally:
        envs.close()
        episodes.close()
    if collapsed:
        log.warning("teach: rl100 online collapsed at iteration %d (evals %s); keeping the best "
                    "checkpoint %s", it, evals[-o.collapse_patience :], stage.dir / "policy")  # fmt: skip
    sync_ema(policy)
    policy.save(out_dir / "policy_last")
    train_s = train_s0 + time.monotonic() - t_run
    env_steps = env_steps0 + envs.env_steps
    result = online_result(
        evals=evals, best_score=detector.best, started_from=policy_dir,
        best_iterate=best_iterate, keeper=keeper, out_dir=out_dir, kept_policy=stage.dir / "policy",
        env_steps=env_steps, train_s=train_s, t0=t0, iterations=it, collapsed=collapsed,
        stopped_by_budget=it < o.iterations and not collapsed, chain=chain_spec(policy, min_std),
        ft_denoising_steps=o.ft_denoising_steps,
    )  # fmt: skip
    write_json_atomic(out_dir / "result.json", result)
    return result
