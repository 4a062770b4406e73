"""``teach.diffusion``, ``teach.rl100``, ``teach.offline``, ``teach.online``: the
RL-100 diffusion teacher."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from robodistill.config import base


class DiffusionConfig(base.Section):
    """The diffusion policy (RL-100's teacher): a 1-D temporal UNet with FiLM conditioning on
    the observation history, DDPM training, DDIM sampling, receding-horizon execution."""

    obs_horizon: int = Field(2, ge=1, le=64)
    """To: observations the policy conditions on (the current one and To - 1 before it)."""
    pred_horizon: int = Field(16, ge=1, le=512)
    """H: actions predicted per chunk, starting at the oldest observed step; a multiple of
    2 ** (len(down_dims) - 1)."""
    action_horizon: int = Field(8, ge=1, le=512)
    """Ta: actions executed from each chunk before planning again (at most H - To + 1)."""
    backbone: Literal["unet", "mlp"] = "unet"
    """Denoiser: ``unet`` (Chi et al.'s temporal UNet, ``down_dims`` ...) or ``mlp`` (DPPO's
    residual MLP over the flattened chunk, ``mlp_width`` x ``mlp_blocks``): no convolution
    along the chunk, so per parameter it costs ~1/H of the UNet's compute and trains several
    times more steps per minute on a CPU (benchmarks/pusht_teacher.py)."""
    mlp_width: int = Field(512, ge=8, le=8192)
    """``mlp`` backbone: hidden width."""
    mlp_blocks: int = Field(3, ge=0, le=32)
    """``mlp`` backbone: residual blocks (two Linear layers each)."""
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
        multiple = 2 ** (len(self.down_dims) - 1) if self.backbone == "unet" else 1
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


class RL100Config(base.Section):
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
    il_steps: base.Steps = 3000
    """Imitation: gradient steps (3000 at batch 64 with the default network: about 7 min on
    a 2-core CPU, evaluations included; measured 406 s on PushT, 456 s on Nav)."""
    batch_size: base.BatchSize = 64
    """Imitation: windows per gradient step."""
    learning_rate: base.LearningRate = 1e-3
    """Imitation: AdamW peak learning rate."""
    weight_decay: base.Fraction = 1e-6
    """Imitation: AdamW weight decay."""
    warmup_steps: base.WarmupSteps = 200
    """Imitation: linear learning-rate warm-up steps before the schedule."""
    lr_schedule: Literal["cosine", "constant_with_warmup", "linear"] = "cosine"
    """diffusers ``get_scheduler`` name for the learning rate after warm-up."""
    ema_decay: base.Fraction = 0.9999
    """Upper bound of the EMA decay (weights used for evaluation)."""
    ema_power: float = Field(0.75, gt=0.0, le=1.0)
    """EMA warm-up: decay after n updates is min(ema_decay, 1 - (1 + n) ** -ema_power)."""
    eval_every: base.Steps = 1000
    """Evaluate the EMA policy on the validation seeds (``teach.eval_episodes``) every N
    gradient steps and at the end; the best by success rate is kept."""
    checkpoint_every: base.Steps = 500
    """Save a resumable training checkpoint every N gradient steps."""
    log_every: base.Steps = 50
    """Log the mean loss and learning rate every N gradient steps."""
    rl_eval_episodes: int = Field(50, ge=1, le=100_000)
    """Validation episodes behind the RL sub-stages' (offline, online) checkpoint choices.
    More than imitation's ``teach.eval_episodes``: a checkpoint chosen as the best of many
    on 20 seeds overstated the kept policy by 10-20 points. When the first RL sub-stage
    starts, the policy kept so far is re-validated on these seeds, so every comparison is
    on the same seeds."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: ``auto`` picks CUDA when available."""
    torch_threads: base.TorchThreads = 1
    """CPU threads torch uses while training (0: torch's default, one per core). On the
    2-core machine a second thread sped the default network up by only 5-20 % when idle, and
    made it 10-40x slower when other processes competed (OpenMP threads spin waiting)."""


class OfflineRLConfig(base.Section):
    """RL-100 stage 2: PPO-style clipped updates over the denoising chain, advantages from
    IQL critics on the store, each round of updates gated by off-policy evaluation."""

    rounds: int = Field(20, ge=1, le=100_000)
    """Gate rounds: each runs ``updates_per_round`` updates, then OPE accepts or rejects."""
    updates_per_round: int = Field(50, ge=1, le=100_000)
    """K: gradient steps between two OPE evaluations (RL-100's code: 50)."""
    batch_size: base.BatchSize = 64
    """Decision states per update; each gets one chain sampled by the reference policy."""
    learning_rate: base.LearningRate = 1e-5
    """Adam learning rate of the diffusion network (small: the update must stay near the
    reference policy)."""
    clip: float = Field(0.2, gt=0.0, le=10.0)
    """PPO clip range of each denoising step's probability ratio."""
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e6)
    """Gradient norm clip of each update."""
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    """Per env-step discount of the decision transitions (a chunk of Ta steps: gamma**Ta)."""
    iql_steps: base.Steps = 5000
    """Gradient steps of the IQL critics."""
    iql_expectile: float = Field(0.7, gt=0.0, lt=1.0)
    """IQL expectile for V (RL-100: 0.7)."""
    critic_hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1)
    """Hidden widths of the IQL Q and V networks."""
    dynamics_steps: base.Steps = 3000
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
    """Imagined decisions per OPE rollout before bootstrapping with Q (see robodistill.teach.rl100.ope)."""
    ope_starts: int = Field(256, ge=1, le=1_000_000)
    """Start states of the OPE rollouts (fixed for the whole stage)."""
    ope_policy: Literal["deterministic", "stochastic"] = "deterministic"
    """Chunk OPE scores: ``deterministic`` DDIM (what ``act`` executes) or the stochastic
    chain (eta, min_std), both with noise fixed across evaluations."""
    gate_margin: float = Field(0.0, ge=0.0, le=1e6)
    """The candidate is accepted only when its estimate beats the best by more than this."""
    gate_z: float = Field(2.0, ge=0.0, le=100.0)
    """... plus this many standard errors of the paired per-start difference to the best
    (:class:`robodistill.teach.rl100.ope.OPEGate`); 0 = RL-100's plain "beats the best so far"."""
    flywheel_every: int = Field(0, ge=0, le=100_000)
    """Data flywheel: every N gate rounds roll the current policy out in the env and fold
    the episodes into the decisions (critics and model are refit); 0 = off."""
    flywheel_episodes: int = Field(10, ge=1, le=100_000)
    """Episodes per flywheel collection."""
    seed: int = Field(0, ge=0)
    """Seeds critics, model, OPE start states and the chains' noise."""


class OnlineRLConfig(base.Section):
    """RL-100 stage 3: online RL in simulation, starting from the offline stage's policy:
    DPPO (PPO on the denoising chain; only the last denoising steps are fine-tuned) or a
    PPO residual on the frozen diffusion policy (``method: residual``)."""

    method: Literal["dppo", "residual"] = "dppo"
    """``dppo``: PPO on the denoising chain (:mod:`robodistill.teach.rl100.online`; the
    settings below). ``residual``: the diffusion policy is frozen and stable-baselines3's
    PPO learns a Gaussian residual on each executed action from the observation and the
    base action (:mod:`robodistill.teach.rl100.residual_online`; ResiP / COMPASS's
    specialists). It uses ``num_envs``, ``gamma``, ``gae_lambda``, ``reward_scaling``,
    ``max_minutes``, the collapse settings, ``seed`` and the ``residual_*`` fields here, and
    ``teach``'s PPO settings (``n_steps``, ``batch_size``, ``n_epochs``, ``learning_rate``,
    ``net_arch``, ``normalize_obs``, ``eval_every`` in env steps, ``checkpoint_every``)."""
    residual_timesteps: int = Field(1_000_000, ge=1, le=10**10)
    """``method: residual``: env steps of PPO at most (``max_minutes`` may stop it first)."""
    residual_limit: float = Field(0.5, gt=0.0, le=100.0)
    """``method: residual``: the residual's Box is ±residual_limit per action dim (env
    units); ``action = clip(base + residual, low, high)``. Small keeps the policy near the
    imitation prior, as ResiP's residual scale does."""
    residual_log_std_init: float = Field(-1.0, ge=-20.0, le=2.0)
    """``method: residual``: initial log std of PPO's Gaussian (COMPASS: -1)."""

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
    clip_base: float | None = Field(None, gt=0.0, le=10.0)
    """DPPO's per-step clip: the noisiest fine-tuned step gets ``clip_base``, rising
    exponentially (``clip_rate``) to ``clip`` at the last step (DPPO: 0.001 -> 0.01).
    ``null``: ``clip`` for every step."""
    clip_rate: float = Field(3.0, gt=0.0, le=100.0)
    """Rate of that exponential rise."""
    gamma_denoising: float = Field(1.0, gt=0.0, le=1.0)
    """Denoising discount: fine-tuned step i (0 = noisiest) weighs its advantage by
    ``gamma_denoising ** (k' - 1 - i)`` (DPPO: 0.99); 1 gives every step the same credit."""
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
    actor_lr: base.LearningRate = 3e-6
    """Adam learning rate of the diffusion network (RL-100: 3e-6)."""
    critic_lr: base.LearningRate = 3e-4
    """Adam learning rate of the value network (RL-100: 3e-4)."""
    epochs: int = Field(10, ge=1, le=1000)
    """PPO epochs over each iteration's batch."""
    minibatch_size: base.BatchSize = 64
    """Decisions per PPO minibatch."""
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    """Per env-step discount; a decision of n steps discounts by gamma**n."""
    gae_lambda: base.Fraction = 0.95
    """GAE lambda over decisions."""
    target_kl: float | None = Field(0.02, gt=0.0, le=10.0)
    """Stop an iteration's epochs once the approximate KL (per denoising step) exceeds it."""
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e6)
    """Gradient norm clip for actor and critic."""
    value_hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1)
    """Hidden widths of the value MLP on the flattened observation history."""
    eval_every: int = Field(5, ge=1, le=10**7)
    """Evaluate on the validation seeds (``teach.rl100.rl_eval_episodes``) every N
    iterations."""
    collapse_fraction: base.Fraction = 0.5
    """Collapse: the score falls below best - (1 - fraction) * |best| ..."""
    collapse_patience: int = Field(3, ge=1, le=1000)
    """... in this many consecutive evaluations: stop and keep the best checkpoint."""
    max_episode_steps: int | None = Field(None, ge=1)
    """Episode limit while collecting; ``null`` uses ``env.max_episode_steps``."""
    reward_scaling: bool = True
    """Divide rewards by a running std of the discounted return (DPPO's running reward
    scaling), so that the value net's targets stay O(1) whatever the reward's scale."""
    reward: Literal["env", "progress"] = "env"
    """The training episodes' reward (validation and evaluation report the env's own):
    ``env``, the env's reward; ``progress``, potential-based shaping on the env's
    ``info["score"]`` (``gamma * score' - score``, :class:`robodistill.envs.make.
    ProgressReward`): an episode is paid for the score it ends on, not for the steps it
    spends below success — Push-T's per-step score made residual PPO linger (98 % -> 12 %
    success while the return rose) even with a success bonus. Add ``success_bonus`` for
    the sparse reward of finishing."""
    success_bonus: float = Field(0.0, ge=0.0, le=1e6)
    """Reward added on the step an episode succeeds, in the online stage's training episodes
    only (validation and evaluation report the env's own reward). Push-T's per-step score
    pays every step below success, so without it lingering at 90 % coverage is worth more
    than finishing (which ends the episode): residual PPO there went 98 % -> 0 % success
    while its return rose. A bonus is paid once and discounted by how late it comes, so
    even 100 (about ``1 / (1 - gamma)``) did not stop it there (98 % -> 12 %); with
    ``reward: progress`` nothing pays for lingering and the bonus is the sparse reward of
    finishing (Push-T's config: 1). 0: off."""
    max_minutes: float | None = Field(None, gt=0.0)
    """Wall-clock budget of the online sub-stage: no new iteration starts past it (the
    last one is evaluated; at least one runs). ``null``: ``iterations`` alone decides."""
    seed: int = Field(0, ge=0)
    """Seeds the chains' noise, the value network and the training episodes' seeds."""
