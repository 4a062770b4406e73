"""Typed run configuration: YAML files under ``configs/`` plus dotted command-line overrides.

::

    cfg = load_config("configs/pipelines/default.yaml", ["collect.episodes=20", "env.num_envs=2"])

Every section is a pydantic model that forbids unknown keys, so a typo, a wrong type or an
out-of-range value fails before any work starts with a :class:`ConfigError` naming the
dotted key, what was given and what is allowed. Each field's docstring is its
documentation (``robodistill config --show`` prints them).
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Stage = Literal["collect", "teach", "distill", "eval", "export", "control"]
ALL_STAGES: tuple[str, ...] = ("collect", "teach", "distill", "eval", "export", "control")


class ConfigError(ValueError):
    """The configuration is invalid; the message names every bad key."""


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True, frozen=False
    )


class EnvConfig(Section):
    id: str = "robodistill/PushT-v0"
    """gymnasium id (``robodistill/PushT-v0``, ``Hopper-v5``, ``mypkg:MyEnv-v0`` imports mypkg)."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments passed to ``gymnasium.make``."""
    num_envs: int = Field(4, ge=1, le=1024)
    """Environments stepped together in one synchronous vector env (Sync beats Async on 2 cores)."""
    max_episode_steps: int | None = Field(None, ge=1)
    """Episode step limit; ``null`` keeps the env's registered limit."""


class CollectConfig(Section):
    policy: str = "expert"
    """``random``, ``expert`` (the env's privileged expert) or a saved policy directory."""
    episodes: int = Field(100, ge=1, le=10_000_000)
    """Episodes in the trajectory store when the stage is done."""
    flush_every: int = Field(64, ge=1, le=100_000)
    """Episodes journaled before they are merged into the zarr arrays in one batch."""
    workers: int = Field(1, ge=1, le=1024)
    """Ray actors running episodes in parallel (each with ``env.num_envs`` envs); 1 runs them
    in this process without Ray."""


class EvalConfig(Section):
    policy: str = "expert"
    """``random``, ``expert`` (the env's privileged expert) or a saved policy directory."""
    episodes: int = Field(20, ge=1, le=1_000_000)
    """Evaluation episodes, on fixed seeds disjoint from collection's."""
    video_episodes: int = Field(2, ge=0, le=100)
    """The first N evaluation episodes are also rendered to ``<run>/eval/videos/seed-<s>.mp4``."""
    video_env_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra ``gymnasium.make`` arguments for the rendered episodes only (e.g. a frame size)."""
    workers: int = Field(1, ge=1, le=1024)
    """Ray actors running evaluation episodes in parallel; 1 runs them in this process."""


class ExplorationConfig(Section):
    """Intrinsic rewards from distilling random networks (RND, or RDD's random distribution)."""

    method: Literal["none", "rnd", "rdd"] = "none"
    """``rnd``: squared error of a predictor against a fixed random target; ``rdd``: the
    target's output is drawn from a Gaussian around it, giving a pseudo-count term too."""
    intrinsic_coef: float = Field(1.0, ge=0.0, le=1000.0)
    """Weight of the (normalized) intrinsic reward added to the extrinsic one."""
    extrinsic_coef: float = Field(2.0, ge=0.0, le=1000.0)
    """Weight of the environment's reward."""
    embedding_dim: int = Field(64, ge=4, le=4096)
    """Output size of the target and predictor networks."""
    hidden: int = Field(128, ge=8, le=4096)
    """Hidden width of the target and predictor MLPs."""
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0)
    """Predictor learning rate."""
    update_proportion: float = Field(0.25, gt=0.0, le=1.0)
    """Share of each collected batch the predictor trains on (RND uses 0.25)."""
    obs_clip: float = Field(5.0, gt=0.0, le=100.0)
    """Normalized observations fed to the networks are clipped to [-obs_clip, obs_clip]."""
    rdd_sigma: float = Field(0.5, gt=0.0, le=100.0)
    """RDD: standard deviation of the Gaussian around the target's output."""


class TeachConfig(Section):
    """Teacher training. RL teachers (``algo: ppo | sac``) on stable-baselines3 or RLlib;
    the RL-100 diffusion teacher and COMPASS arrive with issues #5 and #7."""

    algo: Literal["rl100", "ppo", "sac"] = "rl100"
    """``rl100``: the RL-100 diffusion teacher on the collected demonstrations (issue #5, not
    built yet); ``ppo`` / ``sac``: reinforcement-learning teachers trained from scratch."""
    backend: Literal["sb3", "rllib"] = "sb3"
    """``sb3``: stable-baselines3 on this machine; ``rllib``: Ray RLlib, local or a cluster."""
    total_timesteps: int = Field(100_000, ge=1, le=10**10)
    """Environment steps to train for (summed over the vector env)."""
    learning_rate: float = Field(3e-4, gt=0.0, le=1.0)
    """Optimizer learning rate."""
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    """Discount factor."""
    n_steps: int = Field(256, ge=1, le=1_000_000)
    """PPO: steps per env per rollout."""
    batch_size: int = Field(64, ge=1, le=1_000_000)
    """Minibatch size."""
    n_epochs: int = Field(10, ge=1, le=1000)
    """PPO: optimization epochs per rollout."""
    buffer_size: int = Field(1_000_000, ge=1, le=100_000_000)
    """SAC: replay buffer size."""
    learning_starts: int = Field(1000, ge=0, le=10**9)
    """SAC: steps before the first update."""
    net_arch: list[int] = Field(default_factory=lambda: [64, 64])
    """Hidden layer sizes of the policy and value networks."""
    normalize_obs: bool = True
    """Running observation normalization (saved inside the policy)."""
    normalize_reward: bool = False
    """Running return-based reward scaling during training (PPO)."""
    eval_every: int = Field(10_000, ge=1, le=10**10)
    """Evaluate on the fixed validation seeds every N environment steps; the best is kept."""
    eval_episodes: int = Field(10, ge=1, le=100_000)
    """Episodes per evaluation."""
    checkpoint_every: int = Field(10_000, ge=1, le=10**10)
    """Save a resumable checkpoint every N environment steps."""
    num_env_runners: int = Field(1, ge=0, le=1024)
    """RLlib: env runner actors sampling in parallel (0: sample in the driver)."""
    num_envs_per_env_runner: int | None = Field(None, ge=1, le=1024)
    """RLlib: envs vectorized in each env runner; ``null`` uses ``env.num_envs``."""
    exploration: ExplorationConfig = Field(default_factory=ExplorationConfig)
    """Intrinsic-reward exploration (both backends)."""


class DistillConfig(Section):
    """Student distillation: arrives with issues #6 and #7."""


class ExportConfig(Section):
    """ONNX export: arrives with issue #8."""


class ControlConfig(Section):
    """Fixed-rate controller runs: arrives with issue #8."""


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

    def section_dump(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """The JSON form of the named top-level fields (what a stage's result depends on)."""
        full = self.model_dump(mode="json")
        return {k: full[k] for k in keys}


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """Allowed keys of the model section that ``loc`` (minus its last part) points into."""
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return sorted(model.model_fields)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _fields_at(RunConfig, e["loc"]) or []
            close = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            lines.append(f"  {key}: unknown key{hint} allowed keys here: {', '.join(allowed)}")
        else:
            given = e.get("input")
            shown = repr(given) if not isinstance(given, dict) else "a mapping"
            lines.append(f"  {key}: {e['msg']} (got {shown})")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"collect.episodes=20"`` -> ``(["collect", "episodes"], 20)``; values are YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key.subkey=value")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise ConfigError(f"override {text!r} has an empty part in its key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({e})") from e
    return parts, value


def apply_override(document: dict[str, Any], parts: list[str], value: Any) -> None:
    node = document
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"override {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is a value, not a section"
            )
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return document


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, validated as one :class:`RunConfig`."""
    document = read_yaml(path) if path else {}
    for text in overrides:
        apply_override(document, *parse_override(text))
    source = f"{path}" if path else "defaults"
    if overrides:
        source += " + --set " + " ".join(overrides)
    try:
        return RunConfig.model_validate(document)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def describe(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """One line per leaf key: ``key = default  # docstring`` (for ``--help``-like listings)."""
    lines = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.extend(describe(annotation, f"{prefix}{name}."))
            continue
        default = json.dumps(field.get_default(call_default_factory=True), default=str)
        doc = (field.description or "").replace("\n", " ")
        lines.append(f"{prefix}{name} = {default}  # {doc}")
    return lines
