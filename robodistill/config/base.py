"""What every configuration section shares: the error type, the strict base model and the
value ranges several sections use for fields of the same kind.

The ranges are only the constraints: each section still declares its own field with its own
default and docstring (``learning_rate: LearningRate = 1e-3`` then the docstring), so a
field's meaning stays next to the section it belongs to.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class ConfigError(ValueError):
    """The configuration is invalid; the message names every bad key."""


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True, frozen=False
    )


LearningRate = Annotated[float, Field(gt=0.0, le=1.0)]
"""An optimizer learning rate."""
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
"""A value in [0, 1]: a decay rate, a share, GAE's lambda."""
Steps = Annotated[int, Field(ge=1, le=10**8)]
"""A count of gradient steps, or an interval of them (``eval_every``, ``log_every``...)."""
WarmupSteps = Annotated[int, Field(ge=0, le=10**7)]
"""Linear learning-rate warm-up steps."""
BatchSize = Annotated[int, Field(ge=1, le=65_536)]
"""Samples per gradient step of the diffusion-policy trainers."""
EvalEpisodes = Annotated[int, Field(ge=1, le=100_000)]
"""Validation episodes."""
TorchThreads = Annotated[int, Field(ge=0, le=1024)]
"""CPU threads torch uses while training (0: torch's default)."""
Activation = Literal["Tanh", "ReLU", "ELU", "SiLU", "GELU", "LeakyReLU"]
"""Hidden activation of an MLP (a ``torch.nn`` class name)."""
Selection = Literal["success", "max_score"]
"""How a trainer's best-policy keeper orders validation results: ``success`` (success rate,
then the mean max score where the env defines ``info["score"]``, then mean return) or
``max_score`` (mean max score, then success rate, then mean return)."""
