"""``distill``: the students distilled from a teacher."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from robodistill.config import base
from robodistill.config.training import TrainingConfig, training_errors


class DAggerConfig(base.Section):
    """DAgger: an MLP student learns the teacher's labels on the states it visits itself."""

    rounds: int = Field(8, ge=1, le=1000)
    """Rounds of roll out -> label -> aggregate -> train. Round 0 rolls out the teacher only."""
    episodes_per_round: int = Field(10, ge=1, le=10_000)
    """Episodes rolled out (and labeled by the teacher) per round."""
    beta_schedule: Literal["exponential", "linear"] = "exponential"
    """Probability β that the teacher, not the student, acts at a step of round i:
    ``exponential``: β = beta_decay**i; ``linear``: β = max(0, 1 - beta_decay * i). β is 1
    in round 0 either way."""
    beta_decay: base.Fraction = 0.5
    """Rate of the β schedule (0 with ``exponential``: only the student acts after round 0)."""
    epochs: int = Field(20, ge=1, le=10_000)
    """Passes over the aggregated dataset (all rounds so far) after each round."""
    batch_size: int = Field(256, ge=1, le=1_000_000)
    """Minibatch size."""
    learning_rate: base.LearningRate = 1e-3
    """Adam learning rate (a fresh optimizer each round; the weights carry over)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the student trains after each round (``auto``: CUDA when torch sees one); it
    acts on CPU in the rollouts either way."""
    hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1, max_length=16)
    """Hidden layer sizes of the student MLP."""
    activation: base.Activation = "Tanh"
    """Hidden activation of the student MLP."""
    loss: Literal["auto", "mse", "kl"] = "auto"
    """``mse`` on the teacher's deterministic actions; ``kl``: KL(teacher ‖ student) between
    diagonal Gaussians (Gaussian head); ``auto``: ``kl`` when the teacher has a Gaussian
    (SB3 / RLlib teachers), else ``mse``."""
    eval_episodes: base.EvalEpisodes = 10
    """Validation episodes after each round (fixed validation seeds); the best student is kept."""
    selection: base.Selection = "success"
    """Which round's student is kept. ``success``: the highest validation
    success rate first, then the mean max score where the env defines ``info["score"]``,
    then mean return. ``max_score``: the highest mean max score first (each episode's
    maximum of ``info["score"]`` where the env defines one, else of the reward; Push-T:
    Diffusion Policy's ``mean_score``), then success rate, then mean return."""
    obs_clip: float = Field(10.0, gt=0.0, le=1e6)
    """Normalized observations are clipped to ±obs_clip inside the student."""


class ConsistencyConfig(base.Section):
    """Consistency distillation of the diffusion teacher into a one-step student (Consistency
    Policy / RL-100's consistency head): ``f(x_t, t) = c_skip(t) x_t + c_out(t) F(x_t, t)``
    trained to agree with an EMA target at the teacher's next ODE (DDIM) step."""

    steps: base.Steps = 1000
    """Gradient steps."""
    batch_size: base.BatchSize = 64
    """Demonstration windows per gradient step."""
    learning_rate: base.LearningRate = 1e-3
    """AdamW peak learning rate. The teacher's weights predict noise, not the consistency
    function, so the student has far to go: on Nav, 500 steps at 1e-4 (ode_steps 50, target
    EMA 0.95) reached 0 % validation success, at 1e-3 (ode_steps 20, 0.9) 70 %."""
    warmup_steps: base.WarmupSteps = 100
    """Linear learning-rate warm-up, then cosine decay."""
    init_from_teacher: bool = True
    """Start the student's network from the teacher's EMA weights (same architecture)."""
    ode_steps: int = Field(20, ge=2, le=10_000)
    """N: the teacher's training timesteps are split into N intervals; each loss term
    compares the student at t_{n+1} with the EMA target at the teacher's DDIM step t_n."""
    target_ema: float = Field(0.9, ge=0.0, lt=1.0)
    """mu: decay of the target network theta^- (consistency distillation's EMA; 0 is
    improved consistency training's stop-gradient target)."""
    ema_decay: base.Fraction = 0.999
    """Decay of the evaluation EMA of the student's weights (what ``act`` uses)."""
    loss: Literal["mse", "pseudo_huber"] = "pseudo_huber"
    """Distance between student and target outputs (pseudo-Huber: iCT's choice)."""
    dsm_weight: float = Field(0.0, ge=0.0, le=100.0)
    """Weight of the auxiliary denoising loss ``|f(x_t, t) - x_0|^2`` (0: off)."""
    trajectory_weight: float = Field(0.0, ge=0.0, le=100.0)
    """Weight of the trajectory term (0: off): the student's one jump from noise ``z`` at
    T - 1 against the teacher's own deterministic sampler (its ``num_inference_steps`` DDIM
    steps) from the same ``z`` (CTM's long-jump anchor run to t = 0). Costs that many
    teacher calls per step; it pins the 1-step map where the per-interval links only
    bootstrap towards it."""
    visited_every: int = Field(0, ge=0, le=10_000_000)
    """Every this many steps (0: off) the acting student plays ``visited_episodes`` fresh
    training episodes, and the observation windows it visited join a pool that supplies
    ``visited_fraction`` of the trajectory term's batch: the teacher's chunk is its label
    there (the term needs no demonstrated action), so the student learns where it drifts,
    not only where the demonstrator went (DAgger's states; needs ``trajectory_weight`` > 0)."""
    visited_episodes: int = Field(10, ge=1, le=100_000)
    """Episodes the student plays per ``visited_every``."""
    visited_fraction: float = Field(0.5, ge=0.0, le=1.0)
    """Share of the trajectory term's batch drawn from the visited pool (once it has rows)."""
    visited_capacity: int = Field(100_000, ge=1, le=10_000_000)
    """Most windows the visited pool keeps (the oldest go first)."""
    sigma_data: float = Field(0.5, gt=0.0, le=100.0)
    """sigma_data of the c_skip / c_out boundary parametrization (normalized action units)."""
    inference_steps: int = Field(1, ge=1, le=8)
    """Network calls per chunk at inference: 1, or 2-3 chained (denoise, re-noise to an
    intermediate timestep, denoise again)."""
    eval_every: base.Steps = 500
    """Validate on the validation seeds every N steps and at the end; the best is kept."""
    eval_episodes: base.EvalEpisodes = 10
    """Validation episodes per evaluation."""
    selection: base.Selection = "success"
    """Which checkpoint is kept. ``success``: the highest validation
    success rate first, then the mean max score where the env defines ``info["score"]``,
    then mean return. ``max_score``: the highest mean max score first (each episode's
    maximum of ``info["score"]`` where the env defines one, else of the reward; Push-T:
    Diffusion Policy's ``mean_score``), then success rate, then mean return."""
    checkpoint_every: base.Steps = 250
    """Save a resumable training checkpoint every N steps."""
    log_every: base.Steps = 50
    """Log mean losses every N steps."""
    torch_threads: base.TorchThreads = 1
    """CPU threads torch uses while training (0: torch's default)."""


class StreamingConfig(base.Section):
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
    constant_prob: float = Field(0.0, ge=0.0, le=0.9)
    """Share of training windows noised at one level for the whole buffer (uniform over the
    teacher's timesteps) instead of the staircase: SDP's mixture of chunk-wise increasing
    (~0.8) and temporally constant (~0.2) noise. 0: staircase (and fresh starts) only."""
    steps: base.Steps = 1000
    """Gradient steps (on Nav: validation success 0.9 / 0.7 / 0.6 at 500 / 1000 / 1500
    steps, teacher 0.5; the best checkpoint is kept, so 1000 keeps the default pipeline
    within its time budget)."""
    batch_size: base.BatchSize = 64
    """Windows per gradient step."""
    learning_rate: base.LearningRate = 1e-3
    """AdamW peak learning rate (warm-up, then cosine)."""
    warmup_steps: base.WarmupSteps = 100
    """Linear learning-rate warm-up steps."""
    init_from_teacher: bool = True
    """Copy every teacher weight whose name and shape match (all but the input layers)."""
    ema_decay: base.Fraction = 0.999
    """Upper bound of the evaluation EMA's decay."""
    eval_every: base.Steps = 500
    """Validate every N steps and at the end; the best is kept."""
    eval_episodes: base.EvalEpisodes = 10
    """Validation episodes per evaluation."""
    selection: base.Selection = "success"
    """Which checkpoint is kept. ``success``: the highest validation
    success rate first, then the mean max score where the env defines ``info["score"]``,
    then mean return. ``max_score``: the highest mean max score first (each episode's
    maximum of ``info["score"]`` where the env defines one, else of the reward; Push-T:
    Diffusion Policy's ``mean_score``), then success rate, then mean return."""
    checkpoint_every: base.Steps = 250
    """Save a resumable training checkpoint every N steps."""
    log_every: base.Steps = 50
    """Log mean losses every N steps."""
    torch_threads: base.TorchThreads = 1
    """CPU threads torch uses while training (0: torch's default)."""


class RTIConfig(base.Section):
    """RTI warm start (training-free): each new chunk starts from the previous plan shifted
    by the executed actions, re-noised to an intermediate timestep, and denoised a few steps."""

    steps: int = Field(3, ge=1, le=1000)
    """DDIM steps per warm-started chunk (the teacher's last ``steps`` of its K-step chain)."""
    discrete_dims: list[int] = Field(default_factory=list)
    """Action dimensions that are discrete (e.g. a gripper): their shifted values are scaled
    to the action range's extreme they are closest to before re-noising (RTI's rule)."""
    eval_episodes: base.EvalEpisodes = 10
    """Validation episodes reported for the warm-started policy."""


class GeneralistConfig(base.Section):
    """COMPASS stage 3: DAgger from the residual specialists into one embodiment-conditioned
    generalist (``distill.students: [generalist]``; ``distill.teacher`` is the COMPASS teach
    directory, see :mod:`robodistill.distill.generalist`)."""

    embodiments: list[str] = Field(default_factory=list)
    """Embodiments to distill (each needs ``specialists/<name>/policy``); empty: every
    specialist found."""
    rounds: int = Field(6, ge=1, le=1000)
    """Rounds of roll out -> relabel -> aggregate -> train. Round 0 rolls out the specialists."""
    episodes_per_round: int = Field(6, ge=1, le=10_000)
    """Episodes per embodiment per round."""
    beta_schedule: Literal["exponential", "linear"] = "exponential"
    """Schedule of the probability β that the specialist acts (as ``distill.dagger``)."""
    beta_decay: base.Fraction = 0.5
    """Rate of the β schedule (β is 1 in round 0)."""
    epochs: int = Field(20, ge=1, le=10_000)
    """Passes over the aggregated dataset after each round."""
    batch_size: int = Field(256, ge=1, le=1_000_000)
    """Minibatch size."""
    learning_rate: base.LearningRate = 1e-3
    """Adam learning rate (a fresh optimizer each round)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the generalist trains after each round (``auto``: CUDA when torch sees one); it
    acts on CPU in the rollouts either way."""
    hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1, max_length=16)
    """Hidden widths of the generalist MLP."""
    activation: base.Activation = "Tanh"
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
    eval_episodes: base.EvalEpisodes = 6
    """Validation episodes per embodiment after each round (the specialists play the same
    seeds once, before round 0); ``selection`` picks the generalist that is kept."""
    selection: Literal["specialist_ratio", "mean_success", "max_score"] = "specialist_ratio"
    """Which round's generalist is kept. ``specialist_ratio``: the highest worst-embodiment
    ratio of its validation success to that embodiment's specialist's (capped at 1, so past
    every specialist the mean decides), then mean success, then mean return: COMPASS's goal
    is to match each specialist, and the mean alone kept rounds that traded one body for
    another. ``mean_success``: mean success over the embodiments, then mean return.
    ``max_score``: the mean over the embodiments of the mean max score (each episode's
    maximum of ``info["score"]`` where the env defines one, else of the reward) first, then
    mean success, then mean return."""
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


class HistoryStudentConfig(base.Section):
    """The history students (``distill.students`` ``history``, ``rma``, ``hib``) of a
    privileged teacher (``teach.privileged``), distilled by DAgger on their own states: each
    reads the robot's observation and its last ``k`` (observation, executed action) pairs,
    never the privileged draw (:mod:`robodistill.distill.history`). One section for the
    three; ``distill.hib`` adds HIB's loss weights."""

    k: int = Field(8, ge=1, le=1024)
    """History length: (observation, action) pairs in the window (the ONNX state tensor)."""
    rounds: int = Field(4, ge=1, le=1000)
    """DAgger rounds (roll out -> label -> aggregate -> train); round 0: the teacher acts."""
    episodes_per_round: int = Field(8, ge=1, le=10_000)
    """Episodes rolled out and labeled per round."""
    beta_decay: base.Fraction = 0.5
    """The teacher acts at a step of round ``i`` with probability ``beta_decay ** i``."""
    epochs: int = Field(10, ge=1, le=10_000)
    """Passes over the aggregated dataset after each round."""
    batch_size: int = Field(256, ge=1, le=1_000_000)
    """Minibatch size."""
    learning_rate: base.LearningRate = 1e-3
    """Adam learning rate (a fresh optimizer each round; the weights carry over)."""
    latent_dim: int | None = Field(None, ge=1, le=1024)
    """Width of the history latent; ``null``: the teacher's ``z`` width (``rma`` always
    takes the teacher's, since it reuses the teacher's head)."""
    encoder_arch: list[int] = Field(default_factory=lambda: [128, 64], min_length=1,
                                    max_length=16)  # fmt: skip
    """Hidden widths of the history encoder (RMA's adaptation module)."""
    hidden: list[int] = Field(default_factory=lambda: [128, 128], min_length=1, max_length=16)
    """Hidden widths of the policy head of ``history`` and ``hib`` (``rma`` reuses the
    teacher's)."""
    eval_episodes: base.EvalEpisodes = 10
    """Validation episodes after each round (fixed validation seeds); the best is kept."""
    selection: base.Selection = "success"
    """Which round's student is kept, as ``distill.dagger.selection``."""


class HIBConfig(base.Section):
    """The ``hib`` student's information-bottleneck loss (docs/concepts/privileged.md):
    imitation + ``alpha`` InfoNCE(z, mu(e)) + ``beta`` KL(q(z | h) || N(0, I))."""

    alpha: float = Field(0.1, ge=0.0, le=1000.0)
    """Weight of the InfoNCE term (the lower bound on I(z; e))."""
    beta: float = Field(1e-3, ge=0.0, le=1000.0)
    """Weight of the KL term (the upper bound on I(z; h))."""
    tau: float = Field(0.1, gt=0.0, le=100.0)
    """InfoNCE temperature (cosine similarities / tau)."""


HISTORY_STUDENTS = ("history", "rma", "hib")
"""``distill.students`` of a privileged teacher (:class:`HistoryStudentConfig`)."""


class DistillConfig(base.Section):
    """Student distillation: fast students of a diffusion teacher, a DAgger student of an RL
    teacher, and COMPASS's cross-embodiment generalist of the residual specialists."""

    teacher: str = ""
    """Teacher policy directory; empty: ``<runs_dir>/<name>/teach/policy``."""
    students: list[
        Literal["consistency", "streaming", "rti", "dagger", "generalist", "history", "rma",
                "hib"]
    ] = Field(default_factory=lambda: ["consistency", "streaming"], min_length=1)  # fmt: skip
    """Students to distill, each into ``<run>/distill/<student>/``: ``consistency`` /
    ``streaming`` / ``rti`` (from the diffusion teacher), ``dagger`` (an MLP student of an RL
    teacher), ``generalist`` (from the COMPASS specialists of ``distill.teacher``'s run),
    ``history`` / ``rma`` / ``hib`` (history students of a privileged teacher,
    ``teach.privileged``; ``rma`` and ``hib`` need an ``oracle`` one)."""
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
    history: HistoryStudentConfig = Field(default_factory=HistoryStudentConfig)
    """The history students ``history``, ``rma`` and ``hib`` (DAgger budget, window, sizes)."""
    hib: HIBConfig = Field(default_factory=HIBConfig)
    """The ``hib`` student's information-bottleneck loss weights."""
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    """The gradient-step students' run settings: data-parallel ``workers`` (consistency,
    streaming), ``max_failures``, ``precision``."""

    @model_validator(mode="after")
    def _workers_fit_the_students(self) -> DistillConfig:
        workers = self.training.workers
        if workers == 1:
            return self
        # RTI trains nothing; DAgger, the generalist and the history students train in
        # rounds outside the loop.
        rounds = [s for s in self.students if s in ("dagger", "generalist", *HISTORY_STUDENTS)]
        if rounds:
            raise ValueError(
                training_errors(
                    "distill",
                    workers,
                    f"distill.students {rounds}",
                    "they train in rounds on their own aggregated data, not in the one loop",
                )
            )
        for student in ("consistency", "streaming"):
            size = getattr(self, student).batch_size
            if student in self.students and size < workers:
                raise ValueError(f"distill.{student}.batch_size={size} is the global batch, "
                                 f"split across distill.training.workers={workers}: it must "
                                 "be at least that")  # fmt: skip
        return self
