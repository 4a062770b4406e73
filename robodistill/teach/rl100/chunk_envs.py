"""Environments stepped a chunk at a time for online RL on a chunked policy::

    envs = ChunkEnvs(cfg, n=64, obs_horizon=2, max_steps=None, seed=seed0)
    reward, disc, end, term, cut, cut_hist = envs.step(chunks (N, Ta, A), gamma)

Each env keeps its own observation history (N, To, O) and is reset (with the next seed)
as soon as its episode ends; a chunk is cut short there. The envs are stepped in turn in
this process: MuJoCo's step dominates their cost (about 0.4 ms on Nav-v0), and on a 2-core
machine the policy's batched network calls need the other core.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from robodistill.envs import make_env
from robodistill.envs.make import ProgressReward, SuccessBonus


def training_reward(env: gym.Env, online) -> gym.Env:
    """``env`` with the online stage's training reward (``teach.online.reward`` and
    ``success_bonus``); validation and evaluation envs never get it."""
    if online.reward == "progress":
        env = ProgressReward(env, online.gamma)
    return SuccessBonus(env, online.success_bonus) if online.success_bonus else env


class ChunkEnvs:
    """N envs stepped in turn, one chunk at a time, with per-env observation histories.

    ``finished`` collects ``(return, is_success, length, env_steps)`` of every episode that
    ended (``env_steps``: the counter when it ended);
    ``env_steps`` counts every env step taken."""

    def __init__(self, cfg, n: int, obs_horizon: int, max_steps: int | None, seed: int):
        self.envs = [training_reward(make_env(cfg.env.id, max_episode_steps=max_steps,
                                              **cfg.env.make_kwargs()), cfg.teach.online)
                     for _ in range(n)]  # fmt: skip
        self.to, self.next_seed = obs_horizon, seed
        space = self.envs[0].action_space
        self.low, self.high = np.asarray(space.low), np.asarray(space.high)
        self.hist = np.stack([self._reset(i) for i in range(n)])  # (N, To, O)
        self.returns = np.zeros(n)
        self.lengths = np.zeros(n, dtype=np.int64)
        self.finished: list[tuple[float, bool | None, int, int]] = []
        self.env_steps = 0

    def _reset(self, i: int) -> np.ndarray:
        obs, _ = self.envs[i].reset(seed=self.next_seed)
        self.next_seed += 1
        return np.repeat(np.asarray(obs, np.float32).reshape(1, -1), self.to, axis=0)

    def step(self, chunks: np.ndarray, gamma: float):
        """``chunks`` (N, Ta, A) -> reward, disc, end, terminated, cut (N,), cut_hist (N, To, O).

        ``reward`` is the chunk's discounted sum ``sum_j gamma^j r_j``, ``disc`` = gamma^n
        for the n steps run; ``cut`` marks a time-limit end (not a termination), whose
        history before the reset is ``cut_hist`` (to bootstrap its value)."""
        n = len(self.envs)
        reward, disc = np.zeros(n), np.ones(n)
        end, term, cut = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
        cut_hist = self.hist.copy()
        for i, env in enumerate(self.envs):
            for j, a in enumerate(np.clip(chunks[i], self.low, self.high)):
                obs, r, terminated, truncated, info = env.step(a)
                self.env_steps += 1
                reward[i] += gamma**j * float(r)
                disc[i] = gamma ** (j + 1)
                self.returns[i] += float(r)
                self.lengths[i] += 1
                self.hist[i] = np.roll(self.hist[i], -1, axis=0)
                self.hist[i, -1] = obs
                if terminated or truncated:
                    end[i], term[i], cut[i] = True, terminated, truncated and not terminated
                    cut_hist[i] = self.hist[i]
                    self.finished.append((float(self.returns[i]), info.get("is_success"),
                                          int(self.lengths[i]), self.env_steps))  # fmt: skip
                    self.returns[i], self.lengths[i] = 0.0, 0
                    self.hist[i] = self._reset(i)
                    break
        return reward, disc, end, term, cut, cut_hist

    def close(self) -> None:
        for env in self.envs:
            env.close()
