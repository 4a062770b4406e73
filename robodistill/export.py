"""The ``export`` stage: the run's policy to ONNX.

``run_export`` writes ``<run>/export/policy.onnx`` (and ``policy.int8.onnx`` with
``export.quantize``), checks it with ``onnx.checker`` and torch/onnxruntime parity on random
and real observations, and times it. The ONNX work itself lives in
:mod:`robodistill.deploy.export`; this module is the stage around it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from robodistill.config import ConfigError, RunConfig
from robodistill.core.rollout import env_spaces
from robodistill.core.run_env import adopt_env, manifest_env, run_config_env
from robodistill.core.rundir import StageRun, directory_digest
from robodistill.core.seeds import EVAL_SEED_OFFSET, episode_seeds
from robodistill.distill.stage import distilled_students
from robodistill.envs import make_env
from robodistill.errors import MissingInput, StageNotBuilt
from robodistill.policies import load_policy

log = logging.getLogger(__name__)

ONNX_NAME, INT8_NAME = "policy.onnx", "policy.int8.onnx"


def run_dir(cfg: RunConfig) -> Path:
    """``<runs_dir>/<name>``."""
    return Path(cfg.runs_dir) / cfg.name


def export_policy_dir(cfg: RunConfig) -> Path:
    """The policy directory ``export.policy`` names; ``auto``: the run's student
    (:func:`auto_student`), else its teacher ``<run>/teach/policy``."""
    if cfg.export.policy != "auto":
        path = Path(cfg.export.policy)
        if not (path / "config.json").is_file():
            raise ConfigError(f"export.policy: {path} is not a saved policy directory (no "
                              "config.json); give a directory written by teach or distill")  # fmt: skip
        return path
    teacher = run_dir(cfg) / "teach" / "policy"
    student = auto_student(run_dir(cfg) / "distill")
    if student is not None:
        if (teacher / "config.json").is_file() and _saved_at(teacher) > _saved_at(student):
            log.warning("export: the teacher %s was saved after the student %s; distill it "
                        "again (robodistill distill --overwrite) or set export.policy=%s to "
                        "export the teacher", teacher, student, teacher)  # fmt: skip
        return student
    if (teacher / "config.json").is_file():
        return teacher
    raise MissingInput(
        f"export.policy: auto found no policy in {run_dir(cfg) / 'distill'}/*/policy or "
        f"{teacher}; run `robodistill teach` (or distill) for this run first, or set "
        "export.policy=DIR"
    )


def auto_student(distill_dir: Path) -> Path | None:
    """The student ``export.policy: auto`` exports from ``distill_dir`` (``<run>/distill``),
    ``None`` when it holds none.

    Every ``<student>/policy`` there counts, whatever its kind (dagger, consistency,
    streaming, rti, generalist, ...). The distill stage that made them records the order
    they were configured in (``distill.students`` in its ``manifest.json``): the first of
    those present wins, as the stage made them together from one teacher. Any other student
    (no manifest, or one it does not list) is ordered by when it was last saved, newest
    first; two equally new ones are ambiguous and raise :class:`ConfigError` naming them.
    """
    found = distilled_students(distill_dir)
    if not found:
        return None
    manifest = distill_dir / "manifest.json"
    listed: list[str] = []
    if manifest.is_file():
        try:
            doc = json.loads(manifest.read_text())
            listed = list(doc["config"]["distill"]["students"])
        except (ValueError, KeyError, TypeError):
            log.warning("export: %s records no distill.students; choosing by time", manifest)
    for name in listed:
        if name in found:
            return found[name]
    times = {name: _saved_at(path) for name, path in found.items()}
    newest = max(times.values())
    tied = sorted(name for name, t in times.items() if t == newest)
    if len(tied) > 1:
        listing = "; ".join(f"{found[n]} ({_kind(found[n])})" for n in tied)
        raise ConfigError(
            f"export.policy: auto cannot choose between {len(tied)} students saved at the same "
            f"time: {listing}. Choose one with `export.policy: <path>` (the command line: "
            f"robodistill export --policy {found[tied[0]]})"
        )
    return found[tied[0]]


def _saved_at(policy_dir: Path) -> int:
    """When the policy in ``policy_dir`` was last saved (newest file, ns)."""
    return max((f.stat().st_mtime_ns for f in policy_dir.iterdir() if f.is_file()), default=0)


def _kind(policy_dir: Path) -> str:
    try:
        return str(json.loads((policy_dir / "config.json").read_text()).get("kind"))
    except (OSError, ValueError, AttributeError):
        return "unreadable config.json"


def export_env(cfg: RunConfig, policy_dir: Path) -> RunConfig:
    """``cfg`` with the env ``policy_dir`` was made on unless ``env.id`` is set: the env the
    stage that saved it recorded (teach or distill manifest), else the run's ``config.json``
    (:mod:`robodistill.core.run_env`)."""
    found = (manifest_env(policy_dir.parent, levels=3, stages=("teach", "distill"))
             or run_config_env(run_dir(cfg)))  # fmt: skip
    return adopt_env(cfg, *found) if found else cfg


def real_observations(cfg: RunConfig, policy, steps: int) -> np.ndarray:
    """Up to ``steps`` observations the policy itself meets in ``env.id`` (evaluation seeds)."""

    if steps == 0:
        return np.zeros((0, 0), np.float32)
    env = make_env(cfg.env.id, max_episode_steps=cfg.env.max_episode_steps, **cfg.env.kwargs)
    out: list[np.ndarray] = []
    try:
        for seed in episode_seeds(cfg, steps, EVAL_SEED_OFFSET):
            obs, _ = env.reset(seed=seed)
            policy.reset()
            done = False
            while not done and len(out) < steps:
                out.append(np.asarray(obs, np.float32).ravel())
                action = policy.act(np.asarray(obs, np.float32)[None])[0]
                obs, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
            if len(out) >= steps:
                break
    finally:
        env.close()
    return np.stack(out)


def env_metadata(cfg: RunConfig, env_doc: dict[str, Any]) -> tuple[dict[str, Any], tuple]:
    """``metadata.env`` for the run's env (id, the module that registers it, kwargs, step
    limit, simulated body) and the units the env declares per flat observation and action
    entry (``observation_units`` / ``action_units`` attributes; ``None``: unknown)."""
    from robodistill.deploy.contract import env_entry

    env = make_env(cfg.env.id, **cfg.env.kwargs)
    try:
        found = {}
        for name in ("observation_units", "action_units", "embodiment_spec"):
            try:
                found[name] = env.get_wrapper_attr(name)
            except AttributeError:
                found[name] = None
        entry_point = env.spec.entry_point if env.spec is not None else None
    finally:
        env.close()
    # An id without "module:" is registered by gymnasium itself, by robodistill.envs, or by
    # the package its entry point lives in (its import registers it, as gymnasium-robotics').
    package = entry_point.split(".")[0] if isinstance(entry_point, str) else None
    module = None if package in (None, "gymnasium", "robodistill") else package
    spec = found["embodiment_spec"]
    steps = cfg.env.max_episode_steps or env_doc.get("max_episode_steps")
    entry = env_entry(cfg.env.id, kwargs=cfg.env.kwargs, max_episode_steps=steps, module=module,
                      embodiment=spec.describe() if hasattr(spec, "describe") else None)  # fmt: skip
    return entry, (found["observation_units"], found["action_units"])


def run_export(cfg: RunConfig, overwrite: bool = False) -> dict[str, Any]:
    """Export the policy to ONNX, check parity, time it (and its int8 version)."""
    # Lazy: onnx and onnxruntime are optional extras ([export], [deploy]).
    from robodistill.deploy.export import check_parity, export_policy, random_observations
    from robodistill.deploy.runtime import OnnxPolicy, time_act

    policy_dir = export_policy_dir(cfg)
    cfg = export_env(cfg, policy_dir)
    digest = directory_digest(policy_dir)
    inputs = {"policy_digest": digest, "env_id": cfg.env.id, "env_kwargs": cfg.env.kwargs}
    policy = load_policy(policy_dir)
    try:
        spec = policy.onnx_spec()
    except NotImplementedError as e:
        # Checked before the stage directory exists: nothing half-done is left behind.
        raise StageNotBuilt(f"{e} (policy {policy_dir}). Nothing was exported.") from e
    with StageRun(cfg, "export", overwrite=overwrite, inputs=inputs) as stage:
        if stage.skipped:
            return stage.manifest["metrics"]
        _, _, env_doc = env_spaces(cfg.env.id, cfg.env.kwargs)
        observation = spec["metadata"]["observation"]
        if int(np.prod(observation["shape"])) != int(
            np.prod(env_doc["observation_space"]["shape"])
        ):
            raise ConfigError(
                f"env.id: {cfg.env.id} observations have shape "
                f"{env_doc['observation_space']['shape']} but the policy in {policy_dir} takes "
                f"{observation['shape']}; set env.id to the environment it was trained on"
            )
        observation["layout"] = observation.get("layout") or env_doc["observation_layout"]
        space = env_doc["observation_space"]
        if observation.get("low") is None and observation.get("high") is None:
            # A policy that records no observation bounds (diffusion, consistency, streaming)
            # gets the env's, which the controller checks observations against; JSON null
            # (per entry or for a list the env lacks) means unbounded.
            observation["low"], observation["high"] = space.get("low"), space.get("high")
        env_meta, units = env_metadata(cfg, env_doc)
        for part, part_units in zip(("observation", "action"), units, strict=True):
            section = spec["metadata"][part]
            known = part_units is not None and len(part_units) == np.prod(section["shape"])
            if section.get("units") is None and known:  # else null: unknown
                section["units"] = list(part_units)
        extra = {
            "env_id": cfg.env.id,
            "env": env_meta,
            "control_rate_hz": env_doc["control_rate_hz"],
            "source": {
                "run": cfg.name,
                "policy_dir": str(policy_dir),
                "policy_digest": digest,
                "seed": cfg.seed,
            },  # fmt: skip
        }
        path = stage.dir / ONNX_NAME
        doc = export_policy(policy, path, opset=cfg.export.opset, exporter=cfg.export.exporter,
                            metadata=extra, spec=spec)  # fmt: skip
        log.info("export: wrote %s (%d bytes)", path, path.stat().st_size)
        real = real_observations(cfg, policy, cfg.export.parity_real_steps)
        parity = check_parity(policy, path, real, n_random=cfg.export.parity_random,
                              tol=cfg.export.parity_tol, seed=cfg.seed, spec=spec)  # fmt: skip
        sample = real[:1] if len(real) else random_observations(doc, 1, np.random.default_rng(0))
        latency = time_act(OnnxPolicy(path), sample, calls=cfg.export.latency_calls)
        metrics: dict[str, Any] = {
            "model": str(path), "bytes": path.stat().st_size, "policy_kind": doc["policy_kind"],
            "mode": doc["mode"], "opset": cfg.export.opset, "exporter": cfg.export.exporter,
            "parity": parity, "parity_tol": cfg.export.parity_tol,
            "real_observations": int(len(real)), "latency_ms": latency,
        }  # fmt: skip
        if cfg.export.quantize:
            metrics["int8"] = _quantized(path, stage.dir / INT8_NAME, doc, real, cfg, latency,
                                         sample)  # fmt: skip
        log.info("export: %s", json.dumps(metrics))
        stage.finish(metrics)
        return metrics


def _quantized(path: Path, qpath: Path, doc, real, cfg: RunConfig, latency,
               sample: np.ndarray) -> dict[str, Any]:  # fmt: skip
    """Accuracy (against the float ONNX model) and latency of the int8 model, timed on
    ``sample``, the observation the float model's ``latency`` was timed on."""
    # Lazy: onnx and onnxruntime are optional extras ([export], [deploy]).
    from robodistill.deploy.export import quantize_int8, random_observations
    from robodistill.deploy.runtime import OnnxPolicy, time_act

    quantize_int8(path, qpath)
    obs = random_observations(doc, cfg.export.parity_random, np.random.default_rng(cfg.seed))
    if len(real):
        obs = np.concatenate([obs, real.reshape(len(real), -1)])
    full, q = OnnxPolicy(path, seed=cfg.seed), OnnxPolicy(qpath, seed=cfg.seed)

    def first_action(policy: OnnxPolicy, o: np.ndarray) -> np.ndarray:
        # A fresh episode per observation: one inference each, and both models (seeded
        # alike) draw the same noise for it.
        policy.reset()
        return policy.act(o[None])

    diff = np.abs(np.concatenate([first_action(full, o) - first_action(q, o) for o in obs]))
    q_latency = time_act(q, sample, calls=cfg.export.latency_calls)
    action_range = full.action_high - full.action_low
    finite = np.isfinite(action_range)
    return {
        "model": str(qpath), "bytes": qpath.stat().st_size,
        "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
        "max_diff_of_range": float((diff.reshape(len(diff), -1)[:, finite]
                                    / action_range[finite]).max()) if finite.any() else None,
        "latency_ms": q_latency,
        "speedup_median": round(latency["median"] / q_latency["median"], 3),
    }  # fmt: skip
