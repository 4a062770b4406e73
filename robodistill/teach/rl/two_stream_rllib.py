"""PPO with a second value head for the intrinsic reward stream (RND's recipe) on RLlib's
new API stack: the RLModule, the advantage connector piece and the learner.

The RLlib counterpart of :mod:`robodistill.teach.rl.two_stream_ppo` (stable-baselines3).
RND (Burda et al., 2018) learns two value functions: the extrinsic one with the task's
discount, cut at episode ends, and the intrinsic one with ``gamma_int``, *not* cut at
episode ends. Each stream gets its own GAE and the policy follows
``A = extrinsic_coef·A_ext + intrinsic_coef·A_int``, normalised as PPO normalises.

How it sits on RLlib (subclassed, nothing forked):

- :class:`TwoStreamPPOTorchRLModule` (a ``DefaultPPOTorchRLModule``): ``compute_values`` is
  RLlib's (the extrinsic critic); :meth:`~TwoStreamPPOTorchRLModule.compute_values_int` is a
  separate MLP on the flattened observation, ``vf_int`` (the critic's widths and activation,
  orthogonal init as on the SB3 side), built from its own seeded RNG so that plain PPO's
  parts and torch's global RNG stream are what they are without it. It is learner-only
  (``get_non_inference_attributes``): env runners never build it, and it is part of the
  module's state, so RLlib's checkpoints carry it.
- :class:`TwoStreamAdvantages`, a learner connector piece appended right after RLlib's
  ``GeneralAdvantageEstimation``. That piece has already computed the extrinsic GAE
  (``gamma = teach.gamma``, episodic) on the batch's (extrinsic) rewards, written
  ``VALUE_TARGETS`` and, in 2.60, *normalised* ``ADVANTAGES`` in place. So this piece
  recovers the raw extrinsic advantages as ``VALUE_TARGETS - compute_values(batch)`` (the
  same forward pass on the same batch and weights), computes the intrinsic GAE
  (:func:`intrinsic_value_targets`) from the intrinsic rewards that
  :class:`~robodistill.teach.rl.exploration_rllib.IntrinsicRewardConnector` left in
  ``shared_data[REWARDS_INT]``, and replaces ``ADVANTAGES`` by the combination, normalised
  exactly as RLlib's GAE normalises (``(A - mean) / max(1e-4, std)`` over all batch rows).
  With ``intrinsic_coef = 0`` the result is RLlib's own advantage column (bit for bit when
  ``extrinsic_coef`` is a power of two, as the default 2.0).
- :class:`TwoStreamPPOTorchLearner` (a ``PPOTorchLearner``): PPO's loss plus
  ``vf_loss_coeff · mean((V_int - target_int)²)`` (loss-masked like PPO's terms), and
  ``vf_int``'s parameters in an optimizer of their own (``"intrinsic_value"``, Adam with
  PPO's ``lr``), so PPO's optimizer and its per-optimizer gradient clipping see exactly
  plain PPO's parameters and gradients.

**Intrinsic value loss: no ``vf_clip_param``.** RLlib clamps the extrinsic head's *squared
error* at ``vf_clip_param`` (10), which zeroes its gradient beyond. The intrinsic targets
are not centred (about ``mean(R) / std(R)`` of the normalised bonus, easily > 3 early on),
so the clamp could keep the intrinsic head from ever learning; it fits the plain MSE, as
the SB3 side does. ``vf_loss_coeff`` only scales it (it has its own Adam).

**Non-episodic, within what RLlib's episode chunks allow.** A train batch is a list of
episode chunks, each from one episode, with no record of the vector-env slot that produced
it; which chunk continues which on the same slot is unknown. So each chunk's intrinsic GAE
runs to the chunk's end and bootstraps with ``V_int`` of the chunk's last *next*
observation (RLlib appends it as the chunk's extra, loss-masked step), whether the chunk
ends in a termination, a truncation or a rollout cut: terminations never zero the
intrinsic bootstrap (the extrinsic GAE zeroes it). SB3's buffer instead continues an ended
episode's intrinsic return into the next episode of the same env (its bootstrap is the
next episode's first state), which RLlib's chunks cannot express.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.learner import GeneralAdvantageEstimation
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.models.utils import get_activation_fn
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.torch_utils import explained_variance

from robodistill.teach.rl.two_stream_ppo import intrinsic_critic

TWO_STREAM_KEY = "robodistill_two_stream"
"""Key of ``{"gamma_int", "extrinsic_coef", "intrinsic_coef"}`` in ``learner_config_dict``."""
SEED_KEY = "robodistill_intrinsic_vf_seed"
"""``model_config`` key: the seed of the intrinsic head's initial weights."""
REWARDS_INT = "robodistill_rewards_int"
"""``shared_data`` key: one ``(n_i,)`` array of intrinsic rewards per episode chunk, in the
order of ``ConnectorV2.single_agent_episode_iterator`` (``n_i`` = the chunk's length before
RLlib appends its bootstrap step)."""
VALUE_TARGETS_INT = "value_targets_int"
"""Batch column: the intrinsic value targets ``(B,)``."""
INTRINSIC_OPTIMIZER = "intrinsic_value"
METRIC_PREFIX = "exploration_"


def intrinsic_value_targets(values: np.ndarray, rewards: np.ndarray, terminateds: np.ndarray,
                            truncateds: np.ndarray, gamma: float, lambda_: float,
                            loss_mask: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Non-episodic GAE value targets ``(B,)`` on RLlib's learner-batch layout.

    The layout is RLlib's ``compute_value_targets``' (after ``AddOneTsToEpisodesAndTruncate``):
    each chunk's ``n`` steps followed by one extra step that holds the last next
    observation; ``terminateds`` / ``truncateds`` ``(B,)`` flag a chunk's last real step.

    Unlike the extrinsic GAE, a termination does not zero the bootstrap:
    ``delta_t = r_t + gamma · V(s_{t+1}) - V(s_t)`` at every step, so a chunk's last step
    bootstraps with the value of its extra step. Both flags still stop the recursion (the
    next row belongs to the extra step, then to another chunk). ``loss_mask`` ``(B,)``:
    rows where it is False (the extra steps) get advantage 0, i.e. target = value.

    Args:
        values: ``V_int`` of every row's observation, ``(B,)``.
        rewards: intrinsic rewards ``(B,)`` (0 at the extra steps).
    """
    values = np.asarray(values, np.float32)
    rewards = np.asarray(rewards, np.float32)
    chunk_end = np.logical_or(np.asarray(terminateds, bool), np.asarray(truncateds, bool))
    propagate = 1.0 - chunk_end.astype(np.float32)
    next_values = np.append(values[1:], np.float32(0.0))
    deltas = rewards + gamma * next_values - values
    advantages = np.zeros_like(values)
    running = 0.0
    for t in reversed(range(len(values))):
        running = deltas[t] + gamma * lambda_ * propagate[t] * running
        advantages[t] = running
    if loss_mask is not None:
        advantages[~np.asarray(loss_mask, bool)] = 0.0
    return (advantages + values).astype(np.float32)


class TwoStreamPPOTorchRLModule(DefaultPPOTorchRLModule):
    """RLlib's default PPO module plus an intrinsic value head ``vf_int``: a separate
    (non-shared) MLP on the flattened observation, hidden sizes ``fcnet_hiddens`` and
    activation ``fcnet_activation`` of the ``model_config``, seeded by ``model_config[SEED_KEY]``.
    Built only for learner (non-inference-only) modules; observations must be flat Boxes
    and the module non-recurrent."""

    def setup(self) -> None:
        super().setup()
        if self.inference_only:
            return
        cfg = self.model_config or {}
        in_dim = int(np.prod(self.observation_space.shape))
        # Own RNG: plain PPO's parts and torch's global stream must not move because an
        # intrinsic head exists.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.get(SEED_KEY, 0)))
            activation = get_activation_fn(cfg.get("fcnet_activation", "tanh"), framework="torch")
            self.vf_int = intrinsic_critic(in_dim, list(cfg.get("fcnet_hiddens", [256, 256])),
                                           activation)  # fmt: skip

    def get_non_inference_attributes(self) -> list[str]:
        return super().get_non_inference_attributes() + ["vf_int"]

    def compute_values_int(self, batch: dict[str, Any]) -> torch.Tensor:
        """Intrinsic values ``(B,)`` of ``batch[Columns.OBS]`` ``(B, *obs_shape)``."""
        obs = batch[Columns.OBS]
        return self.vf_int(obs.reshape(obs.shape[0], -1).float()).squeeze(-1)


class TwoStreamAdvantages(ConnectorV2):
    """Learner connector piece right after ``GeneralAdvantageEstimation``: intrinsic GAE and
    the combined advantage (module docstring). Reads ``shared_data[REWARDS_INT]``; writes
    ``ADVANTAGES`` ``(B,)`` (combined, normalised) and ``VALUE_TARGETS_INT`` ``(B,)`` into the
    default module's batch. Single-agent, non-recurrent modules only.
    """

    def __init__(self, input_observation_space=None, input_action_space=None, *,
                 gamma_int: float, lambda_: float, extrinsic_coef: float,
                 intrinsic_coef: float, **kwargs):  # fmt: skip
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.gamma_int, self.lambda_ = float(gamma_int), float(lambda_)
        self.extrinsic_coef, self.intrinsic_coef = float(extrinsic_coef), float(intrinsic_coef)

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None,
                 metrics=None, **kwargs):  # fmt: skip
        if DEFAULT_MODULE_ID not in batch:
            return batch
        module = rl_module[DEFAULT_MODULE_ID] if isinstance(rl_module, MultiRLModule) else rl_module
        module = module.unwrapped()
        if not isinstance(module, TwoStreamPPOTorchRLModule) or module.is_stateful():
            raise ValueError(
                "TwoStreamAdvantages needs a (non-recurrent) TwoStreamPPOTorchRLModule"
            )
        data = batch[DEFAULT_MODULE_ID]
        rewards_int = (shared_data or {}).get(REWARDS_INT)
        if rewards_int is None:
            raise ValueError("TwoStreamAdvantages: no intrinsic rewards in shared_data")
        chunks = list(self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False))
        # AddOneTsToEpisodesAndTruncate has made every chunk one (bootstrap) step longer.
        if [len(ep) - 1 for ep in chunks] != [len(r) for r in rewards_int]:
            raise ValueError("TwoStreamAdvantages: intrinsic rewards do not match the chunks")
        rewards = np.concatenate([np.append(np.asarray(r, np.float32), np.float32(0.0))
                                  for r in rewards_int]).astype(np.float32)  # fmt: skip
        with torch.no_grad():
            values_ext = convert_to_numpy(module.compute_values(data))
            values_int = convert_to_numpy(module.compute_values_int(data))
        if len(rewards) != len(values_ext):
            raise ValueError("TwoStreamAdvantages: batch rows do not match the chunks")
        names = (Columns.VALUE_TARGETS, Columns.TERMINATEDS, Columns.TRUNCATEDS, Columns.LOSS_MASK)
        col = {k: convert_to_numpy(data[k]) for k in names}
        mask = col[Columns.LOSS_MASK].astype(bool)
        adv_ext = col[Columns.VALUE_TARGETS] - values_ext  # GAE's, before normalising
        targets_int = intrinsic_value_targets(
            values_int, rewards, col[Columns.TERMINATEDS], col[Columns.TRUNCATEDS],
            self.gamma_int, self.lambda_, loss_mask=mask,
        )  # fmt: skip
        adv_int = targets_int - values_int
        adv = self.extrinsic_coef * adv_ext + self.intrinsic_coef * adv_int
        adv = (adv - adv.mean()) / max(1e-4, adv.std())  # as RLlib's GAE normalises
        device = data[Columns.ADVANTAGES].device
        data[Columns.ADVANTAGES] = torch.from_numpy(adv.astype(np.float32)).to(device)
        data[VALUE_TARGETS_INT] = torch.from_numpy(targets_int).to(device)
        if metrics is not None and mask.any():
            stats = {
                "intrinsic_return_mean": float(targets_int[mask].mean()),
                "intrinsic_value_mean": float(values_int[mask].mean()),
                "intrinsic_advantage_std": float(adv_int[mask].std()),
                "extrinsic_advantage_std": float(adv_ext[mask].std()),
            }
            for key, value in stats.items():
                metrics.log_value((DEFAULT_MODULE_ID, METRIC_PREFIX + key), value, window=1)
        return batch


class TwoStreamPPOTorchLearner(PPOTorchLearner):
    """RLlib's PPO torch learner for :class:`TwoStreamPPOTorchRLModule` (module docstring).
    Settings come from ``config.learner_config_dict[TWO_STREAM_KEY]``."""

    def build(self) -> None:
        super().build()  # builds the module, its optimizers and PPO's connector pieces
        settings = self.config.learner_config_dict[TWO_STREAM_KEY]
        if (
            self._learner_connector is None
            or not self.config.add_default_connectors_to_learner_pipeline
        ):
            raise ValueError("two-stream PPO needs RLlib's default learner connector pipeline")
        self._learner_connector.insert_after(
            GeneralAdvantageEstimation,
            TwoStreamAdvantages(
                gamma_int=settings["gamma_int"],
                lambda_=self.config.lambda_,
                extrinsic_coef=settings["extrinsic_coef"],
                intrinsic_coef=settings["intrinsic_coef"],
            ),
        )

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        module = self._module[module_id]
        if not isinstance(module.unwrapped(), TwoStreamPPOTorchRLModule):
            return super().configure_optimizers_for_module(module_id, config)
        head = list(module.unwrapped().vf_int.parameters())
        ids = {id(p) for p in head}
        # PPO's optimizer over exactly plain PPO's parameters, in their order.
        params = [p for p in self.get_parameters(module) if id(p) not in ids]
        self.register_optimizer(module_id=module_id, optimizer=torch.optim.Adam(params),
                                params=params, lr_or_lr_schedule=config.lr)  # fmt: skip
        self.register_optimizer(module_id=module_id, optimizer_name=INTRINSIC_OPTIMIZER,
                                optimizer=torch.optim.Adam(head), params=head,
                                lr_or_lr_schedule=config.lr)  # fmt: skip

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        total = super().compute_loss_for_module(
            module_id=module_id, config=config, batch=batch, fwd_out=fwd_out
        )
        module = self.module[module_id].unwrapped()
        if not isinstance(module, TwoStreamPPOTorchRLModule) or VALUE_TARGETS_INT not in batch:
            return total
        values = module.compute_values_int(batch)
        targets = batch[VALUE_TARGETS_INT]
        sq_err = torch.pow(values - targets, 2.0)
        if Columns.LOSS_MASK in batch:  # PPO's masking of the appended bootstrap steps
            mask = batch[Columns.LOSS_MASK]
            loss = torch.sum(sq_err[mask]) / torch.sum(mask)
        else:
            loss = torch.mean(sq_err)
        self.metrics.log_dict(
            {
                METRIC_PREFIX + "vf_loss_int": loss,
                METRIC_PREFIX + "vf_explained_var_int": explained_variance(targets, values),
            },
            key=module_id,
            window=1,
        )
        return total + config.vf_loss_coeff * loss
