"""Episodic novelty modulated by a lifelong bonus (NGU's combination, Badia et al. 2020).

::

    episodic = EpisodicNovelty(num_envs=4, cell=0.1)
    r = episodic.reward(x, lifelong)      # x (N, D) normalised bonus inputs, lifelong (N,)
    episodic.end_episodes(dones)          # (N,) bool: forget those envs' visits

NGU's intrinsic reward is ``r_t = r_episodic(x_t) * min(max(alpha_t, 1), L)``:

* ``r_episodic`` is high where the agent has not been *in this episode* and falls as the
  episode revisits a place;
* ``alpha_t = 1 + (b_t - mean(b)) / std(b)`` is the lifelong bonus ``b`` (RND / RDD)
  standardised by its running statistics and clipped to ``[1, L]`` (``L = 5``): a place
  seen often over the whole run modulates the episodic reward down to 1x, a new one up to
  Lx.

Why: a lifelong bonus alone is a slowly changing map of the whole run; once a policy has
settled in the part of it that has gone flat, nothing in one episode rewards leaving. The
episodic term pays every episode for reaching places that episode has not reached.

What differs from NGU: NGU's episodic term is ``1 / sqrt(sum of a kernel over the k
nearest neighbours in an episodic memory of learned embeddings)``; here the memory holds
the bonus input as the lifelong bonus sees it (e.g. the robot's position scaled by the
arena's bounds, already the controllable part) and the kernel is a grid cell:
``r_episodic = 1 / sqrt(n)`` with ``n`` this episode's visits to the cell of side ``cell``
(in normalised input units). The visit counts are not checkpointed: a resumed run starts
every env's counts empty, as at the start of an episode; the lifelong bonus's running
statistics are (:meth:`state`, :meth:`load_state`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np


class EpisodicNovelty:
    """Per-env episodic visit counts and NGU's modulated reward (module docstring).

    Args:
        num_envs: number of parallel envs (one visit count each).
        cell: side of a grid cell in normalised bonus-input units.
        max_modulation: ``L``, the largest factor the lifelong bonus gives.
    """

    def __init__(self, num_envs: int, cell: float, max_modulation: float = 5.0):
        if cell <= 0 or max_modulation < 1.0:
            raise ValueError(f"cell must be > 0 and max_modulation >= 1, got {cell}, "
                             f"{max_modulation}")  # fmt: skip
        self.cell, self.max_modulation = float(cell), float(max_modulation)
        self.visits: list[Counter] = [Counter() for _ in range(num_envs)]
        self.mean, self.m2, self.count = 0.0, 0.0, 0

    def _modulation(self, lifelong: np.ndarray) -> np.ndarray:
        for b in lifelong:  # Welford: the lifelong bonus's running mean and variance
            self.count += 1
            delta = float(b) - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (float(b) - self.mean)
        std = np.sqrt(self.m2 / self.count) + 1e-12
        return np.clip(1.0 + (lifelong - self.mean) / std, 1.0, self.max_modulation)

    def reward(self, x: np.ndarray, lifelong: np.ndarray) -> np.ndarray:
        """``(N,)`` rewards for the normalised inputs ``x`` ``(N, D)`` the N envs reached,
        given their lifelong bonuses ``(N,)``; counts each visit first."""
        cells = np.floor(np.asarray(x, dtype=np.float64) / self.cell).astype(np.int64)
        episodic = np.empty(len(cells))
        for i, key in enumerate(map(tuple, cells)):
            self.visits[i][key] += 1
            episodic[i] = 1.0 / np.sqrt(self.visits[i][key])
        return episodic * self._modulation(np.asarray(lifelong, dtype=np.float64))

    def end_episodes(self, dones: np.ndarray) -> None:
        """Forget the visits of the envs whose episode ended (``dones`` ``(N,)`` bool)."""
        for i in np.flatnonzero(dones):
            self.visits[i] = Counter()

    def state(self) -> np.ndarray:
        """The lifelong bonus's running statistics, ``(3,)`` float64."""
        return np.array([self.mean, self.m2, self.count], dtype=np.float64)

    def load_state(self, state: np.ndarray) -> None:
        self.mean, self.m2, self.count = float(state[0]), float(state[1]), int(state[2])
