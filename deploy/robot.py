"""What the controller talks to: the :class:`Robot` protocol, and :class:`SimRobot`.

A robot is three methods::

    class MyArm:
        def observe(self) -> np.ndarray:        # latest observation, the policy's layout
            ...
        def apply(self, action: np.ndarray):    # send one command (already validated)
            ...
        def safe_action(self) -> np.ndarray:    # what to send on a fault or at shutdown
            ...

Two optional attributes let a robot talk about episodes: ``new_episode`` (true right after
an ``observe`` that began an episode: the controller then resets the policy's history and
queues) and ``done`` (true when the robot wants the loop to end, e.g. SimRobot after its
episodes). :class:`SimRobot` is the same thing over any gymnasium id; it needs gymnasium
(and robodistill's environments), which it imports only when constructed, so
``robodistill.deploy`` itself imports without them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Robot(Protocol):
    """The three methods a robot (real or simulated) implements for the controller."""

    def observe(self) -> np.ndarray: ...

    def apply(self, action: np.ndarray) -> None: ...

    def safe_action(self) -> np.ndarray: ...


class SimRobot:
    """A gymnasium environment behind the :class:`Robot` protocol.

    ``observe`` returns the current observation (resetting the env with the next episode's
    seed when an episode has ended), ``apply`` steps the env once; when ``episodes`` are
    done, ``done`` turns true and ``apply`` does nothing. Simulation time advances one env
    step per ``apply``, whatever the controller's rate.

    Args:
        env_id: any gymnasium id (``robodistill/PushT-v0``, ``Pendulum-v1``, ``mypkg:Env-v0``).
        episodes: stop after this many episodes (``None``: never done).
        seeds: episode ``i`` resets with ``seeds[i]`` (default ``seed + i``).
        safe_action: the safe command; default zero clipped into the action space (a stop
            for velocity commands; position-commanded envs should pass a holding action).
            It must have the action space's shape (or size), be finite and lie within the
            space: anything else is a ``ValueError`` here, not a surprise on a fault.
        max_episode_steps, env_kwargs: passed to ``robodistill.envs.make_env``.
    """

    def __init__(
        self,
        env_id: str,
        *,
        episodes: int | None = None,
        seed: int = 0,
        seeds: list[int] | None = None,
        safe_action: np.ndarray | None = None,
        max_episode_steps: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ):
        from robodistill.envs import make_env

        if episodes is not None and episodes < 1:
            raise ValueError(f"SimRobot: episodes must be >= 1 or None, got {episodes}")
        if seeds is not None and episodes is not None and len(seeds) < episodes:
            raise ValueError(f"SimRobot: {len(seeds)} seeds for {episodes} episodes")
        self.env_id = env_id
        self.env = make_env(env_id, max_episode_steps=max_episode_steps, **(env_kwargs or {}))
        space = self.env.action_space
        if not hasattr(space, "low"):
            raise TypeError(f"SimRobot needs a Box action space; {env_id} has {space}")
        self.action_low = np.asarray(space.low, np.float32).reshape(-1)
        self.action_high = np.asarray(space.high, np.float32).reshape(-1)
        self.action_shape = tuple(space.shape)
        if safe_action is None:
            safe_action = np.clip(np.zeros(self.action_low.shape, np.float32),
                                  self.action_low, self.action_high)  # fmt: skip
        safe = np.asarray(safe_action, np.float32)
        if safe.size != self.action_low.size:
            raise ValueError(f"SimRobot: safe_action has shape {safe.shape}, the action space "
                             f"of {env_id} {self.action_shape}")  # fmt: skip
        safe = safe.reshape(self.action_shape)
        flat = safe.reshape(-1)
        if not np.isfinite(flat).all() or np.any(
            (flat < self.action_low) | (flat > self.action_high)
        ):
            raise ValueError(f"SimRobot: safe_action {flat.tolist()} is not finite or not within "
                             f"the action space of {env_id}")  # fmt: skip
        self._safe = safe
        obs_space = self.env.observation_space
        # What the controller checks observations against when the policy declares nothing.
        self.observation_shape = tuple(obs_space.shape) if obs_space.shape else None
        self.observation_low = getattr(obs_space, "low", None)
        self.observation_high = getattr(obs_space, "high", None)
        self.episodes, self.seed, self.seeds = episodes, seed, seeds
        self.results: list[dict[str, Any]] = []
        """One entry per finished episode: seed, return, length, success (None if unknown),
        max_score (max over its steps of ``info["score"]``, else of the reward) and
        score_source (``"info.score"`` / ``"reward"``), as the rollout code records them."""
        self.new_episode = False
        self.done = False
        self._obs: np.ndarray | None = None
        self._return, self._length, self._success = 0.0, 0, None
        self._max_info_score: float | None = None
        self._max_reward = -np.inf
        self._episode_seed = 0

    def observe(self) -> np.ndarray:
        if self._obs is None:
            i = len(self.results)
            self._episode_seed = self.seeds[i] if self.seeds is not None else self.seed + i
            obs, _ = self.env.reset(seed=self._episode_seed)
            self._obs = np.asarray(obs, np.float32)
            self._return, self._length, self._success = 0.0, 0, None
            self._max_info_score, self._max_reward = None, -np.inf
            self.new_episode = True
        else:
            self.new_episode = False
        return self._obs.copy()

    def apply(self, action: np.ndarray) -> None:
        if self.done:
            return
        if self._obs is None:
            self.observe()  # an apply without observe still acts on a started episode
        action = np.asarray(action, np.float32).reshape(self.action_shape)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._obs = np.asarray(obs, np.float32)
        self._return += float(reward)
        self._length += 1
        self._max_reward = max(self._max_reward, float(reward))
        if info.get("score") is not None:
            score = float(info["score"])
            if self._max_info_score is None or score > self._max_info_score:
                self._max_info_score = score
        # As the rollout code counts it: the final step's info decides success.
        self._success = bool(info["is_success"]) if "is_success" in info else None
        if terminated or truncated:
            scored = self._max_info_score is not None
            self.results.append({"seed": self._episode_seed, "return": self._return,
                                 "length": self._length, "success": self._success,
                                 "max_score": self._max_info_score if scored else self._max_reward,
                                 "score_source": "info.score" if scored else "reward"})  # fmt: skip
            self._obs = None
            if self.episodes is not None and len(self.results) >= self.episodes:
                self.done = True

    def safe_action(self) -> np.ndarray:
        return self._safe.copy()

    def close(self) -> None:
        self.env.close()
