"""Diffusion policy (Chi et al.): DDPM training, DDIM sampling, receding-horizon execution.

Observation history To, predicted chunk H and executed actions Ta (defaults 2 / 16 / 8),
receding-horizon execution and temporal ensembling are :mod:`robodistill.policies.chunking`'s
(diagram there); this module supplies the chunks.

Denoising: the network predicts the noise (epsilon); training noises normalized action
chunks with diffusers' ``DDPMScheduler`` (100 steps, ``squaredcos_cap_v2``); sampling runs
K DDIM steps (``DDIMScheduler``'s timesteps and alphas) from ``x_K ~ N(0, I)`` to ``x_0``.
Each step is a Gaussian, which is what RL on the denoising chain (RL-100, DPPO) needs::

    x0_hat = clip((x_k - sqrt(1 - a_t) eps_hat) / sqrt(a_t), -1, 1)
    sigma  = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))      (DDIM)
    mean   = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat
    x_{k-1} ~ N(mean, std^2),   std = max(sigma, min_std)

``eta = 0, std = 0`` is deterministic DDIM (``predict_action_chunk``; it equals
``DDIMScheduler.step``). :meth:`sample_chain` draws the stochastic chain and returns every
latent (B, K+1, H, A) with per-step log-probabilities (B, K); :meth:`chain_log_prob`
recomputes them, differentiably, under the current weights (PPO ratios).

Two copies of the network: ``net`` (trained) and ``ema_net`` (exponential moving average
of ``net``, written by the trainer through :meth:`make_ema` / :meth:`load_ema`). Evaluation
(``act``, ``predict_action_chunk``) uses ``ema_net`` by default; training-side methods
(``compute_loss``, ``sample_chain``, ``chain_log_prob``) use ``net`` by default.

:class:`DiffusionPolicyConfig` is defined in :mod:`robodistill.policies.diffusion_config`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from torch import nn

from robodistill.policies.base import register_policy
from robodistill.policies.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from robodistill.policies.chunking import Affine, ChunkedPolicy
from robodistill.policies.diffusion_config import DiffusionPolicyConfig
from robodistill.policies.diffusion_nets import (
    DenoisingSchedule,
    count_parameters,
    gaussian_log_prob,
)
from robodistill.policies.normalizer import Normalizer


@dataclass
class DiffusionChain:
    """One stochastic denoising chain per batch row (see :meth:`DiffusionPolicy.sample_chain`).

    ``latents`` (B, K+1, H, A): ``x_K`` (pure noise) ... ``x_0``, normalized action space.
    ``log_probs`` (B, K): ``log N(x_{k-1}; mean_k(x_k), std_k^2)`` summed over (H, A)
    (each element's, (B, K, H, A), when sampled with ``per_element``).
    ``actions`` (B, H, A): ``x_0`` clipped to [-1, 1] and unnormalized (env units).
    ``timesteps`` (K,): the DDIM training timesteps of the K steps, noisiest first.
    """

    latents: torch.Tensor
    log_probs: torch.Tensor
    actions: torch.Tensor
    timesteps: torch.Tensor


@register_policy
class DiffusionPolicy(ChunkedPolicy):
    """Observation history -> action chunk by DDIM denoising; see the module docstring.

    Args:
        config: the :class:`DiffusionPolicyConfig`.
        normalizer: per-key :class:`Normalizer` with keys ``"obs"`` (D,) and ``"action"``
            (A,); ``None`` is the identity until the trainer sets statistics.
    """

    kind = "diffusion"

    def __init__(self, config: DiffusionPolicyConfig, normalizer: Normalizer | None = None):
        self.config = c = config
        self.net = c.denoiser()
        # The EMA copy never trains: no grads, eval mode (GroupNorm has no running stats, so
        # train/eval mode only matters for clarity).
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False).eval()
        if normalizer is None:
            normalizer = Normalizer({"obs": (c.obs_dim,), "action": (c.action_dim,)})
        missing = {"obs", "action"} - set(normalizer.keys)
        if missing:
            raise ValueError(f"the normalizer needs statistics for {sorted(missing)}")
        self.normalizer = normalizer
        self.schedules = DenoisingSchedule(c.num_train_timesteps, c.beta_schedule,
                                           c.clip_sample, c.timestep_spacing)  # fmt: skip
        self.device = torch.device("cpu")
        self._generator = torch.Generator().manual_seed(c.seed)
        self._state: dict[str, torch.Tensor] | None = None
        self._rti: dict[str, torch.Tensor] | None = None  # RTI: previous plan per row

    # -- bookkeeping ---------------------------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        return count_parameters(self.net)

    def to(self, device: str | torch.device) -> DiffusionPolicy:
        self.device = torch.device(device)
        for module in (self.net, self.ema_net, self.normalizer):
            module.to(self.device)
        self._state = None
        return self

    def make_ema(self, decay: float = 0.9999, power: float = 0.75, min_decay: float = 0.0,
                 update_after_step: int = 0) -> EMAModel:  # fmt: skip
        """diffusers' EMAModel over ``net`` with diffusion-policy's warm-up:
        ``decay_n = min(decay, 1 - (1 + n) ** -power)`` after ``n`` updates."""
        return EMAModel(
            self.net.parameters(), decay=decay, min_decay=min_decay, use_ema_warmup=True,
            inv_gamma=1.0, power=power, update_after_step=update_after_step,
        )  # fmt: skip

    def load_ema(self, ema: EMAModel) -> None:
        """Copy the EMA's shadow weights into ``ema_net`` (before evaluating or saving)."""
        ema.copy_to(self.ema_net.parameters())

    def _gen(self, generator: torch.Generator | None) -> torch.Generator:
        return self._generator if generator is None else generator

    def _network(self, use_ema: bool) -> nn.Module:
        return self.ema_net if use_ema else self.net

    # -- input checks and conditioning ---------------------------------------------------------
    def _as_tensor(self, x: Any, name: str) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
        if not t.is_floating_point():
            t = t.float()
        t = t.to(self.device, torch.float32)
        if not torch.isfinite(t).all():
            hint = "" if name == "noise" else " (check the environment or the demonstrations)"
            raise ValueError(f"{name} contains NaN or inf{hint}")
        return t

    def _obs_hist(self, obs_hist: Any) -> torch.Tensor:
        c = self.config
        t = self._as_tensor(obs_hist, "obs_hist")
        if t.ndim != 3 or tuple(t.shape[1:]) != (c.obs_horizon, c.obs_dim):
            raise ValueError(
                f"obs_hist must have shape (B, obs_horizon={c.obs_horizon}, obs_dim={c.obs_dim}), "
                f"got {tuple(t.shape)}; this policy was trained on {c.obs_dim}-dimensional "
                f"observations with a history of {c.obs_horizon} steps"
            )
        return t

    def condition(self, obs_hist: Any) -> torch.Tensor:
        """(B, To, D) raw observations -> (B, To * D) normalized global conditioning."""
        obs = self.normalizer.normalize("obs", self._obs_hist(obs_hist))
        return obs.flatten(1)

    # -- training ------------------------------------------------------------------------------
    def compute_loss(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Denoising loss on a batch of windows (LeRobot's ``forward``).

        ``batch``: ``obs`` (B, To, D) and ``action`` (B, H, A) in env units, optionally
        ``action_is_pad`` (B, H) bool (used when ``mask_padded_actions``). Noise and
        timesteps come from ``generator`` (CPU; for reproducible, resumable training).
        Returns the mean squared error between predicted and true noise and a log dict.
        """
        c = self.config
        for key in ("obs", "action"):
            if key not in batch:
                raise KeyError(f"compute_loss: batch has no {key!r}; it has {sorted(batch)}")
        cond = self.condition(batch["obs"])
        action = self._as_tensor(batch["action"], "batch['action']")
        if action.ndim != 3 or tuple(action.shape[1:]) != (c.pred_horizon, c.action_dim):
            raise ValueError(
                f"batch['action'] must be (B, pred_horizon={c.pred_horizon}, "
                f"action_dim={c.action_dim}), got {tuple(action.shape)}"
            )
        x0 = self.normalizer.normalize("action", action)
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        t = torch.randint(0, c.num_train_timesteps, (b,), generator=generator).to(self.device)
        noisy = self.schedules.ddpm.add_noise(x0, noise, t)
        err = (self.net(noisy, t, cond) - noise).pow(2)  # (B, H, A)
        if c.mask_padded_actions and "action_is_pad" in batch:
            keep = ~torch.as_tensor(np.asarray(batch["action_is_pad"]), device=self.device)
            keep = keep[..., None].expand_as(err).float()
            loss = (err * keep).sum() / keep.sum().clamp(min=1.0)
        else:
            loss = err.mean()
        return loss, {"loss": float(loss.detach())}

    # -- the DDIM chain ------------------------------------------------------------------------
    def schedule(
        self, num_inference_steps: int | None = None, eta: float = 0.0, min_std: float = 0.0
    ) -> dict[str, torch.Tensor]:
        """Per-step constants (K,) of the K-step chain (:meth:`DenoisingSchedule.steps`)."""
        k = int(num_inference_steps or self.config.num_inference_steps)
        return self.schedules.steps(k, eta, min_std, self.device)

    def _step_mean(self, net, x, t, cond, alpha, alpha_prev, sigma) -> torch.Tensor:
        return self.schedules.step_mean(net(x, t, cond), x, alpha, alpha_prev, sigma)

    def _initial_noise(self, batch: int, noise: Any, generator: torch.Generator | None):
        c = self.config
        shape = (batch, c.pred_horizon, c.action_dim)
        if noise is None:
            return torch.randn(shape, generator=self._gen(generator)).to(self.device)
        x = self._as_tensor(noise, "noise")
        if tuple(x.shape) != shape:
            raise ValueError(f"noise must have shape {shape} (B, H, A), got {tuple(x.shape)}")
        return x

    def _unnormalize_actions(self, x0: torch.Tensor) -> torch.Tensor:
        return self.normalizer.unnormalize("action", x0.clamp(-1.0, 1.0))

    @torch.no_grad()
    def predict_action_chunk(
        self,
        obs_hist: Any,
        noise: Any = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
    ) -> torch.Tensor:
        """Deterministic DDIM: (B, To, D) observations -> (B, H, A) actions in env units.

        ``noise`` (B, H, A) is ``x_K`` in normalized space (drawn from ``generator``, else
        the policy's own generator, when ``None``); with the same noise the output is a
        pure function of the observations, which is what export and parity checks need.
        """
        cond = self.condition(obs_hist)
        x = self._initial_noise(cond.shape[0], noise, generator)
        return self._unnormalize_actions(self.ddim_from(cond, x, num_inference_steps, use_ema))

    @torch.no_grad()
    def ddim_from(self, cond: torch.Tensor, noise: torch.Tensor,
                  num_inference_steps: int | None = None, use_ema: bool = True) -> torch.Tensor:  # fmt: skip
        """Deterministic DDIM in normalized space: ``cond`` (B, G) from :meth:`condition`,
        ``noise`` (B, H, A) = ``x_K`` -> (B, H, A) ``x_0``, not clipped (what the students
        distill: the teacher's own sampler as a map from noise to chunks)."""
        net = self._network(use_ema)
        x = noise
        sched = self.schedule(num_inference_steps)
        for k, t in enumerate(sched["timesteps"].tolist()):
            x = self._step_mean(net, x, t, cond, sched["alpha"][k], sched["alpha_prev"][k],
                                sched["sigma"][k])  # fmt: skip
        return x

    @torch.no_grad()
    def sample_chain(
        self,
        obs_hist: Any,
        noise: Any = None,
        num_inference_steps: int | None = None,
        eta: float | None = None,
        min_std: float | None = None,
        generator: torch.Generator | None = None,
        use_ema: bool = False,
        per_element: bool = False,
    ) -> DiffusionChain:
        """Stochastic DDIM chain with Gaussian steps; see :class:`DiffusionChain` for shapes.

        ``eta`` (default ``config.chain_eta``) scales DDIM's posterior std; the std used is
        ``max(sigma, min_std)`` (default ``config.min_std``), so every step, including the
        last (where DDIM's sigma is 0), has a proper density. With ``per_element`` the
        ``log_probs`` are each element's (B, K, H, A), as :meth:`chain_log_prob` gives them:
        a rollout needs no second pass through the network for its old log-probabilities.
        """
        c = self.config
        eta = c.chain_eta if eta is None else eta
        min_std = c.min_std if min_std is None else min_std
        if min_std <= 0:
            raise ValueError("sample_chain needs min_std > 0 so that every step has a density")
        net = self._network(use_ema)
        cond = self.condition(obs_hist)
        x = self._initial_noise(cond.shape[0], noise, generator)
        sched = self.schedule(num_inference_steps, eta, min_std)
        latents, log_probs = [x], []
        for k, t in enumerate(sched["timesteps"].tolist()):
            mean = self._step_mean(net, x, t, cond, sched["alpha"][k], sched["alpha_prev"][k],
                                   sched["sigma"][k])  # fmt: skip
            std = sched["std"][k]
            z = torch.randn(mean.shape, generator=self._gen(generator)).to(self.device)
            x = mean + std * z
            log_probs.append(gaussian_log_prob(x, mean, std, reduce=not per_element))
            latents.append(x)
        return DiffusionChain(
            latents=torch.stack(latents, dim=1),
            log_probs=torch.stack(log_probs, dim=1),
            actions=self._unnormalize_actions(x),
            timesteps=sched["timesteps"],
        )

    def chain_log_prob(
        self,
        obs_hist: Any,
        latents: torch.Tensor,
        num_inference_steps: int | None = None,
        eta: float | None = None,
        min_std: float | None = None,
        steps: Sequence[int] | None = None,
        use_ema: bool = False,
        per_element: bool = False,
    ) -> torch.Tensor:
        """Per-step log-probabilities (B, len(steps)) of a chain under the current weights;
        with ``per_element`` each element's (B, len(steps), H, A), whose sum over (H, A) is
        the step's log-probability (DPPO averages them over the executed actions).

        ``latents`` (B, K+1, H, A) as returned by :meth:`sample_chain` with the same K,
        eta and min_std. ``steps`` picks denoising steps (0 = the noisiest; DPPO fine-tunes
        only the last few: ``steps=range(K - k, K)``); default all K. Differentiable with
        respect to ``net`` (all steps go through the network in one batched call).
        """
        c = self.config
        eta = c.chain_eta if eta is None else eta
        min_std = c.min_std if min_std is None else min_std
        if min_std <= 0:
            raise ValueError("chain_log_prob needs min_std > 0 so that every step has a density")
        sched = self.schedule(num_inference_steps, eta, min_std)
        k_total = len(sched["timesteps"])
        latents = torch.as_tensor(latents, device=self.device, dtype=torch.float32)
        expected = (k_total + 1, c.pred_horizon, c.action_dim)
        if latents.ndim != 4 or tuple(latents.shape[1:]) != expected:
            raise ValueError(
                f"latents must be (B, K+1, H, A) = (B, {', '.join(map(str, expected))}) for "
                f"K={k_total} steps, got {tuple(latents.shape)}"
            )
        idx = torch.arange(k_total) if steps is None else torch.as_tensor(list(steps)).long()
        if idx.numel() == 0 or idx.min() < 0 or idx.max() >= k_total:
            raise ValueError(f"steps must be non-empty indices in [0, {k_total}), got {steps}")
        cond = self.condition(obs_hist)
        b, n = latents.shape[0], idx.numel()
        if cond.shape[0] != b:
            raise ValueError(f"obs_hist has {cond.shape[0]} rows but latents have {b}")
        idx = idx.to(self.device)
        x = latents[:, idx].reshape(b * n, *expected[1:])  # x_k for the chosen steps
        target = latents[:, idx + 1].reshape(b * n, *expected[1:])  # x_{k-1}

        def per_row(v: torch.Tensor) -> torch.Tensor:  # (K,) -> (B*n, 1, 1), row-major (b, step)
            return v[idx].repeat(b)[:, None, None]

        mean = self._step_mean(
            self._network(use_ema), x, sched["timesteps"][idx].repeat(b),
            cond.repeat_interleave(n, dim=0), per_row(sched["alpha"]),
            per_row(sched["alpha_prev"]), per_row(sched["sigma"]),
        )  # fmt: skip
        lp = gaussian_log_prob(target, mean, per_row(sched["std"]), reduce=not per_element)
        return lp.reshape(b, n, *lp.shape[1:])

    # -- acting (history, queue and ensembling: ChunkedPolicy.act) ---------------------------
    def plan(self, obs_hist: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(n, To, D) histories of batch rows ``rows`` -> (n, H, A) chunks with EMA weights:
        deterministic DDIM (``inference_eta`` 0), stochastic DDIM/DDPM (``inference_eta`` >
        0; 1 with K = T steps is DDPM's ancestral sampler), and with ``rti_steps`` > 0 the
        RTI warm start (:mod:`robodistill.policies.rti`) for rows that planned before."""
        c = self.config
        if not c.rti_steps and not c.inference_eta:
            return self.predict_action_chunk(obs_hist)
        with torch.no_grad():
            cond = self.condition(obs_hist)
            n = cond.shape[0]
            sched = self.schedule(eta=c.inference_eta)
            x = self._initial_noise(n, None, None)
            out = torch.empty_like(x)
            warm = torch.zeros(n, dtype=torch.bool)
            if c.rti_steps:
                batch = self._state["hist"].shape[0] if self._state is not None else n
                if self._rti is None or self._rti["plan"].shape[0] != batch:
                    self._rti = {"plan": torch.zeros(batch, *x.shape[1:]),
                                 "valid": torch.zeros(batch, dtype=torch.bool)}  # fmt: skip
                warm = self._rti["valid"][rows]
            if (~warm).any():
                out[~warm] = self._denoise(x[~warm], cond[~warm], sched, 0)
            if warm.any():
                from robodistill.policies.rti import warm_start

                first = len(sched["timesteps"]) - c.rti_steps
                shift = 1 if c.temporal_ensemble is not None else c.action_horizon
                x_tau = warm_start(self._rti["plan"][rows[warm]].to(self.device), shift,
                                   sched["alpha"][first], x[warm], c.rti_discrete_dims or ())  # fmt: skip
                out[warm] = self._denoise(x_tau, cond[warm], sched, first)
            if c.rti_steps:
                self._rti["plan"][rows] = out.cpu()
                self._rti["valid"][rows] = True
        return self._unnormalize_actions(out)

    def _denoise(self, x: torch.Tensor, cond: torch.Tensor, sched: dict[str, torch.Tensor],
                 first: int) -> torch.Tensor:  # fmt: skip
        """Run steps ``first..K-1`` of ``sched`` from ``x`` (n, H, A) with the EMA network,
        adding ``std * z`` where the step is stochastic; returns normalized x_0 (n, H, A)."""
        for k in range(first, len(sched["timesteps"])):
            t = int(sched["timesteps"][k])
            x = self._step_mean(self.ema_net, x, t, cond, sched["alpha"][k],
                                sched["alpha_prev"][k], sched["sigma"][k])  # fmt: skip
            if float(sched["std"][k]) > 0:
                z = torch.randn(x.shape, generator=self._generator).to(self.device)
                x = x + sched["std"][k] * z
        return x

    def reset_rows(self, rows: torch.Tensor | None) -> None:
        """RTI: a row's next plan after a reset has no previous plan to warm-start from."""
        if rows is None or self._rti is None:
            self._rti = None
        else:
            self._rti["valid"][rows] = False

    # -- export ------------------------------------------------------------------------------
    def onnx_spec(self) -> dict[str, Any]:
        """``denoise``-mode export (contract: :meth:`Policy.onnx_spec`): the graph is one
        deterministic DDIM step of the EMA network (:class:`DenoiserStep`), raw history
        (B, To, D) normalized inside, chunk (B, H, A) clipped to [-1, 1] and un-scaled (and
        clipped to ``action_low/high`` as :meth:`act` does); the runtime runs the K steps
        with this policy's own per-step constants (``schedule(K)``, eta 0) and executes
        actions ``[To - 1, To - 1 + Ta)`` of each chunk, like :meth:`act`."""
        from robodistill.deploy.export import DenoiserStep

        c = self.config
        sched = {k: v.cpu() for k, v in self.schedule(eta=c.inference_eta).items()}
        a, a_prev, sigma = sched["alpha"], sched["alpha_prev"], sched["sigma"]
        coefs = torch.stack([a.sqrt(), (1 - a).sqrt(), a_prev.sqrt(),
                             (1 - a_prev - sigma**2).clamp(min=0).sqrt(),
                             torch.zeros_like(a), sigma], dim=1)  # fmt: skip
        steps = [{"timestep": int(t), "coef": [float(v) for v in coef]}
                 for t, coef in zip(sched["timesteps"].tolist(), coefs, strict=True)]  # fmt: skip
        norm = self.normalizer
        low = None if c.action_low is None else torch.tensor(c.action_low, dtype=torch.float32)
        high = None if c.action_high is None else torch.tensor(c.action_high, dtype=torch.float32)
        step = DenoiserStep(
            copy.deepcopy(self.ema_net).cpu().eval(), prediction_type="epsilon",
            clip_sample=1.0 if c.clip_sample else None,
            obs_normalize=Affine(norm.obs_offset, norm.obs_scale, flatten=True),
            action_unnormalize=Affine(norm.action_offset, norm.action_scale, clip=True),
            action_low=low, action_high=high,
        )  # fmt: skip
        h, t_o, a_dim = c.pred_horizon, c.obs_horizon, c.action_dim
        ensemble = c.temporal_ensemble is not None
        return {
            "module": step.eval(),
            "inputs": [
                {"name": "obs", "role": "observation", "example": torch.zeros(2, t_o, c.obs_dim)},
                {"name": "sample", "role": "sample", "example": torch.zeros(2, h, a_dim)},
                {
                    "name": "timestep",
                    "role": "timestep",
                    "example": torch.zeros(2, dtype=torch.int64),
                },
                {"name": "step_coef", "role": "step_coef", "example": torch.zeros(6)},
                {"name": "noise", "role": "noise", "example": torch.zeros(2, h, a_dim)},
            ],
            "outputs": [
                {"name": "next_sample", "role": "sample"},
                {"name": "chunk", "role": "chunk"},
            ],
            "metadata": {
                "policy_kind": self.kind,
                "policy": c.to_dict(),
                "mode": "denoise",
                "deterministic": False,
                # The config records no observation bounds: null here, and the export stage
                # fills in the env's observation space (robodistill.export).
                "observation": {"shape": [c.obs_dim], "low": None, "high": None, "layout": None},
                "action": {"shape": [a_dim], "low": c.action_low, "high": c.action_high},
                "horizons": {
                    "observation": t_o,
                    "prediction": h,
                    "execute": c.action_horizon,
                    "start": t_o - 1,
                },
                "chunk_execution": "ensemble" if ensemble else "receding",
                **({"ensemble_decay": float(c.temporal_ensemble)} if ensemble else {}),
                "denoise": {
                    "steps": steps,
                    "scheduler": "DDIM",
                    "eta": float(c.inference_eta),
                    "prediction_type": "epsilon",
                    "init_std": 1.0,
                    **(
                        {
                            "warm_start": {
                                "steps": c.rti_steps,
                                "shift": 1 if ensemble else c.action_horizon,
                                "discrete_dims": list(c.rti_discrete_dims or []),
                            }
                        }
                        if c.rti_steps
                        else {}
                    ),  # fmt: skip
                },
                "normalization": {
                    "observation": f"{norm.mode}: (obs - offset) / scale per step of the "
                    "history, flattened to (B, To * D) as the network's conditioning",
                    "action": "clip(x0, -1, 1) * scale + offset"
                    + (", clipped to [low, high]" if low is not None else ""),
                },
            },
        }

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json`` (policy + normalizer config) and ``model.safetensors`` holding
        ``net.*``, ``ema_net.*`` and ``normalizer.*`` tensors."""
        config = {"kind": self.kind, "policy": self.config.to_dict(),
                  "normalizer": self.normalizer.config(), "num_parameters": self.num_parameters}  # fmt: skip
        tensors = {}
        for prefix, module in (("net", self.net), ("ema_net", self.ema_net),
                               ("normalizer", self.normalizer)):  # fmt: skip
            tensors |= {f"{prefix}.{k}": v for k, v in module.state_dict().items()}
        return save_checkpoint(directory, config, tensors)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> DiffusionPolicy:
        config, tensors = load_checkpoint(directory, kind=cls.kind)
        try:
            policy_cfg = DiffusionPolicyConfig(**config["policy"])
            normalizer = Normalizer.from_config(config["normalizer"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{directory}/config.json does not describe a diffusion "
                                  f"policy this version can build: {e}") from e  # fmt: skip
        policy = cls(policy_cfg, normalizer)
        for prefix, module in (("net", policy.net), ("ema_net", policy.ema_net),
                               ("normalizer", policy.normalizer)):  # fmt: skip
            part = {k[len(prefix) + 1 :]: v for k, v in tensors.items()
                    if k.startswith(prefix + ".")}  # fmt: skip
            load_state_dict_strict(module, part, f"{directory} ({prefix})")
        return policy
