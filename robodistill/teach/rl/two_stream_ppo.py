"""PPO with a second value head for the intrinsic reward stream (RND's recipe), built on
stable-baselines3's classes.

RND (Burda et al., 2018) learns two value functions: the extrinsic one with the task's
discount, cut at episode ends, and the intrinsic one with ``gamma_int`` (0.99), *not* cut at
episode ends (novelty does not stop when an episode does). Each stream gets its own GAE and
the policy follows ``A = extrinsic_coef·A_ext + intrinsic_coef·A_int``.

How it sits on SB3 (subclassed, nothing forked):

- :class:`TwoStreamRolloutBuffer` (a ``RolloutBuffer``) stores the intrinsic rewards next to
  the extrinsic ones (staged each step by :class:`~robodistill.teach.rl.exploration_sb3.
  ExplorationCallback` from ``info["r_int"]``, before SB3 adds the step) and computes both
  GAEs; ``advantages`` holds the combined advantage PPO optimizes, ``returns`` the extrinsic
  returns its value loss fits, ``returns_int`` the intrinsic ones.
- :class:`TwoStreamPPO` (a ``PPO``) runs SB3's ``collect_rollouts`` and ``train`` unchanged,
  fills the intrinsic values into the buffer before the advantages are combined, and after
  PPO's update fits the intrinsic value head on the same epochs and minibatch size.

Deviation from the reference implementations (cleanrl's ``ppo_rnd_envpool``: two linear
heads on one critic trunk, one optimizer): here the intrinsic head is a separate MLP of
the critic's width with its own Adam. SB3's ``PPO.train`` fits exactly one value output,
so a shared trunk would mean forking it; a separate head keeps SB3's PPO intact, and with
``intrinsic_coef = 0`` the actor and the extrinsic critic learn exactly what plain PPO
learns (a test checks this bit for bit).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.utils import obs_as_tensor
from torch import nn
from torch.nn import functional as F


class TwoStreamRolloutBuffer(RolloutBuffer):
    """A rollout buffer with an intrinsic reward stream (see the module docstring).

    Extra arrays, ``(buffer_size, n_envs)``: ``rewards_int``, ``values_int``,
    ``advantages_int``, ``returns_int``.
    """

    def __init__(self, *args: Any, gamma_int: float = 0.99, extrinsic_coef: float = 1.0,
                 intrinsic_coef: float = 1.0, **kwargs: Any):  # fmt: skip
        self.gamma_int = float(gamma_int)
        self.extrinsic_coef, self.intrinsic_coef = float(extrinsic_coef), float(intrinsic_coef)
        self._staged_int: np.ndarray | None = None
        super().__init__(*args, **kwargs)

    def reset(self) -> None:
        shape = (self.buffer_size, self.n_envs)
        self.rewards_int = np.zeros(shape, dtype=np.float32)
        self.values_int = np.zeros(shape, dtype=np.float32)
        self.advantages_int = np.zeros(shape, dtype=np.float32)
        self.returns_int = np.zeros(shape, dtype=np.float32)
        super().reset()

    def stage_intrinsic(self, rewards_int: np.ndarray) -> None:
        """The intrinsic rewards ``(n_envs,)`` of the step that :meth:`add` stores next."""
        self._staged_int = np.asarray(rewards_int, dtype=np.float32).reshape(self.n_envs)

    def add(self, *args: Any, **kwargs: Any) -> None:
        if self._staged_int is None:
            raise RuntimeError(
                "TwoStreamRolloutBuffer.add: no intrinsic reward was staged for this step; "
                "train with the exploration callback (it stages info['r_int'])"
            )
        self.rewards_int[self.pos] = self._staged_int
        self._staged_int = None
        super().add(*args, **kwargs)

    def compute_intrinsic(self, values_int: np.ndarray, last_values_int: np.ndarray) -> None:
        """Non-episodic GAE of the intrinsic stream from ``values_int`` ``(buffer_size,
        n_envs)`` and the values of the observations after the last step ``(n_envs,)``;
        then ``advantages`` becomes the combined advantage. Call after SB3's
        :meth:`compute_returns_and_advantage` (the extrinsic GAE)."""
        self.values_int[:] = values_int
        last_gae = np.zeros(self.n_envs, dtype=np.float32)
        for step in reversed(range(self.buffer_size)):
            nxt = last_values_int if step == self.buffer_size - 1 else self.values_int[step + 1]
            # No episode-start mask: the intrinsic return runs across episode ends.
            delta = self.rewards_int[step] + self.gamma_int * nxt - self.values_int[step]
            last_gae = delta + self.gamma_int * self.gae_lambda * last_gae
            self.advantages_int[step] = last_gae
        self.returns_int = self.advantages_int + self.values_int
        self.advantages = (self.extrinsic_coef * self.advantages
                           + self.intrinsic_coef * self.advantages_int).astype(np.float32)  # fmt: skip


def intrinsic_critic(obs_dim: int, hidden: list[int],
                     activation: type[nn.Module] | None = nn.Tanh) -> nn.Sequential:  # fmt: skip
    """``obs (B, D) -> V_int (B, 1)``: SB3's critic shape (Tanh MLP, orthogonal init; the
    RLlib learner passes its ``fcnet_activation``).

    Built layer by layer rather than with SB3's ``create_mlp`` + ``init_weights``: the
    same init, but in the RNG order the measured exploration runs were made with."""
    layers: list[nn.Module] = []
    last = obs_dim
    for width in hidden:
        linear = nn.Linear(last, width)
        nn.init.orthogonal_(linear.weight, gain=np.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear] + ([activation()] if activation is not None else [])
        last = width
    head = nn.Linear(last, 1)
    nn.init.orthogonal_(head.weight, gain=1.0)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*layers, head)


class TwoStreamPPO(PPO):
    """PPO on extrinsic + intrinsic advantages (module docstring).

    Args (beyond PPO's): ``gamma_int``, ``extrinsic_coef``, ``intrinsic_coef`` (the
    advantage weights), ``critic_hidden`` (the intrinsic head's hidden sizes; default: the
    policy's critic widths). The rollout buffer is always a :class:`TwoStreamRolloutBuffer`.
    """

    def __init__(self, policy: Any, env: Any, *, gamma_int: float = 0.99,
                 extrinsic_coef: float = 2.0, intrinsic_coef: float = 1.0,
                 critic_hidden: list[int] | None = None, **kwargs: Any):  # fmt: skip
        if not 0.0 < gamma_int < 1.0:
            raise ValueError(f"teach.exploration.gamma_int must be in (0, 1), got {gamma_int}")
        for name, coef in (("extrinsic_coef", extrinsic_coef), ("intrinsic_coef", intrinsic_coef)):
            if not coef >= 0.0:
                raise ValueError(f"teach.exploration.{name} must be >= 0, got {coef}")
        self.critic_hidden = critic_hidden
        kwargs["rollout_buffer_class"] = TwoStreamRolloutBuffer
        kwargs["rollout_buffer_kwargs"] = {"gamma_int": gamma_int, "extrinsic_coef": extrinsic_coef,
                                           "intrinsic_coef": intrinsic_coef}  # fmt: skip
        super().__init__(policy, env, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        obs_dim = int(np.prod(self.observation_space.shape))
        hidden = self.critic_hidden or _critic_widths(self.policy)
        # Its own RNG: plain PPO's global streams (init, action sampling, SB3's minibatch
        # permutations) must not move because an intrinsic head exists.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if self.seed is None else self.seed)
            self.critic_int = intrinsic_critic(obs_dim, list(hidden)).to(self.device)
        self.critic_int_optimizer = torch.optim.Adam(self.critic_int.parameters(),
                                                     lr=self.lr_schedule(1), eps=1e-5)  # fmt: skip
        self._int_rng = np.random.default_rng([0 if self.seed is None else self.seed, 11])

    def _values_int(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            flat = obs_as_tensor(obs, self.device).float().reshape(len(obs), -1)
            return self.critic_int(flat).squeeze(-1).cpu().numpy()

    def collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps: int) -> bool:
        ok = super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        if ok:
            buf: TwoStreamRolloutBuffer = rollout_buffer
            obs = buf.observations.reshape(buf.buffer_size * buf.n_envs, -1)
            values = self._values_int(obs).reshape(buf.buffer_size, buf.n_envs)
            buf.compute_intrinsic(values, self._values_int(np.asarray(self._last_obs)))
        return ok

    def train(self) -> None:
        super().train()  # SB3's PPO update on the combined advantages, extrinsic value loss
        buf: TwoStreamRolloutBuffer = self.rollout_buffer
        # SB3's get() has flattened the buffer's arrays to (buffer_size * n_envs, ...).
        obs = torch.as_tensor(buf.observations.reshape(len(buf.observations), -1),
                              device=self.device).float()  # fmt: skip
        # returns_int is not among SB3's flattened arrays: flatten it in the same order.
        returns = torch.as_tensor(buf.swap_and_flatten(buf.returns_int).reshape(-1),
                                  device=self.device)  # fmt: skip
        for group in self.critic_int_optimizer.param_groups:
            group["lr"] = self.lr_schedule(self._current_progress_remaining)
        losses = []
        for _ in range(self.n_epochs):
            order = self._int_rng.permutation(len(obs))
            for start in range(0, len(obs), self.batch_size):
                idx = torch.as_tensor(order[start : start + self.batch_size], device=self.device)
                loss = F.mse_loss(self.critic_int(obs[idx]).squeeze(-1), returns[idx])
                self.critic_int_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.critic_int.parameters(), self.max_grad_norm)
                self.critic_int_optimizer.step()
                losses.append(float(loss.detach()))
        self.logger.record("train/value_loss_int", float(np.mean(losses)))
        self.logger.record("exploration/intrinsic_return_mean", float(buf.returns_int.mean()))
        self.logger.record("exploration/intrinsic_advantage_std", float(buf.advantages_int.std()))


def _critic_widths(policy: Any) -> list[int]:
    """The hidden widths of an SB3 actor-critic's value network."""
    widths = [m.out_features for m in policy.mlp_extractor.value_net if isinstance(m, nn.Linear)]
    return widths or [64, 64]
