"""Errors that the stages raise and the CLI and pipeline recognise.

The CLI prints the errors a user can fix (see ``robodistill.cli.user_errors``) as one
clear message without a traceback.
"""

from __future__ import annotations

from robodistill.config import ConfigError


class StageNotBuilt(NotImplementedError):
    """This stage (or variant) is not implemented in this version; nothing was run."""


class MissingInput(ConfigError):
    """What the stage would work on does not exist yet (no policy to export, no model to
    run): a pipeline may report the stage as skipped rather than failed."""
