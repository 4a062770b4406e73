"""The errors a user can fix, which the CLI prints as one clear message (no traceback)."""

from __future__ import annotations


def _collect() -> tuple[type[BaseException], ...]:
    from robodistill.config import ConfigError
    from robodistill.deploy.export import ExportError
    from robodistill.deploy.metadata import MetadataError
    from robodistill.envs import EnvIdError, UnknownExpertError
    from robodistill.policies.checkpoint import CheckpointError
    from robodistill.rollout import RolloutError
    from robodistill.run import StageConfigMismatch
    from robodistill.store import StoreError

    return (ConfigError, EnvIdError, UnknownExpertError, CheckpointError, RolloutError,
            StageConfigMismatch, StoreError, ExportError, MetadataError)  # fmt: skip


USER_ERRORS = _collect()
