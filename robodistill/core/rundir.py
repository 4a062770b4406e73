"""Run directories, stage manifests, metrics and progress.

::

    runs/<name>/
      <stage>/
        manifest.json     status, resolved config, versions, git revision, seed, times, metrics
        metrics.jsonl     one JSON object per logged step
        stage.log         the stage's log records
        tb/               TensorBoard scalars
        ...               the stage's own artifacts (store, checkpoints, ...)

A stage whose manifest says ``done`` for the same configuration is skipped; one that was
interrupted or failed is resumed (the stage's own code picks up from its checkpoint).
Re-running a stage with a *different* configuration is refused, because mixing the two
would silently corrupt the artifact; ``overwrite=True`` moves the old directory aside. A
fresh attempt that fails before doing any work (a missing policy path, a wrong env id)
leaves no directory behind, so the corrected command is not refused.

SIGTERM ends a stage as Ctrl-C does (manifest ``interrupted``). After a resume, the rows an
interrupted attempt logged past the checkpoint it resumes from are dropped from
``metrics.jsonl`` when the new attempt logs the same series again (a series: rows with the
same ``stage`` tag), so no step appears twice.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from robodistill.config import RunConfig

log = logging.getLogger(__name__)

TRACKED_PACKAGES = (
    "robodistill", "numpy", "torch", "gymnasium", "mujoco", "stable-baselines3", "diffusers",
    "zarr", "ray", "onnx", "onnxruntime", "safetensors", "pydantic",
)  # fmt: skip

STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "collect": ("seed", "env", "collect"),
    "teach": ("seed", "env", "teach"),
    "distill": ("seed", "env", "distill"),
    "eval": ("seed", "env", "eval"),
    "export": ("export",),
    "control": ("seed", "env", "control"),
}
"""The config sections each stage's result depends on; only they decide skip vs. refuse."""

SPEED_ONLY_KEYS: tuple[tuple[str, ...], ...] = (
    ("collect", "workers"),
    ("eval", "workers"),
    ("teach", "compass", "workers"),
)
"""Settings (paths into the config) that change how fast a stage runs, not what it produces:
an interrupted stage resumes with another value, and a run from before a version that added
one is not refused (every seed's episode, and every specialist, is the same whatever the
worker count)."""

RL100_ONLY_TEACH_KEYS = ("diffusion", "rl100", "offline", "online")
"""``teach`` sections only the RL-100 teacher reads: an RL teacher's stage ignores them, so
changing them (or a version adding them) never invalidates a finished PPO/SAC run."""

STUDENT_SECTIONS = ("dagger", "consistency", "streaming", "rti", "generalist")
"""``distill`` sub-sections, one per student: only the listed students' enter the digest, so
tuning (or a version adding) another student never invalidates a finished distill stage."""


def metrics_line(step: int, t0: float, metrics: dict[str, Any]) -> str:
    """One ``metrics.jsonl`` line: ``step``, ``time`` (s since ``t0``, a ``time.monotonic``
    reading) and the metrics."""
    record = {"step": int(step), "time": round(time.monotonic() - t0, 4), **metrics}
    return json.dumps(record) + "\n"


class StageConfigMismatch(RuntimeError):
    """A stage directory exists for a different configuration."""


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision(path: Path | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the repository holding ``path``, else None."""
    cwd = path or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=5,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def directory_digest(path: Path) -> str:
    """SHA-256 over the names and bytes of the files in ``path`` (a policy checkpoint)."""
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, document: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def staging_dir(directory: Path) -> Path:
    """A sibling path of ``directory`` that does not exist, to build its next version in
    before :func:`replace_dir` moves it into place (a leftover of a crash is removed)."""
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def replace_dir(tmp: Path, directory: Path) -> None:
    """Move ``tmp`` to ``directory``; the old one is moved aside first and deleted last, so
    a crash leaves one complete directory (``.<name>.old`` if it hit between the renames)."""
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def committed_dir(directory: Path, marker: str) -> Path | None:
    """``directory`` when it holds ``marker`` (the file written last), else the ``.<name>.old``
    copy a crash between :func:`replace_dir`'s two renames left, else ``None``."""
    for candidate in (directory, directory.with_name(f".{directory.name}.old")):
        if (candidate / marker).is_file():
            return candidate
    return None


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RuntimeError(
            f"{path} is corrupt ({e}); move the stage directory aside to re-run it"
        ) from e


_ABSENT = object()


def _diff(old: Any, new: Any, default: Any = None, prefix: str = "") -> list[str]:
    """The settings that differ between two config dumps, as ``"key: old -> new"``.

    A key the old dump does not have (a setting added to robodistill after that run) is no
    change when the new dump holds its default (``default``: the dump of a default config):
    a release that adds a setting must not refuse the runs made before it. A key only the
    old dump has is a setting the stage no longer depends on (pruned, e.g. the bonus's
    settings of a run without a bonus), so no change either.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            sub = default.get(key, _ABSENT) if isinstance(default, dict) else _ABSENT
            out += _diff(old.get(key, _ABSENT), new.get(key, _ABSENT), sub, f"{prefix}{key}.")
        return out
    if (old is _ABSENT and new == default) or new is _ABSENT:
        return []
    if old == new:
        return []
    show = lambda v: "(not set)" if v is _ABSENT else repr(v)  # noqa: E731
    return [f"{prefix.rstrip('.')}: {show(old)} -> {show(new)}"]


class StageRun:
    """Context manager around one stage of one run.

    ::

        with StageRun(cfg, "collect") as stage:
            if stage.skipped:
                return stage.manifest["metrics"]
            ...                                   # work, resuming from stage.dir
            stage.log_metrics(step, {"return": r})
            stage.finish({"success_rate": 0.9})
    """

    def __init__(
        self,
        cfg: RunConfig,
        stage: str,
        overwrite: bool = False,
        inputs: dict[str, Any] | None = None,
    ):
        """``inputs``: what else the result depends on besides the config (e.g. a digest of
        the policy checkpoint a stage reads); compared like the config sections."""
        self.cfg = cfg
        self.stage = stage
        self.inputs = inputs or {}
        self.run_dir = Path(cfg.runs_dir) / cfg.name
        self.dir = self.run_dir / stage
        self.overwrite = overwrite
        self.skipped = False
        self.resumed = False
        self.manifest: dict[str, Any] = {}
        self._metrics_file = None
        self._tb = None
        self._log_handler: logging.Handler | None = None
        self._t0 = 0.0
        self._series_seen: set[Any] = set()
        self._previous_sigterm: Any = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> StageRun:
        sections = self.cfg.section_dump(STAGE_SECTIONS[self.stage])
        for *path, key in SPEED_ONLY_KEYS:
            parent = sections
            for part in path:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if isinstance(parent, dict):
                parent.pop(key, None)
        teach = sections.get("teach")
        if teach and teach.get("algo") != "rl100":
            for key in RL100_ONLY_TEACH_KEYS:
                teach.pop(key, None)
        if teach and teach.get("algo") != "compass":
            teach.pop("compass", None)
        if teach and teach.get("exploration", {}).get("method") == "none":
            teach["exploration"] = {"method": "none"}  # the bonus's settings are unused
        distill = sections.get("distill")
        if distill:
            for key in set(STUDENT_SECTIONS) - set(distill.get("students", [])):
                distill.pop(key, None)
        if self.inputs:
            sections["inputs"] = self.inputs
        previous = read_manifest(self.dir)
        changes = []
        if previous is not None and previous.get("config_sections") != sections:
            default = type(self.cfg)().section_dump(STAGE_SECTIONS[self.stage])
            changes = _diff(previous.get("config_sections"), sections, default)
        if changes:
            if not self.overwrite:
                raise StageConfigMismatch(
                    f"{self.dir} was made with another configuration ({'; '.join(changes)}). "
                    "Use another run name (--name) or pass --overwrite to move the old stage "
                    "directory aside."
                )
            aside = self.dir.with_name(f"{self.stage}.old-{int(time.time())}")
            self.dir.rename(aside)
            log.warning("moved %s aside to %s", self.dir, aside)
            previous = None
        self.dir.mkdir(parents=True, exist_ok=True)
        if previous is not None and previous.get("status") == "done":
            self.skipped = True
            self.manifest = previous
            log.info("stage %s already done in %s; skipping", self.stage, self.dir)
            return self
        self.resumed = previous is not None
        self.manifest = {
            "stage": self.stage,
            "status": "running",
            "run": self.cfg.name,
            "seed": self.cfg.seed,
            "started": _now(),
            "ended": None,
            "attempts": (previous or {}).get("attempts", 0) + 1,
            "config_sections": sections,
            "config": self.cfg.model_dump(mode="json"),
            "versions": package_versions(),
            "git": git_revision(),
            "python": sys.version.split()[0],
            "metrics": (previous or {}).get("metrics", {}),
        }
        write_json_atomic(self.dir / "manifest.json", self.manifest)
        self._log_handler = logging.FileHandler(self.dir / "stage.log")
        self._log_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        logging.getLogger().addHandler(self._log_handler)
        self._metrics_file = open(self.dir / "metrics.jsonl", "a")  # noqa: SIM115
        self._t0 = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
        if self.resumed:
            log.info("resuming stage %s in %s (attempt %d)", self.stage, self.dir,
                     self.manifest["attempts"])  # fmt: skip
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        if not self.skipped and self.manifest.get("status") == "running":
            self.manifest["status"] = (
                "interrupted" if exc_type is KeyboardInterrupt else "failed" if exc_type else "done"
            )
            if exc is not None:
                self.manifest["error"] = f"{exc_type.__name__}: {exc}"
            self.manifest["ended"] = _now()
            write_json_atomic(self.dir / "manifest.json", self.manifest)
        if self._metrics_file:
            self._metrics_file.close()
        if self._tb is not None:
            self._tb.close()
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
        if exc_type is not None and exc_type is not KeyboardInterrupt and self._did_nothing():
            # Nothing to resume: a kept directory would only refuse the corrected command.
            shutil.rmtree(self.dir, ignore_errors=True)
            log.info("stage %s failed before doing any work; removed %s", self.stage, self.dir)

    def _did_nothing(self) -> bool:
        """A fresh attempt whose directory holds only the bookkeeping files, no metrics."""
        if self.skipped or self.resumed or not self.dir.is_dir():
            return False
        names = {p.name for p in self.dir.iterdir()}
        metrics = self.dir / "metrics.jsonl"
        return names <= BOOKKEEPING and (not metrics.exists() or metrics.stat().st_size == 0)

    # -- during the stage -----------------------------------------------------------------
    @property
    def tensorboard(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tb"))
        return self._tb

    @property
    def t0(self) -> float:
        """``time.monotonic()`` when the stage (this attempt) started: ``metrics.jsonl``'s
        ``time`` is measured from it."""
        return self._t0

    def log_metrics(self, step: int, metrics: dict[str, float | int | None]) -> None:
        """Append to ``metrics.jsonl`` and TensorBoard (numeric values only go to TB). The
        first row of each series in a resumed attempt first drops the rows of that series
        an earlier attempt logged at ``step`` or later (module docstring)."""
        series = metrics.get("stage")
        if self.resumed and series not in self._series_seen:
            self._series_seen.add(series)
            self._drop_rows_from(series, int(step))
        self._metrics_file.write(metrics_line(step, self._t0, metrics))
        self._metrics_file.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tensorboard.add_scalar(f"{self.stage}/{key}", value, step)

    def _drop_rows_from(self, series: Any, step: int) -> None:
        path = self.dir / "metrics.jsonl"
        self._metrics_file.flush()
        lines = path.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill -9: nothing to keep
            if not (row.get("stage") == series and int(row.get("step", -1)) >= step):
                kept.append(line if line.endswith("\n") else line + "\n")
        if len(kept) != len(lines):
            self._metrics_file.close()
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, path)
            self._metrics_file = open(path, "a")  # noqa: SIM115
            log.info("metrics: dropped %d rows of series %r an interrupted attempt logged from "
                     "step %d on", len(lines) - len(kept), series, step)  # fmt: skip

    def checkpoint(self, metrics: dict[str, Any]) -> None:
        """Record progress in the manifest without finishing (visible to a resume)."""
        self.manifest["metrics"] = metrics
        write_json_atomic(self.dir / "manifest.json", self.manifest)

    def finish(self, metrics: dict[str, Any]) -> None:
        self.manifest.update(status="done", ended=_now(), metrics=metrics)
        self.manifest["seconds"] = round(time.monotonic() - self._t0, 3)
        write_json_atomic(self.dir / "manifest.json", self.manifest)


BOOKKEEPING = frozenset({"manifest.json", "stage.log", "metrics.jsonl"})
"""What every stage directory holds before the stage's own work writes anything."""


def _interrupt_on_sigterm(signum, frame) -> None:
    # A scheduler's or `kill`'s SIGTERM: end like Ctrl-C, so the manifest says interrupted.
    raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")


def progress(total: int, desc: str, initial: int = 0, unit: str = "ep"):
    """A tqdm bar on an interactive terminal, silent otherwise (logs and CI stay clean)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )  # fmt: skip


class MetricsAppender:
    """A worker's ``StageRun.log_metrics``: whole lines appended to the stage's
    ``metrics.jsonl`` (each one ``write``, so lines from parallel workers do not interleave),
    timed from the stage's start (``t0``: ``time.monotonic`` is system-wide). The stage's
    TensorBoard does not get them; SB3's own logs are in ``<specialist>/tb``."""

    def __init__(self, path: Path, t0: float):
        self.path, self._t0 = path, t0

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(metrics_line(step, self._t0, metrics))
