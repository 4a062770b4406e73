"""RL-100 stage by stage: success rate and episode length after imitation, after OPE-gated
offline RL and after online RL (DPPO), and DDPM-100 against DDIM-10 for the final policy.

Runs (resumable, reused when done) ``collect`` and ``teach`` of ``--config`` (default
``configs/pipelines/rl100.yaml``, run ``rl100``) with ``teach.rl100.stages`` as configured,
then rolls out on the same ``--episodes`` fixed evaluation seeds (``robodistill eval``'s):

* the expert that produced the demonstrations,
* ``teach/il/policy``, ``teach/offline/policy``, ``teach/online/policy`` (those that exist),
* the last of them with DDPM sampling (100 ancestral steps, eta 1) and with DDIM-10,
  with their per-decision latency (one chunk, batch 1, one torch thread).

Goals (issue #5): each stage >= the previous one; online RL above the expert's success.
Writes ``benchmark.json`` and ``benchmark.md`` into the run directory.

    python benchmarks/rl100_stages.py --episodes 100
    python benchmarks/rl100_stages.py --set teach.rl100.il_steps=6000 --episodes 100
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    diffusion_variant,
    evaluate,
    markdown,
    observation,
    pct,
    score,
)

CONFIG = "configs/pipelines/rl100.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--runs-dir", default="runs/benchmarks")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--num-envs", type=int, default=10, help="envs per evaluation batch")
    parser.add_argument("--latency-decisions", type=int, default=30)
    parser.add_argument("--skip-ddpm", action="store_true", help="no DDPM-100 evaluation")
    args = parser.parse_args()
    torch.set_num_threads(1)  # see teach.rl100.torch_threads: 1 thread is fastest on 2 cores
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from robodistill.collect import run_collect
    from robodistill.config import load_config
    from robodistill.core.latency import decision_latency
    from robodistill.core.seeds import EVAL_SEED_OFFSET, episode_seeds
    from robodistill.envs import make_expert
    from robodistill.teach.stage import run_teach

    cfg = load_config(args.config, [f"runs_dir={args.runs_dir}", *args.set])
    run = Path(cfg.runs_dir) / cfg.name
    t0 = time.monotonic()
    run_collect(cfg)
    teach = run_teach(cfg)
    t_train = time.monotonic() - t0
    seeds = episode_seeds(cfg, args.episodes, EVAL_SEED_OFFSET)
    obs = observation(cfg, seeds[0])

    rows: dict[str, dict] = {}
    rows["expert (demonstrations)"] = evaluate(cfg, make_expert(cfg.env.id, seed=cfg.seed),
                                               seeds, args.num_envs)  # fmt: skip
    last = None
    for sub in ("il", "offline", "online"):
        path = run / "teach" / sub / "policy"
        if (path / "config.json").is_file():
            last = path
            rows[f"after {sub}"] = evaluate(cfg, diffusion_variant(path), seeds, args.num_envs)
            logging.info("%s: %s", sub, rows[f"after {sub}"])
    if last is None:
        raise SystemExit(f"no sub-stage policy under {run / 'teach'}")
    # online/policy is the best policy so far (which may be an earlier stage's: RL-100 keeps
    # the best); the last DPPO iterate shows what online RL itself produced.
    online_last = run / "teach" / "online" / "policy_last"
    if (online_last / "config.json").is_file():
        rows["online, last iterate"] = evaluate(cfg, diffusion_variant(online_last), seeds,
                                                args.num_envs)  # fmt: skip
        logging.info("online last iterate: %s", rows["online, last iterate"])

    samplers = {"DDIM-10": {"num_inference_steps": 10, "inference_eta": 0.0}}
    if not args.skip_ddpm:
        samplers["DDPM-100"] = {"num_inference_steps": 100, "inference_eta": 1.0}
    sampling = {}
    own = diffusion_variant(last).config
    for name, changes in samplers.items():
        policy = diffusion_variant(last, **changes)
        if (own.num_inference_steps, own.inference_eta) == tuple(changes.values()):
            result = dict(rows[f"after {last.parent.name}"])  # the same policy, already rolled out
        else:
            result = evaluate(cfg, policy, seeds, args.num_envs)
        result["latency"] = decision_latency(policy, obs, decisions=args.latency_decisions)
        sampling[name] = result
        logging.info("%s: %s", name, result)

    stage_rows = [[k, r["episodes"], pct(r["success_rate"]), score(r["max_score_mean"]),
                   f"{r['length_mean']:.1f}", f"{r['return_mean']:.2f}"]
                  for k, r in rows.items()]  # fmt: skip
    table1 = markdown(["policy", "episodes", "success", "mean max score", "mean length",
                       "mean return"], stage_rows)  # fmt: skip
    sampler_rows = [[k, pct(r["success_rate"]), score(r["max_score_mean"]),
                     f"{r['length_mean']:.1f}", f"{r['latency']['median_ms']:.1f}",
                     f"{r['latency']['p99_ms']:.1f}"] for k, r in sampling.items()]  # fmt: skip
    table2 = markdown(["sampler (" + last.parent.name + " policy)", "success", "mean max score",
                       "mean length", "decision ms (median)", "p99"], sampler_rows)  # fmt: skip
    sources = sorted({r["score_source"] for r in rows.values() if r.get("score_source")})
    stages = [r["success_rate"] or 0.0 for k, r in rows.items() if k.startswith("after")]
    monotone = all(b >= a for a, b in zip(stages, stages[1:], strict=False))
    expert = rows["expert (demonstrations)"]["success_rate"] or 0.0
    beyond = "after online" in rows and (rows["after online"]["success_rate"] or 0) > expert
    text = (f"{cfg.env.id}, {len(seeds)} evaluation seeds {seeds[0]}..{seeds[-1]}, "
            f"train+collect {t_train:.0f} s\n\n{table1}\n\n{table2}\n\n"
            f"mean max score: each episode's max of {' / '.join(sources) or 'the reward'} "
            "(info.score where the env defines one, else the reward), averaged\n\n"
            f"each stage >= the previous: {'met' if monotone else 'NOT met'}; "
            f"online RL beyond the expert's success: {'met' if beyond else 'NOT met'}")  # fmt: skip
    print("\n" + text)
    doc = {"env": cfg.env.id, "episodes": len(seeds), "stages": rows, "sampling": sampling,
           "teach": teach, "train_s": round(t_train, 1),
           "goals": {"monotone": monotone, "beyond_expert": beyond}}  # fmt: skip
    (run / "benchmark.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (run / "benchmark.md").write_text(text + "\n")
    print(f"wrote {run / 'benchmark.json'}")


if __name__ == "__main__":
    main()
