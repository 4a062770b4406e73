"""The ``distill`` stage: turn the teacher into each configured student.

::

    metrics = run_distill(cfg)    # {"dagger": {...}, ...}; one StageRun for all students

Each student works in its own directory ``<run>/distill/<student>/`` and resumes there;
its best policy is ``<run>/distill/<student>/policy`` (what ``eval``, ``collect`` and
``export`` take). The teacher is ``distill.teacher`` or ``<run>/teach/policy``; its digest
is part of the stage's inputs, so a retrained teacher is never skipped over.

Students: ``consistency`` (:mod:`robodistill.distill.consistency`), ``streaming``
(:mod:`robodistill.distill.streaming`) and ``rti`` (:mod:`robodistill.distill.rti`) from a
diffusion teacher; ``dagger`` (:mod:`robodistill.distill.dagger`) from an RL teacher;
``generalist`` (:mod:`robodistill.distill.generalist`) from the COMPASS specialists, for
which ``distill.teacher`` names the COMPASS teach directory (default ``<run>/teach``);
``history``, ``rma`` and ``hib`` (:func:`robodistill.distill.history.run_distill_history`)
from a privileged teacher (``teach.privileged``; ``rma`` and ``hib``: ``oracle``).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robodistill.config import ConfigError, RunConfig
from robodistill.config.distill import HISTORY_STUDENTS
from robodistill.core.policy_specs import policy_inputs
from robodistill.core.rundir import StageRun
from robodistill.data.demos import demos_inputs
from robodistill.distill.consistency import run_distill_consistency
from robodistill.distill.dagger import run_distill_dagger
from robodistill.distill.generalist import run_distill_generalist, specialists_inputs
from robodistill.distill.history import load_privileged_teacher, run_distill_history
from robodistill.distill.rti import run_distill_rti
from robodistill.distill.streaming import run_distill_streaming

log = logging.getLogger(__name__)


STUDENTS: dict[str, Callable[[RunConfig, StageRun, Path], dict[str, Any]]] = {
    "dagger": run_distill_dagger,
    "consistency": run_distill_consistency,
    "streaming": run_distill_streaming,
    "rti": run_distill_rti,
    # Its teachers are the COMPASS specialists, found through distill.teacher (see there).
    "generalist": run_distill_generalist,
    # History students of a privileged teacher (teach.privileged), by DAgger.
    **{v: functools.partial(run_distill_history, variant=v) for v in HISTORY_STUDENTS},
}
"""Student name -> function(cfg, stage, teacher_dir) -> metrics, for the built students."""


def teacher_path(cfg: RunConfig) -> Path:
    """``distill.teacher``, or the run's own teacher ``<runs_dir>/<name>/teach/policy``."""
    if cfg.distill.teacher:
        return Path(cfg.distill.teacher)
    return Path(cfg.runs_dir) / cfg.name / "teach" / "policy"


def distilled_students(distill_dir: Path) -> dict[str, Path]:
    """``{student name: <distill_dir>/<student>/policy}`` for every saved student policy in a
    distill stage directory (``<run>/distill``), whatever made it, by name."""
    return {p.parent.parent.name: p.parent
            for p in sorted(distill_dir.glob("*/policy/config.json"))}  # fmt: skip


def _kind(policy_dir: Path) -> str | None:
    return json.loads((policy_dir / "config.json").read_text()).get("kind")


def run_distill(cfg: RunConfig, overwrite: bool = False) -> dict[str, Any]:
    """Distill the teacher into every student of ``distill.students``; returns
    ``{student: metrics}``. Resumable: finished students return their stored metrics."""

    students = list(cfg.distill.students)
    repeated = sorted({s for s in students if students.count(s) > 1})
    if repeated:
        raise ConfigError(f"distill.students lists {repeated} more than once; name each once")
    teacher = teacher_path(cfg)
    # The generalist's teacher is a COMPASS teach directory (its specialists), not a policy.
    single_teacher = [s for s in students if s != "generalist"]
    if single_teacher and not (teacher / "config.json").is_file():
        raise ConfigError(
            f"distill.teacher: there is no teacher policy at {teacher} (no config.json). Train "
            f"one first (robodistill teach --name {cfg.name}; teach.algo rl100 for the diffusion "
            "students, ppo/sac for dagger, ppo with teach.privileged for history/rma/hib) or set "
            "distill.teacher to a policy directory"
        )

    diffusion_students = sorted({"consistency", "streaming", "rti"} & set(students))
    if diffusion_students and (kind := _kind(teacher)) != "diffusion":
        # Checked before the stage directory exists, so a wrong teacher leaves nothing behind.
        raise ConfigError(
            f"distill.teacher: {diffusion_students} distill a diffusion teacher (teach.algo: "
            f"rl100), but {teacher} holds a {kind!r} policy; point distill.teacher at a "
            f"diffusion policy, or use distill.students=[dagger] for RL teachers"
        )
    history_students = [s for s in students if s in HISTORY_STUDENTS]
    for name in history_students:  # wrong teacher -> a clear error before the stage dir exists
        load_privileged_teacher(teacher, name)
    r = cfg.env.randomization
    if history_students and (r is None or not r.privileged_obs):
        raise ConfigError(
            f"env.randomization: the {history_students} students are distilled on the "
            "randomized env whose observation carries the privileged draw (the teacher reads "
            "it, the students drop it), but env.randomization"
            + (" is not set" if r is None else ".privileged_obs is false")
            + "; use the teacher's env section (env.randomization.privileged_obs: true)"
        )
    inputs = policy_inputs(str(teacher)) if single_teacher else {}
    if "generalist" in students:
        inputs |= specialists_inputs(cfg)  # no specialists -> a clear error, nothing made
    if {"consistency", "streaming"} & set(students):
        # These students train on the demonstrations too: re-collected demos must not be
        # skipped over by a finished stage.
        inputs |= demos_inputs(cfg)
    with StageRun(cfg, "distill", overwrite=overwrite, inputs=inputs) as stage:
        if stage.skipped:
            return stage.manifest["metrics"]
        metrics: dict[str, Any] = {}
        for name in students:
            log.info("distill: student %s from teacher %s", name, teacher)
            metrics[name] = STUDENTS[name](cfg, stage, teacher)
            stage.checkpoint(metrics)
        log.info("distill: %s", json.dumps(metrics))
        stage.finish(metrics)
        return metrics
