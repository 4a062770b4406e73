"""``teach.compass``: COMPASS's IL base and residual specialists."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from robodistill.config.base import (
    Activation,
    BatchSize,
    LearningRate,
    Section,
    Steps,
    TorchThreads,
)


class CompassConfig(Section):
    """COMPASS (issue #7), ``teach.algo: compass``: stage 1 imitates the planner expert on
    ``base_embodiment`` with a world model; stage 2 trains one residual PPO specialist per
    entry of ``embodiments`` on top of the frozen base. The specialists' PPO uses the usual
    ``teach`` fields (``total_timesteps`` per specialist, ``n_steps``, ``batch_size``,
    ``n_epochs``, ``learning_rate``, ``gamma``, ``net_arch``, ``normalize_obs``,
    ``normalize_reward``, ``eval_every``, ``eval_episodes``, ``checkpoint_every``)."""

    demos: str | None = None
    """Expert demonstrations of ``base_embodiment``; ``null``: this run's
    ``<runs_dir>/<name>/collect/demos.zarr`` (``robodistill collect`` with the expert)."""
    base_embodiment: str = "holonomic"
    """The embodiment the demonstrations (and so the IL base) come from."""
    embodiments: list[str] = Field(
        default_factory=lambda: ["holonomic", "diffdrive", "ackermann", "heavy"], min_length=1
    )
    """Embodiments that get a residual specialist (``env.kwargs.embodiment`` is set to each);
    include ``base_embodiment`` so the generalist also learns it from a specialist."""
    timesteps: dict[str, int] = Field(default_factory=dict)
    """Per-embodiment PPO budgets that replace ``teach.total_timesteps`` for the named
    specialists, e.g. ``{ackermann: 500000}``: a car-like base needs far more steps than the
    others before its residual beats the base (README, COMPASS)."""
    hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1, max_length=8)
    """Hidden widths of the encoder, latent dynamics, decoder and policy head MLPs."""
    latent_dim: int = Field(64, ge=1, le=4096)
    """Size of the latent z (what the residual policy sees, with the base action)."""
    activation: Activation = "ELU"
    """Hidden activation of the base's MLPs."""
    bc_loss: Literal["mse", "nll"] = "mse"
    """Imitation loss of the policy head: MSE in normalized action units, or the Gaussian
    negative log-likelihood (learns the head's state-independent std as well)."""
    world_model_coef: float = Field(1.0, ge=0.0, le=1000.0)
    """Weight of the world-model losses (next-latent prediction + next-observation
    reconstruction through the decoder) against the imitation loss; 0 = plain BC."""
    base_steps: Steps = 4000
    """Stage 1: gradient steps of the base."""
    base_batch_size: BatchSize = 256
    """Stage 1: transitions per gradient step."""
    base_learning_rate: LearningRate = 1e-3
    """Stage 1: Adam learning rate."""
    base_eval_every: Steps = 1000
    """Stage 1: validate on ``base_embodiment`` (``teach.eval_episodes`` validation seeds)
    every N steps and at the end; the best by success rate is kept."""
    base_checkpoint_every: Steps = 500
    """Stage 1: save a resumable checkpoint every N steps."""
    residual_limit: float = Field(2.0, gt=0.0, le=100.0)
    """Stage 2: the residual's action Box is ±residual_limit (2 lets it reverse any base
    command in [-1, 1]); ``action = clip(base + residual, low, high)``."""
    log_std_init: float = Field(-1.0, ge=-20.0, le=2.0)
    """Stage 2: PPO's initial log-std: small, so the specialist starts as the base and
    explores around it (SB3's default 0 would drown it). On diffdrive (40-demo base, 10
    validation episodes) -1 went from 10 % to 60 % success in 40k steps; -2 explored too
    little and stayed at the base's 0-10 % for 30k steps."""
    residual_obs: bool = False
    """Stage 2: also give the residual policy the raw observation (besides z and the base
    action)."""
    torch_threads: TorchThreads = 1
    """CPU threads torch uses while training, in each worker process (0: torch's default,
    one per core, which oversubscribes the CPU when ``workers > 1``)."""
    workers: int = Field(1, ge=1, le=256)
    """Stage 2: specialists trained at once, each in its own process (the embodiments are
    independent, and the result is the same; 2 ran 1.6x faster on 2 cores,
    ``benchmarks/compass_workers.py``). 1: one after another in this process. Worker
    processes import robodistill afresh, so each embodiment must be registered on import
    (the built-in ones are)."""

    @model_validator(mode="after")
    def _budgets_name_embodiments(self) -> CompassConfig:
        stray = sorted(set(self.timesteps) - set(self.embodiments))
        if stray or any(v < 1 for v in self.timesteps.values()):
            raise ValueError(
                f"teach.compass.timesteps: {self.timesteps} must map entries of "
                f"teach.compass.embodiments {self.embodiments} to budgets >= 1 "
                f"(not in embodiments: {stray})"
            )
        return self
