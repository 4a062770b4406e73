"""Intrinsic-reward exploration (RND / RDD) for stable-baselines3 teachers.

::

    venv, callback = wrap_exploration(raw_venv, cfg.teach.exploration, gamma=0.99, seed=0)
    venv = VecNormalize(venv)                   # optional, always *above* the wrapper
    model = PPO("MlpPolicy", venv, ...)
    model.learn(total_timesteps, callback=callback)
    tensors = exploration_state(model.get_env())  # for the training checkpoint
    load_exploration_state(model.get_env(), tensors)

Variant implemented.

* **Two value heads with PPO.** With PPO the wrapper hands SB3 the extrinsic reward alone
  and ``info["r_int"]``; :class:`ExplorationCallback` stages ``r_int`` in the rollout buffer
  and :class:`~robodistill.teach.rl.two_stream_ppo.TwoStreamPPO` learns an intrinsic value
  head (``gamma_int``, non-episodic) beside the extrinsic one and optimizes
  ``extrinsic_coef·A_ext + intrinsic_coef·A_int`` (RND's recipe).
* **One reward with SAC.** SAC has one critic and one reward stream: it sees ``r =
  extrinsic_coef * r_ext + intrinsic_coef * r_int`` (``mix_rewards=True``), so episode
  ends also cut the intrinsic part of its return.
* **Non-episodic intrinsic-return normalisation** (RND's scheme). Per env we keep the
  discounted intrinsic return ``R_t = gamma_int * R_{t-1} + b_t`` with ``gamma_int =
  0.99``, *not* reset at episode ends, feed every ``R_t`` into a running mean/std and
  divide the raw bonus by that std: ``r_int = b_t / std(R)``. Rewards are not centred
  (centring would make the bonus negative).
* **Bonus on the next observation.** For an env whose episode ended, the transition's
  next state is ``info["terminal_observation"]`` (SB3 has already reset that env), so the
  bonus uses it rather than the first observation of the next episode.
* **Where the predictor lives.** The :class:`~robodistill.policies.exploration.RNDBonus`
  (or ``RDDBonus``) module is owned by :class:`IntrinsicRewardVecEnv` (``venv.bonus``),
  which wraps the raw vector env below any ``VecNormalize`` so it sees raw observations and
  raw extrinsic rewards. The env buffers the next observations since the last predictor
  update; :class:`ExplorationCallback` drains that buffer, updates the input normaliser,
  then trains the predictor: at the end of each rollout for on-policy algorithms (PPO, in
  RND's scheme: ``predictor_epochs`` passes of ``predictor_minibatches`` minibatches, each
  Adam step on ``update_proportion`` of one), every ``train_every`` calls of ``_on_step`` for
  off-policy ones (SAC).
* **Is the bonus alive?** After each predictor update the callback logs ``r_int`` and the
  intrinsic return's spread, the predictor loss and the **novelty ratio**: the bonus on a
  fixed set of held-out states the agent has not visited (drawn once, around and beyond
  the warm-up's observation statistics) over the bonus on the states just visited. A
  ratio near 1 means the bonus no longer tells new from old.
* **RND vs RDD.** Only the bonus module differs: RDD's target output is a Gaussian sample
  around the fixed target and the bonus is ``discrepancy + pseudo_count`` (see
  :mod:`robodistill.policies.exploration` for the exact formula).

The predictor and target weights, the input normaliser, the return normaliser and the
per-env intrinsic returns round-trip through :func:`exploration_state` /
:func:`load_exploration_state` (with the predictor's Adam moments and its sampling generator).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from robodistill.config import ConfigError, ExplorationConfig
from robodistill.policies.exploration import GAMMA_INT, RNDBonus, RunningMeanStd, bonus_from_config
from robodistill.teach.rl.episodic import EpisodicNovelty
from robodistill.training.checkpoint import load_optimizer_state, optimizer_state

OPTIMIZER, OPTIMIZER_SCALAR, GENERATOR = "bonus_optimizer", "bonus_optimizer_scalar", "bonus_rng"
"""Key prefixes / key of the predictor's optimizer and generator in the exploration state."""


class IntrinsicRewardVecEnv(VecEnvWrapper):
    """Adds a normalised exploration bonus to the rewards of a raw SB3 vector env.

    Args:
        venv: the raw vector env (Box observations of any shape; they are flattened).
        bonus: the bonus module (input size = flattened observation size).
        intrinsic_coef / extrinsic_coef: weights of the two rewards.
        gamma_int: discount of the intrinsic return used for normalisation.
        max_buffer: most observations kept between predictor updates (oldest dropped), so
            an env used without its callback cannot grow without bound.
        seed: seeds the action space used by :meth:`warmup`.
        columns: the flattened observation's columns the bonus sees (``None``: all).
        mix_rewards: return ``extrinsic_coef * r_ext + intrinsic_coef * r_int`` (one reward
            stream, for SAC); ``False``: return ``r_ext`` and leave ``r_int`` to a two-stream
            learner (PPO).
        return_window: the intrinsic return's std is taken over about the last this many
            returns (``None``: all of them, RND's choice).
        episodic_cell: multiply in NGU's episodic novelty with visit counts on cells of
            this side (normalised bonus-input units; :mod:`robodistill.teach.rl.episodic`);
            ``None``: the lifelong bonus alone.

    ``step_wait`` returns ``extrinsic_coef * r_ext + intrinsic_coef * r_int`` (float32,
    shape ``(num_envs,)``; ``r_ext`` unchanged with ``mix_rewards=False``) and writes ``info["r_ext"]`` and ``info["r_int"]`` (normalised,
    before the coefficient) for every env.
    """

    def __init__(
        self,
        venv: VecEnv,
        bonus: RNDBonus,
        intrinsic_coef: float = 1.0,
        extrinsic_coef: float = 2.0,
        gamma_int: float = GAMMA_INT,
        max_buffer: int = 200_000,
        seed: int | None = None,
        mix_rewards: bool = True,
        columns: np.ndarray | None = None,
        return_window: int | None = None,
        episodic_cell: float | None = None,
    ):
        if not isinstance(venv.observation_space, spaces.Box):
            raise TypeError(
                "IntrinsicRewardVecEnv needs a Box observation space (flatten Dict "
                f"observations first); got {venv.observation_space}"
            )
        super().__init__(venv)
        full = int(np.prod(venv.observation_space.shape))
        self.columns = np.arange(full) if columns is None else np.asarray(columns, dtype=np.int64)
        self.obs_dim = len(self.columns)
        if bonus.obs_dim != self.obs_dim:
            raise ValueError(f"bonus expects obs_dim {bonus.obs_dim}, env gives {self.obs_dim}")
        self.bonus = bonus
        self.intrinsic_coef = float(intrinsic_coef)
        self.extrinsic_coef = float(extrinsic_coef)
        self.gamma_int = float(gamma_int)
        self.max_buffer = int(max_buffer)
        self.return_rms = RunningMeanStd((), max_count=return_window)
        self.intrinsic_return = np.zeros(self.num_envs, dtype=np.float64)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._seed = seed
        self.mix_rewards = bool(mix_rewards)
        self.held_out: np.ndarray | None = None
        self.episodic = (
            None if episodic_cell is None else EpisodicNovelty(self.num_envs, episodic_cell)
        )

    # -- SB3 VecEnv API -------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        # The intrinsic return is non-episodic: a reset of the envs does not clear it.
        return self.venv.reset()

    def _next_obs(self, obs: np.ndarray, dones: np.ndarray, infos: list[dict]) -> np.ndarray:
        """``(num_envs, D)`` next states as the bonus sees them (its columns of the
        flattened observation; the terminal observation where done)."""
        flat = np.asarray(obs, dtype=np.float32).reshape(self.num_envs, -1).copy()
        for i in np.flatnonzero(dones):
            terminal = infos[i].get("terminal_observation")
            if terminal is not None:
                flat[i] = np.asarray(terminal, dtype=np.float32).reshape(-1)
        return flat[:, self.columns]

    def _push(self, flat: np.ndarray) -> None:
        self._buffer.append(flat)
        self._buffered += len(flat)
        while self._buffered > self.max_buffer and len(self._buffer) > 1:
            self._buffered -= len(self._buffer.pop(0))

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        flat = self._next_obs(obs, dones, infos)
        raw = self.bonus.bonus(flat).cpu().numpy().astype(np.float64)
        if self.episodic is not None:
            raw = self.episodic.reward(self.bonus.normalize(flat).cpu().numpy(), raw)
            self.episodic.end_episodes(np.asarray(dones, dtype=bool))
        # Non-episodic discounted intrinsic return -> running std -> scale of the bonus.
        self.intrinsic_return = self.intrinsic_return * self.gamma_int + raw
        self.return_rms.update(torch.as_tensor(self.intrinsic_return))
        r_int = raw / (float(self.return_rms.std) + 1e-8)
        r_ext = np.asarray(rewards, dtype=np.float64)
        for i, info in enumerate(infos):
            info["r_ext"] = float(r_ext[i])
            info["r_int"] = float(r_int[i])
        self._push(flat)
        if not self.mix_rewards:
            return obs, np.asarray(rewards, dtype=np.float32), dones, infos
        mixed = self.extrinsic_coef * r_ext + self.intrinsic_coef * r_int
        return obs, mixed.astype(np.float32), dones, infos

    # -- exploration-specific -------------------------------------------------------------
    def warmup(self, steps: int) -> int:
        """Step ``steps`` times with uniform random actions to initialise the input
        normaliser (RND does this before training). Resets the envs first; returns the
        number of observations used. Rewards and the buffer are untouched."""
        if steps <= 0:
            return 0
        space = self.venv.action_space
        if self._seed is not None:
            space.seed(self._seed)
        first = self.venv.reset()
        seen = [np.asarray(first, dtype=np.float32).reshape(self.num_envs, -1)[:, self.columns]]
        for _ in range(steps):
            actions = np.stack([space.sample() for _ in range(self.num_envs)])
            obs, _, dones, infos = self.venv.step(actions)
            seen.append(self._next_obs(obs, dones, infos))
        batch = np.concatenate(seen)
        self.bonus.update_obs_stats(batch)
        self.held_out = self._held_out_states(batch)
        return len(batch)

    def _held_out_states(self, seen: np.ndarray, count: int = 512) -> np.ndarray:
        """``count`` states the agent has not visited, for the novelty ratio: the warm-up's
        per-feature mean plus 2-4 of its standard deviations in a random direction (clipped
        to the observation space), from a generator of their own."""
        rng = np.random.default_rng([0 if self._seed is None else self._seed, 12])
        mean, std = seen.mean(0), seen.std(0) + 1e-3
        direction = rng.standard_normal((count, seen.shape[1]))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-12
        radius = rng.uniform(2.0, 4.0, (count, 1)) * np.sqrt(seen.shape[1])
        states = mean + direction * radius * std
        space = self.venv.observation_space
        low = np.asarray(space.low).reshape(-1)[self.columns]
        high = np.asarray(space.high).reshape(-1)[self.columns]
        return np.clip(states, low, high).astype(np.float32)

    def novelty_ratio(self, visited: np.ndarray) -> float | None:
        """Mean bonus on the held-out states over the mean bonus on ``visited`` (N, D);
        ``None`` before the warm-up drew the held-out set."""
        if self.held_out is None or len(visited) == 0:
            return None
        with torch.no_grad():
            novel = float(self.bonus.bonus(self.held_out).mean())
            seen = float(self.bonus.bonus(visited).mean())
        return novel / max(seen, 1e-12)

    def pop_buffer(self) -> np.ndarray:
        """The ``(N, D)`` next observations since the last call; empties the buffer."""
        if not self._buffer:
            return np.zeros((0, self.obs_dim), dtype=np.float32)
        batch = np.concatenate(self._buffer)
        self._buffer, self._buffered = [], 0
        return batch

    def train_predictor(self, epochs: int = 1, minibatches: int | None = None) -> dict[str, float]:
        """Update the input normaliser on the buffered observations, then train the
        predictor on them (RND's order; ``minibatches``: see ``RNDBonus.update``). Returns
        the bonus module's stats, the novelty ratio and the intrinsic return's std."""
        batch = self.pop_buffer()
        if len(batch) == 0:
            return {}
        self.bonus.update_obs_stats(batch)
        stats = self.bonus.update(batch, epochs=epochs, minibatches=minibatches)
        ratio = self.novelty_ratio(batch)
        if ratio is not None:
            stats["novelty_ratio"] = ratio
        stats["intrinsic_return_std"] = float(self.return_rms.std)
        return stats

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"bonus.{k}": v.detach().cpu().clone() for k, v in self.bonus.state_dict().items()}
        out.update({f"return_rms.{k}": v.clone() for k, v in self.return_rms.state_dict().items()})
        out["intrinsic_return"] = torch.as_tensor(self.intrinsic_return.copy())
        if self.episodic is not None:
            out["episodic"] = torch.as_tensor(self.episodic.state())
        # The predictor's Adam moments and its private sampling generator: without them a
        # resumed run's predictor steps differ from an uninterrupted one's.
        moments, doc = optimizer_state(self.bonus.optimizer)
        out.update({f"{OPTIMIZER}.{k}": v for k, v in moments.items()})
        out.update({f"{OPTIMIZER_SCALAR}.{k}": torch.tensor(v) for k, v in doc["scalars"].items()})
        out[GENERATOR] = self.bonus._gen.get_state()
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        bonus = {k[len("bonus.") :]: v for k, v in tensors.items() if k.startswith("bonus.")}
        self.bonus.load_state_dict(bonus)
        prefix = "return_rms."
        rms = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        self.return_rms.load_state_dict(rms)
        returns = tensors["intrinsic_return"].numpy().astype(np.float64)
        if returns.shape != self.intrinsic_return.shape:
            raise ValueError(
                f"saved intrinsic returns have shape {tuple(returns.shape)}, this env has "
                f"{self.num_envs} envs"
            )
        self.intrinsic_return = returns.copy()
        if self.episodic is not None:
            self.episodic.load_state(tensors["episodic"].numpy())
        if GENERATOR in tensors:  # checkpoints before it restart the predictor's optimizer
            n, m = len(OPTIMIZER) + 1, len(OPTIMIZER_SCALAR) + 1
            scalars = {k[m:]: v.item() for k, v in tensors.items()
                       if k.startswith(f"{OPTIMIZER_SCALAR}.")}  # fmt: skip
            load_optimizer_state(
                self.bonus.optimizer,
                {k[n:]: v for k, v in tensors.items() if k.startswith(f"{OPTIMIZER}.")},
                {"param_groups": self.bonus.optimizer.state_dict()["param_groups"],
                 "scalars": scalars},
            )  # fmt: skip
            self.bonus._gen.set_state(tensors[GENERATOR])


class ExplorationCallback(BaseCallback):
    """Trains the exploration predictor, feeds a two-stream PPO its intrinsic rewards, and
    logs the bonus's statistics.

    On-policy algorithms: once per rollout in ``_on_rollout_end`` (all the rollout's next
    observations; ``epochs`` passes of ``minibatches`` minibatches, RND's scheme).
    Off-policy algorithms: every ``train_every`` calls of ``_on_step`` (one call = one
    vector-env step). Each step's ``info["r_int"]`` is staged in a
    :class:`~robodistill.teach.rl.two_stream_ppo.TwoStreamRolloutBuffer` when the model has
    one. Logs ``exploration/{predictor_loss, r_int_mean, r_ext_mean, novelty_ratio,
    intrinsic_return_std}`` to SB3's logger (TensorBoard) and, with ``stage``, a
    ``{"stage": "exploration", ...}`` row to ``stage.log_metrics`` (``metrics.jsonl``).
    """

    def __init__(self, env: IntrinsicRewardVecEnv, train_every: int = 256, epochs: int = 1,
                 minibatches: int | None = None, stage: Any = None, verbose: int = 0):  # fmt: skip
        super().__init__(verbose)
        self.env = env
        self.train_every = int(train_every)
        self.epochs = int(epochs)
        self.minibatches = minibatches
        self.stage = stage
        self._r_int: list[float] = []
        self._r_ext: list[float] = []
        self.last_stats: dict[str, float] = {}

    def _off_policy(self) -> bool:
        return isinstance(self.model, OffPolicyAlgorithm)

    def _train(self) -> None:
        stats = self.env.train_predictor(self.epochs, self.minibatches)
        self.last_stats = {
            **stats,
            "r_int_mean": float(np.mean(self._r_int)) if self._r_int else float("nan"),
            "r_ext_mean": float(np.mean(self._r_ext)) if self._r_ext else float("nan"),
        }
        for key, value in self.last_stats.items():
            if np.isfinite(value):
                self.logger.record(f"exploration/{key}", value)
        if self.stage is not None and stats:
            row = {k: v for k, v in self.last_stats.items() if np.isfinite(v)}
            self.stage.log_metrics(int(self.num_timesteps), {"stage": "exploration", **row})
        self._r_int, self._r_ext = [], []

    def _on_step(self) -> bool:
        infos = self.locals.get("infos", ())
        r_int = [info["r_int"] for info in infos if "r_int" in info]
        self._r_int += r_int
        self._r_ext += [info["r_ext"] for info in infos if "r_ext" in info]
        buffer = getattr(self.model, "rollout_buffer", None)
        if hasattr(buffer, "stage_intrinsic") and len(r_int) == len(infos):
            buffer.stage_intrinsic(np.asarray(r_int))
        if self._off_policy() and self.n_calls % self.train_every == 0:
            self._train()
        return True

    def _on_rollout_end(self) -> None:
        # SAC also ends a "rollout" every train_freq steps; it trains in _on_step instead.
        if not self._off_policy():
            self._train()


def bonus_columns(names: list[str], layout: list[dict] | None) -> np.ndarray | None:
    """The flattened-observation columns of the layout fields ``names`` (``None``: all of
    them when ``names`` is empty); a clear error for a name the layout does not have."""
    if not names:
        return None
    known = {entry["key"]: entry for entry in layout or []}
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(
            f"teach.exploration.bonus_input: {missing} not in the observation layout "
            f"{sorted(known) or '(the env reports none)'}; name fields of env.id's layout, "
            "or leave it empty for the whole observation"
        )
    return np.concatenate([np.arange(known[n]["start"], known[n]["stop"]) for n in names])


def _input_bounds(venv: VecEnv, columns: np.ndarray | None, cfg: ExplorationConfig
                  ) -> tuple[np.ndarray, np.ndarray] | None:  # fmt: skip
    """The bonus input's ``(low, high)`` from the observation space when
    ``cfg.input_scaling`` uses bounds; a clear error when a bound is infinite."""
    if cfg.input_scaling == "running":
        return None
    space = venv.observation_space
    low = np.asarray(space.low, dtype=np.float64).reshape(-1)
    high = np.asarray(space.high, dtype=np.float64).reshape(-1)
    if columns is not None:
        low, high = low[columns], high[columns]
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ConfigError(
            f"teach.exploration.input_scaling: {cfg.input_scaling!r} needs finite observation "
            f"bounds for the bonus input, got low={low.tolist()}, high={high.tolist()}; pick "
            "bounded fields with teach.exploration.bonus_input or use input_scaling: running"
        )
    return low, high


def wrap_exploration(
    venv: VecEnv,
    cfg: ExplorationConfig,
    gamma: float,
    seed: int,
    *,
    two_stream: bool = False,
    warmup_steps: int | None = None,
    train_every: int = 256,
    stage: Any = None,
    layout: list[dict] | None = None,
) -> tuple[VecEnv, BaseCallback | None]:
    """Wrap the raw vector env with the configured bonus.

    ``method == "none"`` -> ``(venv, None)`` unchanged. Otherwise builds the bonus module
    with weights seeded by ``seed`` (without touching torch's global RNG), wraps ``venv``,
    runs ``warmup_steps`` (default ``cfg.obs_norm_warmup_steps``) random-action steps per env
    to initialise the input
    normaliser, and returns ``(wrapped, ExplorationCallback)``. ``two_stream``: the learner
    is a :class:`~robodistill.teach.rl.two_stream_ppo.TwoStreamPPO` (rewards stay extrinsic;
    the predictor trains RND's way once per rollout); otherwise the rewards are mixed (SAC).
    ``gamma`` is the agent's discount (checked here); the intrinsic return uses
    ``cfg.gamma_int``. ``stage`` receives the bonus's metrics rows. ``layout`` (the env's
    observation layout) resolves ``cfg.bonus_input``.
    """
    if cfg.method == "none":
        return venv, None
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    columns = bonus_columns(list(cfg.bonus_input), layout)
    obs_dim = int(np.prod(venv.observation_space.shape)) if columns is None else len(columns)
    bonus = bonus_from_config(cfg, obs_dim, seed, input_bounds=_input_bounds(venv, columns, cfg))
    wrapped = IntrinsicRewardVecEnv(
        venv, bonus, intrinsic_coef=cfg.intrinsic_coef, extrinsic_coef=cfg.extrinsic_coef,
        gamma_int=cfg.gamma_int, seed=seed, mix_rewards=not two_stream, columns=columns,
        return_window=cfg.return_norm_window, episodic_cell=cfg.episodic_cell,
    )  # fmt: skip
    wrapped.warmup(cfg.obs_norm_warmup_steps if warmup_steps is None else warmup_steps)
    callback = ExplorationCallback(
        wrapped, train_every=train_every, epochs=cfg.predictor_epochs if two_stream else 1,
        minibatches=cfg.predictor_minibatches if two_stream else None, stage=stage,
    )  # fmt: skip
    return wrapped, callback


def find_exploration_env(venv: Any) -> IntrinsicRewardVecEnv | None:
    """The :class:`IntrinsicRewardVecEnv` in a chain of wrappers (walks ``.venv``)."""
    seen = 0
    while venv is not None and seen < 100:
        if isinstance(venv, IntrinsicRewardVecEnv):
            return venv
        # Read the attribute from __dict__: VecEnvWrapper.__getattr__ would forward a
        # missing ``venv`` to the wrapped env and could loop.
        venv = vars(venv).get("venv")
        seen += 1
    return None


def exploration_state(venv: Any) -> dict[str, torch.Tensor]:
    """Predictor, target, normaliser statistics and intrinsic returns as named tensors
    (empty when ``venv`` has no exploration wrapper)."""
    env = find_exploration_env(venv)
    return env.state_tensors() if env is not None else {}


def load_exploration_state(venv: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`exploration_state` saved into the wrapper found under ``venv``."""
    env = find_exploration_env(venv)
    if env is None:
        if tensors:
            raise ValueError("the checkpoint holds exploration state but the env has no wrapper")
        return
    env.load_state_tensors(tensors)
