"""The diffusion teacher and its students for ``benchmarks/deploy.py``: build, export, time.

Kinds (untrained weights, default sizes, on ``robodistill/PushT-v0`` with
``obs_type="keypoints"``, D = 20, A = 2; min-max statistics from random steps):

    diffusion DDIM-10    DiffusionPolicy (1.1 M-param UNet, To 2, H 16, Ta 8), 10 DDIM steps;
                         exported in denoise mode (one step in the graph, the loop in Python)
    RTI 3/10             the same weights with ``rti_steps=3``: after the first chunk, a
                         warm start and 3 of the 10 steps
    consistency 1-step   ConsistencyStudent.from_teacher(ode_steps=20): one UNet call
    consistency 3-step   the same with inference_timesteps(100, 20, 3)
    streaming            StreamingStudent (distill.streaming.build_student, defaults):
                         one buffer update (one UNet call) per control step, state in the file

Two levels per kind, torch and onnxruntime interleaved in turns of ``BLOCK`` samples (batch 1,
1 thread):

* ``decision``: what the policy computes when it decides. torch: one
  ``robodistill.core.latency.decision_latency`` decision (``plan(hist)`` for chunked kinds, RTI
  warm-started; ``act`` for streaming). onnxruntime: ``OnnxPolicy.predict(hist)`` (the whole
  denoising loop is one decision), but ``OnnxPolicy.act`` for RTI (the warm start is act's
  state; only the act call that plans is timed) and for streaming (state tensors).
* ``act/step``: what a controller sees per control step on average: Ta = 8 consecutive
  ``act`` calls (one of which plans) divided by 8 for chunked kinds, one ``act`` otherwise.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from robodistill.core.latency import decision_latency
from robodistill.deploy.controller import summarize_ms
from robodistill.deploy.export import export_policy, quantize_int8
from robodistill.deploy.runtime import OnnxPolicy, session_options
from robodistill.envs import make_env

ENV = "robodistill/PushT-v0"
ENV_KWARGS = {"obs_type": "keypoints"}
BLOCK = 10
"""Samples per side and turn: the first of a turn runs with caches the other side evicted
(a one-call onnxruntime UNet goes from ~1.1 to ~1.9 ms when alternated call by call, while
torch's decision warms itself with the untimed act of ``decision_latency``), so turns of
several samples keep the medians at steady state and still spread the load alike."""


# -- timing -----------------------------------------------------------------------------------
def clocked(fn: Callable[[], object]) -> Callable[[], float]:
    """``fn`` as a sample: one call, its duration in seconds."""

    def sample() -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    return sample


def interleaved(samplers: dict[str, Callable[[], float]], samples: int, warmup: int,
                block: int = 1) -> dict[str, dict]:  # fmt: skip
    """``samples`` durations (seconds) from each sampler, taken in turns of ``block`` (the
    order of the samplers reversed every turn) so that load changes on a shared machine hit
    them alike; after ``warmup`` untimed samples each. Milliseconds: median, p99, max, mean."""
    for sampler in samplers.values():
        for _ in range(warmup):
            sampler()
    times: dict[str, list[float]] = {name: [] for name in samplers}
    order = list(samplers)
    while len(times[order[0]]) < samples:
        n = min(block, samples - len(times[order[0]]))
        for name in order:
            times[name].extend(samplers[name]() for _ in range(n))
        order.reverse()
    return {name: summarize_ms(t) | {"mean": round(float(np.mean(t)) * 1e3, 4), "n": len(t)}
            for name, t in times.items()}  # fmt: skip


# -- the policies -----------------------------------------------------------------------------
def random_steps(steps: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Observations and actions of random PushT steps (keypoints), for the normalizer."""
    env = make_env(ENV, **ENV_KWARGS)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    observations, actions = [obs], []
    for _ in range(steps):
        action = env.action_space.sample()
        obs, _, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        if terminated or truncated:
            obs, _ = env.reset()
            observations.append(obs)
    env.close()
    return np.asarray(observations, np.float32), np.asarray(actions, np.float32)


def first_observation() -> np.ndarray:
    """(1, D) float32: the first keypoints observation of seed 0 (what latency is timed on)."""
    env = make_env(ENV, **ENV_KWARGS)
    obs = env.reset(seed=0)[0].astype(np.float32)[None]
    env.close()
    return obs


def build() -> dict:
    """name -> torch policy for the five kinds of the module docstring."""
    from robodistill.config import load_config
    from robodistill.distill.streaming import build_student
    from robodistill.policies.consistency import ConsistencyStudent, inference_timesteps
    from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
    from robodistill.policies.normalizer import Normalizer

    obs, act = random_steps()
    stats = {"obs": {"min": obs.min(0), "max": obs.max(0)},
             "action": {"min": act.min(0), "max": act.max(0)}}  # fmt: skip
    space = make_env(ENV, **ENV_KWARGS).action_space
    config = DiffusionPolicyConfig(obs.shape[1], act.shape[1],
                                   action_low=[float(v) for v in space.low],
                                   action_high=[float(v) for v in space.high])  # fmt: skip
    teacher = DiffusionPolicy(config, Normalizer.from_stats(stats))
    rti = DiffusionPolicy(dataclasses.replace(config, rti_steps=3), Normalizer.from_stats(stats))
    rti.ema_net.load_state_dict(teacher.ema_net.state_dict())
    one = ConsistencyStudent.from_teacher(teacher, ode_steps=20)
    three = ConsistencyStudent.from_teacher(teacher, ode_steps=20)
    three.config.inference_timesteps = inference_timesteps(config.num_train_timesteps, 20, 3)
    streaming = build_student(teacher, load_config(None, []))
    return {"diffusion DDIM-10": teacher, "RTI 3/10": rti, "consistency 1-step": one,
            "consistency 3-step": three, "streaming": streaming}  # fmt: skip


def describe(name: str, policy) -> str:
    """What one decision of ``policy`` is, in network calls."""
    c = policy.config
    if name.startswith("diffusion"):
        return f"{c.num_inference_steps} UNet calls"
    if name.startswith("RTI"):
        return f"{c.rti_steps} of {c.num_inference_steps} UNet calls (warm start)"
    if name.startswith("consistency"):
        return f"{len(c.inference_timesteps)} UNet call(s), t = {c.inference_timesteps}"
    return f"{c.calls_per_step} UNet call(s), buffer {c.buffer_horizon}"


# -- measurements -----------------------------------------------------------------------------
def steps_per_cycle(policy) -> int:
    """Control steps per decision: Ta for a receding-horizon chunked policy, else 1."""
    from robodistill.policies.chunking import ChunkedPolicy

    c = policy.config
    chunked = isinstance(policy, ChunkedPolicy) and c.temporal_ensemble is None
    return int(c.action_horizon) if chunked else 1


def onnx_decision(runtime: OnnxPolicy, obs: np.ndarray) -> tuple[Callable[[], float], str]:
    """A sampler of one onnxruntime decision, and what it times."""
    if not runtime.metadata.get("state") and not (
        runtime.mode == "denoise" and runtime.metadata["denoise"].get("warm_start")
    ):
        hist = np.repeat(obs[:, None], runtime.history, axis=1) if runtime.history > 1 else obs
        return clocked(lambda: runtime.predict(hist)), "OnnxPolicy.predict(hist)"
    runtime.reset()
    runtime.act(obs)  # the first (cold) plan: later plans are warm-started

    def decide() -> float:
        while True:  # act until a call plans; only that call is timed
            before = runtime.inferences
            t = time.perf_counter()
            runtime.act(obs)
            dt = time.perf_counter() - t
            if runtime.inferences > before:
                return dt

    return decide, "OnnxPolicy.act, planning calls only" if runtime.execute > 1 else (
        "OnnxPolicy.act"
    )


def measure(name: str, policy, path: Path, obs: np.ndarray, decisions: int,
            block: int = BLOCK) -> dict:  # fmt: skip
    """Decision and act/step latency, torch vs onnxruntime (module docstring)."""
    torch.set_num_threads(1)
    runtime = OnnxPolicy(path, threads=1)
    onnx_decide, onnx_what = onnx_decision(runtime, obs)

    def torch_decide() -> float:  # reset, one untimed act (history, RTI's plan), one decision
        return decision_latency(policy, obs, decisions=1, warmup=0)["mean_ms"] / 1e3

    torch_what = "plan(hist)" if steps_per_cycle(policy) > 1 else "Policy.act"
    if name.startswith("RTI"):
        torch_what += ", warm-started"
    dec = interleaved({"torch": torch_decide, "onnx": onnx_decide}, decisions, 3, block)

    period = steps_per_cycle(policy)
    policy.reset()
    runtime_act = OnnxPolicy(path, threads=1)

    def per_step(act) -> Callable[[], float]:
        def sample() -> float:
            t = time.perf_counter()
            for _ in range(period):
                act(obs)
            return (time.perf_counter() - t) / period

        return sample

    acts = interleaved({"torch": per_step(policy.act), "onnx": per_step(runtime_act.act)},
                       decisions, 2, block)  # fmt: skip
    policy.reset()
    return {
        "what": describe(name, policy),
        "decision": {"torch": dec["torch"], "onnx": dec["onnx"], "torch_timed": torch_what,
                     "onnx_timed": onnx_what,
                     "ratio": round(dec["torch"]["median"] / dec["onnx"]["median"], 2)},
        "act_per_step": {"torch": acts["torch"], "onnx": acts["onnx"], "steps_per_sample": period,
                         "ratio": round(acts["torch"]["median"] / acts["onnx"]["median"], 2)},
    }  # fmt: skip


def int8_row(policy, path: Path, obs: np.ndarray, decisions: int, block: int = BLOCK,
             rows: int = 256) -> dict:  # fmt: skip
    """int8 dynamic quantization of an exported stateless chunk policy (the consistency
    student): decision latency fp32 vs int8 (interleaved) and the largest output difference
    on ``rows`` random histories and noises (the same inputs for both; torch for scale)."""
    import onnxruntime as ort

    dst = path.with_suffix(".int8.onnx")
    quantize_int8(path, dst)
    fp32, int8 = OnnxPolicy(path, threads=1), OnnxPolicy(dst, threads=1)
    hist = np.repeat(obs[:, None], fp32.history, axis=1)
    samplers = {"fp32": clocked(lambda: fp32.predict(hist)),
                "int8": clocked(lambda: int8.predict(hist))}  # fmt: skip
    times = interleaved(samplers, decisions, 5, block)
    rng = np.random.default_rng(0)
    states, _ = random_steps(rows, seed=1)
    idx = rng.integers(len(states) - 1, size=rows)
    feed = {"obs": np.stack([states[idx], states[idx + 1]], axis=1)}
    noise = next(e for e in fp32.metadata["inputs"] if e["role"] == "noise")
    feed[noise["name"]] = rng.standard_normal((rows, *noise["shape"][1:])).astype(np.float32)
    outs = {}
    for label, file in (("fp32", path), ("int8", dst)):
        session = ort.InferenceSession(str(file), session_options(1),
                                       providers=["CPUExecutionProvider"])  # fmt: skip
        outs[label] = session.run(None, feed)[0]
    with torch.no_grad():
        module = policy.onnx_spec()["module"].eval()
        ref = module(*(torch.from_numpy(v) for v in feed.values())).numpy()
    return {
        "fp32": times["fp32"], "int8": times["int8"],
        "speedup": round(times["fp32"]["median"] / times["int8"]["median"], 2),
        "max_abs_diff_int8_vs_fp32": float(np.abs(outs["int8"] - outs["fp32"]).max()),
        "mean_abs_diff_int8_vs_fp32": float(np.abs(outs["int8"] - outs["fp32"]).mean()),
        "max_abs_diff_fp32_vs_torch": float(np.abs(outs["fp32"] - ref).max()),
        "action_range": [float(fp32.action_low.min()), float(fp32.action_high.max())],
        "size_kb": {"fp32": round(path.stat().st_size / 1024),
                    "int8": round(dst.stat().st_size / 1024)},
        "rows": rows,
    }  # fmt: skip


def run(workdir: Path, exporter: str, decisions: int, log: Callable[[str], None],
        block: int = BLOCK) -> tuple:  # fmt: skip
    """Build, export and time every kind; returns (results, name -> path, observation)."""
    obs = first_observation()
    policies = build()
    params = policies["diffusion DDIM-10"].num_parameters / 1e6
    log(f"students on {ENV} {ENV_KWARGS}: obs dim {obs.shape[1]}, UNet {params:.2f} M "
        "parameters (teacher)")  # fmt: skip
    results, paths = {}, {}
    for name, policy in policies.items():
        paths[name] = workdir / f"{name.replace(' ', '_').replace('/', '-')}.onnx"
        t = time.perf_counter()
        export_policy(policy, paths[name], exporter=exporter)
        exported = time.perf_counter() - t
        results[name] = measure(name, policy, paths[name], obs, decisions, block)
        results[name]["export_s"] = round(exported, 1)
        log(row_text(name, results[name]))
    results["int8 consistency 1-step"] = int8_row(
        policies["consistency 1-step"], paths["consistency 1-step"], obs, decisions, block
    )
    log(int8_text(results["int8 consistency 1-step"]))
    return results, paths, obs


def row_text(name: str, r: dict) -> str:
    d, a = r["decision"], r["act_per_step"]
    return (
        f"{name:19s} decision  torch {d['torch']['median']:8.3f} ms  onnx "
        f"{d['onnx']['median']:8.3f} ms  ratio {d['ratio']:5.2f}x   ({r['what']}; torch "
        f"{d['torch_timed']}, onnx {d['onnx_timed']})\n"
        f"{'':19s} act/step  torch {a['torch']['median']:8.3f} ms  onnx "
        f"{a['onnx']['median']:8.3f} ms  ratio {a['ratio']:5.2f}x   (mean over "
        f"{a['steps_per_sample']} act call(s) per sample)"
    )


def int8_text(r: dict) -> str:
    return (
        f"int8 consistency 1-step: decision fp32 {r['fp32']['median']:.3f} ms, int8 "
        f"{r['int8']['median']:.3f} ms, speedup {r['speedup']}x; max |int8 - fp32| "
        f"{r['max_abs_diff_int8_vs_fp32']:.4g} (mean {r['mean_abs_diff_int8_vs_fp32']:.3g}) on "
        f"{r['rows']} random histories, actions in {r['action_range']}; max |fp32 - torch| "
        f"{r['max_abs_diff_fp32_vs_torch']:.3g}; size {r['size_kb']['fp32']} -> "
        f"{r['size_kb']['int8']} kB"
    )
