"""Policy specs as configs write them: ``"random"``, ``"expert"`` or a saved policy
directory."""

from __future__ import annotations

from pathlib import Path

from robodistill.core.rundir import directory_digest
from robodistill.envs import make_expert
from robodistill.policies import Policy, RandomPolicy, load_policy


def policy_inputs(spec: str) -> dict[str, str]:
    """A saved policy's digest, so that a stage re-run on a retrained policy is not skipped."""
    path = Path(spec)
    return {"policy_digest": directory_digest(path)} if path.is_dir() else {}


def resolve_policy(spec: str, env_id: str, action_space, seed: int) -> Policy:
    """``"random"``, ``"expert"`` or a checkpoint directory -> a :class:`Policy`."""
    if spec == "random":
        return RandomPolicy.for_space(action_space, seed=seed)
    if spec == "expert":
        return make_expert(env_id, seed=seed)
    return load_policy(Path(spec))
