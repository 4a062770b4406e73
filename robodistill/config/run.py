"""The whole run: the ``env`` and ``pipeline`` sections and :class:`RunConfig`, which holds
every section."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from robodistill.config.base import Section
from robodistill.config.collect import CollectConfig
from robodistill.config.deploy import ControlConfig, ExportConfig
from robodistill.config.distill import DistillConfig
from robodistill.config.evaluate import EvalConfig
from robodistill.config.randomization import RandomizationConfig
from robodistill.config.teach import TeachConfig

Stage = Literal["collect", "teach", "distill", "eval", "export", "control"]
ALL_STAGES: tuple[str, ...] = ("collect", "teach", "distill", "eval", "export", "control")


class EnvConfig(Section):
    id: str = "robodistill/Nav-v0"
    """gymnasium id (``robodistill/Nav-v0``, ``robodistill/PushT-v0``, ``Hopper-v5``,
    ``mypkg:MyEnv-v0`` imports mypkg). The default is Nav: its diffusion teacher learns to
    succeed within the default pipeline's CPU budget; Push-T needs far more training (see
    ``configs/pipelines/rl100.yaml``)."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments passed to ``gymnasium.make``."""
    num_envs: int = Field(4, ge=1, le=1024)
    """Environments stepped together in one synchronous vector env (Sync beats Async on 2 cores)."""
    max_episode_steps: int | None = Field(None, ge=1)
    """Episode step limit; ``null`` keeps the env's registered limit."""
    success_key: str | None = Field(None, min_length=1)
    """The ``info`` key that says an episode succeeded, for envs that report neither
    ``info["is_success"]`` (gymnasium's convention, read first) nor ``info["success"]``
    (gymnasium-robotics', read next); ``null``: only those two. Success is read from the
    ``info`` of an episode's last step; without any of the keys it is unknown (``null``)."""
    randomization: RandomizationConfig | None = None
    """Domain randomization drawn per episode (mass, friction, actuator gain, speed limits,
    action delay, observation noise; see ``docs/concepts/privileged.md``); ``null``: the
    nominal dynamics. ``{}`` takes the documented default ranges."""

    def make_kwargs(
        self, kwargs: dict[str, Any] | None = None, ood: bool = False
    ) -> dict[str, Any]:
        """Keyword arguments for :func:`robodistill.envs.make_env` (or a rollout's
        ``env_kwargs``): ``kwargs`` (default ``self.kwargs``) plus ``success_key`` and
        ``randomization`` when set (``ood``: drawn from the out-of-distribution ranges,
        :meth:`RandomizationConfig.make_kwargs`)."""
        out = dict(self.kwargs if kwargs is None else kwargs)
        if self.success_key is not None:
            out["success_key"] = self.success_key
        if self.randomization is not None:
            out["randomization"] = self.randomization.make_kwargs(ood=ood)
        elif ood:
            raise ValueError("out-of-range dynamics need env.randomization (not set)")
        return out


class PipelineConfig(Section):
    stages: list[Stage] = Field(default_factory=lambda: list(ALL_STAGES))
    """Stages ``robodistill pipeline`` runs, in this order."""


class RunConfig(Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    """Run name: artifacts go to ``<runs_dir>/<name>/<stage>/``."""
    seed: int = Field(0, ge=0, lt=2**31 // 1_000_000)
    """Master seed; episode ``i`` of collection uses seed ``seed*1e6 + i``, teach-time validation ``seed*1e6 + 800000 + i``, evaluation ``seed*1e6 + 900000 + i``."""
    runs_dir: Path = Path("runs")
    """Where run directories are created."""
    env: EnvConfig = Field(default_factory=EnvConfig)
    collect: CollectConfig = Field(default_factory=CollectConfig)
    teach: TeachConfig = Field(default_factory=TeachConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @model_validator(mode="after")
    def _privileged_teacher_needs_the_draw(self) -> RunConfig:
        r = self.env.randomization
        if self.teach.privileged != "none" and (r is None or not r.privileged_obs):
            raise ValueError(
                f"teach.privileged={self.teach.privileged} reads the domain-randomization draw "
                "from the observation, but env.randomization"
                + (" is not set" if r is None else ".privileged_obs is false")
                + "; set env.randomization.privileged_obs=true (with the ranges to draw)"
            )
        return self

    @model_validator(mode="after")
    def _out_of_range_eval_needs_the_ranges(self) -> RunConfig:
        which = self.eval.randomization_ranges
        if which != "train" and self.env.randomization is None:
            raise ValueError(
                f"eval.randomization_ranges={which} evaluates out of the training ranges "
                "(env.randomization.ood), but env.randomization is not set; set "
                "env.randomization (the training ranges and their ood ranges) or "
                "eval.randomization_ranges=train"
            )
        return self

    def section_dump(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """The JSON form of the named top-level fields (what a stage's result depends on)."""
        full = self.model_dump(mode="json")
        return {k: full[k] for k in keys}
