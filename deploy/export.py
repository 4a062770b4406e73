"""Export a policy to one self-contained ``.onnx`` file, check it, quantize it (torch side).

::

    doc = export_policy(policy, "policy.onnx", metadata={"env_id": ..., "control_rate_hz": 10})
    report = check_parity(policy, "policy.onnx", observations=real_obs)   # raises ParityError
    quantize_int8("policy.onnx", "policy.int8.onnx")

A policy describes its graph with ``Policy.onnx_spec()`` (see ``policies/base.py``): an
``nn.Module`` with normalization and action un-scaling inside, its inputs and outputs with
roles, and its part of the metadata document (:mod:`robodistill.deploy.metadata`). This
module exports it (torch's ``dynamo`` exporter, or the older ``torchscript`` one), writes
the metadata into ``metadata_props``, runs ``onnx.checker`` and compares torch with
onnxruntime. It is the only part of ``robodistill.deploy`` that imports torch.

It also holds the torch pieces a sampling policy needs for ``denoise`` mode:
:class:`DenoiserStep` (one scheduler step around a denoiser, un-scaling inside) and
:func:`ddim_steps` (the per-step coefficients of a DDIM schedule for the metadata).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from robodistill.deploy.contract import complete_document
from robodistill.deploy.integrity import COVERS, check_digest, file_digest, model_digest
from robodistill.deploy.metadata import (
    FORMAT,
    FORMAT_VERSION,
    INPUT_ROLES,
    METADATA_KEY,
    OUTPUT_ROLES,
    dumps,
    loads,
    validate_metadata,
)

EXPORTERS = ("dynamo", "torchscript")
MIN_OPSET = 17
_NO_BATCH_ROLES = ("step_coef",)


class ExportError(ValueError):
    """The policy's ONNX spec is invalid or the exported graph does not match it."""


class ParityError(RuntimeError):
    """torch and onnxruntime outputs differ by more than the tolerance."""


# -- the spec ---------------------------------------------------------------------------------
def validate_spec(spec: Any, who: str = "onnx_spec()") -> dict[str, Any]:
    """Check the dict a policy's ``onnx_spec()`` returns; errors name the key to fix."""
    if not isinstance(spec, dict):
        raise ExportError(f"{who} must return a dict, got {type(spec).__name__}")
    for key in ("module", "inputs", "outputs", "metadata"):
        if key not in spec:
            raise ExportError(f"{who} is missing the key {key!r}")
    if not isinstance(spec["module"], nn.Module):
        raise ExportError(f"{who}['module'] must be a torch.nn.Module")
    for kind, roles in (("inputs", INPUT_ROLES), ("outputs", OUTPUT_ROLES)):
        names = set()
        for i, entry in enumerate(spec[kind]):
            if not isinstance(entry, dict) or "name" not in entry or "role" not in entry:
                raise ExportError(f"{who}['{kind}'][{i}] needs 'name' and 'role'")
            if entry["role"] not in roles:
                raise ExportError(f"{who}['{kind}'][{i}]['role'] must be one of {roles}, "
                                  f"got {entry['role']!r}")  # fmt: skip
            if entry["name"] in names:
                raise ExportError(f"{who}['{kind}'] names {entry['name']!r} twice")
            names.add(entry["name"])
            if kind == "inputs" and not isinstance(entry.get("example"), torch.Tensor):
                raise ExportError(f"{who}['inputs'][{i}]['example'] must be a torch.Tensor")
    if not isinstance(spec["metadata"], dict) or "policy_kind" not in spec["metadata"]:
        raise ExportError(f"{who}['metadata'] must be a dict with at least 'policy_kind'")
    return spec


def _batch_axis(entry: dict[str, Any]) -> int | None:
    return entry.get("batch_axis", None if entry["role"] in _NO_BATCH_ROLES else 0)


def _shape(tensor: torch.Tensor, axis: int | None) -> list[int | str]:
    shape: list[int | str] = list(tensor.shape)
    if axis is not None:
        shape[axis] = "batch"
    return shape


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).replace("torch.", "")


# -- export -----------------------------------------------------------------------------------
def export_policy(
    policy: Any,
    path: str | os.PathLike,
    *,
    opset: int = 18,
    exporter: str = "dynamo",
    metadata: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``policy`` (or a ready ``spec``) to ``path``; return the metadata document.

    ``metadata`` adds or overrides entries of the policy's document (``env_id``,
    ``control_rate_hz``, ``source``, ``embodiments``); ``None`` values are ignored.
    """
    if opset < MIN_OPSET:
        raise ExportError(f"opset must be >= {MIN_OPSET}, got {opset}")
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    spec = validate_spec(spec if spec is not None else policy.onnx_spec())
    module = spec["module"].eval()
    args = tuple(e["example"] for e in spec["inputs"])
    with torch.no_grad():
        outs = module(*args)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    if len(outs) != len(spec["outputs"]):
        raise ExportError(f"the module returns {len(outs)} tensors but onnx_spec() names "
                          f"{len(spec['outputs'])} outputs")  # fmt: skip
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **spec["metadata"]}
    doc.update({k: v for k, v in (metadata or {}).items() if v is not None})
    doc["inputs"] = [{"name": e["name"], "role": e["role"], "dtype": _dtype(e["example"]),
                      "shape": _shape(e["example"], _batch_axis(e))} for e in spec["inputs"]]  # fmt: skip
    doc["outputs"] = [{"name": e["name"], "role": e["role"], "dtype": _dtype(t),
                       "shape": _shape(t, _batch_axis(e))}
                      for e, t in zip(spec["outputs"], outs, strict=True)]  # fmt: skip
    doc["export"] = {
        "opset": opset, "exporter": exporter, "quantized": None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "onnx": onnx.__version__,
        "robodistill": _version("robodistill"),
    }  # fmt: skip
    try:  # every rule field the policy leaves out gets the runtime's value, then the schema
        doc = validate_metadata(complete_document(doc))
    except ValueError as e:
        raise ExportError(f"{path}: the policy's metadata is invalid: {e}") from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _run_exporter(module, args, spec, path, opset, exporter)
    model = onnx.load(str(path))
    graph_in = [i.name for i in model.graph.input]
    graph_out = [o.name for o in model.graph.output]
    want_in = [e["name"] for e in spec["inputs"]]
    want_out = [e["name"] for e in spec["outputs"]]
    if graph_in != want_in or graph_out != want_out:
        raise ExportError(
            f"the exported graph has inputs {graph_in} and outputs {graph_out}, but onnx_spec() "
            f"names {want_in} and {want_out} (an input the module does not use is dropped by "
            "the exporter: remove it from the spec)"
        )
    write_metadata(path, doc, model=model)
    return doc


def _run_exporter(module, args, spec, path: Path, opset: int, exporter: str) -> None:
    names_in = [e["name"] for e in spec["inputs"]]
    names_out = [e["name"] for e in spec["outputs"]]
    if exporter == "torchscript":
        axes = {e["name"]: {_batch_axis(e): "batch"}
                for e in spec["inputs"] + spec["outputs"] if _batch_axis(e) is not None}  # fmt: skip
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in torch >= 2.9 and says so each call.
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), input_names=names_in,
                              output_names=names_out, opset_version=opset, dynamo=False,
                              dynamic_axes=axes, do_constant_folding=True)  # fmt: skip
        return
    batch = torch.export.Dim("batch")
    shapes = tuple(
        None if _batch_axis(e) is None else {_batch_axis(e): batch} for e in spec["inputs"]
    )
    with warnings.catch_warnings(), _quiet("torch.onnx", "torch.export"):
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(module, args, str(path), input_names=names_in, output_names=names_out,
                          opset_version=opset, dynamo=True, dynamic_shapes=shapes,
                          external_data=False, optimize=True, verbose=False)  # fmt: skip


@contextlib.contextmanager
def _quiet(*loggers: str):
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def write_metadata(path: str | os.PathLike, doc: dict[str, Any], model=None) -> None:
    """Put ``doc`` into ``path``'s ``metadata_props`` (replacing ours) with the digest of the
    graph as it is saved (``doc["integrity"]``, see :mod:`robodistill.deploy.integrity`),
    save, check."""
    model = model if model is not None else onnx.load(str(path))
    # The metadata lives outside the fields the digest covers: adding it changes nothing.
    doc["integrity"] = {"sha256": model_digest(model.SerializeToString()), "covers": COVERS}
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for key, value in [*keep, (METADATA_KEY, dumps(doc))]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "robodistill"
    model.doc_string = f"robodistill {doc['policy_kind']} policy; metadata_props['{METADATA_KEY}']"
    onnx.save(model, str(path))
    check_model(path)


def check_model(path: str | os.PathLike) -> dict[str, Any]:
    """``onnx.checker`` (full, with shape inference), opset >= 17, valid metadata, and the
    runtime's digest check of the file as saved."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ExportError(f"{path}: opset {opset} < {MIN_OPSET}")
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ExportError(f"{path} has no '{METADATA_KEY}' metadata entry")
    doc = loads(props[METADATA_KEY], str(path))
    if doc["integrity"] is not None:
        check_digest(doc, file_digest(path), str(path))
    return doc


def read_model_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata document, read with the ``onnx`` package (the runtime uses onnxruntime)."""
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return loads(props[METADATA_KEY], str(path))


# -- parity -----------------------------------------------------------------------------------
def random_observations(doc: dict[str, Any], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` observations (n, D): uniform within finite bounds, else normal with std 3."""
    section = doc["observation"]
    dim = int(section["dim"])
    low = np.array([np.nan if v is None else v for v in section.get("low") or [None] * dim])
    high = np.array([np.nan if v is None else v for v in section.get("high") or [None] * dim])
    bounded = np.isfinite(low) & np.isfinite(high) & (high - low < 1e4)
    x = rng.normal(0.0, 3.0, size=(n, dim))
    u = rng.uniform(size=(n, dim))
    x = np.where(bounded, np.nan_to_num(low) + u * np.nan_to_num(high - low), x)
    return x.astype(np.float32)


def _histories(obs: np.ndarray, h: int) -> np.ndarray:
    """Consecutive windows (n, h, D), the first rows padded with the first observation."""
    idx = np.arange(len(obs))[:, None] - np.arange(h - 1, -1, -1)[None, :]
    return obs[np.maximum(idx, 0)]


def _graph_inputs(spec, doc, obs: np.ndarray, rng, step: int) -> list[np.ndarray]:
    n = len(obs)
    values = []
    for e, meta in zip(spec["inputs"], doc["inputs"], strict=True):
        shape = (n, *meta["shape"][1:]) if _batch_axis(e) == 0 else tuple(meta["shape"])
        dtype = e["example"].numpy().dtype
        role = e["role"]
        if role == "observation":
            v = _histories(obs, shape[1]) if len(shape) == 3 else obs.reshape(shape)
        elif role == "embodiment":
            codes = np.asarray(doc["embodiments"]["codes"])
            v = codes[rng.integers(len(codes), size=n)]
        elif role == "timestep":
            v = np.full(shape, doc["denoise"]["steps"][step]["timestep"])
        elif role == "step_coef":
            v = np.asarray(doc["denoise"]["steps"][step]["coef"])
        else:  # noise, state, sample: standard normal draws
            v = rng.standard_normal(shape)
        values.append(np.asarray(v).astype(dtype))
    return values


def check_parity(
    policy: Any,
    path: str | os.PathLike,
    observations: np.ndarray | None = None,
    *,
    n_random: int = 256,
    tol: float = 1e-4,
    seed: int = 0,
    spec: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Largest difference between the torch module and onnxruntime on ``n_random``
    random observations and on ``observations`` (real ones), over every output (and, in
    ``denoise`` mode, every step): absolute where ``|torch| <= 1``, relative above, because
    outputs in env units (PushT targets are pixels, ~500) carry float32 rounding of
    ~3e-5 per unit of magnitude that no exporter can remove. Deterministic direct-mode policies are also compared end
    to end: ``policy.act`` against :class:`OnnxPolicy.act`. Raises :class:`ParityError`
    when any difference exceeds ``tol``; returns the differences otherwise."""
    import onnxruntime as ort

    from robodistill.deploy.runtime import OnnxPolicy, session_options

    spec = validate_spec(spec if spec is not None else policy.onnx_spec())
    doc = read_model_metadata(path)
    module = spec["module"].eval()
    session = ort.InferenceSession(
        str(path), session_options(1), providers=["CPUExecutionProvider"]
    )
    names = [o["name"] for o in doc["outputs"]]
    rng = np.random.default_rng(seed)
    sets = {"random": random_observations(doc, n_random, rng)}
    if observations is not None and len(observations):
        sets["real"] = np.asarray(observations, np.float32).reshape(len(observations), -1)
    steps = range(len(doc["denoise"]["steps"])) if doc["mode"] == "denoise" else [0]
    report: dict[str, float] = {}
    for label, obs in sets.items():
        worst = 0.0
        for step in steps:
            values = _graph_inputs(spec, doc, obs, rng, step)
            # The whole batch, then single rows: the batch axis must really be dynamic.
            batches = [values] + [
                [
                    v[i : i + 1] if _batch_axis(e) == 0 else v
                    for v, e in zip(values, spec["inputs"], strict=True)
                ]
                for i in range(min(3, len(obs)))
            ]
            for feed in batches:
                with torch.no_grad():
                    ref = module(*[torch.from_numpy(np.ascontiguousarray(v)) for v in feed])
                ref = ref if isinstance(ref, (tuple, list)) else (ref,)
                got = session.run(
                    names, dict(zip([e["name"] for e in doc["inputs"]], feed, strict=True))
                )
                for r, g in zip(ref, got, strict=True):
                    worst = max(worst, _max_abs(r.numpy(), g))
        report[f"graph_{label}"] = worst
        end_to_end = doc.get("deterministic") and doc["mode"] == "direct" and not doc["state"]
        if policy is not None and end_to_end:
            runtime = OnnxPolicy(path, threads=1)
            expected = np.asarray(policy.act(obs), np.float32)
            report[f"policy_{label}"] = _max_abs(expected, runtime.act(obs))
    bad = {k: v for k, v in report.items() if not v <= tol}
    if bad:
        raise ParityError(f"{path}: torch and onnxruntime differ by more than {tol:g}: {bad}")
    return report


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf
    same_nonfinite = ~np.isfinite(a) & (a == b)
    scale = np.maximum(1.0, np.abs(a))
    diff = np.where(same_nonfinite, 0.0, np.abs(a - b) / np.where(np.isfinite(scale), scale, 1.0))
    return float(np.nan_to_num(diff, nan=math.inf).max(initial=0.0))


# -- quantization -----------------------------------------------------------------------------
def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Dynamic int8 quantization (weights int8, activations quantized per call) with
    onnxruntime; the metadata travels along, marked ``export.quantized``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    doc = read_model_metadata(src)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # "consider pre-processing" is advice for CNNs, not MLPs
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        logging.disable(previous)
    doc["export"] = {**doc["export"], "quantized": "int8-dynamic"}
    write_metadata(dst, doc)
    return doc


# -- denoise mode -----------------------------------------------------------------------------
class DenoiserStep(nn.Module):
    """One sampling step around a denoiser, the graph of ``denoise`` mode.

    ``forward(obs, sample, timestep, step_coef, noise) -> (next_sample, chunk)``:
    ``obs`` raw (normalized here by ``obs_normalize``), ``sample`` the normalized action
    chunk ``x_t`` (B, T, A), ``timestep`` (B,), ``step_coef`` the step's six coefficients
    (see :mod:`robodistill.deploy.metadata`), ``noise`` standard normal (B, T, A). The
    denoiser is called as ``denoiser(sample, timestep, obs_normalized)`` and predicts
    ``epsilon``, ``sample`` (x0) or ``v_prediction``; x0 is clipped to ``±clip_sample``
    as diffusers does. ``chunk`` is ``next_sample`` un-scaled to action units (and clamped
    to the action limits): after the last step it is the policy's output.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        *,
        prediction_type: str = "epsilon",
        clip_sample: float | None = 1.0,
        use_clipped_model_output: bool = False,
        obs_normalize: nn.Module | None = None,
        action_unnormalize: nn.Module | None = None,
        action_low: torch.Tensor | None = None,
        action_high: torch.Tensor | None = None,
    ):
        super().__init__()
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"prediction_type must be epsilon, sample or v_prediction, "
                             f"got {prediction_type!r}")  # fmt: skip
        self.denoiser, self.prediction_type = denoiser, prediction_type
        self.clip_sample, self.use_clipped = clip_sample, use_clipped_model_output
        self.obs_normalize = obs_normalize or nn.Identity()
        self.action_unnormalize = action_unnormalize or nn.Identity()
        self.limits = action_low is not None
        if self.limits:
            self.register_buffer("low", torch.as_tensor(action_low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_high, dtype=torch.float32))

    def forward(self, obs, sample, timestep, step_coef, noise):
        out = self.denoiser(sample, timestep, self.obs_normalize(obs))
        sa, s1m, c_x0, c_eps, c_xt, sigma = step_coef.unbind(0)
        if self.prediction_type == "epsilon":
            eps, x0 = out, (sample - s1m * out) / sa
        elif self.prediction_type == "sample":
            x0, eps = out, (sample - sa * out) / s1m
        else:
            x0, eps = sa * sample - s1m * out, sa * out + s1m * sample
        if self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
            if self.use_clipped:
                eps = (sample - sa * x0) / s1m
        nxt = c_x0 * x0 + c_eps * eps + c_xt * sample + sigma * noise
        chunk = self.action_unnormalize(nxt)
        if self.limits:
            chunk = torch.maximum(torch.minimum(chunk, self.high), self.low)
        return nxt, chunk


def ddim_steps(
    alphas_cumprod: np.ndarray,
    timesteps: list[int] | np.ndarray,
    *,
    num_train_timesteps: int,
    final_alpha_cumprod: float = 1.0,
    eta: float = 0.0,
) -> list[dict[str, Any]]:
    """``metadata.denoise.steps`` for a DDIM sampler, with diffusers' ``DDIMScheduler``
    arithmetic (previous timestep ``t - num_train_timesteps // len(timesteps)``)."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    timesteps = [int(t) for t in np.asarray(timesteps).ravel()]
    ratio = num_train_timesteps // len(timesteps)
    steps = []
    for t in timesteps:
        prev = t - ratio
        a_t = ac[t]
        a_prev = ac[prev] if prev >= 0 else float(final_alpha_cumprod)
        variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        sigma = eta * math.sqrt(max(variance, 0.0))
        coef = [math.sqrt(a_t), math.sqrt(1 - a_t), math.sqrt(a_prev),
                math.sqrt(max(1 - a_prev - sigma**2, 0.0)), 0.0, sigma]  # fmt: skip
        steps.append({"timestep": t, "coef": coef})
    return steps


def ddim_steps_from_scheduler(scheduler: Any, num_inference_steps: int, eta: float = 0.0):
    """:func:`ddim_steps` for a diffusers ``DDIMScheduler`` (its timestep spacing, offset and
    ``set_alpha_to_one`` included)."""
    scheduler.set_timesteps(num_inference_steps)
    return ddim_steps(
        scheduler.alphas_cumprod.numpy(), scheduler.timesteps.numpy(),
        num_train_timesteps=scheduler.config.num_train_timesteps,
        final_alpha_cumprod=float(scheduler.final_alpha_cumprod), eta=eta,
    )  # fmt: skip


def _version(name: str) -> str | None:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None
