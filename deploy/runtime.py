"""Run an exported policy with numpy and onnxruntime only (no torch).

::

    policy = OnnxPolicy("policy.onnx")          # everything it needs is in the file
    policy.reset()                              # new episodes in every batch row
    action = policy.act(obs)                    # (B, *obs_shape) -> (B, *action_shape) float32
    policy.reset(env_ids=[1])                   # row 1 starts over; the others keep their state

The file's metadata (:mod:`robodistill.deploy.metadata`, validated at load against the
schema shipped as ``metadata_schema.json``, which states each rule below) says how to drive
the graph; ``docs/reference_runner.py`` follows the same rules in ~80 lines. The
policy keeps, per batch row, what the graph does not: the observation history (filled with
the first observation of an episode, the diffusion-policy convention), the queue of
executed actions of a predicted chunk (receding horizon) or the overlapping chunks that
temporal ensembling averages, the state tensors a streaming policy carries from call to
call, and the random draws for noise inputs and for the sampling loop of ``denoise`` mode.

Loading checks the file: an empty, truncated or non-ONNX file is a
:class:`~robodistill.deploy.metadata.ModelFileError` naming the path, and the SHA-256 of the
graph (weights included) must equal the digest the exporter recorded in the metadata
(``verify=False`` skips that digest for huge models; ``benchmarks/onnx_load.py`` measures
its cost).

Random draws come from ``self.rng`` (``numpy.random.default_rng(seed)``) in this order per
inference: ``denoise`` mode draws the initial sample, then one noise tensor per step whose
sigma is not 0; ``direct`` mode draws each ``noise`` input in input order.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnxruntime as ort

from robodistill.deploy.integrity import check_digest, file_digest
from robodistill.deploy.metadata import (
    MetadataError,
    bounds_from_json,
    metadata_of_session,
    open_session,
)

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float16)": np.float16,
}


def session_options(threads: int = 1) -> ort.SessionOptions:
    """CPU options for a control loop: ``threads`` intra-op threads, sequential execution."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads == 1:
        # No worker threads to spin; keeps a 1-thread policy from burning a second core.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxPolicy:
    """An exported policy with its per-row episode state.

    Args:
        path: the ``.onnx`` file written by :func:`robodistill.deploy.export.export_policy`.
        threads: onnxruntime intra-op threads (1 is best for batch-1 control on small nets).
        execution: ``"receding"`` or ``"ensemble"`` for chunked policies (default: the
            file's ``chunk_execution``).
        ensemble_decay: temporal ensembling weight ``exp(-decay * i)``, ``i = 0`` the oldest
            prediction (ACT's convention); default: the file's ``ensemble_decay``.
        embodiment: name in the file's embodiment table (generalist policies); default: the
            table's default.
        seed: seeds ``self.rng`` (noise inputs, the denoising loop's draws).
        providers: onnxruntime execution providers.
        warmup: run the graph once on zeros at construction (with its own random draws),
            so that the first real call does not pay onnxruntime's first-run allocations.
        verify: check the SHA-256 of the file's graph against the digest recorded at export
            (a mismatch raises :class:`~robodistill.deploy.metadata.ModelFileError` naming
            the path and both digests). ``False`` skips reading and hashing the file, for
            models so large that the extra read matters; damaged files still fail clearly.

    Attributes set at load: ``observation_low`` / ``observation_high`` (D,) float32 from the
    metadata (``-inf`` / ``inf`` where it declares none), ``action_low`` / ``action_high``
    (A,), and ``integrity``: ``"verified"``, ``"not recorded"`` (a file exported before
    digests existed) or ``"skipped"`` (``verify=False``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        threads: int = 1,
        execution: str | None = None,
        ensemble_decay: float | None = None,
        embodiment: str | None = None,
        seed: int | None = 0,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        warmup: bool = True,
        verify: bool = True,
    ):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no ONNX policy at {self.path}")
        # Hashed before onnxruntime parses the file, so a truncated file is named as such.
        digest = file_digest(self.path) if verify else None
        self.session = open_session(self.path, session_options(threads), list(providers))
        self.metadata = meta = metadata_of_session(self.session, self.path)
        if digest is None:
            self.integrity = "skipped"
        else:
            verified = check_digest(meta, digest, self.path)
            self.integrity = "verified" if verified else "not recorded"
        graph_in = {i.name: i for i in self.session.get_inputs()}
        graph_out = {o.name for o in self.session.get_outputs()}
        declared = {e["name"] for e in meta["inputs"]}
        if set(graph_in) != declared:
            raise MetadataError(f"{self.path}: graph inputs {sorted(graph_in)} differ from the "
                                f"metadata's inputs {sorted(declared)}")  # fmt: skip
        missing = {e["name"] for e in meta["outputs"]} - graph_out
        if missing:
            raise MetadataError(f"{self.path}: metadata names outputs {sorted(missing)} that the "
                                "graph does not have")  # fmt: skip
        self._dtypes = {n: _DTYPES.get(i.type, np.float32) for n, i in graph_in.items()}
        self._inputs: dict[str, list[dict[str, Any]]] = {}
        for entry in meta["inputs"]:
            self._inputs.setdefault(entry["role"], []).append(entry)
        outputs = {e["role"]: e for e in meta["outputs"] if e["role"] != "state"}
        self._action_out = outputs.get("chunk") or outputs["action"]
        self._chunked = self._action_out["role"] == "chunk"
        self._sample_out = outputs.get("sample")
        self._state = meta["state"]
        self._out_names = [self._action_out["name"]] + [s["output"] for s in self._state]
        self.kind = meta["policy_kind"]
        self.mode = meta["mode"]

        obs, act, hz = meta["observation"], meta["action"], meta["horizons"]
        self.observation_shape = tuple(obs["shape"])
        self.observation_dim = int(obs["dim"])
        self.observation_low = bounds_from_json(obs.get("low"), self.observation_dim, -1.0)
        self.observation_high = bounds_from_json(obs.get("high"), self.observation_dim, 1.0)
        self.action_shape = tuple(act["shape"])
        self.action_dim = int(act["dim"])
        self.action_low = bounds_from_json(act.get("low"), self.action_dim, -1.0)
        self.action_high = bounds_from_json(act.get("high"), self.action_dim, 1.0)
        self.control_rate_hz = meta.get("control_rate_hz")
        self.history = int(hz["observation"])
        self.prediction = int(hz["prediction"])
        self.execute, self.start = int(hz["execute"]), int(hz["start"])
        self._obs_entry = self._inputs["observation"][0]
        obs_rank = len(self._obs_entry["shape"])
        if obs_rank not in (2, 3) or (obs_rank == 2 and self.history != 1):
            raise MetadataError(
                f"{self.path}: observation input shape {self._obs_entry['shape']} does not fit an "
                f"observation history of {self.history} (expected [batch, D] or [batch, H, D])"
            )
        self._obs_rank = obs_rank
        for entries in self._inputs.values():
            for e in entries:
                if e["role"] != "step_coef" and not all(isinstance(d, int) for d in e["shape"][1:]):
                    raise MetadataError(f"{self.path}: input {e['name']!r} needs fixed sizes "
                                        f"after the batch axis, got {e['shape']}")  # fmt: skip

        self.execution = execution or meta["chunk_execution"]
        if self.execution not in ("receding", "ensemble"):
            raise ValueError(f"execution must be 'receding' or 'ensemble', got {self.execution!r}")
        self.ensemble_decay = float(
            meta["ensemble_decay"] if ensemble_decay is None else ensemble_decay
        )
        self._embodiment_code = self._embodiment(embodiment)
        if self.mode == "denoise":
            steps = meta["denoise"]["steps"]
            self._steps = [(int(s["timestep"]), np.asarray(s["coef"], np.float32)) for s in steps]
            self._init_std = float(meta["denoise"]["init_std"])
            self._warm = meta["denoise"].get("warm_start")
        self.inferences = 0
        """Graph evaluations so far (a denoising loop counts once)."""
        self._batch = 0
        self._guide = None  # predict(guide=...) during one call, for _run_steps
        if warmup:
            self.rng = np.random.default_rng(0)
            self._init_batch(1)
            obs = np.zeros((1, *self._obs_entry["shape"][1:]), np.float32)
            self._infer(obs, np.arange(1))
            self._batch, self.inferences = 0, 0
        self.rng = np.random.default_rng(seed)

    # -- metadata helpers --------------------------------------------------------------------
    def _embodiment(self, name: str | None) -> np.ndarray | None:
        if "embodiment" not in self._inputs:
            if name is not None:
                raise ValueError(f"embodiment={name!r} given, but {self.path} takes no embodiment")
            return None
        table = self.metadata["embodiments"]
        names = list(table["names"])
        name = name if name is not None else table.get("default")
        if name not in names:
            raise ValueError(
                f"embodiment={name!r} is not in {self.path}'s embodiment table; choose one of "
                f"{names}"
            )
        return np.asarray(table["codes"][names.index(name)], dtype=np.float32)

    # -- episode state -----------------------------------------------------------------------
    def _init_batch(self, batch: int) -> None:
        self._batch = batch
        self._hist = np.zeros((batch, self.history, self.observation_dim), np.float32)
        self._fresh = np.ones(batch, bool)
        te = self.prediction - self.start
        self._queue = np.zeros((batch, self.execute, self.action_dim), np.float32)
        self._qpos = np.full(batch, self.execute)
        self._ens = np.zeros((batch, te, te, self.action_dim), np.float32)
        self._ens_n = np.zeros(batch, np.int64)
        self._states = {s["input"]: self._state_init(s, batch) for s in self._state}
        if self.mode == "denoise":  # RTI warm start: each row's last final sample
            shape = (batch, *self._inputs["sample"][0]["shape"][1:])
            self._plans = np.zeros(shape, np.float32)
            self._planned = np.zeros(batch, bool)

    def _state_init(self, spec: dict[str, Any], rows: int) -> np.ndarray:
        shape = (rows, *self._entry(spec["input"])["shape"][1:])
        if spec["init"] == "normal":
            return (self.rng.standard_normal(shape) * spec["std"]).astype(np.float32)
        return np.zeros(shape, np.float32)

    def _entry(self, name: str) -> dict[str, Any]:
        return next(e for e in self.metadata["inputs"] if e["name"] == name)

    def reset(self, env_ids: np.ndarray | list[int] | None = None) -> None:
        """Forget the episode state of ``env_ids`` (every row when ``None``)."""
        if env_ids is None or self._batch == 0:
            self._batch = 0  # re-allocated for the batch size of the next act()
            return
        rows = np.asarray(env_ids, dtype=np.int64).ravel()
        if rows.size and (rows.min() < 0 or rows.max() >= self._batch):
            raise IndexError(f"env_ids {rows.tolist()} out of range for batch {self._batch}")
        self._fresh[rows] = True
        self._qpos[rows] = self.execute
        self._ens_n[rows] = 0
        if self.mode == "denoise":
            self._planned[rows] = False
        for s in self._state:
            self._states[s["input"]][rows] = self._state_init(s, len(rows))

    # -- acting ------------------------------------------------------------------------------
    def check_observation(self, obs: Any) -> np.ndarray:
        """``obs`` (B, *observation_shape) or (B, D) -> (B, D) float32; clear errors else."""
        x = np.asarray(obs)
        if x.dtype.kind not in "fiu":
            raise TypeError(f"observation dtype {x.dtype} is not a real number type "
                            f"(expected float32 of shape (B, {self.observation_dim}))")  # fmt: skip
        if x.ndim < 1 or x.size != x.shape[0] * self.observation_dim or x.ndim == 1:
            raise ValueError(
                f"observation shape {x.shape} does not fit (B, {self.observation_dim}) or "
                f"(B, *{self.observation_shape}); add the batch axis with obs[None]"
            )
        x = x.reshape(x.shape[0], self.observation_dim).astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            bad = np.flatnonzero(~np.isfinite(x).all(axis=1)).tolist()
            raise ValueError(f"observation rows {bad} contain NaN or inf")
        return x

    def act(self, obs: Any) -> np.ndarray:
        """One control step for every row: (B, *obs_shape) -> (B, *action_shape) float32."""
        x = self.check_observation(obs)
        batch = x.shape[0]
        if batch != self._batch:
            self._init_batch(batch)  # a new batch size starts new episodes in every row
        if self._obs_rank == 3:
            fresh = self._fresh
            self._hist[~fresh] = np.roll(self._hist[~fresh], -1, axis=1)
            self._hist[~fresh, -1] = x[~fresh]
            self._hist[fresh] = x[fresh, None, :]
            fresh[:] = False
            obs_in = self._hist
        else:
            obs_in = x
        if not self._chunked:
            action = self._infer(obs_in, np.arange(batch))
        elif self.execution == "receding":
            action = self._receding(obs_in)
        else:
            action = self._ensemble(obs_in)
        return action.reshape(batch, *self.action_shape).astype(np.float32, copy=True)

    def _receding(self, obs_in: np.ndarray) -> np.ndarray:
        need = np.flatnonzero(self._qpos >= self.execute)
        if need.size:
            chunk = self._infer(obs_in[need], need)
            self._queue[need] = chunk[:, self.start : self.start + self.execute]
            self._qpos[need] = 0
        action = self._queue[np.arange(self._batch), self._qpos]
        self._qpos += 1
        return action

    def _ensemble(self, obs_in: np.ndarray) -> np.ndarray:
        chunk = self._infer(obs_in, np.arange(self._batch))[:, self.start :]
        te = chunk.shape[1]
        # _ens[:, j] holds the chunk predicted j steps ago; its element j is for now.
        self._ens = np.roll(self._ens, 1, axis=1)
        self._ens[:, 0] = chunk
        self._ens_n = np.minimum(self._ens_n + 1, te)
        j = np.arange(te)
        preds = self._ens[:, j, j]
        rank = self._ens_n[:, None] - 1 - j  # 0 for the oldest prediction
        weights = np.where(j < self._ens_n[:, None], np.exp(-self.ensemble_decay * rank), 0.0)
        return (weights[..., None] * preds).sum(1) / weights.sum(1)[:, None]

    def predict(self, obs_input: Any, *, guide: Any = None, warm: np.ndarray | None = None,
                return_sample: bool = False):  # fmt: skip
        """Evaluate the graph (the whole denoising loop in ``denoise`` mode) on the model's
        observation input as given — ``(B, D)`` or ``(B, H, D)`` — without touching the
        per-row queues. Returns the action ``(B, A)`` or chunk ``(B, T, A)``. Stateless
        graphs only: a stateful graph's state lives in :meth:`act`.

        ``denoise`` mode only (real-time chunking, :mod:`robodistill.deploy.rtc`):
        ``guide(x, coef) -> x`` is applied to the sample ``x`` (B, T, A) before every step
        (``coef[0]`` = sqrt(alpha_bar) of the step's input level); ``warm`` (B, T, A), a
        previous final sample already shifted to this observation's time, starts the loop
        from the file's ``warm_start`` step (RTI) instead of pure noise; ``return_sample``
        also returns the final normalized sample (B, T, A): ``(chunk, sample)``."""
        if self._state:
            raise RuntimeError(f"{self.path} carries state tensors; use act(), not predict()")
        x = np.asarray(obs_input, dtype=np.float32)
        want = tuple(self._obs_entry["shape"][1:])
        if x.shape[1:] != want:
            raise ValueError(f"predict: observation input shape {x.shape}, expected (B, *{want})")
        if self.mode != "denoise":
            if guide is not None or warm is not None or return_sample:
                raise ValueError("guide, warm and return_sample need a denoise-mode file")
            return self._infer(x, np.arange(x.shape[0]), keep_state=False)
        self._guide = guide
        try:
            if warm is None or not self._warm:
                self._infer(x, np.arange(x.shape[0]), keep_state=False)
                final, out = self._last
            else:
                feed = self._feed(x, np.arange(x.shape[0]))
                self.inferences += 1
                first = len(self._steps) - int(self._warm["steps"])
                a = float(self._steps[first][1][0]) ** 2  # coef[0] = sqrt(a_t)
                warm = np.array(warm, np.float32)
                dims = list(self._warm.get("discrete_dims") or [])
                if dims:  # as act's warm start: discrete dimensions snapped to +-1
                    warm[..., dims] = np.where(warm[..., dims] >= 0, 1.0, -1.0)
                noise = self.rng.standard_normal(warm.shape).astype(np.float32)
                x_t = (np.sqrt(a) * warm + np.sqrt(1 - a) * noise).astype(np.float32)
                final, out = self._run_steps(feed, x_t, first)
        finally:
            self._guide = None
        return (out, final) if return_sample else out

    def action_map(self) -> tuple[np.ndarray, np.ndarray]:
        """``denoise`` mode: ``(scale, offset)`` (A,) with chunk = sample * scale + offset
        (then clipped), read off the step graph run as the identity step (coefficients
        1, 0, 0, 0, 1, 0: next sample = sample) on samples -0.5 and 0.5 — the file records
        the normalization only in words, and this is what its graph does."""
        if self.mode != "denoise":
            raise ValueError(f"{self.path}: action_map needs a denoise-mode file")
        obs = np.zeros((1, *self._obs_entry["shape"][1:]), np.float32)
        feed = self._feed(obs, np.arange(1))
        (sample,) = self._inputs["sample"]
        (t_in,) = self._inputs["timestep"]
        (coef_in,) = self._inputs["step_coef"]
        names = [self._sample_out["name"], self._action_out["name"]]
        shape = (1, *sample["shape"][1:])
        feed[t_in["name"]] = np.full((1, *t_in["shape"][1:]), self._steps[-1][0],
                                     dtype=self._dtypes[t_in["name"]])  # fmt: skip
        feed[coef_in["name"]] = np.array([1, 0, 0, 0, 1, 0], np.float32)
        for e in self._inputs.get("noise", []):
            feed[e["name"]] = np.zeros(shape, np.float32)
        chunks = []
        for v in (-0.5, 0.5):
            feed[sample["name"]] = np.full(shape, v, np.float32)
            chunks.append(self.session.run(names, feed)[1][0, 0])
        scale = (chunks[1] - chunks[0]).astype(np.float32)
        offset = ((chunks[0] + chunks[1]) / 2).astype(np.float32)
        return scale, offset

    def _feed(self, obs_in: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        b = len(rows)
        obs_name = self._obs_entry["name"]
        feed = {obs_name: obs_in.astype(self._dtypes[obs_name], copy=False)}
        if self._embodiment_code is not None:
            for e in self._inputs["embodiment"]:
                feed[e["name"]] = np.broadcast_to(self._embodiment_code, (b, *e["shape"][1:]))
        for s in self._state:
            feed[s["input"]] = self._states[s["input"]][rows]
        return feed

    def _infer(self, obs_in: np.ndarray, rows: np.ndarray, keep_state: bool = True) -> np.ndarray:
        b = len(rows)
        feed = self._feed(obs_in, rows)
        self.inferences += 1
        if self.mode == "denoise":
            return self._denoise(feed, rows, keep_state)
        for e in self._inputs.get("noise", []):
            draw = self.rng.standard_normal((b, *e["shape"][1:])) * self.metadata["noise_std"]
            feed[e["name"]] = draw.astype(self._dtypes[e["name"]])
        outs = self.session.run(self._out_names, feed)
        if keep_state:
            for s, value in zip(self._state, outs[1:], strict=True):
                self._states[s["input"]][rows] = value
        return outs[0]

    def _denoise(
        self, feed: dict[str, np.ndarray], rows: np.ndarray, keep_state: bool
    ) -> np.ndarray:
        (sample,) = self._inputs["sample"]
        shape = (len(rows), *sample["shape"][1:])
        x = (self.rng.standard_normal(shape) * self._init_std).astype(np.float32)
        warm = self._planned[rows] if (self._warm and keep_state) else np.zeros(len(rows), bool)
        if not warm.any():
            final, out = self._run_steps(feed, x, 0)
        else:
            first = len(self._steps) - int(self._warm["steps"])
            final = np.empty_like(x)
            out = None
            for group, start in ((~warm, 0), (warm, first)):
                if not group.any():
                    continue
                sub = {k: v[group] if v.ndim and v.shape[0] == len(rows) else v
                       for k, v in feed.items()}  # fmt: skip
                xg = x[group]
                if start:
                    a = float(self._steps[first][1][0]) ** 2  # coef[0] = sqrt(a_t)
                    prev = _shift_plan(self._plans[rows[group]], int(self._warm["shift"]))
                    dims = list(self._warm.get("discrete_dims") or [])
                    if dims:
                        prev[..., dims] = np.where(prev[..., dims] >= 0, 1.0, -1.0)
                    xg = (np.sqrt(a) * prev + np.sqrt(1 - a) * xg).astype(np.float32)
                fg, og = self._run_steps(sub, xg, start)
                final[group] = fg
                out = np.empty((len(rows), *og.shape[1:]), og.dtype) if out is None else out
                out[group] = og
        if self._warm and keep_state:
            self._plans[rows] = final
            self._planned[rows] = True
        self._last = (final, out)
        return out

    def _run_steps(self, feed: dict[str, np.ndarray], x: np.ndarray, first: int):
        """Denoising steps ``first..K-1`` from ``x``; returns (final sample, chunk)."""
        (t_in,) = self._inputs["timestep"]
        (coef_in,) = self._inputs["step_coef"]
        noise_in = self._inputs.get("noise", [])
        b = x.shape[0]
        zeros = np.zeros(x.shape, np.float32)
        names = [self._sample_out["name"], self._action_out["name"]]
        out = None
        guide = self._guide
        for timestep, coef in self._steps[first:]:
            if guide is not None:
                x = np.asarray(guide(x, coef), np.float32)
            feed[self._inputs["sample"][0]["name"]] = x
            feed[t_in["name"]] = np.full((b, *t_in["shape"][1:]), timestep,
                                         dtype=self._dtypes[t_in["name"]])  # fmt: skip
            feed[coef_in["name"]] = coef
            for e in noise_in:
                sigma = coef[-1]
                feed[e["name"]] = (self.rng.standard_normal(x.shape).astype(np.float32)
                                   if sigma != 0 else zeros)  # fmt: skip
            x, out = self.session.run(names, feed)
        return x, out


def _shift_plan(plan: np.ndarray, shift: int) -> np.ndarray:
    """(n, H, A): drop the first ``shift`` actions, repeat the last (RTI's warm start)."""
    shift = min(max(int(shift), 0), plan.shape[1] - 1)
    if shift == 0:
        return plan.copy()
    return np.concatenate([plan[:, shift:], np.repeat(plan[:, -1:], shift, axis=1)], axis=1)


def time_act(policy: OnnxPolicy, obs: np.ndarray, calls: int = 1000, warmup: int = 50) -> dict:
    """Latency of one inference on one observation (batch 1), in milliseconds: median, p99,
    max over ``calls`` calls after ``warmup`` untimed ones.

    The policy is reset (untimed) before every call, so each timed ``act`` is a real
    inference: a chunked policy plans (all its denoising steps) instead of popping an action
    it queued earlier, which would time the queue, not the network."""
    import time

    from robodistill.deploy.controller import summarize_ms

    x = np.asarray(obs, np.float32).reshape(1, -1)
    for _ in range(warmup):
        policy.reset()
        policy.act(x)
    times = np.empty(calls)
    for i in range(calls):
        policy.reset()
        t = time.perf_counter()
        policy.act(x)
        times[i] = time.perf_counter() - t
    policy.reset()
    return summarize_ms(times)
