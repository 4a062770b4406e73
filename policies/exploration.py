"""Exploration bonuses from distilling random networks: RND and RDD (torch only).

::

    rnd = RNDBonus(obs_dim=3, embedding_dim=64, hidden=128)
    rnd.update_obs_stats(obs)            # (N, 3): running mean/std of the inputs
    b = rnd.bonus(next_obs)              # (B, 3) -> (B,) float32 tensor, no grad
    stats = rnd.update(obs)              # trains the predictor on a random share of (N, 3)

**RND** (Burda et al., 2018). A frozen, randomly initialised target MLP ``mu(s)`` maps
normalised observations to an embedding; a trained predictor ``m(s)`` regresses on it. The
bonus is ``b(s) = mean_k (m_k(s) - mu_k(s))^2`` (mean over the ``d = embedding_dim`` features).
Inputs are normalised by a running mean/std and clipped to ``[-obs_clip, obs_clip]``; the
predictor trains on a random ``update_proportion`` share of each batch (RND uses 25 %) so
it does not learn visited states too fast.

**RDD** (Fang et al., 2025, "Exploration by Random Distribution Distillation"; no public
code, so this is our reading of the paper). The target's output at ``s`` is not the fixed
vector ``mu(s)`` but a sample ``y = mu(s) + sigma * eps``, ``eps ~ N(0, I_d)``, drawn fresh
at every update, and the predictor regresses on those samples. For a state seen ``n`` times
the regression optimum is ``mu(s) + sigma * mean(eps_1..eps_n)``, so the predictor's
distance from ``mu(s)`` is a *discrepancy* (how far the network is from its optimum, which
shrinks as it converges and stays large at novel states) plus a *pseudo-count* term
``sigma^2 * ||mean(eps)||^2 ~ sigma^2 * d / n``.

What we implement. The RDD predictor is written as ``f(s) = m(s) + sigma * u(s)`` with two
parts, both trained on the sampled targets:

* ``m(s)``: the mean head, trained with ``||m(s) - mu(s)||^2`` (exactly RND's predictor);
* ``u(s) = p(s) + r(s)``: the noise head, trained with ``||u(s) - eps||^2`` on fresh noise.
  ``p`` is a second frozen random MLP (scaled to unit output variance at init) and ``r`` a
  trained MLP whose last layer starts at zero. The frozen prior ``p`` is what keeps the
  term high at novel states: ``r`` learns to cancel ``p`` only where it has data
  (Osband et al.'s randomized prior, also used by Coin-Flip Networks for counts).

Summed, ``||m - mu||^2 + ||u - eps||^2`` has the same minimisers as the paper's
``||f - y||^2`` (the cross term ``2 sigma (m - mu).(u - eps)`` has zero mean over ``eps``),
but the split keeps the mean head from absorbing noise and makes both terms observable.
(The noise part is not weighted by ``sigma^2`` so its learning speed does not depend on
``sigma``; ``sigma`` only scales its share of the bonus.) The bonus is then

    ``b(s) = mean_k (m_k(s) - mu_k(s))^2  +  sigma^2 * mean_k u_k(s)^2``
    ``     =        discrepancy(s)         +  pseudo_count(s)``

At the noise head's optimum ``u(s) = mean(eps_1..eps_n)``, so ``E[pseudo_count] =
sigma^2 / n`` (``sigma^2 d / n`` before averaging over the ``d`` features, the paper's
form); at init and at unvisited states ``u ~ p`` has unit variance, i.e. ``n ~ 1``. The
cross term of ``||f(s) - mu(s)||^2`` is dropped: it is zero in expectation at the optimum.
Caveat, stated honestly: a network trained by constant-step Adam averages recent noise
with an exponential window rather than the exact ``1/n`` mean, so the term decays like
``1/n`` at first and then levels off at a floor set by the learning rate.

**Input scaling by bounds** (an addition to both papers, for low-dimensional inputs such
as the robot's world position). With ``input_bounds=(low, high)`` inputs are mapped
affinely from that box to ``[-1, 1]`` instead of by the running mean/std. RND's running
statistics describe the states *visited*: after a policy that stays in a 3 m strip of an
8 m hall, every place beyond ``obs_clip`` of its std maps to the same clipped input, so
the unvisited part of the hall reads as already seen (measured on ``AGVMaze-v0``, see
``docs/algorithms/exploration.md``). ``centre_on_visited=True`` keeps RND's running *mean*
as the centre and only takes the *scale* from the box. Why the centre matters: target and
predictor start with zero biases, so at initialisation both are positively homogeneous
ReLU maps and the bonus grows like ``|x|^2`` away from the normalised origin. Centred on
the box, the first landscape is lowest in the middle of the arena and highest in its
corners, whichever is near the start; centred on the visited states, it grows with the
distance from where the robot has been, in every direction.

Both modules keep their normalisers as buffers, so ``state_dict()`` round-trips, and all
randomness (init, update subsets, RDD noise) comes from torch's global RNG at construction
(the update generator is seeded from it), so a run is deterministic given
``torch.manual_seed``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn


class RunningMeanStd(nn.Module):
    """Running mean and variance over the leading axis, as buffers (saved in state dicts).

    ``update(x)`` with ``x`` of shape ``(N, *shape)`` merges the batch moments with the
    parallel (Chan et al.) formula, as in RND's reference implementation. ``count`` starts
    at a tiny epsilon (RND's choice) so the first merge is well defined.

    ``max_count``: the weight of the old statistics is capped at this many samples, so the
    estimate follows the last ~``max_count`` samples (an exponential forgetting window)
    instead of the whole history; ``None`` keeps the whole history (RND).
    """

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4,
                 max_count: float | None = None):  # fmt: skip
        super().__init__()
        if max_count is not None and max_count <= 0:
            raise ValueError(f"max_count must be positive or None, got {max_count}")
        self.max_count = max_count
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor | np.ndarray) -> None:
        x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
        x = x.to(device=self.mean.device, dtype=torch.float64).reshape(-1, *self.mean.shape)
        if x.shape[0] == 0:
            return
        batch_mean = x.mean(0)
        batch_var = x.var(0, unbiased=False)
        batch_count = float(x.shape[0])
        delta = batch_mean - self.mean
        total = self.count + batch_count
        new_mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count
        m2 = m2 + delta.square() * self.count * batch_count / total
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / total)
        self.count.copy_(total if self.max_count is None else total.clamp(max=self.max_count))

    @property
    def std(self) -> torch.Tensor:
        return torch.sqrt(self.var)


def _mlp(sizes: list[int], last_gain: float = 1.0) -> nn.Sequential:
    """ReLU MLP with orthogonal init (RND's init); ``sizes`` = [in, hidden..., out]."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, gain=last_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RNDBonus(nn.Module):
    """Random Network Distillation bonus.

    Args:
        obs_dim: flattened observation size ``D``.
        embedding_dim: output size ``d`` of target and predictor.
        hidden: hidden width; the target is ``D -> hidden -> hidden -> d``, the predictor
            has one more hidden layer (RND's predictor is deeper than its target so it can
            fit it).
        learning_rate: Adam learning rate of the predictor.
        update_proportion: share of each batch the predictor trains on.
        obs_clip: normalised inputs are clipped to ``[-obs_clip, obs_clip]``.
        batch_size: minibatch size of one Adam step in :meth:`update`.
        input_bounds: ``(low, high)``, each ``(D,)`` and finite: scale inputs from this box
            to ``[-1, 1]`` instead of by the running mean/std (see the module docstring).
        centre_on_visited: with ``input_bounds``, centre the inputs on the running mean of
            the visited ones instead of the box's centre (the scale stays the box's).
    """

    def __init__(
        self,
        obs_dim: int,
        embedding_dim: int = 64,
        hidden: int = 128,
        learning_rate: float = 1e-4,
        update_proportion: float = 0.25,
        obs_clip: float = 5.0,
        batch_size: int = 256,
        input_bounds: tuple[Any, Any] | None = None,
        centre_on_visited: bool = False,
    ):
        super().__init__()
        self.centre_on_visited = bool(centre_on_visited)
        self.obs_dim = int(obs_dim)
        self.embedding_dim = int(embedding_dim)
        self.update_proportion = float(update_proportion)
        self.obs_clip = float(obs_clip)
        self.batch_size = int(batch_size)
        self.obs_rms = RunningMeanStd((self.obs_dim,))
        self._set_bounds(input_bounds)
        self.target = _mlp([self.obs_dim, hidden, hidden, self.embedding_dim])
        self.target.requires_grad_(False)  # fixed random features: never trained
        self.predictor = _mlp([self.obs_dim, hidden, hidden, hidden, self.embedding_dim])
        self._build_extra(hidden)
        self.optimizer = torch.optim.Adam(self.trainable_parameters(), lr=learning_rate)
        # Private generator for update subsets / RDD noise, seeded from the global RNG so
        # the whole module is reproducible under torch.manual_seed without consuming the
        # global stream during training.
        seed = int(torch.randint(0, 2**62, (1,)).item())
        self._gen = torch.Generator().manual_seed(seed)

    def _set_bounds(self, bounds: tuple[Any, Any] | None) -> None:
        """Registers the input box as buffers, only when given, so the state dict of a
        running-normalised module keeps RND's keys."""
        self.has_bounds = bounds is not None
        if bounds is None:
            return
        low, high = (np.asarray(b, dtype=np.float64).reshape(-1) for b in bounds)
        if low.shape != (self.obs_dim,) or high.shape != (self.obs_dim,):
            raise ValueError(
                f"input_bounds need {self.obs_dim} values each, got {low.shape} and {high.shape}"
            )
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (high > low).all()):
            raise ValueError(
                f"input_bounds must be finite with high > low, got low={low.tolist()}, "
                f"high={high.tolist()}"
            )
        self.register_buffer("input_low", torch.as_tensor(low))
        self.register_buffer("input_high", torch.as_tensor(high))

    # -- hooks for RDD -------------------------------------------------------------------
    def _build_extra(self, hidden: int) -> None:
        """Subclasses add their networks here (before the optimizer is built)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- inputs ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.obs_rms.mean.device

    def _as_tensor(self, obs: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = obs if torch.is_tensor(obs) else torch.as_tensor(np.asarray(obs))
        return x.to(device=self.device, dtype=torch.float32).reshape(-1, self.obs_dim)

    def normalize(self, obs: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``(B, D)`` raw -> ``(B, D)`` float32, standardised (or scaled from
        ``input_bounds`` to ``[-1, 1]``) and clipped."""
        x = self._as_tensor(obs)
        if self.has_bounds:
            low, high = self.input_low.float(), self.input_high.float()
            centre = self.obs_rms.mean.float() if self.centre_on_visited else (low + high) / 2
            x = 2 * (x - centre) / (high - low)
        else:
            mean = self.obs_rms.mean.float()
            x = (x - mean) / torch.sqrt(self.obs_rms.var.float() + 1e-8)
        return x.clamp(-self.obs_clip, self.obs_clip)

    def update_obs_stats(self, obs: torch.Tensor | np.ndarray) -> None:
        """Merge ``(N, D)`` raw observations into the input normaliser."""
        self.obs_rms.update(self._as_tensor(obs))

    # -- bonus -------------------------------------------------------------------------------
    def _terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-state bonus terms, each ``(B,)``, on normalised inputs ``x`` (B, D)."""
        err = (self.predictor(x) - self.target(x)).square().mean(-1)
        return {"discrepancy": err}

    @torch.no_grad()
    def bonus_terms(self, obs: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """The bonus's parts, each ``(B,)`` (RND: ``discrepancy`` only)."""
        return self._terms(self.normalize(obs))

    @torch.no_grad()
    def bonus(self, obs: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``(B, D)`` observations -> ``(B,)`` float32 intrinsic bonus (no grad)."""
        return sum(self.bonus_terms(obs).values())

    # -- training ----------------------------------------------------------------------------
    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        """Predictor loss on a normalised minibatch ``x`` (B, D): scalar."""
        return (self.predictor(x) - self.target(x)).square().mean()

    @torch.no_grad()
    def loss(self, obs: torch.Tensor | np.ndarray) -> float:
        """The training loss on ``(N, D)`` observations, without training (RDD: noisy)."""
        return float(self._loss(self.normalize(obs)))

    def update(self, obs: torch.Tensor | np.ndarray, epochs: int = 1,
               minibatches: int | None = None) -> dict[str, float]:  # fmt: skip
        """Train the predictor on ``(N, D)`` obs for ``epochs`` passes; returns
        ``{"predictor_loss": mean minibatch loss}`` (NaN when the batch is empty).

        ``minibatches`` given (RND's scheme, as in its PPO): each pass splits the shuffled
        batch into that many minibatches and takes one Adam step per minibatch on a random
        ``update_proportion`` share of it. ``None``: one Adam step per ``batch_size`` chunk of
        a random ``update_proportion`` share of the whole batch.
        """
        x = self.normalize(obs)
        n = x.shape[0]
        if n == 0:
            return {"predictor_loss": float("nan")}
        if minibatches is not None:
            return self._update_minibatches(x, epochs, minibatches)
        losses = []
        for _ in range(epochs):
            # RND's trick: each sample is kept with probability update_proportion, so the
            # predictor does not fit visited states immediately (keeps the bonus informative
            # with many parallel envs). Keep at least one sample.
            keep = torch.rand(n, generator=self._gen) < self.update_proportion
            idx = torch.nonzero(keep).flatten()
            if idx.numel() == 0:
                idx = torch.randint(0, n, (1,), generator=self._gen)
            idx = idx[torch.randperm(idx.numel(), generator=self._gen)].to(self.device)
            for start in range(0, idx.numel(), self.batch_size):
                batch = x[idx[start : start + self.batch_size]]
                loss = self._loss(batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                losses.append(loss.item())
        return {"predictor_loss": float(np.mean(losses))}

    def _update_minibatches(
        self, x: torch.Tensor, epochs: int, minibatches: int
    ) -> dict[str, float]:
        n, losses = x.shape[0], []
        size = -(-n // minibatches)
        for _ in range(epochs):
            order = torch.randperm(n, generator=self._gen).to(self.device)
            for start in range(0, n, size):
                mb = order[start : start + size]
                keep = torch.rand(mb.numel(), generator=self._gen) < self.update_proportion
                batch = x[mb[keep.to(self.device)]] if bool(keep.any()) else x[mb[:1]]
                loss = self._loss(batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                losses.append(loss.item())
        return {"predictor_loss": float(np.mean(losses))}

    def config(self) -> dict[str, Any]:
        """Constructor arguments (what a checkpoint needs to rebuild the module)."""
        return {
            "obs_dim": self.obs_dim,
            "embedding_dim": self.embedding_dim,
            "hidden": self.target[0].out_features,
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "update_proportion": self.update_proportion,
            "obs_clip": self.obs_clip,
            "batch_size": self.batch_size,
            "input_bounds": (
                [self.input_low.tolist(), self.input_high.tolist()] if self.has_bounds else None
            ),
            "centre_on_visited": self.centre_on_visited,
        }


class RDDBonus(RNDBonus):
    """Random Distribution Distillation bonus: ``discrepancy + pseudo_count``.

    See the module docstring for the formula. Extra argument: ``sigma``, the standard
    deviation of the Gaussian around the target's output.
    """

    def __init__(self, obs_dim: int, *args: Any, sigma: float = 0.5, **kwargs: Any):
        self.sigma = float(sigma)
        super().__init__(obs_dim, *args, **kwargs)

    def _build_extra(self, hidden: int) -> None:
        d = self.embedding_dim
        self.noise_prior = _mlp([self.obs_dim, hidden, hidden, d])
        self.noise_prior.requires_grad_(False)
        # Scale the prior to unit output variance on standard-normal inputs (what normalised
        # observations look like), so an untrained state reads as "seen about once".
        with torch.no_grad():
            probe = self.noise_prior(torch.randn(4096, self.obs_dim))
            scale = 1.0 / probe.std().clamp_min(1e-6)
        self.register_buffer("noise_prior_scale", scale.reshape(()))
        self.noise_residual = _mlp([self.obs_dim, hidden, hidden, hidden, d])
        # Zero last layer: the noise head starts exactly at the prior.
        nn.init.zeros_(self.noise_residual[-1].weight)

    def noise_head(self, x: torch.Tensor) -> torch.Tensor:
        """``u(s)`` on normalised inputs (B, D) -> (B, d)."""
        return self.noise_prior(x) * self.noise_prior_scale + self.noise_residual(x)

    def _terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = super()._terms(x)
        terms["pseudo_count"] = self.sigma**2 * self.noise_head(x).square().mean(-1)
        return terms

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        # Fresh noise every call: the target's output is a new sample at each visit.
        eps = torch.randn(x.shape[0], self.embedding_dim, generator=self._gen).to(x.device)
        mean_part = (self.predictor(x) - self.target(x)).square().mean()
        noise_part = (self.noise_head(x) - eps).square().mean()
        return mean_part + noise_part

    def config(self) -> dict[str, Any]:
        return {**super().config(), "sigma": self.sigma}


GAMMA_INT = 0.99
"""Discount of the non-episodic intrinsic return used only to normalise the bonus (RND's)."""


def bonus_from_config(cfg: Any, obs_dim: int, seed: int,
                      input_bounds: tuple[Any, Any] | None = None) -> RNDBonus:  # fmt: skip
    """The bonus module ``cfg`` (an ``ExplorationConfig``) describes, its weights seeded by
    ``seed`` without touching torch's global RNG (both teacher backends build it this way).
    ``input_bounds``: the bonus input's ``(low, high)`` box, needed when
    ``cfg.input_scaling`` is ``bounds`` or ``bounds_running_mean``."""
    scaling = cfg.input_scaling
    bounded = scaling in ("bounds", "bounds_running_mean")
    if bounded and input_bounds is None:
        raise ValueError(f"input_scaling {scaling!r} needs the bonus input's bounds")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make_bonus(
            cfg.method,
            int(obs_dim),
            embedding_dim=cfg.embedding_dim,
            hidden=cfg.hidden,
            learning_rate=cfg.learning_rate,
            update_proportion=cfg.update_proportion,
            obs_clip=cfg.obs_clip,
            sigma=cfg.rdd_sigma,
            input_bounds=input_bounds if bounded else None,
            centre_on_visited=scaling == "bounds_running_mean",
        )


def make_bonus(method: str, obs_dim: int, **kwargs: Any) -> RNDBonus:
    """``"rnd"`` -> :class:`RNDBonus`, ``"rdd"`` -> :class:`RDDBonus` (``sigma=`` allowed)."""
    if method == "rnd":
        kwargs.pop("sigma", None)
        return RNDBonus(obs_dim, **kwargs)
    if method == "rdd":
        return RDDBonus(obs_dim, **kwargs)
    raise ValueError(f"unknown exploration method {method!r}; expected 'rnd' or 'rdd'")
