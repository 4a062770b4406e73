"""The JSON document inside every exported ``.onnx`` file, and its validation.

The exporter writes one entry into the model's ``metadata_props`` under the key
:data:`METADATA_KEY`; its value is a JSON document that, together with the graph, is all a
robot needs to run the policy. Its JSON Schema ships with the package
(``robodistill/deploy/metadata_schema.json``, :mod:`robodistill.deploy.schema`), and its
descriptions state every rule a runtime follows; the exporter validates the document
before writing it and every reader validates it at load (errors name the file and the
JSON path). ``docs/reference_runner.py`` drives any exported kind from it with numpy and
onnxruntime alone. Shape of the document (format version 2)::

    {
      "format": "robodistill-policy", "format_version": 2,
      "policy_kind": "sb3",                    # the torch Policy's kind
      "policy": {...},                         # kind-specific details (algo, net_arch, ...)
      "mode": "direct" | "denoise",            # how the runtime calls the graph (below)
      "observation": {"shape": [5], "dim": 5, "dtype": "float32", "low": [...] | null,
                      "high": [...] | null, "units": ["mm", "rad", ...] | null,
                      "layout": [{"key", "start", "stop", "shape"}] | null},   # raw units
      "action": {"shape": [2], "dim": 2, "dtype": "float32", "low", "high", "units"},
      "horizons": {"observation": 1, "prediction": 1, "execute": 1, "start": 0},
      "history": {"order": "oldest_first", "padding": "repeat_first"},
      "chunk": {"axis": 1, "current_index": 1, "executed": [1, 9]} | null,
      "chunk_execution": "receding" | "ensemble", "ensemble_decay": 0.01,
      "inputs":  [{"name": "obs", "role": "observation", "shape": ["batch", 5], "dtype": "float32"}],
      "outputs": [{"name": "action", "role": "action", "shape": ["batch", 2], "dtype": "float32"}],
      "state": [{"input": "buf", "output": "buf_next", "shape": [16, 2], "init": "zeros",
                 "std": 1.0, "reset": "episode"}],
      "noise_std": 1.0,                        # std of inputs with role "noise" (direct mode)
      "noise": {"distribution": "normal", "mean": 0.0, "std": 1.0, "draw": "per_call",
                "inputs": [{"name": "noise", "shape": ["batch", 1, 2]}]} | null,
      "denoise": {"steps": [{"timestep": 90, "coef": [6 floats]}, ...], "init_std": 1.0} | null,
      "embodiments": {"names": [...], "codes": [[...]], "default": "name" | null,
                      "descriptors": {"name": {...}} | null} | null,
      "env": {"id": "robodistill/Nav-v0", "module": "robodistill.envs",
              "make": "robodistill.envs:robodistill/Nav-v0", "kwargs": {...},
              "max_episode_steps": 400, "embodiment": {...} | null} | null,
      "env_id": "..." | null, "episode": {"reset": ["history", "action_queue", ...]},
      "control_rate_hz": 10.0 | null, "normalization": {...}, "deterministic": true,
      "source": {...}, "export": {"opset": 18, "exporter": "dynamo", "quantized": null, ...},
      "integrity": {"sha256": "<hex>", "covers": "graph opset_import functions"} | null
    }

``observation.low`` / ``high`` are the raw observation bounds (``null`` for the whole list:
none declared; ``null`` for an entry: unbounded there); the controller can fault an
observation outside them. ``units`` likewise (``null``: unknown). ``integrity`` is written
by the exporter and checked by the runtime at load (:mod:`robodistill.deploy.integrity`);
files exported before it existed have none and load unchecked. A file of format version 1
loads: it is upgraded in memory (:func:`robodistill.deploy.contract.upgrade_v1`) with the
values version 1's runtime followed, and marked ``"upgraded_from": 1``.

Input roles: ``observation`` (raw observations, ``(B, D)``, or ``(B, H, D)`` with history:
oldest first, an episode's first observation repeated to fill it), ``noise`` (normal draws
scaled by ``noise_std``, of the input's exact shape, e.g. a consistency student's noise),
``state`` (a tensor the graph also returns, e.g. a streaming buffer, initialised at each
episode start), ``embodiment`` (the code of the robot's embodiment from the table), and in
``denoise`` mode ``sample``, ``timestep`` and ``step_coef``. Output roles: ``action``
``(B, A)``, ``chunk`` ``(B, T, A)`` (``chunk[:, start]`` is the action for the current
step; ``[start, start + execute)`` are executed), ``state``, and ``sample`` (denoise mode's
next sample).

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

from robodistill.deploy.contract import upgrade_v1
from robodistill.deploy.schema import SCHEMA_FILE, SCHEMA_VERSION, SchemaError
from robodistill.deploy.schema import validate as validate_schema

METADATA_KEY = "robodistill"
FORMAT = "robodistill-policy"
FORMAT_VERSION = SCHEMA_VERSION
READABLE_VERSIONS = (1, 2)
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


def validate_metadata(doc: Any, where: str | None = None) -> dict[str, Any]:
    """Check a metadata document against the schema and the rules between its fields;
    return it (a version-1 document upgraded in place to version 2). Errors name ``where``
    (the file) and the field's JSON path."""
    prefix = f"{where}: " if where else ""
    try:
        return _validate(doc)
    except SchemaError as e:
        raise MetadataError(
            f"{prefix}metadata does not match the robodistill-policy format {FORMAT_VERSION} "
            f"schema ({SCHEMA_FILE}) {e}"
        ) from e
    except MetadataError as e:
        if not where:
            raise
        raise MetadataError(f"{prefix}{e}") from e


def _validate(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise MetadataError(f"metadata must be a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise MetadataError(f"metadata.format must be {FORMAT!r}, got {doc.get('format')!r}")
    version = doc.get("format_version")
    if version == 1 and not isinstance(version, bool):
        upgrade_v1(doc)
    elif version != FORMAT_VERSION or isinstance(version, bool):
        raise MetadataError(
            f"metadata.format_version is {version!r}; this runtime reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (re-export the policy with this version "
            "of robodistill)"
        )
    validate_schema(doc)
    doc.setdefault("integrity", None)
    for part in ("observation", "action"):
        section = doc[part]
        if section["dim"] != math.prod(section["shape"]):
            raise MetadataError(f"metadata.{part}.dim is {section['dim']}, but shape "
                                f"{section['shape']} holds {math.prod(section['shape'])}")  # fmt: skip
        for key in ("low", "high", "units"):
            if section[key] is not None and len(section[key]) != section["dim"]:
                raise MetadataError(f"metadata.{part}.{key} has {len(section[key])} entries, "
                                    f"expected {section['dim']} (one per flat entry)")  # fmt: skip
    horizons = doc["horizons"]
    if horizons["start"] + horizons["execute"] > horizons["prediction"]:
        raise MetadataError(
            f"metadata.horizons: start ({horizons['start']}) + execute ({horizons['execute']}) "
            f"exceeds the prediction horizon ({horizons['prediction']})"
        )
    _check_io(doc)
    _check_rules(doc)
    return doc


def _check_io(doc: dict) -> None:
    inputs, outputs = doc["inputs"], doc["outputs"]
    for kind, entries in (("inputs", inputs), ("outputs", outputs)):
        names = [e["name"] for e in entries]
        if len(set(names)) != len(names):
            raise MetadataError(f"metadata.{kind} names an entry twice: {names}")
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
    listed_in = {s["input"] for s in doc["state"]}
    listed_out = {s["output"] for s in doc["state"]}
    if state_in != listed_in or state_out != listed_out:
        raise MetadataError(
            "metadata.state must pair every 'state' input with a 'state' output: inputs "
            f"{sorted(state_in)}, outputs {sorted(state_out)}, listed {doc['state']}"
        )
    shapes = {e["name"]: e["shape"] for e in inputs}
    for i, s in enumerate(doc["state"]):
        if s["shape"] != shapes[s["input"]][1:]:
            raise MetadataError(f"metadata.state[{i}].shape {s['shape']} differs from input "
                                f"{s['input']!r}'s sizes {shapes[s['input']][1:]}")  # fmt: skip
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
        steps = doc["denoise"]["steps"]
        warm = doc["denoise"].get("warm_start")
        if warm is not None and warm["steps"] > len(steps):
            raise MetadataError(f"metadata.denoise.warm_start.steps must be an integer in "
                                f"[1, {len(steps)}], got {warm['steps']!r}")  # fmt: skip


def _check_rules(doc: dict) -> None:
    """The version-2 rule fields agree with the rest of the document."""
    hz = doc["horizons"]
    chunked = any(e["role"] == "chunk" for e in doc["outputs"])
    want = {"axis": 1, "current_index": hz["start"], "executed": [hz["start"],
            hz["start"] + hz["execute"]]} if chunked else None  # fmt: skip
    got = doc["chunk"] if doc["chunk"] is None else {k: doc["chunk"][k] for k in want or {}}
    if got != want:
        raise MetadataError(f"metadata.chunk must be {want} for these outputs and horizons, "
                            f"got {doc['chunk']}")  # fmt: skip
    noisy = [{"name": e["name"], "shape": e["shape"]} for e in doc["inputs"]
             if e["role"] == "noise"]  # fmt: skip
    noise = doc["noise"]
    if (noise is None) != (not noisy) or (noise and noise["inputs"] != noisy):
        raise MetadataError(f"metadata.noise.inputs must list the noise inputs {noisy} (noise "
                            "is null when there are none)")  # fmt: skip
    if noise:
        draw = "per_denoise_step" if doc["mode"] == "denoise" else "per_call"
        std = 1.0 if doc["mode"] == "denoise" else doc["noise_std"]
        if noise["draw"] != draw or noise["std"] != std:
            raise MetadataError(f"metadata.noise: {doc['mode']} mode draws {draw} with std "
                                f"{std}, got {noise['draw']} with std {noise['std']}")  # fmt: skip
    table = doc["embodiments"]
    if table is not None:
        if len(table["codes"]) != len(table["names"]):
            raise MetadataError("metadata.embodiments: one code per name")
        if table["default"] is not None and table["default"] not in table["names"]:
            raise MetadataError(f"metadata.embodiments.default {table['default']!r} is not one "
                                f"of {table['names']}")  # fmt: skip
    env, env_id = doc["env"], doc["env_id"]
    if env is not None and env_id is not None and env_id.rpartition(":")[2] != env["id"]:
        raise MetadataError(f"metadata.env.id {env['id']!r} differs from env_id {env_id!r}")


def dumps(doc: dict[str, Any]) -> str:
    """The document as compact JSON (NaN/inf are refused: they are not JSON)."""
    return json.dumps(doc, allow_nan=False, separators=(",", ":"))


def loads(text: str, where: str | None = None) -> dict[str, Any]:
    """Parse and validate a document (``where``, the file, for messages)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        prefix = f"{where}: " if where else ""
        raise MetadataError(f"{prefix}metadata is not valid JSON: {e}") from e
    return validate_metadata(doc, where)


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
    return loads(props[METADATA_KEY], where)


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
