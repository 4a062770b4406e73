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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Stage = Literal["collect", "teach", "distill", "eval", "export", "control"]
ALL_STAGES: tuple[str, ...] = ("collect", "teach", "distill", "eval", "export", "control")


class ConfigError(ValueError):
    """The configuration is invalid; the message names every bad key."""


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True, frozen=False
    )


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
    policy: str = "auto"
    """``random``, ``expert`` (the env's privileged expert), a saved policy directory, or
    ``auto``: the run's teacher and every student it distilled, side by side (the expert
    when the run has no teacher)."""
    episodes: int = Field(20, ge=1, le=1_000_000)
    """Evaluation episodes, on fixed seeds disjoint from collection's."""
    video_episodes: int = Field(2, ge=0, le=100)
    """The first N evaluation episodes are also rendered to ``<run>/eval/videos/seed-<s>.mp4``."""
    video_env_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra ``gymnasium.make`` arguments for the rendered episodes only (e.g. a frame size)."""
    workers: int = Field(1, ge=1, le=1024)
    """Ray actors running evaluation episodes in parallel; 1 runs them in this process."""
    latency_decisions: int = Field(50, ge=0, le=1_000_000)
    """Decisions timed per saved policy (batch 1, one torch thread; median and p99 in the
    table); 0: no latency measurement."""


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


class DiffusionConfig(Section):
    """The diffusion policy (RL-100's teacher): a 1-D temporal UNet with FiLM conditioning on
    the observation history, DDPM training, DDIM sampling, receding-horizon execution."""

    obs_horizon: int = Field(2, ge=1, le=64)
    """To: observations the policy conditions on (the current one and To - 1 before it)."""
    pred_horizon: int = Field(16, ge=1, le=512)
    """H: actions predicted per chunk, starting at the oldest observed step; a multiple of
    2 ** (len(down_dims) - 1)."""
    action_horizon: int = Field(8, ge=1, le=512)
    """Ta: actions executed from each chunk before planning again (at most H - To + 1)."""
    down_dims: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1,
                                 max_length=6)  # fmt: skip
    """UNet channels per level (each halves the time axis). [32, 64, 128] is ~1.1 M
    parameters: on a 2-core CPU it trained ~2.8x more steps per minute than [64, 128, 256]
    (~4 M) and got further in the same time; the paper's [256, 512, 1024] is ~65 M (a GPU)."""
    kernel_size: int = Field(5, ge=1, le=31)
    """Temporal convolution width (odd)."""
    n_groups: int = Field(8, ge=1, le=64)
    """GroupNorm groups; every down_dims entry must be divisible by it."""
    step_embed_dim: int = Field(64, ge=4, le=4096)
    """Size of the sinusoidal diffusion-step embedding (even)."""
    num_train_timesteps: int = Field(100, ge=2, le=10_000)
    """DDPM noise levels used in training."""
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    """diffusers beta schedule (``squaredcos_cap_v2`` is the cosine schedule)."""
    num_inference_steps: int = Field(10, ge=1, le=10_000)
    """DDIM denoising steps per chunk at inference (also the RL chain's length)."""
    timestep_spacing: Literal["trailing", "leading", "linspace"] = "trailing"
    """How DDIM picks its steps from the training steps; ``trailing`` starts at the noisiest."""
    clip_sample: bool = True
    """Clip each step's clean-sample estimate to the normalized action range [-1, 1]."""
    chain_eta: float = Field(1.0, ge=0.0, le=10.0)
    """RL sampling: DDIM eta scaling the posterior std of each stochastic denoising step."""
    min_std: float = Field(0.0067, gt=0.0, le=1.0)
    """RL sampling: each denoising step's std is at least this (normalized units), so every
    step has a log-probability (RL-100 ~0.0067; DPPO uses 0.1)."""
    temporal_ensemble: float | None = Field(None, ge=-10.0, le=10.0)
    """``null``: execute action_horizon actions per plan. A number k: plan every step and
    average overlapping plans with weights exp(k * j) (ACT's temporal ensembling; slower)."""
    mask_padded_actions: bool = False
    """Leave actions past an episode's end out of the loss (diffusion policy keeps them)."""

    @model_validator(mode="after")
    def _consistent(self) -> DiffusionConfig:
        problems = []
        if self.obs_horizon > self.pred_horizon:
            problems.append(f"obs_horizon ({self.obs_horizon}) must be <= pred_horizon "
                            f"({self.pred_horizon})")  # fmt: skip
        if self.obs_horizon - 1 + self.action_horizon > self.pred_horizon:
            problems.append(
                f"action_horizon must be <= pred_horizon - obs_horizon + 1 = "
                f"{self.pred_horizon - self.obs_horizon + 1} (got {self.action_horizon})"
            )
        multiple = 2 ** (len(self.down_dims) - 1)
        if self.pred_horizon % multiple:
            problems.append(f"pred_horizon ({self.pred_horizon}) must be a multiple of "
                            f"{multiple} for {len(self.down_dims)} UNet levels")  # fmt: skip
        if any(d < 1 or d % self.n_groups for d in self.down_dims):
            problems.append(f"down_dims {self.down_dims} must be positive multiples of "
                            f"n_groups ({self.n_groups})")  # fmt: skip
        if self.kernel_size % 2 == 0:
            problems.append(f"kernel_size must be odd (got {self.kernel_size})")
        if self.step_embed_dim % 2:
            problems.append(f"step_embed_dim must be even (got {self.step_embed_dim})")
        if self.num_inference_steps > self.num_train_timesteps:
            problems.append(f"num_inference_steps ({self.num_inference_steps}) must be <= "
                            f"num_train_timesteps ({self.num_train_timesteps})")  # fmt: skip
        if problems:
            raise ValueError("; ".join(problems))
        return self


class RL100Config(Section):
    """RL-100 training schedule. Sub-stages run in order inside ``teach``: ``il`` imitates
    the demonstrations; offline and online RL on the denoising chain come next."""

    stages: list[Literal["il", "offline", "online"]] = Field(
        default_factory=lambda: ["il"], min_length=1
    )
    """Sub-stages to run, in order (``il``: imitation learning on the demonstrations;
    ``offline``: OPE-gated offline RL on the denoising chain, ``teach.offline``; ``online``:
    DPPO in simulation, ``teach.online``)."""
    demos: str | None = None
    """Trajectory store to imitate; ``null``: this run's ``<runs_dir>/<name>/collect/demos.zarr``."""
    il_steps: int = Field(3000, ge=1, le=10**8)
    """Imitation: gradient steps (3000 at batch 64 with the default network: about 7 min on
    a 2-core CPU, evaluations included; measured 406 s on PushT, 456 s on Nav)."""
    batch_size: int = Field(64, ge=1, le=65_536)
    """Imitation: windows per gradient step."""
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    """Imitation: AdamW peak learning rate."""
    weight_decay: float = Field(1e-6, ge=0.0, le=1.0)
    """Imitation: AdamW weight decay."""
    warmup_steps: int = Field(200, ge=0, le=10**7)
    """Imitation: linear learning-rate warm-up steps before the schedule."""
    lr_schedule: Literal["cosine", "constant_with_warmup", "linear"] = "cosine"
    """diffusers ``get_scheduler`` name for the learning rate after warm-up."""
    ema_decay: float = Field(0.9999, ge=0.0, le=1.0)
    """Upper bound of the EMA decay (weights used for evaluation)."""
    ema_power: float = Field(0.75, gt=0.0, le=1.0)
    """EMA warm-up: decay after n updates is min(ema_decay, 1 - (1 + n) ** -ema_power)."""
    eval_every: int = Field(1000, ge=1, le=10**8)
    """Evaluate the EMA policy on the validation seeds (``teach.eval_episodes``) every N
    gradient steps and at the end; the best by success rate is kept."""
    checkpoint_every: int = Field(500, ge=1, le=10**8)
    """Save a resumable training checkpoint every N gradient steps."""
    log_every: int = Field(50, ge=1, le=10**8)
    """Log the mean loss and learning rate every N gradient steps."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: ``auto`` picks CUDA when available."""
    torch_threads: int = Field(1, ge=0, le=1024)
    """CPU threads torch uses while training (0: torch's default, one per core). On the
    2-core machine a second thread sped the default network up by only 5-20 % when idle, and
    made it 10-40x slower when other processes competed (OpenMP threads spin waiting)."""


class OfflineRLConfig(Section):
    """RL-100 stage 2: PPO-style clipped updates over the denoising chain, advantages from
    IQL critics on the store, each round of updates gated by off-policy evaluation."""

    rounds: int = Field(20, ge=1, le=100_000)
    """Gate rounds: each runs ``updates_per_round`` updates, then OPE accepts or rejects."""
    updates_per_round: int = Field(50, ge=1, le=100_000)
    """K: gradient steps between two OPE evaluations (RL-100's code: 50)."""
    batch_size: int = Field(64, ge=1, le=65_536)
    """Decision states per update; each gets one chain sampled by the reference policy."""
    learning_rate: float = Field(1e-5, gt=0.0, le=1.0)
    """Adam learning rate of the diffusion network (small: the update must stay near the
    reference policy)."""
    clip: float = Field(0.2, gt=0.0, le=10.0)
    """PPO clip range of each denoising step's probability ratio."""
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e6)
    """Gradient norm clip of each update."""
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    """Per env-step discount of the decision transitions (a chunk of Ta steps: gamma**Ta)."""
    iql_steps: int = Field(5000, ge=1, le=10**8)
    """Gradient steps of the IQL critics."""
    iql_expectile: float = Field(0.7, gt=0.0, lt=1.0)
    """IQL expectile for V (RL-100: 0.7)."""
    critic_hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1)
    """Hidden widths of the IQL Q and V networks."""
    dynamics_steps: int = Field(3000, ge=1, le=10**8)
    """Gradient steps of the dynamics ensemble."""
    dynamics_members: int = Field(7, ge=1, le=64)
    """Dynamics ensemble members (RL-100: 7)."""
    dynamics_elites: int = Field(5, ge=1, le=64)
    """Members used in OPE rollouts (RL-100: 5); at most ``dynamics_members``."""
    dynamics_hidden: list[int] = Field(default_factory=lambda: [256, 256, 256], min_length=1)
    """Hidden widths of each dynamics member."""
    angle_dims: list[int] = Field(default_factory=list)
    """Indices of angles within one observation (e.g. [4] for Push-T's block angle): the
    dynamics model wraps them instead of clipping."""
    ope_horizon: int = Field(2, ge=0, le=100)
    """Imagined decisions per OPE rollout before bootstrapping with Q (see robodistill.ope)."""
    ope_starts: int = Field(256, ge=1, le=1_000_000)
    """Start states of the OPE rollouts (fixed for the whole stage)."""
    ope_policy: Literal["deterministic", "stochastic"] = "deterministic"
    """Chunk OPE scores: ``deterministic`` DDIM (what ``act`` executes) or the stochastic
    chain (eta, min_std), both with noise fixed across evaluations."""
    gate_margin: float = Field(0.0, ge=0.0, le=1e6)
    """The candidate is accepted only when its estimate beats the best by more than this."""
    gate_z: float = Field(2.0, ge=0.0, le=100.0)
    """... plus this many standard errors of the paired per-start difference to the best
    (:class:`robodistill.ope.OPEGate`); 0 = RL-100's plain "beats the best so far"."""
    flywheel_every: int = Field(0, ge=0, le=100_000)
    """Data flywheel: every N gate rounds roll the current policy out in the env and fold
    the episodes into the decisions (critics and model are refit); 0 = off."""
    flywheel_episodes: int = Field(10, ge=1, le=100_000)
    """Episodes per flywheel collection."""
    seed: int = Field(0, ge=0)
    """Seeds critics, model, OPE start states and the chains' noise."""


class OnlineRLConfig(Section):
    """RL-100 stage 3: DPPO (PPO on the denoising chain) in simulation, starting from the
    offline stage's policy; only the last denoising steps are fine-tuned."""

    iterations: int = Field(50, ge=1, le=10**7)
    """PPO iterations (collect, then update)."""
    num_envs: int = Field(4, ge=1, le=1024)
    """Environments stepped in turn while collecting."""
    decisions_per_env: int = Field(32, ge=1, le=100_000)
    """Decisions (chunks of Ta actions) each env contributes per iteration."""
    ft_denoising_steps: int = Field(2, ge=1, le=10_000)
    """k: fine-tune only the last k denoising steps (DPPO); at most the chain's K."""
    min_std: float | None = Field(None, gt=0.0, le=1.0)
    """Std floor of every denoising step; ``null``: the policy's own (``teach.diffusion.
    min_std``, as in the offline stage). DPPO explores with 0.1. Sampler and log-probs use
    the same floor, so the ratios are exact."""
    clip: float = Field(0.01, gt=0.0, le=10.0)
    """PPO clip of each denoising step's ratio (DPPO ~0.01; RL-100 0.2)."""
    log_prob: Literal["executed_mean", "chunk_sum"] = "executed_mean"
    """A denoising step's log-probability in the ratio: ``executed_mean`` averages the
    per-element log-density over the executed actions (DPPO), so ``clip`` bounds a
    per-element ratio; ``chunk_sum`` sums it over the whole (H, A) chunk (the offline
    stage's form), whose ratio moves ~H*A times as far per update: with clip 0.01 it clipped
    ~80 % of the samples on Nav (H*A = 32)."""
    critic_warmup_iterations: int = Field(0, ge=0, le=10**6)
    """Iterations at the start that train only the value network (DPPO's critic warm-up):
    the first advantages come from a value net fitted to the starting policy, not from
    random weights."""
    actor_lr: float = Field(3e-6, gt=0.0, le=1.0)
    """Adam learning rate of the diffusion network (RL-100: 3e-6)."""
    critic_lr: float = Field(3e-4, gt=0.0, le=1.0)
    """Adam learning rate of the value network (RL-100: 3e-4)."""
    epochs: int = Field(10, ge=1, le=1000)
    """PPO epochs over each iteration's batch."""
    minibatch_size: int = Field(64, ge=1, le=65_536)
    """Decisions per PPO minibatch."""
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    """Per env-step discount; a decision of n steps discounts by gamma**n."""
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    """GAE lambda over decisions."""
    target_kl: float | None = Field(0.02, gt=0.0, le=10.0)
    """Stop an iteration's epochs once the approximate KL (per denoising step) exceeds it."""
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e6)
    """Gradient norm clip for actor and critic."""
    value_hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1)
    """Hidden widths of the value MLP on the flattened observation history."""
    eval_every: int = Field(5, ge=1, le=10**7)
    """Evaluate on the validation seeds (``teach.eval_episodes``) every N iterations."""
    collapse_fraction: float = Field(0.5, ge=0.0, le=1.0)
    """Collapse: the score falls below best - (1 - fraction) * |best| ..."""
    collapse_patience: int = Field(3, ge=1, le=1000)
    """... in this many consecutive evaluations: stop and keep the best checkpoint."""
    max_episode_steps: int | None = Field(None, ge=1)
    """Episode limit while collecting; ``null`` uses ``env.max_episode_steps``."""
    seed: int = Field(0, ge=0)
    """Seeds the chains' noise, the value network and the training episodes' seeds."""


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
    activation: Literal["Tanh", "ReLU", "ELU", "SiLU", "GELU", "LeakyReLU"] = "ELU"
    """Hidden activation of the base's MLPs."""
    bc_loss: Literal["mse", "nll"] = "mse"
    """Imitation loss of the policy head: MSE in normalized action units, or the Gaussian
    negative log-likelihood (learns the head's state-independent std as well)."""
    world_model_coef: float = Field(1.0, ge=0.0, le=1000.0)
    """Weight of the world-model losses (next-latent prediction + next-observation
    reconstruction through the decoder) against the imitation loss; 0 = plain BC."""
    base_steps: int = Field(4000, ge=1, le=10**8)
    """Stage 1: gradient steps of the base."""
    base_batch_size: int = Field(256, ge=1, le=65_536)
    """Stage 1: transitions per gradient step."""
    base_learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    """Stage 1: Adam learning rate."""
    base_eval_every: int = Field(1000, ge=1, le=10**8)
    """Stage 1: validate on ``base_embodiment`` (``teach.eval_episodes`` validation seeds)
    every N steps and at the end; the best by success rate is kept."""
    base_checkpoint_every: int = Field(500, ge=1, le=10**8)
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
    torch_threads: int = Field(1, ge=0, le=1024)
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


class TeachConfig(Section):
    """Teacher training: the RL-100 diffusion teacher (``algo: rl100``: imitation, OPE-gated
    offline RL, online RL), RL teachers (``algo: ppo | sac``) on stable-baselines3 or RLlib,
    or COMPASS's IL base and residual specialists (``algo: compass``)."""

    algo: Literal["rl100", "ppo", "sac", "compass"] = "rl100"
    """``rl100``: the RL-100 diffusion teacher trained on the collected demonstrations
    (``teach.diffusion``, ``teach.rl100``); ``ppo`` / ``sac``: RL teachers from scratch;
    ``compass``: the IL base and one residual specialist per embodiment (``teach.compass``)."""
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
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    """RL-100: the diffusion policy's network, horizons and sampler."""
    rl100: RL100Config = Field(default_factory=RL100Config)
    """RL-100: sub-stages, demonstrations and training budget."""
    offline: OfflineRLConfig = Field(default_factory=OfflineRLConfig)
    """RL-100 stage 2: OPE-gated offline RL on the denoising chain."""
    online: OnlineRLConfig = Field(default_factory=OnlineRLConfig)
    """RL-100 stage 3: DPPO on the denoising chain in simulation."""
    compass: CompassConfig = Field(default_factory=CompassConfig)
    """COMPASS (``algo: compass``): the IL base with a world model and residual specialists."""


class DAggerConfig(Section):
    """DAgger: an MLP student learns the teacher's labels on the states it visits itself."""

    rounds: int = Field(8, ge=1, le=1000)
    """Rounds of roll out -> label -> aggregate -> train. Round 0 rolls out the teacher only."""
    episodes_per_round: int = Field(10, ge=1, le=10_000)
    """Episodes rolled out (and labeled by the teacher) per round."""
    beta_schedule: Literal["exponential", "linear"] = "exponential"
    """Probability β that the teacher, not the student, acts at a step of round i:
    ``exponential``: β = beta_decay**i; ``linear``: β = max(0, 1 - beta_decay * i). β is 1
    in round 0 either way."""
    beta_decay: float = Field(0.5, ge=0.0, le=1.0)
    """Rate of the β schedule (0 with ``exponential``: only the student acts after round 0)."""
    epochs: int = Field(20, ge=1, le=10_000)
    """Passes over the aggregated dataset (all rounds so far) after each round."""
    batch_size: int = Field(256, ge=1, le=1_000_000)
    """Minibatch size."""
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    """Adam learning rate (a fresh optimizer each round; the weights carry over)."""
    hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1, max_length=16)
    """Hidden layer sizes of the student MLP."""
    activation: Literal["Tanh", "ReLU", "ELU", "SiLU", "GELU", "LeakyReLU"] = "Tanh"
    """Hidden activation of the student MLP."""
    loss: Literal["auto", "mse", "kl"] = "auto"
    """``mse`` on the teacher's deterministic actions; ``kl``: KL(teacher ‖ student) between
    diagonal Gaussians (Gaussian head); ``auto``: ``kl`` when the teacher has a Gaussian
    (SB3 / RLlib teachers), else ``mse``."""
    eval_episodes: int = Field(10, ge=1, le=100_000)
    """Validation episodes after each round (fixed validation seeds); the best student is kept."""
    obs_clip: float = Field(10.0, gt=0.0, le=1e6)
    """Normalized observations are clipped to ±obs_clip inside the student."""


class ConsistencyConfig(Section):
    """Consistency distillation of the diffusion teacher into a one-step student (Consistency
    Policy / RL-100's consistency head): ``f(x_t, t) = c_skip(t) x_t + c_out(t) F(x_t, t)``
    trained to agree with an EMA target at the teacher's next ODE (DDIM) step."""

    steps: int = Field(1000, ge=1, le=10**8)
    """Gradient steps."""
    batch_size: int = Field(64, ge=1, le=65_536)
    """Demonstration windows per gradient step."""
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    """AdamW peak learning rate. The teacher's weights predict noise, not the consistency
    function, so the student has far to go: on Nav, 500 steps at 1e-4 (ode_steps 50, target
    EMA 0.95) reached 0 % validation success, at 1e-3 (ode_steps 20, 0.9) 70 %."""
    warmup_steps: int = Field(100, ge=0, le=10**7)
    """Linear learning-rate warm-up, then cosine decay."""
    init_from_teacher: bool = True
    """Start the student's network from the teacher's EMA weights (same architecture)."""
    ode_steps: int = Field(20, ge=2, le=10_000)
    """N: the teacher's training timesteps are split into N intervals; each loss term
    compares the student at t_{n+1} with the EMA target at the teacher's DDIM step t_n."""
    target_ema: float = Field(0.9, ge=0.0, lt=1.0)
    """mu: decay of the target network theta^- (consistency distillation's EMA; 0 is
    improved consistency training's stop-gradient target)."""
    ema_decay: float = Field(0.999, ge=0.0, le=1.0)
    """Decay of the evaluation EMA of the student's weights (what ``act`` uses)."""
    loss: Literal["mse", "pseudo_huber"] = "pseudo_huber"
    """Distance between student and target outputs (pseudo-Huber: iCT's choice)."""
    dsm_weight: float = Field(0.0, ge=0.0, le=100.0)
    """Weight of the auxiliary denoising loss ``|f(x_t, t) - x_0|^2`` (0: off)."""
    sigma_data: float = Field(0.5, gt=0.0, le=100.0)
    """sigma_data of the c_skip / c_out boundary parametrization (normalized action units)."""
    inference_steps: int = Field(1, ge=1, le=8)
    """Network calls per chunk at inference: 1, or 2-3 chained (denoise, re-noise to an
    intermediate timestep, denoise again)."""
    eval_every: int = Field(500, ge=1, le=10**8)
    """Validate on the validation seeds every N steps and at the end; the best is kept."""
    eval_episodes: int = Field(10, ge=1, le=100_000)
    """Validation episodes per evaluation."""
    checkpoint_every: int = Field(250, ge=1, le=10**8)
    """Save a resumable training checkpoint every N steps."""
    log_every: int = Field(50, ge=1, le=10**8)
    """Log mean losses every N steps."""
    torch_threads: int = Field(1, ge=0, le=1024)
    """CPU threads torch uses while training (0: torch's default)."""


class StreamingConfig(Section):
    """Streaming Diffusion Policy student: an action buffer whose noise level rises along
    the horizon; every control step executes the clean first action, shifts, appends fresh
    noise and denoises the whole buffer by one slot with per-element timesteps."""

    buffer_horizon: int = Field(16, ge=4, le=512)
    """Actions in the buffer, from the current step on (a multiple of 2 ** (levels - 1))."""
    calls_per_step: int = Field(1, ge=1, le=8)
    """Network calls per control step (each lowers every element's noise by a share of one
    slot)."""
    targets: Literal["demos", "teacher"] = "demos"
    """Training chunks: the demonstrations' actions, or the teacher's DDIM chunks on the
    demonstrations' observations (a pure distillation)."""
    steps: int = Field(1000, ge=1, le=10**8)
    """Gradient steps (on Nav: validation success 0.9 / 0.7 / 0.6 at 500 / 1000 / 1500
    steps, teacher 0.5; the best checkpoint is kept, so 1000 keeps the default pipeline
    within its time budget)."""
    batch_size: int = Field(64, ge=1, le=65_536)
    """Windows per gradient step."""
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    """AdamW peak learning rate (warm-up, then cosine)."""
    warmup_steps: int = Field(100, ge=0, le=10**7)
    """Linear learning-rate warm-up steps."""
    init_from_teacher: bool = True
    """Copy every teacher weight whose name and shape match (all but the input layers)."""
    ema_decay: float = Field(0.999, ge=0.0, le=1.0)
    """Upper bound of the evaluation EMA's decay."""
    eval_every: int = Field(500, ge=1, le=10**8)
    """Validate every N steps and at the end; the best is kept."""
    eval_episodes: int = Field(10, ge=1, le=100_000)
    """Validation episodes per evaluation."""
    checkpoint_every: int = Field(250, ge=1, le=10**8)
    """Save a resumable training checkpoint every N steps."""
    log_every: int = Field(50, ge=1, le=10**8)
    """Log mean losses every N steps."""
    torch_threads: int = Field(1, ge=0, le=1024)
    """CPU threads torch uses while training (0: torch's default)."""


class RTIConfig(Section):
    """RTI warm start (training-free): each new chunk starts from the previous plan shifted
    by the executed actions, re-noised to an intermediate timestep, and denoised a few steps."""

    steps: int = Field(3, ge=1, le=1000)
    """DDIM steps per warm-started chunk (the teacher's last ``steps`` of its K-step chain)."""
    discrete_dims: list[int] = Field(default_factory=list)
    """Action dimensions that are discrete (e.g. a gripper): their shifted values are scaled
    to the action range's extreme they are closest to before re-noising (RTI's rule)."""
    eval_episodes: int = Field(10, ge=1, le=100_000)
    """Validation episodes reported for the warm-started policy."""


class GeneralistConfig(Section):
    """COMPASS stage 3: DAgger from the residual specialists into one embodiment-conditioned
    generalist (``distill.students: [generalist]``; ``distill.teacher`` is the COMPASS teach
    directory, see :mod:`robodistill.distill_generalist`)."""

    embodiments: list[str] = Field(default_factory=list)
    """Embodiments to distill (each needs ``specialists/<name>/policy``); empty: every
    specialist found."""
    rounds: int = Field(6, ge=1, le=1000)
    """Rounds of roll out -> relabel -> aggregate -> train. Round 0 rolls out the specialists."""
    episodes_per_round: int = Field(6, ge=1, le=10_000)
    """Episodes per embodiment per round."""
    beta_schedule: Literal["exponential", "linear"] = "exponential"
    """Schedule of the probability β that the specialist acts (as ``distill.dagger``)."""
    beta_decay: float = Field(0.5, ge=0.0, le=1.0)
    """Rate of the β schedule (β is 1 in round 0)."""
    epochs: int = Field(20, ge=1, le=10_000)
    """Passes over the aggregated dataset after each round."""
    batch_size: int = Field(256, ge=1, le=1_000_000)
    """Minibatch size."""
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    """Adam learning rate (a fresh optimizer each round)."""
    hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1, max_length=16)
    """Hidden widths of the generalist MLP."""
    activation: Literal["Tanh", "ReLU", "ELU", "SiLU", "GELU", "LeakyReLU"] = "Tanh"
    """Hidden activation of the generalist MLP."""
    embedding: Literal["onehot", "learned"] = "onehot"
    """Embodiment code: the one-hot of its table slot fed to the MLP, or a learned
    embedding of it (``embed_dim`` wide)."""
    embed_dim: int = Field(16, ge=1, le=1024)
    """Width of the learned embodiment embedding."""
    max_embodiments: int = Field(8, ge=1, le=256)
    """Slots in the embodiment table (free ones take embodiments added by fine-tuning)."""
    loss: Literal["kl", "mse"] = "kl"
    """``kl``: KL(specialist ‖ generalist) between diagonal Gaussians; ``mse`` on the
    specialist's mean; either summed over the embodiment's unmasked action dims only."""
    eval_episodes: int = Field(6, ge=1, le=100_000)
    """Validation episodes per embodiment after each round (the specialists play the same
    seeds once, before round 0); ``selection`` picks the generalist that is kept."""
    selection: Literal["specialist_ratio", "mean_success"] = "specialist_ratio"
    """Which round's generalist is kept. ``specialist_ratio``: the highest worst-embodiment
    ratio of its validation success to that embodiment's specialist's (capped at 1, so past
    every specialist the mean decides), then mean success, then mean return: COMPASS's goal
    is to match each specialist, and the mean alone kept rounds that traded one body for
    another. ``mean_success``: mean success over the embodiments, then mean return."""
    obs_clip: float = Field(10.0, gt=0.0, le=1e6)
    """Normalized observations are clipped to ±obs_clip inside the generalist."""
    finetune_from: str = ""
    """Fine-tuning: a generalist policy directory to start from (normalizers and weights
    kept); empty: train a new generalist."""
    finetune_embodiments: list[str] = Field(default_factory=list)
    """Fine-tuning: new embodiments (in ``EMBODIMENTS``, seen by no specialist) to add to
    ``finetune_from``'s table. Each gets a short residual PPO on the generalist itself, which
    then teaches it; the known embodiments are replayed with their specialists."""
    finetune_residual_timesteps: int = Field(20_000, ge=1, le=10**9)
    """Fine-tuning: PPO steps of each new embodiment's residual on the generalist."""


class DistillConfig(Section):
    """Student distillation: fast students of a diffusion teacher, a DAgger student of an RL
    teacher, and COMPASS's cross-embodiment generalist of the residual specialists."""

    teacher: str = ""
    """Teacher policy directory; empty: ``<runs_dir>/<name>/teach/policy``."""
    students: list[Literal["consistency", "streaming", "rti", "dagger", "generalist"]] = Field(
        default_factory=lambda: ["consistency", "streaming"], min_length=1
    )
    """Students to distill, each into ``<run>/distill/<student>/``: ``consistency`` /
    ``streaming`` / ``rti`` (from the diffusion teacher), ``dagger`` (an MLP student of an RL
    teacher), ``generalist`` (from the COMPASS specialists of ``distill.teacher``'s run)."""
    dagger: DAggerConfig = Field(default_factory=DAggerConfig)
    """The DAgger student."""
    consistency: ConsistencyConfig = Field(default_factory=ConsistencyConfig)
    """The consistency-distilled one-step student."""
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)
    """The Streaming Diffusion Policy student."""
    rti: RTIConfig = Field(default_factory=RTIConfig)
    """RTI warm-start inference of the teacher (no training)."""
    generalist: GeneralistConfig = Field(default_factory=GeneralistConfig)
    """COMPASS's cross-embodiment generalist, distilled from the residual specialists."""


class ExportConfig(Section):
    """ONNX export: one self-contained ``.onnx`` file (normalization and action un-scaling
    inside the graph, a JSON metadata document in ``metadata_props``), checked for parity."""

    policy: str = "auto"
    """Policy directory to export; ``auto``: the first student of ``distill.students`` that
    this run distilled (``<run>/distill/<student>/policy``), else ``<run>/teach/policy``."""
    exporter: Literal["dynamo", "torchscript"] = "torchscript"
    """``torchscript``: the tracing exporter (the default: 0.3 s per export here against
    12–21 s for ``dynamo``, with the same parity); ``dynamo``: torch.export-based, for
    models tracing cannot capture."""
    opset: int = Field(18, ge=17, le=23)
    """ONNX opset of the exported graph."""
    quantize: bool = False
    """Also write ``policy.int8.onnx`` (onnxruntime dynamic int8 quantization) and report its
    accuracy and latency change against the float model."""
    parity_tol: float = Field(1e-3, gt=0.0, le=1.0)
    """Largest torch-vs-onnxruntime difference accepted (absolute, relative above magnitude
    1). MLP policies agree to < 1e-6; the diffusion teacher's UNet agrees to ~1e-6 on real
    observations but reached 2.3e-4 on one of 256 random out-of-range observations (the
    noisiest DDIM step divides by sqrt(alpha_bar) ~ 0.006, amplifying float32 rounding), so
    the default is 1e-3; ``1e-4`` is the tighter check for MLP kinds."""
    parity_random: int = Field(256, ge=1, le=1_000_000)
    """Random observations (uniform within finite bounds, else normal) in the parity check."""
    parity_real_steps: int = Field(200, ge=0, le=1_000_000)
    """Real observations in the parity check, from rolling the policy out in ``env.id``."""
    latency_calls: int = Field(1000, ge=10, le=1_000_000)
    """Batch-1, one-thread ``OnnxPolicy.act`` calls timed for the reported latency."""


class ControlConfig(Section):
    """Fixed-rate controller: the exported ONNX policy drives ``env.id`` (a SimRobot) on an
    absolute-deadline loop; reports success, latency, deadline misses and faults."""

    model: str = "auto"
    """ONNX file to run; ``auto``: ``<run>/export/policy.onnx``."""
    hz: float | None = Field(None, gt=0.0, le=100_000.0)
    """Control rate; ``null``: the model's control rate (from the environment at export)."""
    episodes: int = Field(5, ge=1, le=1_000_000)
    """Episodes to run (on the evaluation seeds, so results compare with ``eval``). The loop
    runs in real time: a Nav-v0 episode is up to 40 s at its 10 Hz."""
    max_ticks: int | None = Field(None, ge=1)
    """Stop after this many ticks even if episodes remain; ``null``: no limit."""
    on_fault: Literal["continue", "stop"] = "continue"
    """After a fault (invalid observation, late inference, robot or policy exception, NaN
    action) the safe action is sent; then ``continue`` or ``stop``."""
    max_faults: int | None = Field(None, ge=0)
    """Stop once more faults than this have happened; ``null``: no limit."""
    slew_rate: float | None = Field(None, gt=0.0)
    """Largest change of each action component per second; ``null``: no slew limit."""
    late_after: float = Field(1.0, gt=0.0, le=100.0)
    """Inference ending this many periods after the tick's slot is a ``late`` fault."""
    execution: Literal["receding", "ensemble"] | None = None
    """Chunked policies: receding horizon or temporal ensembling; ``null``: the model's."""
    threads: int = Field(1, ge=1, le=256)
    """onnxruntime intra-op threads."""
    spin_ms: float = Field(0.0, ge=0.0, le=100.0)
    """Sleep until this long before each slot, then poll the clock: lower jitter, more CPU."""
    realtime_priority: int | None = Field(None, ge=1, le=99)
    """Run the loop under Linux SCHED_FIFO at this priority (needs root or CAP_SYS_NICE;
    otherwise a warning and normal scheduling); ``null``: normal scheduling."""
    log: bool = True
    """Write every tick as a JSON line to ``<run>/control/ticks.jsonl``."""


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
