"""Loading a student's teacher, with a clear error naming ``distill.teacher`` for the wrong
kind of policy."""

from __future__ import annotations

from pathlib import Path

from robodistill.config import ConfigError
from robodistill.policies import Policy, load_policy
from robodistill.policies.diffusion import DiffusionPolicy

STATELESS_TEACHERS = ("sb3", "rllib", "mlp_student")
"""Policy kinds that act on each state alone, so they can label states after the fact."""


def load_diffusion_teacher(path: str | Path, student: str) -> DiffusionPolicy:
    """The :class:`DiffusionPolicy` at ``path`` for the ``student`` (consistency, streaming,
    rti), which distills its denoising chain; a :class:`ConfigError` for any other kind."""
    teacher = load_policy(path)
    if isinstance(getattr(teacher, "base", None), DiffusionPolicy):
        raise ConfigError(
            f"distill.teacher: {path} holds a {teacher.kind!r} policy (a PPO residual on a "
            f"diffusion policy: RL-100's teach.online.method residual); the {student} student "
            "distills a denoising chain, which the residual's corrections are not part of. "
            f"Point distill.teacher at {Path(path) / 'base'} to distill the diffusion policy "
            "alone, or drop the student"
        )
    if not isinstance(teacher, DiffusionPolicy):
        raise ConfigError(
            f"distill.teacher: {path} holds a {teacher.kind!r} policy, but the {student} "
            "student distills the denoising chain of a diffusion teacher (teach.algo: rl100); "
            f"point distill.teacher at one, or drop {student} from distill.students (the "
            "dagger student takes RL teachers)"
        )
    return teacher


def load_stateless_teacher(path: str | Path) -> Policy:
    """The policy at ``path``; it must be a stateless kind (:data:`STATELESS_TEACHERS`), since
    DAgger labels states one by one after the fact."""
    teacher = load_policy(path)
    if teacher.kind not in STATELESS_TEACHERS:
        raise ConfigError(
            f"distill.teacher: {path} holds a {teacher.kind!r} policy; DAgger labels states one "
            f"by one after the fact, which needs a stateless teacher: {list(STATELESS_TEACHERS)}"
        )
    return teacher
