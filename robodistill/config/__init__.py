"""Typed run configuration: YAML files under ``configs/`` plus dotted command-line overrides.

::

    cfg = load_config("configs/pipelines/default.yaml", ["collect.episodes=20", "env.num_envs=2"])

Every section is a pydantic model that forbids unknown keys, so a typo, a wrong type or an
out-of-range value fails before any work starts with a :class:`ConfigError` naming the
dotted key, what was given and what is allowed. Each field's docstring is its
documentation (``robodistill config --show`` prints them).

One module per section: :mod:`~robodistill.config.base` (the error, the strict base model,
shared value ranges), :mod:`~robodistill.config.collect`, :mod:`~robodistill.config.teach`
(with :mod:`~robodistill.config.rl100` and :mod:`~robodistill.config.compass`),
:mod:`~robodistill.config.distill`, :mod:`~robodistill.config.evaluate`,
:mod:`~robodistill.config.deploy`, :mod:`~robodistill.config.run` (:class:`RunConfig`, every
section) and :mod:`~robodistill.config.loading` (YAML, overrides, error messages). Everything
is importable from ``robodistill.config``.
"""

from robodistill.config.base import (
    Activation,
    BatchSize,
    ConfigError,
    EvalEpisodes,
    Fraction,
    LearningRate,
    Section,
    Steps,
    TorchThreads,
    WarmupSteps,
)
from robodistill.config.collect import CollectConfig
from robodistill.config.compass import CompassConfig
from robodistill.config.deploy import ControlConfig, ExportConfig
from robodistill.config.distill import (
    ConsistencyConfig,
    DAggerConfig,
    DistillConfig,
    GeneralistConfig,
    RTIConfig,
    StreamingConfig,
)
from robodistill.config.evaluate import EvalConfig
from robodistill.config.loading import (  # noqa: F401 (the private two: as before the split)
    _fields_at,
    _format_errors,
    apply_override,
    describe,
    load_config,
    parse_override,
    read_yaml,
)
from robodistill.config.rl100 import DiffusionConfig, OfflineRLConfig, OnlineRLConfig, RL100Config
from robodistill.config.run import ALL_STAGES, EnvConfig, PipelineConfig, RunConfig, Stage
from robodistill.config.teach import ExplorationConfig, TeachConfig

__all__ = [
    "ALL_STAGES",
    "Activation",
    "BatchSize",
    "CollectConfig",
    "CompassConfig",
    "ConfigError",
    "ConsistencyConfig",
    "ControlConfig",
    "DAggerConfig",
    "DiffusionConfig",
    "DistillConfig",
    "EnvConfig",
    "EvalConfig",
    "EvalEpisodes",
    "ExplorationConfig",
    "ExportConfig",
    "Fraction",
    "GeneralistConfig",
    "LearningRate",
    "OfflineRLConfig",
    "OnlineRLConfig",
    "PipelineConfig",
    "RL100Config",
    "RTIConfig",
    "RunConfig",
    "Section",
    "Stage",
    "Steps",
    "StreamingConfig",
    "TeachConfig",
    "TorchThreads",
    "WarmupSteps",
    "apply_override",
    "describe",
    "load_config",
    "parse_override",
    "read_yaml",
]
