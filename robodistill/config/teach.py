"""``teach``: teacher training, and its ``teach.exploration`` intrinsic rewards."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from robodistill.config.base import EvalEpisodes, LearningRate, Section, Selection, TorchThreads
from robodistill.config.compass import CompassConfig
from robodistill.config.rl100 import DiffusionConfig, OfflineRLConfig, OnlineRLConfig, RL100Config
from robodistill.config.training import TrainingConfig, training_errors


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
    learning_rate: LearningRate = 1e-4
    """Predictor learning rate."""
    update_proportion: float = Field(0.25, gt=0.0, le=1.0)
    """Share of each collected batch the predictor trains on (RND uses 0.25)."""
    obs_clip: float = Field(5.0, gt=0.0, le=100.0)
    """Normalized observations fed to the networks are clipped to [-obs_clip, obs_clip]."""
    rdd_sigma: float = Field(0.5, gt=0.0, le=100.0)
    """RDD: standard deviation of the Gaussian around the target's output."""
    gamma_int: float = Field(0.99, gt=0.0, lt=1.0)
    """Discount of the intrinsic return (RND's 0.99). With PPO it is the intrinsic value
    head's discount (non-episodic: episode ends do not cut it); it also scales the bonus."""
    predictor_epochs: int = Field(4, ge=1, le=1000)
    """Passes of the predictor over each PPO rollout (RND / cleanrl: PPO's 4 epochs)."""
    predictor_minibatches: int = Field(4, ge=1, le=10_000)
    """Minibatches per pass; each Adam step trains on ``update_proportion`` of one."""
    obs_norm_warmup_steps: int = Field(6400, ge=0, le=10_000_000)
    """Random-action steps per env that initialise the bonus's observation normaliser
    before training (cleanrl: 50 iterations of 128 steps)."""
    input_scaling: Literal["running", "bounds", "bounds_running_mean"] = "running"
    """How the bonus's input is normalized. ``running``: RND's running mean/std (initialized
    by the warm-up), clipped at ``obs_clip``. ``bounds``: the observation space's bounds of
    the bonus input mapped to [-1, 1]; needs finite bounds (e.g. ``[position]``). With a
    running std over the few places a young policy visits, every unvisited place is
    clipped to the same input and looks seen. ``bounds_running_mean``: centred on the
    running mean (RND's), scaled by the bounds' half-width: the first bonus landscape then
    grows with the distance from the visited places, not from the arena's centre."""
    return_norm_window: int | None = Field(None, ge=1, le=10**9)
    """The bonus is divided by the std of the intrinsic return over about the last this
    many (per-env) returns; ``null``: over the whole run (RND). On a small input space the
    bonus falls 1000-fold in 100k steps while a whole-run std falls 2-fold, leaving the
    intrinsic critic to fit returns of 1e-3 with Adam's fixed step size. SB3 only."""
    episodic_cell: float | None = Field(None, gt=0.0, le=100.0)
    """NGU's episodic novelty times the lifelong bonus: the reward is ``1/sqrt(visits to
    this cell in this episode) * clip(1 + standardized lifelong bonus, 1, 5)``, cells of
    this side in normalized bonus-input units (with ``bounds`` scaling 0.1 is 1/20 of the
    arena). ``null``: the lifelong bonus (RND / RDD) alone. SB3 only."""
    bonus_input: list[str] = []
    """Observation-layout fields the bonus sees (e.g. ``[position]`` with the robodistill
    tasks' ``env.kwargs.privileged_position: true``); empty: the whole observation. The
    policy always sees the whole observation. SB3 teachers only."""


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
    learning_rate: LearningRate = 3e-4
    """Optimizer learning rate."""
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    """Discount factor."""
    n_steps: int = Field(256, ge=1, le=1_000_000)
    """PPO: steps per env per rollout."""
    batch_size: int = Field(64, ge=1, le=1_000_000)
    """Minibatch size."""
    n_epochs: int = Field(10, ge=1, le=1000)
    """PPO: optimization epochs per rollout."""
    entropy_coef: float = Field(0.0, ge=0.0, le=10.0)
    """PPO: weight of the policy-entropy bonus in the loss (SB3's ``ent_coef``, RLlib's
    ``entropy_coeff``). RND's PPO uses 0.001: without it a reward-free policy's action std
    shrinks (measured on AGVMaze-v0: 1.0 to 0.25 in 400k steps) and exploration stops."""
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
    eval_episodes: EvalEpisodes = 10
    """Episodes per evaluation."""
    selection: Selection = "success"
    """Which checkpoint is kept (every teacher: SB3, RLlib, RL-100, COMPASS). ``success``: the highest validation
    success rate first, then the mean max score where the env defines ``info["score"]``,
    then mean return. ``max_score``: the highest mean max score first (each episode's
    maximum of ``info["score"]`` where the env defines one, else of the reward; Push-T:
    Diffusion Policy's ``mean_score``), then success rate, then mean return."""
    checkpoint_every: int = Field(10_000, ge=1, le=10**10)
    """Save a resumable checkpoint every N environment steps."""
    torch_threads: TorchThreads = 1
    """RL teachers (SB3, RLlib: the driver and every env runner): torch's intra-op threads
    while training (0: torch's default, one per core). The MLP-sized networks of RL
    teachers run several times faster with 1 on a busy CPU (an SB3 PPO teacher measured 8x:
    1,313 against 167 env steps/s); ``teach.rl100.torch_threads`` and
    ``teach.compass.torch_threads`` are the same rule for those teachers."""
    num_env_runners: int = Field(1, ge=0, le=1024)
    """RLlib: env runner actors sampling in parallel (0: sample in the driver)."""
    num_envs_per_env_runner: int | None = Field(None, ge=1, le=1024)
    """RLlib: envs vectorized in each env runner; ``null`` uses ``env.num_envs``."""
    exploration: ExplorationConfig = Field(default_factory=ExplorationConfig)
    """Intrinsic-reward exploration (both backends)."""
    privileged: Literal["none", "oracle", "asymmetric", "blind"] = "none"
    """A privileged PPO teacher (``teach.algo: ppo`` on stable-baselines3 or, with
    ``teach.backend: rllib``, RLlib) that reads the domain-randomization draw ``e`` (needs
    ``env.randomization`` with ``privileged_obs: true``; docs/concepts/privileged.md).
    ``oracle``: actor and critic read ``z = mu(e)`` (RMA's privileged encoder; what the
    ``rma`` and ``hib`` students need); ``asymmetric``: only the critic reads it; ``blind``:
    nobody does (the domain-randomized policy without privileged information, same
    network). The teacher is saved as a ``privileged_teacher`` policy on both backends.
    ``none``: SB3's ``MlpPolicy`` / RLlib's default PPO module."""
    privileged_latent_dim: int = Field(8, ge=1, le=1024)
    """Width ``L`` of the privileged latent ``z = mu(e)`` (``teach.privileged`` != none)."""
    privileged_encoder_arch: list[int] = Field(default_factory=lambda: [64], max_length=16)
    """Hidden widths of the privileged encoder ``mu`` (``teach.privileged`` != none)."""
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
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    """The gradient-step trainers' run settings: data-parallel ``workers`` (the RL-100
    imitation sub-stage, the COMPASS base; RLlib learners), ``max_failures``, ``precision``."""

    @model_validator(mode="after")
    def _privileged_fits_the_trainer(self) -> TeachConfig:
        if self.privileged == "none":
            return self
        where = f"teach.privileged={self.privileged}"
        if self.backend == "rllib" and not self.net_arch:
            raise ValueError(f"{where} on teach.backend=rllib needs at least one hidden "
                             "layer in teach.net_arch (its heads sit on the trunks' last "
                             "layer), got []")  # fmt: skip
        if self.algo != "ppo":
            raise ValueError(f"{where} trains a PPO teacher, but teach.algo={self.algo}; set "
                             "teach.algo=ppo (or teach.privileged=none)")  # fmt: skip
        if self.exploration.method != "none":
            raise ValueError(f"{where} does not combine with teach.exploration.method="
                             f"{self.exploration.method}; set one of them to none")  # fmt: skip
        if any(w < 1 for w in self.privileged_encoder_arch):
            raise ValueError("teach.privileged_encoder_arch: layer sizes must be positive, "
                             f"got {self.privileged_encoder_arch}")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _workers_fit_the_trainer(self) -> TeachConfig:
        workers = self.training.workers
        if workers == 1:
            return self
        if self.algo in ("ppo", "sac") and self.backend == "sb3":
            raise ValueError(training_errors("teach", workers, "stable-baselines3",
                                             "it trains in one process; teach.backend: rllib "
                                             "runs PPO with that many learners"))  # fmt: skip
        if self.backend == "rllib" and self.algo == "ppo" and self.exploration.method != "none":
            raise ValueError(
                training_errors(
                    "teach",
                    workers,
                    f"RLlib PPO with teach.exploration.method={self.exploration.method}",
                    "the bonus's predictor lives in one learner",
                )
            )
        batch = {"rl100": ("teach.rl100.batch_size", self.rl100.batch_size),
                 "compass": ("teach.compass.base_batch_size", self.compass.base_batch_size)}  # fmt: skip
        key, size = batch.get(self.algo, ("", workers))
        if size < workers:
            raise ValueError(f"{key}={size} is the global batch, split across "
                             f"teach.training.workers={workers}: it must be at least that")  # fmt: skip
        return self
