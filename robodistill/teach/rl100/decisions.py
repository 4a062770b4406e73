"""Decision-level transitions for action-chunk policies, built from a trajectory store.

An action-chunk policy decides once every ``Ta`` env steps: it sees the last ``To``
observations and commits to ``Ta`` actions. Offline RL on such a policy (RL-100 stage 2)
works on that semi-MDP, so this module turns episodes of per-step data into one transition
per decision::

    step:       t-To+1 .. t   t+1 ...... t+Ta-1   t+Ta-To+1 .. t+Ta
    obs:       |<-- To -->|                      |<----- To ----->|   next_obs (To, O)
    chunk:                |<------- Ta ------->|                      (Ta, A), chunk_mask (Ta,)
    reward:               r_t + g r_{t+1} + ... + g^(len-1) r_{t+len-1}
    discount:             g^len           len = min(Ta, T - t) real steps in the chunk

Padding (the :mod:`robodistill.data.sampler` convention): the history before an episode's first
step repeats the first observation; a chunk that runs past the episode's last step repeats
the last action and marks those slots ``False`` in ``chunk_mask``. The observation after
the last action (``Episode.final``) is step ``T``, so a chunk that ends the episode has that
final observation as the newest frame of ``next_obs``.

``done`` is 1 only when the chunk reaches the end of an episode that *terminated*; an episode
cut by a time limit (``truncated``) keeps ``done = 0`` so that critics bootstrap through the
cut, which is the correct target for time-limit truncation.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from robodistill.data.episode import Episode
from robodistill.data.store import TrajectoryStore


@dataclass(frozen=True)
class DecisionConfig:
    """How per-step episodes become decision-level transitions."""

    obs_horizon: int = 2
    """To: observations the policy conditions on (the newest is the decision step's own)."""
    action_horizon: int = 8
    """Ta: actions executed per decision before the policy decides again."""
    gamma: float = 0.99
    """Per env-step discount; a chunk of ``len`` steps is discounted by ``gamma**len``."""
    stride: int = 1
    """Build a decision at every ``stride``-th step of each episode (1 = every step)."""
    obs_key: str = "obs"
    """Store data key holding (T, O) observations (its final observation is ``final[obs_key]``)."""
    action_key: str = "action"
    """Store data key holding (T, A) actions."""

    def __post_init__(self) -> None:
        for name in ("obs_horizon", "action_horizon", "stride"):
            if int(getattr(self, name)) < 1:
                raise ValueError(
                    f"DecisionConfig.{name} must be >= 1, got {getattr(self, name)}; "
                    "it counts env steps"
                )
        if not 0.0 < float(self.gamma) <= 1.0:
            raise ValueError(
                f"DecisionConfig.gamma must be in (0, 1], got {self.gamma}; 0.99 is usual"
            )


@dataclass
class Decisions:
    """N decision-level transitions as torch tensors (float32 unless stated).

    Shapes: ``obs`` / ``next_obs`` (N, To, O); ``chunk`` (N, Ta, A); ``chunk_mask`` (N, Ta)
    bool (False = padding past the episode end); ``reward``, ``done`` (1.0 = terminated),
    ``discount`` (= gamma**len) (N,); ``episode`` (N,) int64 index of the source episode and
    ``step`` (N,) int64 its step t within that episode. ``gamma`` is the per-step discount
    the rewards were summed with.
    """

    obs: torch.Tensor
    chunk: torch.Tensor
    chunk_mask: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    done: torch.Tensor
    discount: torch.Tensor
    episode: torch.Tensor
    step: torch.Tensor
    gamma: float

    def __post_init__(self) -> None:
        n = self.obs.shape[0]
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and v.shape[0] != n:
                raise ValueError(f"Decisions.{f.name} has {v.shape[0]} rows but obs has {n}")

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    # Flat views are what MLP critics and the dynamics model consume.
    @property
    def obs_flat(self) -> torch.Tensor:
        """(N, To*O) observation history, oldest frame first."""
        return self.obs.reshape(len(self), -1)

    @property
    def next_obs_flat(self) -> torch.Tensor:
        """(N, To*O) observation history at the next decision."""
        return self.next_obs.reshape(len(self), -1)

    @property
    def chunk_flat(self) -> torch.Tensor:
        """(N, Ta*A) executed actions, first action first."""
        return self.chunk.reshape(len(self), -1)

    # The sizes of obs (N, To, D) and chunk (N, Ta, A).
    obs_horizon = property(lambda self: int(self.obs.shape[1]), doc="To")
    action_horizon = property(lambda self: int(self.chunk.shape[1]), doc="Ta")
    obs_dim = property(lambda self: int(self.obs.shape[2]), doc="D")
    action_dim = property(lambda self: int(self.chunk.shape[2]), doc="A")

    @property
    def n_episodes(self) -> int:
        return int(self.episode.max()) + 1 if len(self) else 0

    def select(self, index: torch.Tensor | np.ndarray | Sequence[int]) -> Decisions:
        """The transitions at ``index`` (a (K,) int or (N,) bool selector)."""
        idx = torch.as_tensor(np.asarray(index))
        kept = {f.name: getattr(self, f.name) for f in fields(self)}
        return Decisions(
            **{k: v[idx] if isinstance(v, torch.Tensor) else v for k, v in kept.items()}
        )

    def split_episodes(self, val_fraction: float, seed: int = 0) -> tuple[Decisions, Decisions]:
        """Split by whole episodes into (train, validation), so that validation transitions
        never share an episode (and so nearly identical neighbours) with training ones.
        Takes at least one episode for validation and leaves at least one for training."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        eps = torch.unique(self.episode).numpy()
        if len(eps) < 2:
            raise ValueError(
                f"split_episodes needs at least 2 episodes, the decisions come from {len(eps)}; "
                "collect more episodes"
            )
        n_val = min(max(1, round(val_fraction * len(eps))), len(eps) - 1)
        val_eps = np.random.default_rng(seed).choice(eps, size=n_val, replace=False)
        is_val = torch.as_tensor(np.isin(self.episode.numpy(), val_eps))
        return self.select(~is_val), self.select(is_val)

    @classmethod
    def concat(cls, parts: Sequence[Decisions]) -> Decisions:
        """Stack several sets (e.g. the store's and newly collected rollouts' — the data
        flywheel). Episode indices are renumbered so they stay distinct."""
        if not parts:
            raise ValueError("Decisions.concat needs at least one set")
        first = parts[0]
        for p in parts[1:]:
            if p.obs.shape[1:] != first.obs.shape[1:] or p.chunk.shape[1:] != first.chunk.shape[1:]:
                raise ValueError(
                    f"cannot concat decisions with obs {tuple(p.obs.shape[1:])} / chunk "
                    f"{tuple(p.chunk.shape[1:])} to obs {tuple(first.obs.shape[1:])} / chunk "
                    f"{tuple(first.chunk.shape[1:])}: build both with the same DecisionConfig"
                )
            if p.gamma != first.gamma:
                raise ValueError(
                    f"cannot concat decisions built with gamma {p.gamma} and "
                    f"{first.gamma}; use one DecisionConfig.gamma"
                )
        offsets = np.cumsum([0] + [p.n_episodes for p in parts[:-1]])
        out = {}
        for f in fields(cls):
            if f.name == "gamma":
                continue
            vals = [getattr(p, f.name) for p in parts]
            if f.name == "episode":
                vals = [v + int(o) for v, o in zip(vals, offsets, strict=True)]
            out[f.name] = torch.cat(vals)
        return cls(**out, gamma=first.gamma)


def _episode_decisions(ep: Episode, index: int, cfg: DecisionConfig) -> dict[str, np.ndarray]:
    """One episode's decisions as numpy arrays (see :class:`Decisions` for shapes)."""
    to, ta = int(cfg.obs_horizon), int(cfg.action_horizon)
    for key, where in (
        (cfg.obs_key, "data"),
        (cfg.action_key, "data"),
        ("reward", "data"),
        ("terminated", "data"),
        (cfg.obs_key, "final"),
    ):
        if key not in getattr(ep, where):
            raise ValueError(
                f"episode {index} has no {where}[{key!r}] (it has {sorted(getattr(ep, where))}); "
                f"set DecisionConfig.obs_key / action_key to the store's keys"
            )
    obs = np.asarray(ep.data[cfg.obs_key], dtype=np.float32)
    act = np.asarray(ep.data[cfg.action_key], dtype=np.float32)
    rew = np.asarray(ep.data["reward"], dtype=np.float64)
    term = np.asarray(ep.data["terminated"], dtype=bool)
    if obs.ndim != 2 or act.ndim != 2:
        raise ValueError(
            f"episode {index}: decisions need flat (T, O) observations and (T, A) actions, got "
            f"{cfg.obs_key} {obs.shape} and {cfg.action_key} {act.shape}; flatten dict "
            "observations with the env wrapper before collecting"
        )
    t_len = len(obs)
    if term[:-1].any():
        raise ValueError(
            f"episode {index} is marked terminated at step {int(np.argmax(term))} before its "
            f"last step {t_len - 1}; an episode ends at its termination"
        )
    # Step T is the observation after the last action, so a chunk ending the episode has it.
    obs_ext = np.concatenate([obs, np.asarray(ep.final[cfg.obs_key], np.float32)[None]])
    t = np.arange(0, t_len, int(cfg.stride))
    back = np.arange(-to + 1, 1)
    a_idx = t[:, None] + np.arange(ta)  # (n, Ta) steps the chunk covers
    mask = a_idx < t_len
    length = mask.sum(axis=1)  # (n,) real steps in each chunk
    powers = float(cfg.gamma) ** np.arange(ta)
    rewards = np.where(mask, rew[np.minimum(a_idx, t_len - 1)], 0.0)
    end = t + length
    return {
        "obs": obs_ext[np.maximum(t[:, None] + back, 0)],
        "chunk": act[np.minimum(a_idx, t_len - 1)],
        "chunk_mask": mask,
        "reward": (rewards * powers).sum(axis=1).astype(np.float32),
        "next_obs": obs_ext[np.maximum(end[:, None] + back, 0)],
        "done": ((end == t_len) & bool(term[-1])).astype(np.float32),
        "discount": (float(cfg.gamma) ** length).astype(np.float32),
        "episode": np.full(len(t), index, dtype=np.int64),
        "step": t.astype(np.int64),
    }


def build_decisions(episodes: Iterable[Episode], cfg: DecisionConfig | None = None) -> Decisions:
    """Decision-level transitions of ``episodes`` (e.g. fresh rollouts for the flywheel).

    Episode ``i`` of the iterable gets ``Decisions.episode == i``.
    """
    cfg = cfg or DecisionConfig()
    parts = [_episode_decisions(ep, i, cfg) for i, ep in enumerate(episodes)]
    if not parts:
        raise ValueError("build_decisions got no episodes; collect some first")
    dims = {(p["obs"].shape[2], p["chunk"].shape[2]) for p in parts}
    if len(dims) > 1:
        raise ValueError(f"episodes disagree on (obs dim, action dim): {sorted(dims)}")
    cat = {k: torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in parts[0]}
    return Decisions(**cat, gamma=float(cfg.gamma))


def decisions_from_store(
    store: TrajectoryStore | str | os.PathLike,
    cfg: DecisionConfig | None = None,
    episodes: Sequence[int] | None = None,
) -> Decisions:
    """Decision-level transitions of a :class:`TrajectoryStore` (an open one or its path).

    ``episodes`` picks store episode indices (default: all); ``Decisions.episode`` holds the
    store's own episode index, so transitions can be traced back to their episode.
    """
    own = not isinstance(store, TrajectoryStore)
    store = TrajectoryStore.open(store, mode="r") if own else store
    try:
        ids = list(range(store.n_episodes)) if episodes is None else [int(i) for i in episodes]
        if not ids:
            raise ValueError(f"{store.path} has no episodes to build decisions from")
        decisions = build_decisions((store.episode(i) for i in ids), cfg)
    finally:
        if own:
            store.close()
    # Map the running 0..len(ids)-1 numbering back to the store's episode indices.
    decisions.episode = torch.as_tensor(ids, dtype=torch.int64)[decisions.episode]
    return decisions
