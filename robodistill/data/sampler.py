"""Fixed-length training windows over in-RAM episodes (diffusion_policy's SequenceSampler).

A window is ``pred_horizon`` (H) consecutive steps of one episode. Its first ``obs_horizon``
(To) steps are the observation history that conditions the policy; the action target is all H
steps, of which a controller later executes Ta starting at the current step ``t``::

    step:          t-To+1 ...  t   t+1  ...           t+H-To
    obs:          |<--- To --->|                                   obs_is_pad (To,)
    action:       |<------------------- H ------------------->|    action_is_pad (H,)
    executed:                  |<--- Ta --->|                      (chosen at deploy time)

Windows may start up to ``pad_before`` steps before an episode's first step and end up to
``pad_after`` steps after its last step; such out-of-episode steps repeat the nearest edge
value and are flagged in ``*_is_pad``. Windows never cross an episode boundary.

Defaults ``pad_before = To - 1`` and ``pad_after = H - To`` make every step of every episode the
current step ``t`` of exactly one window, so ``len(sampler) == total steps`` of the selected
episodes (the LeRobot / diffusion_policy "every observation is a training input" view). The
original diffusion_policy configs use ``pad_after = Ta - 1``, which only keeps windows whose
executed actions are all real; pass that explicitly to reproduce them.

In general an episode of length T contributes ``max(0, T - H + pad_before + pad_after + 1)``
windows (pads clamped to [0, H-1]).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


class SequenceSampler:
    """Random access to padded (obs, action) windows of a replay buffer held in RAM.

    Args:
        data: ``{key: (N, *feature_shape)}`` arrays concatenated over time, e.g.
            ``TrajectoryStore.load()`` (its ``"episode_ends"`` entry is ignored here).
        episode_ends: int (E,) cumulative episode ends, diffusion_policy convention.
        obs_keys / action_keys: keys returned with To / H steps per window.
        obs_horizon: To, observation history length. pred_horizon: H, window length.
        pad_before / pad_after: see the module docstring; clamped to [0, H-1].
        episode_mask: bool (E,) selecting episodes (e.g. a train/val split); default all.

    Items are dicts with ``data[k][window]`` for each obs key (To, *feat) and action key
    (H, *feat), plus ``obs_is_pad`` (To,) and ``action_is_pad`` (H,) bool.
    """

    def __init__(
        self,
        data: dict[str, np.ndarray],
        episode_ends: np.ndarray | Sequence[int],
        obs_keys: Sequence[str] = ("obs",),
        action_keys: Sequence[str] = ("action",),
        obs_horizon: int = 2,
        pred_horizon: int = 16,
        pad_before: int | None = None,
        pad_after: int | None = None,
        episode_mask: np.ndarray | Sequence[bool] | None = None,
    ) -> None:
        if not 1 <= obs_horizon <= pred_horizon:
            raise ValueError(
                f"need 1 <= obs_horizon <= pred_horizon, got obs_horizon={obs_horizon}, "
                f"pred_horizon={pred_horizon}: the observation history is the window's start"
            )
        self.obs_keys, self.action_keys = tuple(obs_keys), tuple(action_keys)
        clash = set(self.obs_keys) & set(self.action_keys)
        if clash or {"obs_is_pad", "action_is_pad"} & set(self.obs_keys + self.action_keys):
            raise ValueError(f"obs_keys and action_keys must be distinct and not *_is_pad: {clash}")
        ends = np.asarray(episode_ends, dtype=np.int64).reshape(-1)
        if ends.size and (np.diff(ends, prepend=0) <= 0).any():
            raise ValueError("episode_ends must be strictly increasing cumulative step counts")
        n_steps = int(ends[-1]) if ends.size else 0
        missing = [k for k in self.obs_keys + self.action_keys if k not in data]
        if missing:
            raise ValueError(f"data has no {missing}; available keys: {sorted(data)}")
        for k in self.obs_keys + self.action_keys:
            if len(data[k]) < n_steps:
                raise ValueError(
                    f"data[{k!r}] has {len(data[k])} steps but episode_ends needs {n_steps}"
                )
        self.data = {k: data[k] for k in self.obs_keys + self.action_keys}
        self.obs_horizon, self.pred_horizon = int(obs_horizon), int(pred_horizon)
        h = self.pred_horizon
        pad_before = self.obs_horizon - 1 if pad_before is None else pad_before
        pad_after = h - self.obs_horizon if pad_after is None else pad_after
        self.pad_before = min(max(int(pad_before), 0), h - 1)
        self.pad_after = min(max(int(pad_after), 0), h - 1)

        mask = np.ones(len(ends), bool) if episode_mask is None else np.asarray(episode_mask, bool)
        if mask.shape != ends.shape:
            raise ValueError(
                f"episode_mask has shape {mask.shape} but there are {len(ends)} episodes"
            )
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        # Per selected episode, window starts run from -pad_before to T - H + pad_after (local).
        n_win = np.maximum(ends - starts - h + self.pad_before + self.pad_after + 1, 0) * mask
        if n_win.sum() == 0:
            raise ValueError(
                f"no windows: {int(mask.sum())} of {len(ends)} episodes selected, and none is long "
                f"enough for pred_horizon={h} with pad_before={self.pad_before}, "
                f"pad_after={self.pad_after}"
            )
        episode = np.repeat(np.arange(len(ends)), n_win)
        first = np.cumsum(n_win) - n_win  # index of each episode's first window
        offset = np.arange(n_win.sum()) - first[episode]
        self.episode_index = episode  # (W,) episode of each window
        self._start = starts[episode] - self.pad_before + offset  # global, may precede the episode
        self._lo, self._hi = starts[episode], ends[episode] - 1  # valid global range per window
        logger.debug("SequenceSampler: %d windows over %d episodes", len(self), int(mask.sum()))

    def __len__(self) -> int:
        return len(self._start)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"window {i} out of range for a sampler of {n} windows")
        return {k: v[0] for k, v in self.get_batch(np.array([i % n])).items()}

    def get_batch(self, indices: np.ndarray | Sequence[int]) -> dict[str, np.ndarray]:
        """Windows ``indices`` (B,) gathered with one fancy index per key: (B, To|H, ...)."""
        idx = np.asarray(indices, dtype=np.int64)
        steps = self._start[idx, None] + np.arange(self.pred_horizon)  # (B, H) global steps
        # Clipping to the episode's own range is what repeats the edge values.
        clipped = np.clip(steps, self._lo[idx, None], self._hi[idx, None])
        is_pad = clipped != steps
        to = self.obs_horizon
        out = {k: self.data[k][clipped[:, :to]] for k in self.obs_keys}
        out.update({k: self.data[k][clipped] for k in self.action_keys})
        out["obs_is_pad"], out["action_is_pad"] = is_pad[:, :to], is_pad
        return out

    def sample(
        self, batch_size: int, rng: np.random.Generator | int | None = None
    ) -> dict[str, np.ndarray]:
        """``batch_size`` windows drawn uniformly with replacement; same layout as get_batch."""
        rng = np.random.default_rng(rng)
        return self.get_batch(rng.integers(0, len(self), size=batch_size))
