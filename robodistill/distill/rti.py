"""The ``rti`` student: the diffusion teacher itself with RTI warm-start inference
(:mod:`robodistill.policies.rti`); nothing is trained. It is saved as its own policy
directory so that ``eval``, ``collect``, ``export`` and ``control`` take it like any other::

    <run>/distill/rti/policy/       the teacher's weights, config with rti_steps set
    <run>/distill/rti/result.json   validation success, network calls per chunk; present = done
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from robodistill.config import ConfigError, RunConfig
from robodistill.core.rundir import StageRun, write_json_atomic
from robodistill.core.seeds import VALIDATION_SEED_OFFSET, episode_seeds
from robodistill.distill.teachers import load_diffusion_teacher
from robodistill.training.checkpoint import finished_result
from robodistill.training.selection import rollout_summary


def run_distill_rti(cfg: RunConfig, stage: StageRun, teacher: Path) -> dict[str, Any]:
    """Save the teacher with ``distill.rti`` warm starts into ``stage.dir / "rti"`` and
    report its success on the validation seeds."""

    out = stage.dir / "rti"
    if (done := finished_result(out)) is not None:
        return done
    t0 = time.monotonic()
    rti = cfg.distill.rti
    policy = load_diffusion_teacher(teacher, "rti")
    k = policy.config.num_inference_steps
    if rti.steps > k:
        raise ConfigError(
            f"distill.rti.steps={rti.steps} exceeds the teacher's {k} DDIM steps per chunk; "
            f"choose 1..{k} (fewer is faster; RTI runs only the chain's last steps)"
        )
    try:
        policy.config = dataclasses.replace(
            policy.config, rti_steps=rti.steps, rti_discrete_dims=list(rti.discrete_dims) or None
        )
    except ValueError as e:
        raise ConfigError(f"distill.rti: {e}") from e
    policy.save(out / "policy")
    seeds = episode_seeds(cfg, rti.eval_episodes, VALIDATION_SEED_OFFSET)
    result = rollout_summary(cfg, policy, seeds, "distill-rti")[0]
    result.update({
        "student": "rti", "policy": str(out / "policy"), "teacher": str(teacher),
        "rti_steps": rti.steps, "teacher_steps": k,
        "network_calls_per_chunk": {"first": k, "warm": rti.steps},
        "wall_s": round(time.monotonic() - t0, 1),
    })  # fmt: skip
    write_json_atomic(out / "result.json", result)
    return result
