"""The headline benchmark: a diffusion teacher's own few-step curve and its fast students, as
a Pareto front of success against latency, on each task side by side.

For every ``--config`` (default: ``configs/pipelines/default.yaml``, Nav-v0, and
``configs/pipelines/pusht.yaml``, Push-T, where it exists) this runs the config's
``collect`` and ``teach`` if they have not run, distills the consistency and streaming
students (``distill.*``, resumable; a finished pipeline run is reused as it is), builds the
RTI inference mode of the teacher (``distill.rti``), then rolls out on the same
``--episodes`` fixed evaluation seeds (every row, DDPM-100 included):

    teacher DDPM-100            100 ancestral steps per chunk (eta 1)
    teacher DDIM-10, -4, -2, -1 the teacher's deterministic sampler with k steps: its own
                                speed/quality curve (and its configured k if another);
                                DDIM-10 is the reference of every ratio
    RTI                         warm start, distill.rti.steps of the teacher's chain
    streaming                   one buffer update per control step
    consistency 1-step / 3-step

Per row: success (with the episode count and its standard error), mean max score (the max
over an episode of ``info["score"]``, else of the reward), **measured** network calls (a
forward hook on the denoiser, :func:`robodistill.core.latency.count_network_calls`) per plan
and per control step of one env row over the evaluation, and two latencies at batch 1 on one
thread, in torch (:func:`robodistill.core.latency.policy_tick_latency`: ``act`` stepped over
control steps on a fixed observation) and in onnxruntime (the file of ``export_policy`` in
``OnnxPolicy.act``, the same tick split by graph runs):

* the **worst control tick**: a tick that plans (chunked policies: the tick whose queue ran
  out, the whole denoising loop; streaming: every tick; RTI: its warm-started plan);
* the **compute per control step**: a plan cycle's time divided by its ticks (chunked: the
  plan amortized over the executed actions plus the ticks that pop queued actions).

Every ratio compares like with like and says which (worst tick with worst tick, per step with
per step, both against DDIM-10). Goals (issue #20), per task, from the measured values:
consistency 1-step success >= 0.95 x DDIM-10's and above DDIM-2's (above the teacher's own
curve); streaming success >= 0.95 x DDIM-10's with <= 2 measured network calls per control
step and a worst tick <= 1/5 of DDIM-10's (torch and onnxruntime medians).

Writes ``students.json``, ``students.md`` and ``success_latency.png`` (the Pareto plot,
:mod:`students_plot`) into each run directory, and the same for all tasks together (one
table per task and a goals table side by side) into ``--runs-dir``.

    python benchmarks/students.py --runs-dir runs/benchmarks     # Nav-v0 and Push-T
    python benchmarks/students.py --config configs/pipelines/default.yaml --episodes 100

``--student consistency=DIR`` / ``--student streaming=DIR`` measure a student saved elsewhere
(e.g. a pilot run's ``distill/<student>/policy``) in place of the run's own, against the
run's teacher on the same seeds; the student is not trained then, and the document records
its directory. ``--tag T`` writes ``students-T.json`` / ``.md`` / ``success_latency-T.png``
so that such a measurement does not replace the run's own.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import diffusion_variant, evaluate, markdown, observation, pct  # noqa: E402
from students_plot import plot_front  # noqa: E402

CONFIGS = ("configs/pipelines/default.yaml", "configs/pipelines/pusht.yaml")
DDIM_STEPS = (10, 4, 2, 1)
REF = "teacher DDIM-10"
STUDENTS = ("consistency", "streaming")
log = logging.getLogger("students")


# -- onnxruntime --------------------------------------------------------------------------------
class CountingSession:
    """An onnxruntime session that counts its runs (one denoiser step in ``denoise`` mode,
    the whole graph otherwise)."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)


def onnx_ticks(policy, obs: np.ndarray, plans: int, path: Path) -> dict[str, Any]:
    """:func:`control_tick_latency` of ``policy`` exported to ``path`` and stepped through
    ``OnnxPolicy.act`` (its own receding-horizon queue, RTI warm start and streaming state)
    at batch 1 on one thread; a tick plans when it ran the graph. The counts are graph runs:
    network calls in ``denoise`` mode (the teacher, RTI), one per plan for a graph that holds
    the whole sampler (the consistency student's k steps are one run)."""
    from robodistill.core.latency import control_tick_latency
    from robodistill.deploy.export import export_policy
    from robodistill.deploy.runtime import OnnxPolicy

    export_policy(policy, path, exporter="torchscript")
    runtime = OnnxPolicy(path, threads=1)
    runtime.session = counter = CountingSession(runtime.session)
    x = np.asarray(obs, np.float32).reshape(1, -1)
    runtime.reset()
    result = control_tick_latency(lambda: runtime.act(x), lambda: counter.runs, plans=plans)
    result["graph_runs_per_plan"] = result.pop("calls_per_plan")
    result["graph_runs_per_step"] = result.pop("calls_per_step")
    result.pop("calls_per_plan_max")
    return result | {"mode": runtime.mode, "threads": 1}


# -- one task ---------------------------------------------------------------------------------
def build_policies(cfg, run: Path, teacher: Path, ddpm: bool = True,
                   students: dict[str, Path] | None = None) -> dict[str, Any]:  # fmt: skip
    """label -> policy, in table order (``ddpm=False`` leaves DDPM-100 out; ``students``:
    ``{"consistency" | "streaming": policy directory}`` in place of the run's own)."""
    from robodistill.policies import load_policy
    from robodistill.policies.consistency import inference_timesteps

    own = diffusion_variant(teacher).config.num_inference_steps
    policies: dict[str, Any] = {}
    if ddpm:
        policies["teacher DDPM-100"] = diffusion_variant(teacher, num_inference_steps=100,
                                                         inference_eta=1.0)  # fmt: skip
    for k in sorted({*DDIM_STEPS, own}, reverse=True):
        policies[f"teacher DDIM-{k}"] = diffusion_variant(teacher, num_inference_steps=k,
                                                          inference_eta=0.0, rti_steps=0)  # fmt: skip
    # RTI is an inference mode of the teacher (nothing to train): built here, as the rti
    # student would save it.
    rti_steps = cfg.distill.rti.steps
    policies[f"RTI ({rti_steps} of {own} steps)"] = diffusion_variant(
        teacher, rti_steps=rti_steps, rti_discrete_dims=list(cfg.distill.rti.discrete_dims) or None
    )
    where = {name: run / "distill" / name / "policy" for name in STUDENTS} | (students or {})
    policies["streaming"] = load_policy(where["streaming"])
    for steps in (1, 3):
        student = load_policy(where["consistency"])
        c = student.config
        c.inference_timesteps = inference_timesteps(c.num_train_timesteps, c.ode_steps, steps)
        policies[f"consistency {steps}-step"] = student
    return policies


def measure_task(cfg, args) -> dict[str, Any]:
    """Train what is missing, evaluate and time every row of one task; the task's document."""
    from robodistill.collect import run_collect
    from robodistill.core.latency import count_network_calls, policy_tick_latency
    from robodistill.core.seeds import EVAL_SEED_OFFSET, episode_seeds
    from robodistill.distill.stage import run_distill, teacher_path
    from robodistill.teach.stage import run_teach

    if not {"consistency", "streaming"} <= set(cfg.distill.students):
        raise SystemExit(f"{cfg.name}: distill.students must include consistency and streaming")
    run = Path(cfg.runs_dir) / cfg.name
    given = dict(args.student)
    t0 = time.monotonic()
    run_collect(cfg)
    run_teach(cfg)
    distilled = {"given": {k: str(v) for k, v in given.items()}} if set(given) == set(
        STUDENTS) else run_distill(cfg)  # fmt: skip
    t_train = time.monotonic() - t0
    teacher = teacher_path(cfg)
    policies = build_policies(cfg, run, teacher, ddpm=not args.no_ddpm, students=given)

    seeds = episode_seeds(cfg, args.episodes, EVAL_SEED_OFFSET)
    obs = observation(cfg, seeds[0])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, policy) in enumerate(policies.items()):
            t = time.monotonic()
            with count_network_calls(policy) as calls:
                row = evaluate(cfg, policy, seeds, args.num_envs)
            row["calls"] = calls.as_dict()
            row["eval_s"] = round(time.monotonic() - t, 1)
            row["torch"] = policy_tick_latency(policy, obs, plans=args.latency_plans)
            row["onnx"] = onnx_ticks(policy, obs, args.latency_plans, Path(tmp) / f"p{i}.onnx")
            results[label] = row
            log.info("%s %s: %s", cfg.name, label, json.dumps(row, default=str))
    add_ratios(results)
    return {"name": cfg.name, "env": cfg.env.id, "env_kwargs": dict(cfg.env.kwargs),
            "teacher": str(teacher), "episodes": len(seeds), "seeds": [seeds[0], seeds[-1]],
            "results": results, "goals": verdicts(results), "distill": distilled,
            "train_s": round(t_train, 1), "latency_plans": args.latency_plans}  # fmt: skip


# -- ratios, the front and the verdicts -------------------------------------------------------
def _median(r: dict, backend: str, which: str) -> float | None:
    return ((r.get(backend) or {}).get(which) or {}).get("median_ms")


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def add_ratios(results: dict[str, dict]) -> None:
    """Per row, against DDIM-10 and like with like: ``success_vs_ref`` (this / DDIM-10),
    ``worst_tick_speedup`` and ``per_step_speedup`` per backend (DDIM-10's median / this
    one's), ``worst_tick_fraction`` (this worst tick / DDIM-10's), and ``front`` (the
    latencies, torch, at which no other row is at least as fast and as successful)."""
    ref = results[REF]
    for r in results.values():
        r["success_vs_ref"] = _div(r["success_rate"], ref["success_rate"])
        for which in ("worst_tick", "per_step"):
            r[f"{which}_speedup"] = {b: _div(_median(ref, b, which), _median(r, b, which))
                                     for b in ("torch", "onnx")}  # fmt: skip
        r["worst_tick_fraction"] = {b: _div(_median(r, b, "worst_tick"),
                                            _median(ref, b, "worst_tick"))
                                    for b in ("torch", "onnx")}  # fmt: skip
        r["front"] = []
    for which in ("per_step", "worst_tick"):
        pts = {k: (_median(r, "torch", which), r["success_rate"]) for k, r in results.items()
               if r["success_rate"] is not None}  # fmt: skip
        for k, (ms, s) in pts.items():
            if not any(m <= ms and t >= s and (m, t) != (ms, s) for m, t in pts.values()):
                results[k]["front"].append(which)


def _goal(met: bool | None, value: str) -> dict[str, Any]:
    return {"met": met, "value": value}


def verdicts(results: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """The issue's goals from measured values: ``{goal: {"met": bool | None, "value": str}}``
    (``None``: not decidable, e.g. an env without a notion of success)."""
    ref, two = results[REF], results["teacher DDIM-2"]
    one, stream = results["consistency 1-step"], results["streaming"]
    goals = {}

    def vs_ref(label: str, r: dict) -> None:
        ratio = r["success_vs_ref"]
        goals[f"{label} success >= 0.95 x DDIM-10's"] = _goal(
            None if ratio is None else ratio >= 0.95,
            f"{pct(r['success_rate'])} vs {pct(ref['success_rate'])}"
            + ("" if ratio is None else f" ({ratio:.2f}x)"),
        )

    vs_ref("consistency 1-step", one)
    s1, s2 = one["success_rate"], two["success_rate"]
    goals["consistency 1-step success > DDIM-2's (above the teacher's curve)"] = _goal(
        None if s1 is None or s2 is None else s1 > s2, f"{pct(s1)} vs {pct(s2)}"
    )
    vs_ref("streaming", stream)
    measured = [v for v in (stream["calls"]["per_step"], stream["torch"]["calls_per_step"])
                if v is not None]  # fmt: skip
    goals["streaming <= 2 measured network calls per control step"] = _goal(
        max(measured) <= 2 if measured else None,
        f"{max(measured):g} (evaluation {_ms(stream['calls']['per_step'])}, timed ticks "
        f"{_ms(stream['torch']['calls_per_step'])})"
        if measured
        else "not measured",
    )
    frac = stream["worst_tick_fraction"]
    known = [v for v in frac.values() if v is not None]
    goals["streaming worst tick <= 1/5 of DDIM-10's"] = _goal(
        all(v <= 0.2 for v in known) if known else None,
        ", ".join(
            f"{b} {_median(stream, b, 'worst_tick'):.3g} / "
            f"{_median(ref, b, 'worst_tick'):.3g} ms = {v:.2f}"
            for b, v in frac.items()
            if v is not None
        ),  # fmt: skip
    )
    return goals


# -- tables -----------------------------------------------------------------------------------
def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def _x(x: float | None) -> str:
    return "—" if x is None else f"{x:.2g}×" if x < 10 else f"{x:.0f}×"


def _success(r: dict) -> str:
    p, n = r["success_rate"], r["episodes"]
    if p is None:
        return f"— ({n})"
    return f"{100 * p:.0f} % ± {100 * math.sqrt(p * (1 - p) / n):.0f} ({n})"


def _calls(evaluation: float | None, tick: float | None) -> str:
    return f"{'—' if evaluation is None else f'{evaluation:.3g}'} / {_ms(tick)}"


def task_table(doc: dict[str, Any]) -> str:
    rows = []
    for label, r in doc["results"].items():
        t, o = r["torch"], r["onnx"]
        score = r.get("max_score_mean")
        rows.append([
            f"**{label}**" if label == REF else label, _success(r),
            "—" if score is None else f"{score:.3f}",
            "—" if r["success_vs_ref"] is None else f"{r['success_vs_ref']:.2f}",
            _calls(r["calls"]["per_plan"], t["calls_per_plan"]),
            _calls(r["calls"]["per_step"], t["calls_per_step"]),
            f"{t['steps_per_plan']:.3g}",
            f"{_ms(t['worst_tick']['median_ms'])} / {_ms(t['worst_tick']['p99_ms'])}",
            f"{_ms(o['worst_tick']['median_ms'])} / {_ms(o['worst_tick']['p99_ms'])}",
            f"{_ms(t['per_step']['median_ms'])} / {_ms(o['per_step']['median_ms'])}",
            f"{_x(r['worst_tick_speedup']['torch'])} / {_x(r['worst_tick_speedup']['onnx'])}",
            f"{_x(r['per_step_speedup']['torch'])} / {_x(r['per_step_speedup']['onnx'])}",
            " ".join({"per_step": "step", "worst_tick": "tick"}[w] for w in r["front"]) or "",
        ])  # fmt: skip
    table = markdown([
        "policy", "success ± s.e. (episodes)", "mean max score", "success vs DDIM-10",
        "net calls / plan (eval / tick)", "net calls / control step (eval / tick)",
        "control steps / plan", "worst tick torch ms (median / p99)",
        "worst tick onnxruntime ms (median / p99)",
        "per-step compute ms, torch / onnxruntime (median)",
        "worst tick vs DDIM-10's worst tick, torch / onnxruntime",
        "per-step vs DDIM-10's per-step, torch / onnxruntime", "Pareto front (torch)",
    ], rows)  # fmt: skip
    score = next((r.get("score_source") for r in doc["results"].values()
                  if r.get("score_source")), None)  # fmt: skip
    return (
        f"### {doc['name']}: {doc['env']} {doc['env_kwargs'] or ''}\n\n"
        f"Teacher {doc['teacher']}; {doc['episodes']} evaluation seeds {doc['seeds'][0]}.."
        f"{doc['seeds'][1]} for every row; max score of {score or 'n/a'}. Network calls are "
        "measured (a forward hook on the denoiser): *eval* = denoiser evaluations per plan / "
        "per control step of one env row over the evaluation (RTI's cold first plan of each "
        "episode included), *tick* = the same over the timed ticks (batch 1, steady state). "
        f"Latency at batch 1, one thread, {doc['latency_plans']} timed plan cycles: *worst "
        "tick* = a control step that plans (streaming: every step), *per-step compute* = a "
        "plan cycle's time / its control steps. Ratios are DDIM-10's median over this row's "
        "(× faster), worst tick against worst tick and per step against per step. *Pareto "
        "front*: no other row is as fast (per step / worst tick, torch) and as successful.\n\n"
        + table
    )


def goals_table(docs: list[dict[str, Any]]) -> str:
    goals = list(docs[0]["goals"])
    rows = []
    for goal in goals:
        cells = []
        for doc in docs:
            g = doc["goals"][goal]
            verdict = {True: "**met**", False: "NOT met", None: "n/a"}[g["met"]]
            cells.append(f"{verdict}: {g['value']}")
        rows.append([goal, *cells])
    return markdown(["goal (measured)", *(f"{d['name']} ({d['env']})" for d in docs)], rows)


def tagged(name: str, tag: str | None) -> str:
    """``students.json`` -> ``students-<tag>.json`` (``--tag``); unchanged without a tag."""
    stem, dot, ext = name.partition(".")
    return f"{stem}-{tag}{dot}{ext}" if tag else name


def write(directory: Path, docs: list[dict[str, Any]], tag: str | None = None) -> str:
    text = "\n\n".join(task_table(d) for d in docs) + "\n\n### Goals\n\n" + goals_table(docs)
    directory.mkdir(parents=True, exist_ok=True)
    plot = plot_front({f"{d['name']}: {d['env']}": d["results"] for d in docs},
                      directory / tagged("success_latency.png", tag))  # fmt: skip
    body = {"tasks": {d["name"]: d for d in docs}} if len(docs) > 1 else docs[0]
    out = directory / tagged("students.json", tag)
    out.write_text(json.dumps(body, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(text + "\n")
    log.info("wrote %s, %s%s", out, out.with_suffix(".md").name,
             f", {plot.name}" if plot else "")  # fmt: skip
    return text


def student_arg(text: str) -> tuple[str, Path]:
    """``--student NAME=DIR`` -> (name, directory), checked."""
    name, _, directory = text.partition("=")
    if name not in STUDENTS or not directory:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR with NAME one of {STUDENTS}, "
                                         f"got {text!r}")  # fmt: skip
    if not (Path(directory) / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{directory} holds no saved policy (no config.json)")
    return name, Path(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=None,
                        help="a pipeline config, repeatable (default: the Nav-v0 default "
                             "pipeline and configs/pipelines/pusht.yaml where it exists)")  # fmt: skip
    parser.add_argument("--runs-dir", default="runs/benchmarks")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every config")  # fmt: skip
    parser.add_argument(
        "--episodes",
        type=int,
        default=100,
        help="evaluation seeds, the same for every row (DDPM-100 included)",
    )
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument(
        "--latency-plans",
        type=int,
        default=50,
        help="timed plan cycles per policy and backend (streaming: ticks)",
    )
    parser.add_argument("--no-ddpm", action="store_true",
                        help="leave the DDPM-100 row out (100 network calls per plan, mostly "
                             "at batch 1-2 once episodes desynchronize: the slowest row by far)")  # fmt: skip
    parser.add_argument("--reuse", action="store_true",
                        help="a task whose run directory already holds students.json measured "
                             "on as many episodes is read, not measured again (to combine "
                             "tasks measured in separate calls)")  # fmt: skip
    parser.add_argument("--student", action="append", default=[], type=student_arg,
                        metavar="NAME=DIR",
                        help="measure this saved student (consistency or streaming) instead "
                             "of the run's own; repeatable")  # fmt: skip
    parser.add_argument(
        "--tag", default=None, help="suffix of the files written (students-TAG.json, ...)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from robodistill.config import load_config

    paths = args.config or [p for p in CONFIGS if Path(p).is_file()]
    for p in CONFIGS if args.config is None else ():
        if not Path(p).is_file():
            log.warning("%s does not exist: that task is left out", p)
    cfgs = [load_config(p, [f"runs_dir={args.runs_dir}", *args.set]) for p in paths]
    names = [c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise SystemExit(f"the configs share a run name ({names}); give each its own `name`")
    docs = []
    for cfg in cfgs:
        done = Path(cfg.runs_dir) / cfg.name / tagged("students.json", args.tag)
        if args.reuse and done.is_file():
            doc = json.loads(done.read_text())
            if doc.get("episodes") == args.episodes:
                log.info("%s: reusing %s", cfg.name, done)
                docs.append(doc)
                continue
        doc = measure_task(cfg, args)
        docs.append(doc)
        write(Path(cfg.runs_dir) / cfg.name, [doc], args.tag)
    text = write(Path(args.runs_dir), docs, args.tag)
    print("\n" + text)


if __name__ == "__main__":
    main()
