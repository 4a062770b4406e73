"""Does the dynamics-ensemble OPE rank chunk policies the way real rollouts do? (Push-T)

    robodistill collect --set name=ope_trial                  # 100 expert demos
    python benchmarks/ope_ranking.py                          # expert data only
    python benchmarks/ope_ranking.py --out runs/benchmarks/ope_ranking_flywheel \
        --fold-noisy 30 --fold-random 30                      # + rollouts folded in

Builds decisions (To = 2, Ta = 8, gamma = 0.99) from the store, trains IQL critics and a
dynamics ensemble on them, and evaluates three chunk policies::

    expert        the privileged Push-T expert, re-planned from each decision's newest frame
    noisy-expert  the same chunks + Gaussian noise (--noise, in action units of [-1, 1])
    random        uniform chunks in [-1, 1]

For each it prints OPE estimates (uncertainty penalty x Q / V bootstrap, horizons 0..H,
all from one imagined rollout per policy) next to the *true* discounted value of the very
same start states: the simulator is put into each start's newest frame and the policy is
run for real (cached in --truth). Env-reset episodes give return and success as well.
``--fold-noisy`` / ``--fold-random`` first roll out a noisier expert (``--fold-noise``) and
random chunks from other seeds into ``<out>/fold.zarr`` and train on it too: the flywheel.
Start states always come from --store, so every run is scored on the same ones.
Results go to ``<out>/results.json``. About 15 min per run on 2 busy cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from robodistill.data.store import Episode, TrajectoryStore
from robodistill.envs.pusht import PushTEnv
from robodistill.envs.pusht_expert import PushTExpert
from robodistill.teach.rl100.critics import IQLConfig, IQLCritics, train_iql
from robodistill.teach.rl100.decisions import DecisionConfig, Decisions, decisions_from_store
from robodistill.teach.rl100.ope import (
    DynamicsConfig,
    DynamicsEnsemble,
    OffPolicyEvaluator,
    OPEConfig,
    train_dynamics,
)

OBS = 5  # Push-T state: pusher x, y, block x, y, angle


class ExpertChunks:
    """``policy_fn``: plan Ta actions with the expert in a private copy of the simulator set
    to the newest observed frame (the expert is privileged; this makes it a function of the
    observation, like any learned policy). ``noise`` adds N(0, noise) to every action."""

    def __init__(self, ta: int, noise: float = 0.0, seed: int = 0) -> None:
        self.ta, self.noise, self.rng = ta, noise, np.random.default_rng(seed)
        self.env = PushTEnv()
        self.env.reset(seed=seed)
        self.expert = PushTExpert(seed=seed)
        self.expert.attach([self.env])

    def __call__(self, obs_flat: torch.Tensor) -> torch.Tensor:
        newest = obs_flat.numpy().reshape(len(obs_flat), -1, OBS)[:, -1]
        chunks = np.empty((len(newest), self.ta, 2), np.float32)
        for i, o in enumerate(newest):
            self.env.set_state_units(o[:2].astype(np.float64), o[2:].astype(np.float64))
            self.expert.reset()
            cur = o
            for k in range(self.ta):
                chunks[i, k] = self.expert.act(cur[None])[0]
                cur, *_ = self.env.step(chunks[i, k])
        if self.noise > 0:
            chunks = np.clip(chunks + self.rng.normal(0, self.noise, chunks.shape), -1, 1)
        return torch.from_numpy(chunks.reshape(len(newest), -1).astype(np.float32))


class RandomChunks:
    def __init__(self, ta: int, seed: int = 0) -> None:
        self.ta, self.rng = ta, np.random.default_rng(seed)

    def __call__(self, obs_flat: torch.Tensor) -> torch.Tensor:
        chunk = self.rng.uniform(-1, 1, (len(obs_flat), self.ta * 2)).astype(np.float32)
        return torch.from_numpy(chunk)


class Replay:
    """Serve a policy's earlier chunks when it is called again with the same inputs in the
    same order: OPE variants that re-score one imagined rollout (penalty, bootstrap) then
    cost no extra expert planning, and a noisy policy keeps its noise (common numbers)."""

    def __init__(self, fn) -> None:
        self.fn, self.calls, self.i = fn, [], 0

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        if self.i < len(self.calls) and torch.equal(self.calls[self.i][0], obs):
            chunk = self.calls[self.i][1]
        else:
            chunk = self.fn(obs)
            self.calls[self.i :] = [(obs.clone(), chunk)]
        self.i += 1
        return chunk


def run_chunks(policy_fn, envs, hist, ta, gamma, max_steps, seeds=None):
    """Execute ``policy_fn`` chunk by chunk in real ``envs`` from histories (S, To, O).

    Returns per env: discounted return, undiscounted return, success (terminated), and, when
    ``seeds`` are given, the episodes as :class:`Episode` objects (for folding into a store).
    """
    s, to = len(envs), hist.shape[1]
    hist = hist.copy()
    disc, ret, success = np.zeros(s), np.zeros(s), np.zeros(s, bool)
    active = np.ones(s, bool)
    record = [{"obs": [], "action": [], "reward": []} for _ in range(s)]
    for t in range(0, max_steps, ta):
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        chunks = policy_fn(torch.from_numpy(hist[idx].reshape(len(idx), -1))).numpy()
        for j, i in enumerate(idx):
            frames = list(hist[i])
            for k, a in enumerate(chunks[j].reshape(ta, 2)[: max_steps - t]):
                obs, r, term, _, _ = envs[i].step(a)
                for key, v in (("obs", frames[-1]), ("action", a), ("reward", r)):
                    record[i][key].append(v)
                disc[i] += gamma ** (t + k) * r
                ret[i] += r
                frames.append(obs)
                if term:
                    active[i], success[i] = False, True
                    break
            hist[i] = np.stack(frames[-to:])
    episodes = []
    for i, seed in enumerate(seeds or []):
        n = len(record[i]["reward"])
        term = np.zeros(n, bool)
        term[-1] = success[i]
        data = {k: np.asarray(v, np.float32) for k, v in record[i].items()}
        data |= {"terminated": term, "truncated": ~term & (np.arange(n) == n - 1)}
        episodes.append(
            Episode(
                data=data,
                final={"obs": hist[i][-1].astype(np.float32)},
                seed=seed,
                env_id="robodistill/PushT-v0",
                source_policy="ope_ranking",
                success=bool(success[i]),
            )
        )
    return disc, ret, success, episodes


def reset_envs(n: int, seed0: int):
    envs = [PushTEnv() for _ in range(n)]
    first = np.stack([env.reset(seed=seed0 + i)[0] for i, env in enumerate(envs)])
    return envs, np.repeat(first[:, None], 2, axis=1)


def fold_store(args, ta: int, gamma: float) -> Path:
    """The flywheel: rollouts of other policies, written to (and reused from) a store."""
    path = Path(args.out) / "fold.zarr"
    if path.exists():
        return path
    with TrajectoryStore.create(path, attrs={"env_id": "robodistill/PushT-v0"}) as store:
        for name, n, make in (
            ("noisy", args.fold_noisy, lambda: ExpertChunks(ta, noise=args.fold_noise, seed=7)),
            ("random", args.fold_random, lambda: RandomChunks(ta, seed=7)),
        ):
            if n:
                t0 = time.perf_counter()
                envs, hist = reset_envs(n, 500_000 + 1000 * len(name))
                seeds = [500_000 + 1000 * len(name) + i for i in range(n)]
                eps = run_chunks(make(), envs, hist, ta, gamma, 300, seeds=seeds)[3]
                store.add_episodes(eps)
                print(f"fold-in: {n} {name} episodes ({time.perf_counter() - t0:.0f} s)")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", default="runs/ope_trial/collect/demos.zarr")
    p.add_argument("--fold-noisy", type=int, default=0, help="noisy-expert episodes to add")
    p.add_argument("--fold-random", type=int, default=0, help="random-chunk episodes to add")
    p.add_argument("--fold-noise", type=float, default=0.5)
    p.add_argument("--horizon", type=int, default=10)
    p.add_argument("--starts", type=int, default=32)
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--penalties", default="0,1,3")
    p.add_argument("--terminals", default="q,v")
    p.add_argument("--iql-steps", type=int, default=10_000)
    p.add_argument("--dyn-steps", type=int, default=3000)
    p.add_argument("--true-steps", type=int, default=320, help="env steps per true rollout")
    p.add_argument("--episodes", type=int, default=10, help="env-reset episodes per policy")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/benchmarks/ope_ranking")
    p.add_argument("--reuse", action="store_true", help="load critics / model from --out")
    p.add_argument(
        "--truth",
        default="runs/benchmarks/ope_ranking_truth.json",
        help="cache of the true values (shared by runs with the same starts)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = DecisionConfig(obs_horizon=2, action_horizon=8, gamma=0.99)
    ta = cfg.action_horizon

    base = decisions_from_store(args.store, cfg)
    parts = [base]
    if args.fold_noisy or args.fold_random:
        parts.append(decisions_from_store(fold_store(args, ta, cfg.gamma), cfg))
    data = Decisions.concat(parts)
    print(f"decisions: {len(data)} from {data.n_episodes} episodes")
    if args.reuse:
        critics, model = IQLCritics.load(out / "critics"), DynamicsEnsemble.load(out / "dynamics")
    else:
        t0 = time.perf_counter()
        critics, hist = train_iql(data, IQLConfig(steps=args.iql_steps, log_every=2000))
        print(f"iql: {time.perf_counter() - t0:.0f} s, last {hist[-1]}")
        t0 = time.perf_counter()
        dcfg = DynamicsConfig(steps=args.dyn_steps, eval_every=250, angle_dims=(4,))
        model, hist = train_dynamics(data, dcfg)
        print(
            f"dynamics: {time.perf_counter() - t0:.0f} s, val best {hist[-1]['val_best']:.4f} "
            f"(first {min(hist[0]['val_loss']):.4f}), elites {model.elites.tolist()}"
        )
        critics.save(out / "critics")
        model.save(out / "dynamics")

    def evaluator(penalty: float, terminal: str) -> OffPolicyEvaluator:
        # Starts always come from the base store, so every variant and run shares them.
        ocfg = OPEConfig(
            horizon=args.horizon,
            n_starts=args.starts,
            terminal=terminal,
            uncertainty_penalty=penalty,
            action_low=-1.0,
            action_high=1.0,
        )
        return OffPolicyEvaluator(model, critics, base, ocfg)

    starts = evaluator(0.0, "q").start_obs.numpy().reshape(args.starts, cfg.obs_horizon, OBS)
    policies = {
        "expert": lambda: ExpertChunks(ta),
        "noisy-expert": lambda: ExpertChunks(ta, noise=args.noise),
        "random": lambda: RandomChunks(ta),
    }
    truth_path = Path(args.truth)
    truth = json.loads(truth_path.read_text()) if truth_path.exists() else {}
    if truth.get("starts") != starts.tolist() or truth.get("noise") != args.noise:
        truth = {"starts": starts.tolist(), "noise": args.noise}
    variants = [
        (float(pen), term)
        for pen in args.penalties.split(",")
        for term in args.terminals.split(",")
    ]
    results = {}
    for name, make in policies.items():
        if name not in truth:
            t0 = time.perf_counter()
            envs = [PushTEnv() for _ in range(args.starts)]
            for i, (env, h) in enumerate(zip(envs, starts, strict=True)):
                env.reset(seed=i)
                env.set_state_units(h[-1, :2].astype(np.float64), h[-1, 2:].astype(np.float64))
            true_disc = run_chunks(make(), envs, starts, ta, cfg.gamma, args.true_steps)[0]
            envs, hist0 = reset_envs(args.episodes, 900_000)
            _, ep_ret, ep_succ, _ = run_chunks(make(), envs, hist0, ta, cfg.gamma, 300)
            truth[name] = {
                "true_value": float(true_disc.mean()),
                "true_value_sem": float(true_disc.std() / np.sqrt(len(true_disc))),
                "episode_return": float(ep_ret.mean()),
                "episode_success": float(ep_succ.mean()),
                "seconds": time.perf_counter() - t0,
            }
            truth_path.write_text(json.dumps(truth))
        replay, estimates = Replay(make()), {}
        for pen, term in variants:
            replay.i = 0
            estimates[f"penalty={pen:g} terminal={term}"] = (
                evaluator(pen, term).evaluate(replay).by_horizon
            )
        results[name] = {**truth[name], "ope": estimates}
        print(name, {k: round(v, 3) for k, v in truth[name].items()})

    names = list(results)
    true_order = sorted(names, key=lambda n: -results[n]["true_value"])
    print(f"\ntrue order (same starts): {true_order}")
    print("| OPE variant | H | " + " | ".join(names) + " | order right |")
    print("|---" * (len(names) + 3) + "|")
    for variant in results[names[0]]["ope"]:
        for h in sorted({0, 1, args.horizon // 2, args.horizon}):
            vals = [results[n]["ope"][variant][h] for n in names]
            order = [names[i] for i in np.argsort(vals)[::-1]]
            cells = " | ".join(f"{v:.2f}" for v in vals)
            print(f"| {variant} | {h} | {cells} | {'yes' if order == true_order else 'no'} |")
    cells = " | ".join(
        f"{results[n]['true_value']:.2f} ± {results[n]['true_value_sem']:.2f}" for n in names
    )
    print(f"| true discounted value (same starts) | | {cells} | |")
    (out / "results.json").write_text(
        json.dumps({"args": vars(args), "results": results}, indent=1)
    )


if __name__ == "__main__":
    main()
