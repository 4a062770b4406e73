"""``export`` and ``control``: the ONNX export and the fixed-rate controller."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from robodistill.config.base import Section


class ExportConfig(Section):
    """ONNX export: one self-contained ``.onnx`` file (normalization and action un-scaling
    inside the graph, a JSON metadata document in ``metadata_props``), checked for parity."""

    policy: str = "auto"
    """Policy directory to export; ``auto``: the run's student of any kind
    (``<run>/distill/<student>/policy``: the first of the students its distill stage made,
    in that stage's ``distill.students`` order; else the newest saved, and an error naming
    them when two are equally new), else ``<run>/teach/policy``."""
    exporter: Literal["dynamo", "torchscript"] = "torchscript"
    """``torchscript``: the tracing exporter (the default: 0.3 s per export here against
    12–21 s for ``dynamo``, with the same parity); ``dynamo``: torch.export-based, for
    models tracing cannot capture."""
    opset: int = Field(18, ge=17, le=23)
    """ONNX opset of the exported graph."""
    quantize: bool = False
    """Also write ``policy.int8.onnx`` (onnxruntime dynamic int8 quantization) and report its
    accuracy and latency change against the float model."""
    parity_tol: float = Field(1e-3, gt=0.0, le=1.0)
    """Largest torch-vs-onnxruntime difference accepted (absolute, relative above magnitude
    1). MLP policies agree to < 1e-6; the diffusion teacher's UNet agrees to ~1e-6 on real
    observations but reached 2.3e-4 on one of 256 random out-of-range observations (the
    noisiest DDIM step divides by sqrt(alpha_bar) ~ 0.006, amplifying float32 rounding), so
    the default is 1e-3; ``1e-4`` is the tighter check for MLP kinds."""
    parity_random: int = Field(256, ge=1, le=1_000_000)
    """Random observations (uniform within finite bounds, else normal) in the parity check."""
    parity_real_steps: int = Field(200, ge=0, le=1_000_000)
    """Real observations in the parity check, from rolling the policy out in ``env.id``."""
    latency_calls: int = Field(1000, ge=10, le=1_000_000)
    """Batch-1, one-thread ``OnnxPolicy.act`` calls timed for the reported latency."""


class ControlConfig(Section):
    """Fixed-rate controller: the exported ONNX policy drives ``env.id`` (a SimRobot) on an
    absolute-deadline loop; reports success, latency, deadline misses and faults."""

    model: str = "auto"
    """ONNX file to run; ``auto``: ``<run>/export/policy.onnx``."""
    hz: float | None = Field(None, gt=0.0, le=100_000.0)
    """Control rate; ``null``: the model's control rate (from the environment at export)."""
    episodes: int = Field(5, ge=1, le=1_000_000)
    """Episodes to run (on the evaluation seeds, so results compare with ``eval``). The loop
    runs in real time: a Nav-v0 episode is up to 40 s at its 10 Hz."""
    max_ticks: int | None = Field(None, ge=1)
    """Stop after this many ticks even if episodes remain; ``null``: no limit."""
    on_fault: Literal["continue", "stop"] = "continue"
    """After a fault (invalid observation, late inference, robot or policy exception, NaN
    action) the safe action is sent; then ``continue`` or ``stop``."""
    max_faults: int | None = Field(None, ge=0)
    """Stop once more faults than this have happened; ``null``: no limit."""
    slew_rate: float | None = Field(None, gt=0.0)
    """Largest change of each action component per second; ``null``: no slew limit."""
    late_after: float = Field(1.0, gt=0.0, le=100.0)
    """Inference ending this many periods after the tick's slot is a ``late`` fault."""
    execution: Literal["receding", "ensemble"] | None = None
    """Chunked policies: receding horizon or temporal ensembling; ``null``: the model's."""
    threads: int = Field(1, ge=1, le=256)
    """onnxruntime intra-op threads."""
    spin_ms: float = Field(0.0, ge=0.0, le=100.0)
    """Sleep until this long before each slot, then poll the clock: lower jitter, more CPU."""
    realtime_priority: int | None = Field(None, ge=1, le=99)
    """Run the loop under Linux SCHED_FIFO at this priority (needs root or CAP_SYS_NICE;
    otherwise a warning and normal scheduling); ``null``: normal scheduling."""
    log: bool = True
    """Write every tick as a JSON line to ``<run>/control/ticks.jsonl`` (and, in ``async``
    mode, every chunk to ``chunks.jsonl``)."""
    mode: Literal["sync", "async"] = "sync"
    """``sync``: inference inside the tick; ``async``: chunks are planned in a thread ahead
    of execution and a tick never waits (``robodistill.deploy.async_control``)."""
    policy_hz: float | None = Field(None, gt=0.0, le=100_000.0)
    """The policy's rate when the controller ticks faster (``hz`` must be a multiple): the
    high-rate ticks between policy ticks interpolate; ``null``: the policy runs at ``hz``."""
    interpolation: Literal["linear", "cubic", "minjerk", "hold"] = "linear"
    """Curve between the policy's actions at the high rate (``policy_hz`` < ``hz``)."""
    queue_threshold: float = Field(0.5, ge=0.0, lt=1.0)
    """``async``: request the next chunk when the queue has fallen to this fraction of the
    chunk's horizon (LeRobot's ``chunk_size_threshold``, 0.5)."""
    rtc: bool = False
    """``async``: real-time chunking: the new chunk inpainted to the actions that execute
    during its inference (``robodistill.deploy.rtc``)."""
    rtc_schedule: Literal["exp", "linear", "ones", "zeros"] = "exp"
    """RTC's soft-prefix weights after the delay (the RTC paper's exponential schedule)."""
    rtc_delay: int | None = Field(None, ge=0)
    """RTC's delay d in control steps; ``null``: measured (the largest of the last 5)."""
    rtc_blend_steps: int | None = Field(2, ge=0)
    """The 1-step student's soft ramp: RTC's blend weights decay to 0 this many steps after
    the delay (``null``: over the whole overlap, as the guidance of the denoising kinds)."""
    rtc_max_guidance: float = Field(10.0, gt=0.0)
    """The guidance cap of RTC's gradient form (LeRobot: 10); unused by the inpainting
    form this runtime implements."""
    aggregate: Literal["replace", "blend"] = "replace"
    """``async`` without RTC: a new chunk replaces the queue, or blends the overlap."""
    blend_weight: float = Field(0.7, ge=0.0, le=1.0)
    """``aggregate: blend``: the new chunk's weight on the overlap (LeRobot: 0.7)."""
