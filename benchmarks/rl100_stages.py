"""RL-100 stage by stage, per denoiser backbone: success on fixed test seeds after imitation,
after OPE-gated offline RL and after online RL (DPPO or the residual), beside each stage's validation result,
its env steps and its wall time; online learning curves; DDPM-100 against DDIM-10.

For each ``--backbone`` (default: the config's; ``--backbone unet --backbone mlp`` side by
side) it runs (resumable, reused when done) ``teach`` of ``--config`` (default
``configs/pipelines/rl100_nav_diffdrive.yaml``) as run ``<name>-<backbone>``, all on the
demonstrations of one ``collect`` (run ``<name>``), then rolls out on the same ``--episodes``
fixed evaluation seeds (``robodistill eval``'s; never the validation seeds):

* the expert that produced the demonstrations;
* ``teach/il/policy``, ``teach/offline/policy`` (written only when offline RL accepted an
  update), ``teach/online/policy`` (the best online iterate, iteration >= 1: what online RL
  itself produced) and ``teach/online/policy_last``;
* ``teach/policy``, the policy kept over all sub-stages (the teacher later stages take),
  with DDIM-10 and DDPM-100 sampling and their per-decision latency.

Goals (issue 21): each stage >= the previous one (test seeds: imitation <= offline <= online's
best iterate), and online RL's success >= 1.3x the demonstrator's within
:data:`GOAL_MINUTES` of online training (the config's ``teach.online.max_minutes`` may be
shorter; its last iteration may run past it). Writes ``benchmark.json`` and
``benchmark.md`` into each run, ``rl100_stages.md`` and ``rl100_online_curves.png`` (online
validation success against env steps, every backbone) into ``--runs-dir``.

    python benchmarks/rl100_stages.py --episodes 100
    python benchmarks/rl100_stages.py --backbone unet --backbone mlp --skip-ddpm
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

CONFIG = "configs/pipelines/rl100_nav_diffdrive.yaml"
GOAL_MINUTES = 60.0
"""Issue 21's budget for online training (wall minutes of the online sub-stage)."""


def stage_rows(cfg, run: Path, teach: dict, seeds: list[int], num_envs: int) -> dict[str, dict]:
    """Test-seed results of each sub-stage's own policy, with validation, env steps, time."""
    sub_results = {s: teach.get(s) or {} for s in ("il", "offline", "online")}
    online = sub_results["online"]

    def validation(path: Path) -> float | None:
        return json.loads(path.read_text()).get("success_rate") if path.is_file() else None

    candidates = [
        ("imitation", run / "teach/il/policy", validation(run / "teach/il/best.json"),
         None, sub_results["il"].get("wall_s")),
        ("offline RL", run / "teach/offline/policy",
         (sub_results["offline"].get("validation") or {}).get("success_rate"),
         f"{sub_results['offline'].get('flywheel_episodes', 0)} flywheel episodes",
         sub_results["offline"].get("wall_s")),
        ("online RL, best iterate", run / "teach/online/policy",
         (online.get("best_iterate") or {}).get("success_rate"), online.get("env_steps"),
         online.get("train_s")),
        ("online RL, last iterate", run / "teach/online/policy_last",
         (online.get("last_iterate") or {}).get("success_rate"), online.get("env_steps"),
         online.get("train_s")),
        ("kept (teach/policy)", run / "teach/policy", validation(run / "teach/best.json"),
         None, None),
    ]  # fmt: skip
    rows = {}
    for label, path, val, env_steps, wall in candidates:
        if not (path / "config.json").is_file():
            continue
        rows[label] = evaluate(cfg, diffusion_variant(path), seeds, num_envs) | {
            "validation_success_rate": val, "env_steps": env_steps, "wall_s": wall}  # fmt: skip
        logging.info("%s %s: %s", run.name, label, rows[label])
    return rows


def sampler_rows(cfg, kept: Path, rows: dict, seeds, num_envs, obs, args) -> dict[str, dict]:
    from robodistill.core.latency import decision_latency

    samplers = {"DDIM-10": {"num_inference_steps": 10, "inference_eta": 0.0}}
    if not args.skip_ddpm:
        samplers["DDPM-100"] = {"num_inference_steps": 100, "inference_eta": 1.0}
    kept_policy = diffusion_variant(kept)
    own = getattr(kept_policy, "base", kept_policy).config  # a residual's sampler: its base's
    out = {}
    for name, changes in samplers.items():
        policy = diffusion_variant(kept, **changes)
        if (own.num_inference_steps, own.inference_eta) == tuple(changes.values()):
            result = dict(rows["kept (teach/policy)"])  # the same policy, already rolled out
        else:
            result = evaluate(cfg, policy, seeds, num_envs)
        result["latency"] = decision_latency(policy, obs, decisions=args.latency_decisions)
        out[name] = result
    return out


def plot_curves(curves: dict[str, list[dict]], expert: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, evals in curves.items():
        ax.plot([e["env_steps"] for e in evals], [100 * (e["success_rate"] or 0) for e in evals],
                marker="o", ms=3, label=f"online {name} (validation)")  # fmt: skip
    ax.axhline(100 * expert, color="k", ls="--", lw=1, label="demonstrator (test seeds)")
    ax.axhline(130 * expert, color="g", ls=":", lw=1, label="goal: 1.3x demonstrator")
    ax.set_xlabel("online env steps")
    ax.set_ylabel("success %")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--runs-dir", default="runs/benchmarks")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--backbone", action="append", choices=["unet", "mlp"], default=[],
                        help="denoiser backbone(s), one run each (default: the config's)")  # fmt: skip
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--num-envs", type=int, default=10, help="envs per evaluation batch")
    parser.add_argument("--latency-decisions", type=int, default=30)
    parser.add_argument("--skip-ddpm", action="store_true", help="no DDPM-100 evaluation")
    args = parser.parse_args()
    torch.set_num_threads(1)  # see teach.rl100.torch_threads: 1 thread is fastest on 2 cores
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from robodistill.collect import run_collect
    from robodistill.config import load_config
    from robodistill.core.seeds import EVAL_SEED_OFFSET, episode_seeds
    from robodistill.envs import make_expert
    from robodistill.teach.stage import run_teach

    base = load_config(args.config, [f"runs_dir={args.runs_dir}", *args.set])
    run_collect(base)
    demos = Path(base.runs_dir) / base.name / "collect" / "demos.zarr"
    seeds = episode_seeds(base, args.episodes, EVAL_SEED_OFFSET)
    obs = observation(base, seeds[0])
    expert = evaluate(base, make_expert(base.env.id, seed=base.seed), seeds, args.num_envs)
    backbones = args.backbone or [base.teach.diffusion.backbone]

    docs, curves, sections = {}, {}, []
    for backbone in backbones:
        cfg = load_config(args.config, [f"runs_dir={args.runs_dir}", *args.set,
                                        f"name={base.name}-{backbone}",
                                        f"teach.diffusion.backbone={backbone}",
                                        f"teach.rl100.demos={demos}"])  # fmt: skip
        run = Path(cfg.runs_dir) / cfg.name
        t0 = time.monotonic()
        teach = run_teach(cfg)
        t_train = time.monotonic() - t0
        rows = {"expert (demonstrations)": expert} | stage_rows(cfg, run, teach, seeds,
                                                                args.num_envs)  # fmt: skip
        sampling = sampler_rows(cfg, run / "teach/policy", rows, seeds, args.num_envs, obs, args)
        online = teach.get("online") or {}
        method = "residual PPO" if online.get("method") == "residual" else "DPPO"
        curves[f"{method}, {backbone}"] = online.get("evals") or []
        table1 = markdown(
            ["policy", "test success (episodes)", "validation success", "mean max score",
             "mean length", "mean return", "env steps", "wall s"],
            [[k, f"{pct(r['success_rate'])} ({r['episodes']})",
              pct(r.get("validation_success_rate")), score(r["max_score_mean"]),
              f"{r['length_mean']:.1f}", f"{r['return_mean']:.2f}", r.get("env_steps") or "—",
              f"{r['wall_s']:.0f}" if r.get("wall_s") else "—"] for k, r in rows.items()],
        )  # fmt: skip
        table2 = markdown(
            ["sampler (kept policy)", "success", "mean length", "decision ms (median)", "p99"],
            [[k, pct(r["success_rate"]), f"{r['length_mean']:.1f}",
              f"{r['latency']['median_ms']:.1f}", f"{r['latency']['p99_ms']:.1f}"]
             for k, r in sampling.items()],
        )  # fmt: skip
        order = [rows[k]["success_rate"] or 0.0 for k in
                 ("imitation", "offline RL", "online RL, best iterate") if k in rows]  # fmt: skip
        monotone = all(b >= a for a, b in zip(order, order[1:], strict=False))
        best_online = (rows.get("online RL, best iterate") or {}).get("success_rate") or 0.0
        target = 1.3 * (expert["success_rate"] or 0.0)
        minutes = (online.get("train_s") or 0) / 60
        budget = cfg.teach.online.max_minutes
        beyond = best_online >= target and minutes <= GOAL_MINUTES
        kept = teach.get("best_stage")
        text = (f"### {cfg.env.id} {cfg.env.kwargs}, backbone {backbone} (run {cfg.name})\n\n"
                f"{len(seeds)} test seeds {seeds[0]}..{seeds[-1]}; teach {t_train:.0f} s this "
                f"call (0 when reused); online {minutes:.1f} min, "
                f"{online.get('iterations')} iterations, {online.get('env_steps')} env steps "
                f"({online.get('env_steps_per_s')} /s), stopped by budget: "
                f"{online.get('stopped_by_budget')}, collapsed: {online.get('collapsed')}; "
                f"kept policy from stage {kept}\n\n{table1}\n\n{table2}\n\n"
                f"each stage >= the previous (test seeds): {'met' if monotone else 'NOT met'}; "
                f"online best iterate {pct(best_online)} >= 1.3x the demonstrator "
                f"({pct(target)}) within {GOAL_MINUTES:.0f} min (budget {budget} min, "
                f"used {minutes:.1f}): {'met' if beyond else 'NOT met'}")  # fmt: skip
        print("\n" + text, flush=True)
        sections.append(text)
        docs[backbone] = {"run": str(run), "stages": rows, "sampling": sampling, "teach": teach,
                          "goals": {"monotone": monotone, "beyond_expert": beyond}}  # fmt: skip
        (run / "benchmark.json").write_text(json.dumps(docs[backbone], indent=2, default=str))
        (run / "benchmark.md").write_text(text + "\n")
    out = Path(args.runs_dir)
    plot_curves(curves, expert["success_rate"] or 0.0, out / "rl100_online_curves.png")
    (out / "rl100_stages.md").write_text("\n\n".join(sections) + "\n")
    print(f"wrote {out / 'rl100_stages.md'} and {out / 'rl100_online_curves.png'}")


if __name__ == "__main__":
    main()
