"""The JSON document inside every exported ``.onnx`` file, and its validation.

The exporter writes one entry into the model's ``metadata_props`` under the key
:data:`METADATA_KEY`; its value is a JSON document that, together with the graph, is all a
robot needs to run the policy. Shape of the document (format version 1)::

    {
      "format": "robodistill-policy", "format_version": 1,
      "policy_kind": "sb3",                    # the torch Policy's kind
      "policy": {...},                         # kind-specific details (algo, net_arch, ...)
      "mode": "direct" | "denoise",            # how the runtime calls the graph (below)
      "observation": {"shape": [5], "dim": 5, "low": [...], "high": [...],   # raw units
                      "layout": [{"key", "start", "stop", "shape"}] | null},
      "action": {"shape": [2], "dim": 2, "low": [...], "high": [...]},
      "horizons": {"observation": 1, "prediction": 1, "execute": 1, "start": 0},
      "chunk_execution": "receding" | "ensemble", "ensemble_decay": 0.01,
      "inputs":  [{"name": "obs", "role": "observation", "shape": ["batch", 5], "dtype": "float32"}],
      "outputs": [{"name": "action", "role": "action", "shape": ["batch", 2], "dtype": "float32"}],
      "state": [{"input": "buf", "output": "buf_next", "shape": [16, 2], "init": "zeros", "std": 1.0}],
      "noise_std": 1.0,                        # std of inputs with role "noise" (direct mode)
      "denoise": {"steps": [{"timestep": 90, "coef": [6 floats]}, ...], "init_std": 1.0} | null,
      "embodiments": {"names": [...], "codes": [[...]], "default": "name" | null} | null,
      "control_rate_hz": 10.0 | null, "env_id": "..." | null,
      "normalization": {...}, "deterministic": true,
      "source": {...}, "export": {"opset": 18, "exporter": "dynamo", "quantized": null, ...},
      "integrity": {"sha256": "<hex>", "covers": "graph opset_import functions"} | null
    }

``observation.low`` / ``high`` are the raw observation bounds (``null`` for the whole list:
none declared; ``null`` for an entry: unbounded there); the controller can fault an
observation outside them. ``integrity`` is written by the exporter and checked by the
runtime at load (:mod:`robodistill.deploy.integrity`); files exported before it existed
have none and load unchecked.

Input roles: ``observation`` (raw observations, ``(B, D)``, or ``(B, H, D)`` with history),
``noise`` (standard normal draws scaled by ``noise_std``, e.g. a consistency student's
noise), ``state`` (a tensor the graph also returns, e.g. a streaming buffer), ``embodiment``
(the code of the robot's embodiment from the table), and in ``denoise`` mode ``sample``,
``timestep`` and ``step_coef``. Output roles: ``action`` ``(B, A)``, ``chunk`` ``(B, T, A)``,
``state``, and ``sample`` (denoise mode's next sample).

``denoise`` mode runs the sampling loop in the runtime: the graph is one scheduler step,
``(obs, sample, timestep, step_coef, [noise]) -> (next_sample, chunk)``, and ``coef`` is
``[sqrt(a_t), sqrt(1-a_t), c_x0, c_eps, c_xt, sigma]`` with ``a_t`` the cumulative alpha,
``next = c_x0 * x0 + c_eps * eps + c_xt * x_t + sigma * noise`` (DDIM and DDPM both have this
form). Observation normalization and action un-scaling always happen inside the graph.
An optional ``denoise.warm_start`` ``{"steps": r, "shift": s, "discrete_dims": [...]}`` is
RTI: a row's next chunk starts from its previous final sample shifted by ``s`` actions (the
last one repeated), its ``discrete_dims`` pushed to ±1, re-noised to the timestep of step
``K - r`` (``x = sqrt(a) * warm + sqrt(1 - a) * noise``), and runs only the last ``r``
steps; a row's first chunk after a reset runs all of them.

This module imports nothing but the standard library and numpy (onnxruntime when a file is
read).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

METADATA_KEY = "robodistill"
FORMAT = "robodistill-policy"
FORMAT_VERSION = 1
MODES = ("direct", "denoise")
INPUT_ROLES = ("observation", "noise", "state", "embodiment", "sample", "timestep", "step_coef")
OUTPUT_ROLES = ("action", "chunk", "state", "sample")
CHUNK_EXECUTIONS = ("receding", "ensemble")
STEP_COEF_SIZE = 6


class MetadataError(ValueError):
    """The ONNX file's robodistill metadata is missing or inconsistent (names the field)."""


class ModelFileError(MetadataError):
    """An ``.onnx`` file is empty, truncated, not an ONNX model, cannot be loaded, or its
    graph differs from the digest recorded at export (the message names the path). A
    :class:`MetadataError` (and so a ``ValueError``): whatever reports a bad policy file
    reports this one too. The digest itself: :mod:`robodistill.deploy.integrity`."""


def bounds_to_json(values: Any) -> list[float | None] | None:
    """A bound array as JSON (``None`` for an infinite entry, JSON has no inf)."""
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float64).ravel()
    return [float(v) if math.isfinite(v) else None for v in arr]


def bounds_from_json(values: list | None, size: int, sign: float) -> np.ndarray:
    """Inverse of :func:`bounds_to_json`; ``None`` (or a missing list) is ``sign * inf``."""
    if values is None:
        return np.full(size, sign * np.inf, dtype=np.float32)
    arr = np.array([sign * np.inf if v is None else v for v in values], dtype=np.float32)
    if arr.size != size:
        raise MetadataError(f"bounds have {arr.size} entries, expected {size}")
    return arr


def _require(doc: dict, key: str, where: str) -> Any:
    if key not in doc:
        raise MetadataError(f"metadata.{where}{key} is missing")
    return doc[key]


def _int(value: Any, field: str, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise MetadataError(f"metadata.{field} must be an integer >= {lo}, got {value!r}")
    return value


def validate_metadata(doc: Any) -> dict[str, Any]:
    """Check a metadata document and fill defaults; return it. Errors name the field."""
    if not isinstance(doc, dict):
        raise MetadataError(f"metadata must be a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise MetadataError(f"metadata.format must be {FORMAT!r}, got {doc.get('format')!r}")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise MetadataError(
            f"metadata.format_version is {version!r}; this runtime reads version "
            f"{FORMAT_VERSION} (re-export the policy with this version of robodistill)"
        )
    _require(doc, "policy_kind", "")
    mode = doc.setdefault("mode", "direct")
    if mode not in MODES:
        raise MetadataError(f"metadata.mode must be one of {MODES}, got {mode!r}")
    for part in ("observation", "action"):
        section = _require(doc, part, "")
        shape = _require(section, "shape", f"{part}.")
        section["dim"] = int(np.prod(shape)) if shape else 1
    horizons = doc.setdefault("horizons", {})
    for key, default in (("observation", 1), ("prediction", 1), ("execute", 1)):
        _int(horizons.setdefault(key, default), f"horizons.{key}")
    _int(horizons.setdefault("start", 0), "horizons.start", lo=0)
    if horizons["start"] + horizons["execute"] > horizons["prediction"]:
        raise MetadataError(
            f"metadata.horizons: start ({horizons['start']}) + execute ({horizons['execute']}) "
            f"exceeds the prediction horizon ({horizons['prediction']})"
        )
    if doc.setdefault("chunk_execution", "receding") not in CHUNK_EXECUTIONS:
        raise MetadataError(
            f"metadata.chunk_execution must be one of {CHUNK_EXECUTIONS}, "
            f"got {doc['chunk_execution']!r}"
        )
    doc.setdefault("ensemble_decay", 0.01)
    doc.setdefault("noise_std", 1.0)
    doc.setdefault("state", [])
    doc.setdefault("embodiments", None)
    doc.setdefault("control_rate_hz", None)
    doc.setdefault("deterministic", False)
    integrity = doc.setdefault("integrity", None)
    if integrity is not None:
        digest = integrity.get("sha256") if isinstance(integrity, dict) else None
        if not (isinstance(digest, str) and len(digest) == 64 and _is_hex(digest)):
            raise MetadataError(f"metadata.integrity.sha256 must be 64 hex digits, got {digest!r}")
    _check_io(doc)
    return doc


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _check_io(doc: dict) -> None:
    inputs, outputs = _require(doc, "inputs", ""), _require(doc, "outputs", "")
    for kind, entries, roles in (
        ("inputs", inputs, INPUT_ROLES),
        ("outputs", outputs, OUTPUT_ROLES),
    ):
        for i, entry in enumerate(entries):
            for key in ("name", "role", "shape"):
                _require(entry, key, f"{kind}[{i}].")
            if entry["role"] not in roles:
                raise MetadataError(
                    f"metadata.{kind}[{i}].role must be one of {roles}, got {entry['role']!r}"
                )
    in_roles = [e["role"] for e in inputs]
    out_roles = [e["role"] for e in outputs]
    if in_roles.count("observation") != 1:
        raise MetadataError("metadata.inputs must have exactly one input with role 'observation'")
    actions = [r for r in out_roles if r in ("action", "chunk")]
    if len(actions) != 1:
        raise MetadataError("metadata.outputs must have exactly one output with role 'action' or "
                            f"'chunk', got roles {out_roles}")  # fmt: skip
    state_in = {e["name"] for e in inputs if e["role"] == "state"}
    state_out = {e["name"] for e in outputs if e["role"] == "state"}
    listed_in = {s.get("input") for s in doc["state"]}
    listed_out = {s.get("output") for s in doc["state"]}
    if state_in != listed_in or state_out != listed_out:
        raise MetadataError(
            "metadata.state must pair every 'state' input with a 'state' output: inputs "
            f"{sorted(state_in)}, outputs {sorted(state_out)}, listed {doc['state']}"
        )
    for i, s in enumerate(doc["state"]):
        if s.setdefault("init", "zeros") not in ("zeros", "normal"):
            raise MetadataError(f"metadata.state[{i}].init must be 'zeros' or 'normal'")
        s.setdefault("std", 1.0)
    if "embodiment" in in_roles and not doc["embodiments"]:
        raise MetadataError("the graph has an 'embodiment' input but metadata.embodiments is empty")
    if doc["mode"] == "denoise":
        needed = {"sample", "timestep", "step_coef"}
        if not needed <= set(in_roles) or "sample" not in out_roles:
            raise MetadataError(
                "metadata.mode 'denoise' needs inputs with roles sample, timestep, step_coef and an "
                f"output with role sample; got inputs {in_roles}, outputs {out_roles}"
            )
        if doc["state"]:
            raise MetadataError("metadata.state: 'denoise' mode graphs cannot carry state tensors")
        denoise = _require(doc, "denoise", "")
        steps = _require(denoise, "steps", "denoise.")
        if not steps:
            raise MetadataError("metadata.denoise.steps is empty")
        for i, step in enumerate(steps):
            coef = _require(step, "coef", f"denoise.steps[{i}].")
            _require(step, "timestep", f"denoise.steps[{i}].")
            if len(coef) != STEP_COEF_SIZE or not all(math.isfinite(c) for c in coef):
                raise MetadataError(
                    f"metadata.denoise.steps[{i}].coef must be {STEP_COEF_SIZE} finite numbers"
                )
        denoise.setdefault("init_std", 1.0)
        warm = denoise.get("warm_start")
        if warm is not None:
            r = _require(warm, "steps", "denoise.warm_start.")
            if not (isinstance(r, int) and 1 <= r <= len(steps)):
                raise MetadataError(f"metadata.denoise.warm_start.steps must be an integer in "
                                    f"[1, {len(steps)}], got {r!r}")  # fmt: skip
            _require(warm, "shift", "denoise.warm_start.")
            warm.setdefault("discrete_dims", [])


def dumps(doc: dict[str, Any]) -> str:
    """The document as compact JSON (NaN/inf are refused: they are not JSON)."""
    return json.dumps(doc, allow_nan=False, separators=(",", ":"))


def loads(text: str) -> dict[str, Any]:
    try:
        return validate_metadata(json.loads(text))
    except json.JSONDecodeError as e:
        raise MetadataError(f"metadata is not valid JSON: {e}") from e


def read_metadata(path: str) -> dict[str, Any]:
    """Read and validate the document of an ``.onnx`` file (needs onnxruntime, not onnx).
    A file onnxruntime cannot load raises :class:`ModelFileError` naming it. The graph's digest is not checked here (:class:`OnnxPolicy` checks it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = open_session(str(path), options, ["CPUExecutionProvider"])
    return metadata_of_session(session, str(path))


def metadata_of_session(session: Any, where: str = "the model") -> dict[str, Any]:
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise MetadataError(
            f"{where} has no '{METADATA_KEY}' entry in its metadata_props; it was not exported "
            "by robodistill, or the file was cut short after its graph (use `robodistill "
            "export` or robodistill.deploy.export.export_policy)"
        )
    return loads(props[METADATA_KEY])


def open_session(path: str | os.PathLike, options: Any, providers: list[str]) -> Any:
    """``onnxruntime.InferenceSession(path)``; a file onnxruntime cannot load (empty,
    truncated, not ONNX, unsupported operators) raises :class:`ModelFileError` naming it."""
    import onnxruntime as ort

    if os.path.getsize(path) == 0:
        raise ModelFileError(f"{path} is empty (0 bytes); re-export the policy or copy the "
                             "file again")  # fmt: skip
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail)
        if isinstance(e, (TypeError, MemoryError)):
            raise  # a wrong argument or no memory: not a property of the file
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(
            f"{path} cannot be loaded by onnxruntime ({type(e).__name__}: {message}); is it "
            "truncated, not an ONNX file, or made for a newer onnxruntime?"
        ) from e
