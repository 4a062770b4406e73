"""Chunked execution shared by every policy that plans action chunks from an observation
history (the diffusion teacher, the consistency student, RTI warm starts).

Horizons, with defaults To = 2 observations, H = 16 predicted actions, Ta = 8 executed::

    step:        t-1   t    t+1  ...  t+7  t+8  ...           t+14
    obs:        |<- To ->|                                           history (B, To, D)
    predicted:  |<----------------------- H --------------------->|  chunk   (B, H, A)
    executed:         |<-------- Ta -------->|                        queue   (B, Ta, A)

The chunk starts at the oldest observed step (as in training windows, see
:mod:`robodistill.data.sampler`), so the action for the current step ``t`` is index
``To - 1``; :meth:`ChunkedPolicy.act` executes Ta actions from there, then plans again
(receding horizon). With ``temporal_ensemble=k`` it plans at every step instead and
averages the overlapping plans for each step with weights ``exp(k * j)`` (``j``: how far
into its chunk the step lies; ``k > 0`` favours older plans, as in ACT).

A subclass implements :meth:`ChunkedPolicy.plan` (history rows -> chunks) and may keep its
own per-row state by overriding :meth:`ChunkedPolicy.reset_rows` (RTI keeps the previous
plan there).
"""

from __future__ import annotations

import abc
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from robodistill.policies.base import Policy


class Affine(torch.nn.Module):
    """Export helper: ``(x - offset) / scale`` (flattened from dim 1 when ``flatten``), or
    with ``clip`` the inverse ``clip(x, -1, 1) * scale + offset``; copies of the buffers, so
    an exported graph carries its own normalization."""

    def __init__(self, offset: torch.Tensor, scale: torch.Tensor, flatten: bool = False,
                 clip: bool = False):  # fmt: skip
        super().__init__()
        self.register_buffer("offset", offset.detach().float().cpu().clone())
        self.register_buffer("scale", scale.detach().float().cpu().clone())
        self.flatten, self.clip = flatten, clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.clip:
            return x.clamp(-1.0, 1.0) * self.scale + self.offset
        x = (x - self.offset) / self.scale
        return x.flatten(1) if self.flatten else x


class ChunkedPolicy(Policy):
    """Per-row observation history, action queue and temporal-ensemble sums around
    :meth:`plan`. ``self.config`` must have ``obs_dim``, ``action_dim``, ``obs_horizon``,
    ``pred_horizon``, ``action_horizon``, ``temporal_ensemble``, ``action_low``,
    ``action_high`` and ``seed``; ``self._generator`` is reseeded on a full reset."""

    config: Any
    _generator: torch.Generator
    _state: dict[str, torch.Tensor] | None

    @property
    def observation_space(self) -> gym.spaces.Box:
        """One observation (D,) (unbounded: the config records no observation bounds)."""
        return gym.spaces.Box(-np.inf, np.inf, (self.config.obs_dim,), np.float32)

    @property
    def action_space(self) -> gym.spaces.Box:
        """One action (A,) within ``action_low`` / ``action_high`` (unbounded without them)."""
        c = self.config
        low = -np.inf if c.action_low is None else np.asarray(c.action_low, np.float32)
        high = np.inf if c.action_high is None else np.asarray(c.action_high, np.float32)
        return gym.spaces.Box(low, high, (c.action_dim,), np.float32)

    @abc.abstractmethod
    def plan(self, obs_hist: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(n, To, D) raw histories of batch rows ``rows`` (n,) -> (n, H, A) env-unit chunks."""

    def reset_rows(self, rows: torch.Tensor | None) -> None:  # noqa: B027
        """Hook: forget subclass state of ``rows`` (all rows when ``None``)."""

    def reset(self, env_ids: np.ndarray | list[int] | None = None) -> None:
        """Forget history, queued actions and ensemble sums for ``env_ids`` (all: ``None``,
        which also reseeds the sampling generator so evaluations are repeatable)."""
        if env_ids is None or self._state is None:
            self._state = None
            self.reset_rows(None)
            if env_ids is None:
                self._generator.manual_seed(self.config.seed)
            return
        ids = torch.as_tensor(np.asarray(env_ids, dtype=np.int64).reshape(-1))
        s = self._state
        s["hist_len"][ids] = 0
        s["queue_pos"][ids] = self.config.action_horizon
        s["ens_sum"][ids] = 0.0
        s["ens_w"][ids] = 0.0
        self.reset_rows(ids)

    def _init_state(self, batch: int) -> dict[str, torch.Tensor]:
        c = self.config
        return {
            "hist": torch.zeros(batch, c.obs_horizon, c.obs_dim),
            "hist_len": torch.zeros(batch, dtype=torch.long),
            "queue": torch.zeros(batch, c.action_horizon, c.action_dim),
            "queue_pos": torch.full((batch,), c.action_horizon, dtype=torch.long),
            "ens_sum": torch.zeros(batch, c.action_horizon, c.action_dim),
            "ens_w": torch.zeros(batch, c.action_horizon),
        }

    def _check_obs(self, obs: np.ndarray) -> torch.Tensor:
        c = self.config
        o = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        if o.ndim != 2 or o.shape[1] != c.obs_dim:
            raise ValueError(
                f"act: obs must have shape (B, {c.obs_dim}), got {tuple(o.shape)}; the policy "
                f"was trained on {c.obs_dim}-dimensional observations (check env.id / obs_type)"
            )
        if not torch.isfinite(o).all():
            bad = torch.nonzero(~torch.isfinite(o).all(dim=1)).flatten().tolist()
            raise ValueError(f"act: obs contains NaN or inf in rows {bad} (check the environment)")
        return o

    def act(self, obs: np.ndarray) -> np.ndarray:
        """``obs`` (B, D) -> (B, A) float32 for the current step of each row's episode.

        Keeps per-row state: the last To observations (a new episode's history is its
        first observation repeated, as in padded training windows) and the queue of
        planned actions. A row plans when its queue is empty; only those rows go through
        :meth:`plan`.
        """
        c = self.config
        o = self._check_obs(obs)
        if self._state is None:
            self._state = self._init_state(o.shape[0])
        s = self._state
        if s["hist"].shape[0] != o.shape[0]:
            raise ValueError(
                f"act: got {o.shape[0]} rows but the policy holds state for "
                f"{s['hist'].shape[0]}; call reset() before changing the batch size"
            )
        fresh = s["hist_len"] == 0
        s["hist"][~fresh] = torch.roll(s["hist"][~fresh], -1, dims=1)
        s["hist"][~fresh, -1] = o[~fresh]
        s["hist"][fresh] = o[fresh, None].expand(-1, c.obs_horizon, -1)
        s["hist_len"] += 1
        start, end = c.obs_horizon - 1, c.obs_horizon - 1 + c.action_horizon
        everyone = torch.arange(o.shape[0])
        if c.temporal_ensemble is not None:
            chunk = self.plan(s["hist"], everyone).cpu()[:, start:end]
            weights = torch.exp(c.temporal_ensemble * torch.arange(c.action_horizon).float())
            s["ens_sum"] += weights[None, :, None] * chunk
            s["ens_w"] += weights[None]
            action = s["ens_sum"][:, 0] / s["ens_w"][:, :1]
            # Shift: tomorrow's slot 0 is today's slot 1; the new last slot starts empty.
            s["ens_sum"] = torch.roll(s["ens_sum"], -1, dims=1)
            s["ens_w"] = torch.roll(s["ens_w"], -1, dims=1)
            s["ens_sum"][:, -1], s["ens_w"][:, -1] = 0.0, 0.0
        else:
            need = s["queue_pos"] >= c.action_horizon
            if need.any():
                chunk = self.plan(s["hist"][need], everyone[need]).cpu()
                s["queue"][need] = chunk[:, start:end]
                s["queue_pos"][need] = 0
            action = s["queue"][everyone, s["queue_pos"]]
            s["queue_pos"] += 1
        action = action.numpy().astype(np.float32)
        if c.action_low is not None:
            action = np.clip(action, np.float32(c.action_low), np.float32(c.action_high))
        return action
