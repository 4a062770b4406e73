"""Intrinsic-reward exploration (RND / RDD) for stable-baselines3 teachers.

::

    venv, callback = wrap_exploration(raw_venv, cfg.teach.exploration, gamma=0.99, seed=0)
    venv = VecNormalize(venv)                   # optional, always *above* the wrapper
    model = PPO("MlpPolicy", venv, ...)
    model.learn(total_timesteps, callback=callback)
    tensors = exploration_state(model.get_env())  # for the training checkpoint
    load_exploration_state(model.get_env(), tensors)

Variant implemented.

* **One value head on the mixed reward.** The agent sees ``r = extrinsic_coef * r_ext +
  intrinsic_coef * r_int`` and learns one value function with the algorithm's own gamma.
  RND's paper uses two value heads (gamma_ext 0.999 episodic, gamma_int 0.99
  non-episodic); SB3's PPO/SAC have a single critic and a single reward stream, and a
  two-head variant would need a custom policy and rollout buffer, so it is not built. The
  consequence: episode ends also cut the intrinsic part of the return in the critic.
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
  then trains the predictor: at the end of each rollout for on-policy algorithms (PPO),
  every ``train_every`` calls of ``_on_step`` for off-policy ones (SAC).
* **RND vs RDD.** Only the bonus module differs: RDD's target output is a Gaussian sample
  around the fixed target and the bonus is ``discrepancy + pseudo_count`` (see
  :mod:`robodistill.policies.exploration` for the exact formula).

The predictor and target weights, the input normaliser, the return normaliser and the
per-env intrinsic returns round-trip through :func:`exploration_state` /
:func:`load_exploration_state` (Adam's moments are not saved; the optimizer restarts).
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

from robodistill.config import ExplorationConfig
from robodistill.policies.exploration import GAMMA_INT, RNDBonus, RunningMeanStd, bonus_from_config


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

    ``step_wait`` returns ``extrinsic_coef * r_ext + intrinsic_coef * r_int`` (float32,
    shape ``(num_envs,)``) and writes ``info["r_ext"]`` and ``info["r_int"]`` (normalised,
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
    ):
        if not isinstance(venv.observation_space, spaces.Box):
            raise TypeError(
                "IntrinsicRewardVecEnv needs a Box observation space (flatten Dict "
                f"observations first); got {venv.observation_space}"
            )
        super().__init__(venv)
        self.obs_dim = int(np.prod(venv.observation_space.shape))
        if bonus.obs_dim != self.obs_dim:
            raise ValueError(f"bonus expects obs_dim {bonus.obs_dim}, env gives {self.obs_dim}")
        self.bonus = bonus
        self.intrinsic_coef = float(intrinsic_coef)
        self.extrinsic_coef = float(extrinsic_coef)
        self.gamma_int = float(gamma_int)
        self.max_buffer = int(max_buffer)
        self.return_rms = RunningMeanStd(())
        self.intrinsic_return = np.zeros(self.num_envs, dtype=np.float64)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._seed = seed

    # -- SB3 VecEnv API -------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        # The intrinsic return is non-episodic: a reset of the envs does not clear it.
        return self.venv.reset()

    def _next_obs(self, obs: np.ndarray, dones: np.ndarray, infos: list[dict]) -> np.ndarray:
        """``(num_envs, D)`` flattened next states (terminal observation where done)."""
        flat = np.asarray(obs, dtype=np.float32).reshape(self.num_envs, -1).copy()
        for i in np.flatnonzero(dones):
            terminal = infos[i].get("terminal_observation")
            if terminal is not None:
                flat[i] = np.asarray(terminal, dtype=np.float32).reshape(-1)
        return flat

    def _push(self, flat: np.ndarray) -> None:
        self._buffer.append(flat)
        self._buffered += len(flat)
        while self._buffered > self.max_buffer and len(self._buffer) > 1:
            self._buffered -= len(self._buffer.pop(0))

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        flat = self._next_obs(obs, dones, infos)
        raw = self.bonus.bonus(flat).cpu().numpy().astype(np.float64)
        # Non-episodic discounted intrinsic return -> running std -> scale of the bonus.
        self.intrinsic_return = self.intrinsic_return * self.gamma_int + raw
        self.return_rms.update(torch.as_tensor(self.intrinsic_return))
        r_int = raw / (float(self.return_rms.std) + 1e-8)
        r_ext = np.asarray(rewards, dtype=np.float64)
        for i, info in enumerate(infos):
            info["r_ext"] = float(r_ext[i])
            info["r_int"] = float(r_int[i])
        self._push(flat)
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
        seen = [np.asarray(first, dtype=np.float32).reshape(self.num_envs, -1)]
        for _ in range(steps):
            actions = np.stack([space.sample() for _ in range(self.num_envs)])
            obs, _, dones, infos = self.venv.step(actions)
            seen.append(self._next_obs(obs, dones, infos))
        batch = np.concatenate(seen)
        self.bonus.update_obs_stats(batch)
        return len(batch)

    def pop_buffer(self) -> np.ndarray:
        """The ``(N, D)`` next observations since the last call; empties the buffer."""
        if not self._buffer:
            return np.zeros((0, self.obs_dim), dtype=np.float32)
        batch = np.concatenate(self._buffer)
        self._buffer, self._buffered = [], 0
        return batch

    def train_predictor(self, epochs: int = 1) -> dict[str, float]:
        """Update the input normaliser on the buffered observations, then train the
        predictor on them (RND's order). Returns the bonus module's stats."""
        batch = self.pop_buffer()
        if len(batch) == 0:
            return {}
        self.bonus.update_obs_stats(batch)
        return self.bonus.update(batch, epochs=epochs)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"bonus.{k}": v.detach().cpu().clone() for k, v in self.bonus.state_dict().items()}
        out.update({f"return_rms.{k}": v.clone() for k, v in self.return_rms.state_dict().items()})
        out["intrinsic_return"] = torch.as_tensor(self.intrinsic_return.copy())
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


class ExplorationCallback(BaseCallback):
    """Trains the exploration predictor and logs its statistics.

    On-policy algorithms: once per rollout in ``_on_rollout_end`` (all the rollout's next
    observations). Off-policy algorithms: every ``train_every`` calls of ``_on_step`` (one
    call = one vector-env step). Logs ``exploration/predictor_loss``,
    ``exploration/r_int_mean`` and ``exploration/r_ext_mean`` (means since the last update).
    """

    def __init__(
        self, env: IntrinsicRewardVecEnv, train_every: int = 256, epochs: int = 1, verbose=0
    ):
        super().__init__(verbose)
        self.env = env
        self.train_every = int(train_every)
        self.epochs = int(epochs)
        self._r_int: list[float] = []
        self._r_ext: list[float] = []
        self.last_stats: dict[str, float] = {}

    def _off_policy(self) -> bool:
        return isinstance(self.model, OffPolicyAlgorithm)

    def _train(self) -> None:
        stats = self.env.train_predictor(self.epochs)
        if "predictor_loss" in stats:
            self.logger.record("exploration/predictor_loss", stats["predictor_loss"])
        if self._r_int:
            self.logger.record("exploration/r_int_mean", float(np.mean(self._r_int)))
            self.logger.record("exploration/r_ext_mean", float(np.mean(self._r_ext)))
        self.last_stats = {
            **stats,
            "r_int_mean": float(np.mean(self._r_int)) if self._r_int else float("nan"),
            "r_ext_mean": float(np.mean(self._r_ext)) if self._r_ext else float("nan"),
        }
        self._r_int, self._r_ext = [], []

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            if "r_int" in info:
                self._r_int.append(info["r_int"])
                self._r_ext.append(info["r_ext"])
        if self._off_policy() and self.n_calls % self.train_every == 0:
            self._train()
        return True

    def _on_rollout_end(self) -> None:
        # SAC also ends a "rollout" every train_freq steps; it trains in _on_step instead.
        if not self._off_policy():
            self._train()


def wrap_exploration(
    venv: VecEnv,
    cfg: ExplorationConfig,
    gamma: float,
    seed: int,
    warmup_steps: int = 64,
    train_every: int = 256,
) -> tuple[VecEnv, BaseCallback | None]:
    """Wrap the raw vector env with the configured bonus.

    ``method == "none"`` -> ``(venv, None)`` unchanged. Otherwise builds the bonus module
    with weights seeded by ``seed`` (without touching torch's global RNG), wraps ``venv``,
    runs ``warmup_steps`` random-action steps to initialise the input normaliser, and
    returns ``(wrapped, ExplorationCallback)``. ``gamma`` is the agent's discount; the
    intrinsic-return normaliser uses its own ``GAMMA_INT`` (RND's 0.99) because the value
    head is shared (see the module docstring), so ``gamma`` is only checked here.
    """
    if cfg.method == "none":
        return venv, None
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    obs_dim = int(np.prod(venv.observation_space.shape))
    bonus = bonus_from_config(cfg, obs_dim, seed)
    wrapped = IntrinsicRewardVecEnv(
        venv,
        bonus,
        intrinsic_coef=cfg.intrinsic_coef,
        extrinsic_coef=cfg.extrinsic_coef,
        seed=seed,
    )
    wrapped.warmup(warmup_steps)
    return wrapped, ExplorationCallback(wrapped, train_every=train_every)


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
