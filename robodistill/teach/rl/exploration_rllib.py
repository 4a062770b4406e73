"""Intrinsic rewards (RND / RDD) for the RLlib backend: a learner connector piece and
two-stream PPO (an intrinsic value head beside the extrinsic one).

::

    config = build_config(cfg)                      # robodistill.teach.rl.rllib: the PPOConfig
    add_exploration(config, cfg.teach.exploration, seed=cfg.seed)
    algo = config.build_algo()
    algo.train()                                    # two-stream PPO, predictor trained
    save_exploration(algo, ckpt_dir)                # exploration.safetensors + .json
    load_exploration(algo, ckpt_dir)                # on --resume

:func:`add_exploration` sets the RLModule to
:class:`~robodistill.teach.rl.two_stream_rllib.TwoStreamPPOTorchRLModule` (RLlib's default
PPO module plus an intrinsic value head) and the learner to
:class:`IntrinsicPPOTorchLearner`; ``method: none`` leaves plain RLlib PPO untouched.

**Where the predictor lives: in the Learner.** :class:`IntrinsicRewardConnector` is a
``ConnectorV2`` piece of the Learner's connector pipeline (RLlib's extension point for
turning episodes into a train batch; RLlib's own curiosity examples put their intrinsic
rewards there). :class:`IntrinsicPPOTorchLearner` inserts it right before
``AddOneTsToEpisodesAndTruncate``, i.e. before anything else touches the episodes. Each
``Learner.update`` call (one per PPO iteration) then

1. takes every transition's *next* observation from the sampled episode chunks,
2. computes the raw bonus with the current predictor (the one trained on earlier batches,
   as in the SB3 wrapper, where a rollout's bonuses come from the previous update),
3. normalises it by the running std of the intrinsic return, ``r_int = b / std(R)``, and
   leaves it, one ``(n_i,)`` array per chunk, in ``shared_data[REWARDS_INT]``; the
   episodes' rewards stay the extrinsic ones,
4. updates the input normaliser on the batch and trains the predictor on an
   ``update_proportion`` share of it (RND's order),
5. logs ``exploration_*`` metrics into the learner's ``MetricsLogger``.

Further down the same pipeline RLlib's ``GeneralAdvantageEstimation`` computes the
extrinsic GAE (``teach.gamma``, episodic) on the extrinsic rewards, and
:class:`~robodistill.teach.rl.two_stream_rllib.TwoStreamAdvantages` (appended after it)
computes the intrinsic GAE (``gamma_int``, PPO's ``lambda_``, non-episodic) with the
intrinsic head and replaces PPO's advantages by ``extrinsic_coef·A_ext +
intrinsic_coef·A_int``, normalised as RLlib normalises them. The learner's loss adds the
intrinsic head's value loss (see :mod:`~robodistill.teach.rl.two_stream_rllib`).

Why the predictor sits there rather than in the env runners: there is exactly one
predictor, it sees every transition of every env runner (local or on a cluster), and
nothing has to be synchronized: env runners keep sampling with the policy only, the bonus
never crosses the network, and adding env runners does not add predictor copies that
would drift apart. The costs are a bonus forward pass plus ``update_proportion`` of a
backward pass per iteration on the learner, and that the bonus only exists at update time
(env runners' ``episode_return_mean`` stays the extrinsic return, which is what we report
anyway). With ``num_learners > 1`` every learner would hold its own predictor trained on
its shard, so :func:`add_exploration` refuses that.

**Checkpoints.** The intrinsic value head is part of the RLModule's state and its Adam is
one of the learner's named optimizers, so RLlib's own checkpoint carries both. RLlib does
not checkpoint learner connector pieces, so the bonus state is written next to RLlib's
files as ``exploration.safetensors`` (predictor, target, RDD's prior and residual, the
input and return normalisers, Adam's moments, the update-subset RNG state) plus
``exploration.json`` (the bonus module's constructor arguments), read back without
pickle. A resumed run continues with identical predictor and intrinsic-head weights and
statistics. (RLlib restores module state non-strictly: a checkpoint written before the
intrinsic head existed resumes with a freshly initialised head.)

Semantics compared with :mod:`robodistill.teach.rl.exploration_sb3` +
:mod:`robodistill.teach.rl.two_stream_ppo` (the stable-baselines3 side):

* Same: two value heads, the extrinsic one PPO's own critic (``teach.gamma``, cut at
  episode ends), the intrinsic one a separate MLP of the critic's widths with its own Adam
  and ``gamma_int``, not cut by terminations; ``A = extrinsic_coef·A_ext +
  intrinsic_coef·A_int`` then PPO's advantage normalisation; the bonus is computed on the
  next observation (RLlib keeps the true final observation of an episode, so no
  ``terminal_observation`` special case is needed); ``r_int = b / std(R)`` with
  ``R_t = gamma_int * R_{t-1} + b_t`` and no centring; the predictor trains once per PPO
  iteration on the batch's next observations; the same bonus modules, coefficients and
  seeding.
* Different, because RLlib's episode chunks do not say which vector-env slot produced
  them (which chunk continues which on the same env is unknown):

  - the intrinsic GAE runs within a chunk and bootstraps at the chunk's end with
    ``V_int`` of its last next observation, also when the episode terminated there
    (non-episodic in that terminations never zero the intrinsic bootstrap); SB3's buffer
    instead runs the intrinsic return on into the next episode of the same env;
  - the intrinsic return ``R`` of the normaliser is carried across the chunks of one
    episode (by episode id) but restarts at 0 when a new episode starts, where SB3's
    wrapper carries it across resets of the same env. Only the *scale* estimate
    ``std(R)`` is affected, and only for episodes not much longer than
    ``1 / (1 - gamma_int)`` steps, whose partial sums make the std smaller and ``r_int``
    somewhat larger.
* The intrinsic value loss is weighted by ``vf_loss_coeff`` and, unlike RLlib's extrinsic
  one, not clamped at ``vf_clip_param`` (SB3 fits a plain MSE too); it trains on PPO's
  epochs and minibatches, in the same backward pass as PPO's loss.
* The return normaliser is updated with the whole batch before dividing (SB3: per vector
  step), a difference within one batch only.
* The input normaliser is initialised from the first train batch instead of a separate
  random-action warm-up (the first batch comes from the untrained, near-random policy).
* With ``teach.normalize_obs`` the episodes hold RLlib's ``MeanStdFilter`` output, so the
  bonus and the intrinsic head see filtered observations (clipped to ±10) and the bonus's
  own normaliser sits on top of that; SB3's wrapper sits below ``VecNormalize`` and sees
  raw observations (SB3's intrinsic head, like its policy, sees normalised ones).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.learner import AddOneTsToEpisodesAndTruncate
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from safetensors.torch import load_file, save_file

from robodistill.config import ConfigError, ExplorationConfig
from robodistill.policies.exploration import RNDBonus, RunningMeanStd, bonus_from_config
from robodistill.teach.rl.two_stream_rllib import (
    REWARDS_INT,
    SEED_KEY,
    TWO_STREAM_KEY,
    TwoStreamPPOTorchLearner,
    TwoStreamPPOTorchRLModule,
)

LEARNER_CONFIG_KEY = "robodistill_exploration"
"""Key of the exploration settings in ``config.learner_config_dict``."""

TENSORS_NAME, CONFIG_NAME = "exploration.safetensors", "exploration.json"
METRIC_PREFIX = "exploration_"
MAX_TRACKED_EPISODES = 10_000
"""Most ongoing episodes whose intrinsic return is carried to their next chunk; older
entries (episodes of an env runner that died) are dropped."""


class IntrinsicRewardConnector(ConnectorV2):
    """Learner connector piece: computes the normalised intrinsic rewards of the episode
    chunks' transitions, leaves them in ``shared_data[REWARDS_INT]`` (a list with one
    ``(n_i,)`` float32 array per chunk, ``n_i`` = its length; also kept as
    ``last_rewards_int``) without touching the episodes, and trains the predictor on the
    same batch (see the module docstring).

    Args:
        exploration: ``ExplorationConfig`` fields as a plain dict (``method`` rnd | rdd).
        obs_dim: flattened observation size.
        seed: seeds the bonus module's weights and its update-subset generator without
            touching torch's global RNG.
        gamma_int: discount of the intrinsic return used for normalisation (default:
            ``exploration.gamma_int``).
    """

    def __init__(
        self,
        input_observation_space=None,
        input_action_space=None,
        *,
        exploration: dict[str, Any],
        obs_dim: int,
        seed: int = 0,
        gamma_int: float | None = None,
        **kwargs,
    ):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        cfg = ExplorationConfig(**exploration)
        if cfg.method == "none":
            raise ValueError("IntrinsicRewardConnector needs exploration.method rnd or rdd")
        self.method = cfg.method
        self.intrinsic_coef = float(cfg.intrinsic_coef)
        self.extrinsic_coef = float(cfg.extrinsic_coef)
        self.gamma_int = float(cfg.gamma_int if gamma_int is None else gamma_int)
        self.predictor_epochs, self.predictor_minibatches = (
            cfg.predictor_epochs,
            cfg.predictor_minibatches,
        )
        self.bonus: RNDBonus = bonus_from_config(cfg, obs_dim, seed)
        self.return_rms = RunningMeanStd(())
        self._carry: dict[str, float] = {}  # episode id -> R at the end of its last chunk
        self.last_stats: dict[str, float] = {}
        self.last_rewards_int: list[np.ndarray] = []  # per chunk, from the last call

    # -- the connector call ---------------------------------------------------------------
    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None,
                 metrics=None, **kwargs):  # fmt: skip
        chunks = list(self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False))
        lens = [len(ep) for ep in chunks]
        if sum(lens) == 0:
            if shared_data is not None:
                shared_data[REWARDS_INT] = [np.zeros(0, np.float32) for _ in chunks]
            return batch
        # Next observation of every transition: observations[1:] of each chunk (a chunk of
        # L steps holds L + 1 observations, the last being the true final one).
        next_obs = np.concatenate(
            [
                np.asarray(ep.get_observations(slice(1, None)), np.float32).reshape(n, -1)
                for ep, n in zip(chunks, lens, strict=True)
                if n
            ]
        )
        initialising = float(self.bonus.obs_rms.count) < 1.0
        if initialising:  # RND initialises the input statistics before the first bonus
            self.bonus.update_obs_stats(next_obs)
        terms = {
            k: v.cpu().numpy().astype(np.float64)
            for k, v in self.bonus.bonus_terms(next_obs).items()
        }
        raw = sum(terms.values())  # what bonus() returns, kept in parts for the metrics
        returns = self._intrinsic_returns(chunks, lens, raw)
        self.return_rms.update(torch.as_tensor(returns))
        r_int = (raw / (float(self.return_rms.std) + 1e-8)).astype(np.float32)
        # One (n_i,) array per chunk, in the iterator's order: TwoStreamAdvantages (after
        # RLlib's GAE) reads them. The episodes' rewards stay the extrinsic ones.
        bounds = np.cumsum([0, *lens])
        self.last_rewards_int = [r_int[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        if shared_data is not None:
            shared_data[REWARDS_INT] = self.last_rewards_int
        r_ext = np.concatenate([np.asarray(ep.get_rewards(), np.float64) for ep in chunks])
        # RND's order: input statistics first, then the predictor (on a random share).
        if not initialising:
            self.bonus.update_obs_stats(next_obs)
        with torch.enable_grad():  # the learner may call its pipeline under no_grad
            train = self.bonus.update(next_obs, epochs=self.predictor_epochs,
                                      minibatches=self.predictor_minibatches)  # fmt: skip
        stats = {
            "predictor_loss": train["predictor_loss"],
            "bonus_raw_mean": float(raw.mean()),
            "r_int_mean": float(r_int.mean()),
            "r_ext_mean": float(r_ext.mean()),
            "return_std": float(self.return_rms.std),
        }
        if "pseudo_count" in terms:  # RDD: the count-like part of the bonus
            stats["pseudo_count_mean"] = float(terms["pseudo_count"].mean())
        self.last_stats = stats
        if metrics is not None:
            for key, value in stats.items():
                # Under the module id: PPO treats every other top-level key of the learner
                # results as a module to sync. window=1: report this iteration's value.
                metrics.log_value((DEFAULT_MODULE_ID, METRIC_PREFIX + key), value, window=1)
        return batch

    def _intrinsic_returns(self, chunks, lens, raw: np.ndarray) -> np.ndarray:
        """``R_t = gamma_int * R_{t-1} + b_t`` per episode, carried across its chunks."""
        out = np.empty_like(raw)
        start = 0
        for ep, n in zip(chunks, lens, strict=True):
            ret = self._carry.pop(ep.id_, 0.0)
            for t in range(start, start + n):
                ret = self.gamma_int * ret + raw[t]
                out[t] = ret
            if not ep.is_done:
                self._carry[ep.id_] = ret
            start += n
        while len(self._carry) > MAX_TRACKED_EPISODES:  # dicts iterate oldest first
            self._carry.pop(next(iter(self._carry)))
        return out

    # -- state ----------------------------------------------------------------------------
    def bonus_config(self) -> dict[str, Any]:
        """What rebuilds the bonus module (written to ``exploration.json``)."""
        return {"method": self.method, "gamma_int": self.gamma_int, **self.bonus.config()}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything that makes a resumed run continue identically, as named tensors."""
        out = {f"bonus.{k}": v.detach().cpu().clone() for k, v in self.bonus.state_dict().items()}
        out |= {f"return_rms.{k}": v.clone() for k, v in self.return_rms.state_dict().items()}
        for idx, slots in self.bonus.optimizer.state_dict()["state"].items():
            for name, value in slots.items():
                out[f"adam.{idx}.{name}"] = torch.as_tensor(value).detach().cpu().clone()
        out["generator"] = self.bonus._gen.get_state()
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        self.bonus.load_state_dict(part("bonus."))
        self.return_rms.load_state_dict(part("return_rms."))
        adam: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in part("adam.").items():
            idx, name = key.split(".", 1)
            adam.setdefault(int(idx), {})[name] = value
        optim = self.bonus.optimizer.state_dict()
        optim["state"] = adam
        self.bonus.optimizer.load_state_dict(optim)
        self.bonus._gen.set_state(tensors["generator"])
        self._carry.clear()  # the env runners start new episodes after a resume


class IntrinsicPPOTorchLearner(TwoStreamPPOTorchLearner):
    """The two-stream PPO learner (:mod:`robodistill.teach.rl.two_stream_rllib`) with
    :class:`IntrinsicRewardConnector` at the head of its learner connector pipeline (the
    pattern of RLlib's ``PPOTorchLearnerWithCuriosity`` example). Settings come from
    ``config.learner_config_dict[LEARNER_CONFIG_KEY]``."""

    def build(self) -> None:
        super().build()
        settings = self.config.learner_config_dict[LEARNER_CONFIG_KEY]
        space = self.module[DEFAULT_MODULE_ID].observation_space
        # Before AddOneTsToEpisodesAndTruncate: the episodes are still as sampled (original
        # ids and lengths, no bootstrap step appended).
        self._learner_connector.insert_before(
            AddOneTsToEpisodesAndTruncate,
            IntrinsicRewardConnector(
                exploration=settings["exploration"],
                obs_dim=int(np.prod(space.shape)),
                seed=int(settings["seed"]),
            ),
        )


def add_exploration(config, exploration: ExplorationConfig, seed: int):
    """Configure ``config`` (a ``PPOConfig``) for ``exploration``: the two-stream RLModule and
    learner; ``method: none`` leaves it unchanged (plain RLlib PPO). Returns ``config``."""
    if exploration.method == "none":
        return config
    sb3_only = {
        "bonus_input": (bool(exploration.bonus_input), "leave it empty"),
        "input_scaling": (exploration.input_scaling != "running", "use running"),
        "return_norm_window": (exploration.return_norm_window is not None, "use null"),
        "episodic_cell": (exploration.episodic_cell is not None, "use null"),
    }
    for key, (set_, fix) in sb3_only.items():
        if set_:
            raise ConfigError(
                f"teach.exploration.{key} is built for stable-baselines3 teachers only; on "
                f"RLlib the bonus sees the whole observation, scaled by running statistics "
                f"over the whole run: set teach.backend: sb3 or {fix}"
            )
    if (config.num_learners or 0) > 1:
        raise ValueError(
            "intrinsic rewards on RLlib keep one predictor in the learner; num_learners > 1 "
            "would train one copy per learner"
        )
    if config.is_multi_agent:
        raise ValueError("intrinsic rewards on RLlib are built for single-agent PPO only")
    two_stream = {
        "gamma_int": float(exploration.gamma_int),
        "extrinsic_coef": float(exploration.extrinsic_coef),
        "intrinsic_coef": float(exploration.intrinsic_coef),
    }
    config.rl_module(
        rl_module_spec=RLModuleSpec(
            module_class=TwoStreamPPOTorchRLModule, model_config={SEED_KEY: int(seed)}
        )
    )
    return config.learners(
        learner_class=IntrinsicPPOTorchLearner,
        learner_config_dict={
            LEARNER_CONFIG_KEY: {"exploration": exploration.model_dump(), "seed": int(seed)},
            TWO_STREAM_KEY: two_stream,
        },
    )


def find_connector(learner) -> IntrinsicRewardConnector | None:
    """The learner's :class:`IntrinsicRewardConnector`, or None."""
    pipeline = getattr(learner, "_learner_connector", None)
    for piece in getattr(pipeline, "connectors", ()):
        if isinstance(piece, IntrinsicRewardConnector):
            return piece
    return None


def _on_learner(algo, func):
    """``func(connector)`` on the (single) learner, local or remote; its result."""

    def call(learner):
        connector = find_connector(learner)
        return None if connector is None else func(connector)

    (result,) = [r.get() for r in algo.learner_group.foreach_learner(call)]
    return result


def exploration_state(algo) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """``(bonus_config, tensors)`` of the learner's connector, or None without one."""
    return _on_learner(algo, lambda c: (c.bonus_config(), c.state_tensors()))


def exploration_stats(algo) -> dict[str, float]:
    """The connector's statistics from its last update (empty before the first)."""
    return _on_learner(algo, lambda c: dict(c.last_stats)) or {}


def save_exploration(algo, directory: str | os.PathLike) -> bool:
    """Write ``exploration.safetensors`` + ``exploration.json`` into ``directory``;
    ``False`` (nothing written) when the algorithm has no exploration connector."""
    state = exploration_state(algo)
    if state is None:
        return False
    config, tensors = state
    directory = Path(directory)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / TENSORS_NAME))
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return True


def load_exploration(algo, directory: str | os.PathLike) -> None:
    """Restore what :func:`save_exploration` wrote into the learner's connector. Raises
    ``ValueError`` when the files are missing or were written for another bonus module."""
    directory = Path(directory)
    current = exploration_state(algo)
    if current is None:
        raise ValueError("load_exploration: the algorithm has no intrinsic-reward connector")
    files = [directory / TENSORS_NAME, directory / CONFIG_NAME]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"exploration state missing in the checkpoint: {', '.join(missing)}")
    saved = json.loads(files[1].read_text())
    if saved != current[0]:
        changed = sorted(
            k for k in saved.keys() | current[0].keys() if saved.get(k) != current[0].get(k)
        )
        raise ValueError(f"{files[1]} was written for another bonus module (differs in {changed})")
    tensors = load_file(str(files[0]))
    _on_learner(algo, lambda c: c.load_state_tensors(tensors))
