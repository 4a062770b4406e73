"""The headline benchmark: one diffusion teacher and its fast students, side by side.

On the teacher of ``--config`` (its ``collect`` and ``teach`` run first if they have not)
this distills the consistency and streaming students (``distill.*`` of the config,
resumable; a finished pipeline run is reused as it is), builds the RTI inference mode of
the teacher (``distill.rti``), then rolls out on the same ``--episodes`` fixed evaluation
seeds:

    teacher DDPM-100   100 ancestral steps per chunk (eta 1)
    teacher DDIM-10    the teacher as trained and selected (reference for the ratios)
    RTI                warm start, distill.rti.steps DDIM steps after the first chunk
    streaming          one buffer update per control step
    consistency 1-step / 3-step

and measures the per-decision latency (batch 1, one thread): in torch
(:func:`robodistill.core.latency.decision_latency`: one chunk for chunked policies, one ``act``
for the streaming student) and in onnxruntime (each exported with ``export_policy``; one
``OnnxPolicy.predict`` chunk, the denoising loop included, or one ``act``). Network calls
per decision are counted from the policies' configs (streaming: measured).

Goals (issue #6): consistency 1-step success >= 0.95 x teacher, latency >= 50x below
DDPM-100 and >= 8x below DDIM-10; streaming success >= 0.95 x teacher with <= 2 network
calls per decision. Writes ``students.json``, ``students.md`` and
``success_latency.png`` into the run directory.

    python benchmarks/students.py --config configs/pipelines/default.yaml --runs-dir runs
    python benchmarks/students.py --episodes 100 --ddpm-episodes 20   # Push-T (rl100.yaml)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import diffusion_variant, evaluate, markdown, observation, pct  # noqa: E402

CONFIG = "configs/pipelines/rl100.yaml"


def onnx_latency(policy, obs: np.ndarray, decisions: int, workdir: Path, name: str) -> dict:
    """Median / p99 ms of one decision of the exported ``policy`` in onnxruntime: one
    ``predict`` chunk (the denoising loop included) for stateless graphs; for RTI and the
    streaming student, whose state lives in ``act``, the ``act`` calls that decide."""
    from deploy_students import onnx_decision

    from robodistill.deploy.export import export_policy
    from robodistill.deploy.runtime import OnnxPolicy

    path = workdir / f"{name}.onnx"
    export_policy(policy, path, exporter="torchscript")
    runtime = OnnxPolicy(path, threads=1)
    decide, _ = onnx_decision(runtime, np.asarray(obs, np.float32)[None])
    ms = np.asarray([decide() for _ in range(decisions + 5)][5:]) * 1e3
    return {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--runs-dir", default="runs/benchmarks")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument("--latency-decisions", type=int, default=30)
    parser.add_argument("--ddpm-episodes", type=int, default=None,
                        help="episodes for DDPM-100 (10x the cost of DDIM-10); default --episodes")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from robodistill.collect import run_collect
    from robodistill.config import load_config
    from robodistill.core.latency import decision_latency
    from robodistill.core.seeds import EVAL_SEED_OFFSET, episode_seeds
    from robodistill.distill.stage import run_distill, teacher_path
    from robodistill.policies import load_policy
    from robodistill.policies.consistency import inference_timesteps
    from robodistill.teach.stage import run_teach

    cfg = load_config(args.config, [f"runs_dir={args.runs_dir}", *args.set])
    if not {"consistency", "streaming"} <= set(cfg.distill.students):
        raise SystemExit("distill.students must include consistency and streaming")
    run = Path(cfg.runs_dir) / cfg.name
    t0 = time.monotonic()
    run_collect(cfg)
    run_teach(cfg)
    distilled = run_distill(cfg)
    t_train = time.monotonic() - t0
    teacher = teacher_path(cfg)
    k = diffusion_variant(teacher).config.num_inference_steps

    policies: dict[str, tuple[object, float]] = {}  # label -> (policy, network calls/decision)
    if args.ddpm_episodes != 0:
        policies["teacher DDPM-100"] = (diffusion_variant(teacher, num_inference_steps=100,
                                                          inference_eta=1.0), 100)  # fmt: skip
    policies[f"teacher DDIM-{k}"] = (diffusion_variant(teacher), k)
    # RTI is an inference mode of the teacher (nothing to train): built here, as the rti
    # student would save it.
    rti_steps = cfg.distill.rti.steps
    rti = diffusion_variant(teacher, rti_steps=rti_steps,
                            rti_discrete_dims=list(cfg.distill.rti.discrete_dims) or None)  # fmt: skip
    policies[f"RTI ({rti_steps} steps)"] = (rti, rti_steps)
    streaming = load_policy(run / "distill/streaming/policy")
    policies["streaming"] = (streaming, streaming.config.calls_per_step)
    for steps in (1, 3):
        student = load_policy(run / "distill/consistency/policy")
        c = student.config
        c.inference_timesteps = inference_timesteps(c.num_train_timesteps, c.ode_steps, steps)
        policies[f"consistency {steps}-step"] = (student, steps)

    seeds = episode_seeds(cfg, args.episodes, EVAL_SEED_OFFSET)
    obs = observation(cfg, seeds[0])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, (policy, calls)) in enumerate(policies.items()):
            n = args.ddpm_episodes if "DDPM" in label and args.ddpm_episodes else len(seeds)
            row = evaluate(cfg, policy, seeds[:n], args.num_envs)
            row["calls_per_decision"] = calls
            row["torch"] = decision_latency(policy, obs, decisions=args.latency_decisions)
            row["onnx"] = onnx_latency(policy, obs, args.latency_decisions, Path(tmp), f"p{i}")
            if label == "streaming":
                row["calls_per_decision_measured"] = policy.network_calls_per_decision
            results[label] = row
            logging.info("%s: %s", label, json.dumps(row))

    ref = results[f"teacher DDIM-{k}"]
    ddpm = results.get("teacher DDPM-100")
    rows = []
    for label, r in results.items():
        label = f"{label} ({r['episodes']} episodes)" if r["episodes"] != len(seeds) else label
        ratio = (r["success_rate"] / ref["success_rate"]) if ref["success_rate"] else None
        r["success_ratio"] = ratio
        r["speedup_vs_ddim"] = ref["torch"]["median_ms"] / r["torch"]["median_ms"]
        r["speedup_vs_ddpm"] = (ddpm["torch"]["median_ms"] / r["torch"]["median_ms"]
                                if ddpm else None)  # fmt: skip
        rows.append([label, pct(r["success_rate"]), "—" if ratio is None else f"{ratio:.2f}",
                     f"{r['length_mean']:.1f}", r["calls_per_decision"],
                     f"{r['torch']['median_ms']:.2f} / {r['torch']['p99_ms']:.2f}",
                     f"{r['onnx']['median_ms']:.2f} / {r['onnx']['p99_ms']:.2f}",
                     f"{r['speedup_vs_ddim']:.1f}×",
                     "—" if ddpm is None else f"{r['speedup_vs_ddpm']:.1f}×"])  # fmt: skip
    table = markdown(["policy", "success", "vs teacher", "mean length", "net calls / decision",
                      "torch ms (median / p99)", "onnxruntime ms (median / p99)",
                      "speed-up vs DDIM", "vs DDPM-100"], rows)  # fmt: skip
    one = results["consistency 1-step"]
    goals = {
        "consistency_success": one["success_ratio"] is not None and one["success_ratio"] >= 0.95,
        "consistency_vs_ddpm": bool(ddpm) and one["speedup_vs_ddpm"] >= 50,
        "consistency_vs_ddim": one["speedup_vs_ddim"] >= 8,
        "streaming_success": (results["streaming"]["success_ratio"] or 0) >= 0.95,
        "streaming_calls": results["streaming"]["calls_per_decision"] <= 2,
    }
    text = (f"{cfg.env.id} ({cfg.env.kwargs}), teacher {teacher}, {len(seeds)} evaluation seeds "
            f"{seeds[0]}..{seeds[-1]}; batch 1, one thread\n\n{table}\n\ngoals: "
            + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in goals.items()))  # fmt: skip
    print("\n" + text)
    from robodistill.evaluate import plot_success_latency

    plot_success_latency({k: {"success_rate": r["success_rate"], "latency": r["torch"]}
                          for k, r in results.items()}, run / "success_latency.png")  # fmt: skip
    doc = {"env": cfg.env.id, "episodes": len(seeds), "results": results, "goals": goals,
           "distill": distilled, "train_s": round(t_train, 1)}  # fmt: skip
    (run / "students.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (run / "students.md").write_text(text + "\n")
    print(f"wrote {run / 'students.json'} and {run / 'success_latency.png'}")


if __name__ == "__main__":
    main()
