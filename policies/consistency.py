"""Consistency-distilled student of the diffusion teacher: one network call per chunk.

The teacher (:mod:`robodistill.policies.diffusion`) is an epsilon-prediction DDPM over
normalized action chunks ``x0`` in [-1, 1]^(H x A): ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``
with ``a_t`` = ``alphas_cumprod[t]``, t in [0, T). Its deterministic DDIM sampler follows the
probability-flow ODE from noise to chunks; the student learns that whole map (Song et al.'s
consistency models, Consistency Policy by Prasad et al., RL-100's one-step head). In the
VE-equivalent variables ``sigma(t) = sqrt((1 - a_t) / a_t)`` and ``x~_t = x_t / sqrt(a_t)``
(so that ``x~_t = x0 + sigma(t) eps``) the consistency function is::

    f(x_t, t) = c_skip(t) x~_t + c_out(t) F(x_t, t, cond)
    c_skip = s_d^2 / ((sigma - sigma_min)^2 + s_d^2)
    c_out  = (sigma - sigma_min) s_d / sqrt(s_d^2 + sigma^2),   sigma_min = sigma(0)

so ``f(x, 0) = x~`` exactly (the boundary condition) and the output stays O(s_d) even where
``x~`` is huge (sigma(T-1) ~ 2000 for squaredcos). F is a ConditionalUnet1D like the
teacher's, fed the VP sample ``x_t`` and the integer timestep, so the teacher's weights are a
valid (if imperfect: they predict eps) starting point.

Distillation (:meth:`ConsistencyStudent.compute_loss`), on a grid 0 = t_0 < ... < t_N = T-1:
``n ~ U{0..N-1}``, ``x_{t_{n+1}}`` = a noised demo chunk, ``x^_{t_n}`` = one deterministic DDIM
step of the teacher's EMA net, loss ``d(f_theta(x_{t_{n+1}}), f_theta-(x^_{t_n}))`` with
``theta-`` an EMA target (:func:`update_target`, no gradient) and ``d`` the MSE or the
pseudo-Huber distance; optionally plus ``w |f_theta(x_{t_{n+1}}) - x0|^2``; optionally
plus the trajectory term (:meth:`ConsistencyStudent.trajectory_loss`): the student's one jump
``f(z, T-1)`` against the teacher's whole DDIM sampler from the same noise ``z``.

Sampling (:meth:`ConsistencyStudent.predict_action_chunk`, and the exported graph): noise
``z`` (B, S, H, A); ``x0 = clip(f(z_0, T-1), -1, 1)`` (``a_{T-1}`` ~ 2e-7, so ``x_{T-1}`` is
pure noise); for S > 1 each further step re-noises the estimate to the next inference
timestep ``tau_s`` with ``z_s`` and applies f again. The noise is an input, so a chunk is a
pure function of (observations, noise): export is ``direct`` mode with a ``noise`` input.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
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
from robodistill.policies.diffusion_nets import (
    DenoisingSchedule,
    count_parameters,
    denoiser_for,
    network_fields,
)
from robodistill.policies.normalizer import Normalizer

LOSSES = ("mse", "pseudo_huber")


def timestep_grid(num_train_timesteps: int, ode_steps: int) -> list[int]:
    """The N + 1 distillation timesteps ``0 = t_0 < ... < t_N = T - 1`` (evenly spaced)."""
    grid = np.unique(np.linspace(0, num_train_timesteps - 1, ode_steps + 1).round())
    return [int(t) for t in grid]


def inference_timesteps(num_train_timesteps: int, ode_steps: int, steps: int) -> list[int]:
    """``steps`` decreasing grid timesteps from ``T - 1``, evenly spread over the grid (so
    every inference timestep is one the student was trained at)."""
    grid = timestep_grid(num_train_timesteps, ode_steps)
    n = len(grid) - 1
    return [grid[round(n * (steps - s) / steps)] for s in range(steps)]


@dataclass
class ConsistencyStudentConfig:
    """Everything that defines a :class:`ConsistencyStudent` (stored in ``config.json``).
    Horizons, UNet and noise schedule are the teacher's; ``inference_timesteps`` (S,) is the
    decreasing list of timesteps the sampler evaluates f at, starting at ``T - 1``."""

    obs_dim: int
    action_dim: int
    obs_horizon: int = 2
    pred_horizon: int = 16
    action_horizon: int = 8
    backbone: str = "unet"
    down_dims: tuple[int, ...] = (32, 64, 128)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 64
    mlp_width: int = 512
    mlp_blocks: int = 3
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True
    sigma_data: float = 0.5
    ode_steps: int = 50
    inference_timesteps: list[int] | None = None
    temporal_ensemble: float | None = None
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.down_dims = tuple(int(d) for d in self.down_dims)
        t_max = self.num_train_timesteps - 1
        if self.inference_timesteps is None:
            self.inference_timesteps = [t_max]
        self.inference_timesteps = [int(t) for t in self.inference_timesteps]
        problems = []
        if not 1 <= self.obs_horizon <= self.pred_horizon:
            problems.append(f"need 1 <= obs_horizon <= pred_horizon, got {self.obs_horizon} / "
                            f"{self.pred_horizon}")  # fmt: skip
        if not 1 <= self.action_horizon <= self.pred_horizon - self.obs_horizon + 1:
            problems.append(f"action_horizon must be in [1, pred_horizon - obs_horizon + 1], "
                            f"got {self.action_horizon}")  # fmt: skip
        if not 1 <= self.ode_steps <= t_max:
            problems.append(f"ode_steps must be in [1, num_train_timesteps - 1 = {t_max}] (one "
                            f"interval per timestep at most), got {self.ode_steps}")  # fmt: skip
        ts = self.inference_timesteps
        if (
            not ts
            or ts[0] != t_max
            or any(b >= a for a, b in zip(ts[:-1], ts[1:], strict=True))
            or ts[-1] < 1
        ):
            problems.append(f"inference_timesteps must start at T - 1 = {t_max} and decrease "
                            f"strictly to >= 1, got {ts}")  # fmt: skip
        if not self.sigma_data > 0:
            problems.append(f"sigma_data must be > 0, got {self.sigma_data}")
        if (self.action_low is None) != (self.action_high is None):
            problems.append("give both action_low and action_high, or neither")
        if problems:
            raise ValueError("invalid consistency student config: " + "; ".join(problems))

    def denoiser(self) -> nn.Module:
        """A fresh F network of the teacher's backbone and sizes."""
        return denoiser_for(self, self.pred_horizon)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["down_dims"] = list(self.down_dims)
        return d


def schedule_table(schedules: DenoisingSchedule, sigma_data: float) -> dict[str, torch.Tensor]:
    """Per-timestep constants (T,) float32: ``alpha`` (a_t), ``sqrt_alpha``,
    ``sqrt_one_minus_alpha``, ``sigma``, ``c_skip``, ``c_out`` (computed in float64 so that
    ``c_skip(0) = 1`` and ``c_out(0) = 0`` hold exactly)."""
    a = schedules.ddpm.alphas_cumprod.double()
    sigma = ((1 - a) / a).sqrt()
    shifted, sd2 = sigma - sigma[0], sigma_data**2
    table = {"alpha": a, "sqrt_alpha": a.sqrt(), "sqrt_one_minus_alpha": (1 - a).sqrt(),
             "sigma": sigma, "c_skip": sd2 / (shifted**2 + sd2),
             "c_out": shifted * sigma_data / (sd2 + sigma**2).sqrt()}  # fmt: skip
    return {k: v.float() for k, v in table.items()}


def consistency_output(net: nn.Module, x: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor,
                       table: Mapping[str, torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """f(x_t, t): ``x`` (B, H, A) VP sample, ``t`` (B,) long or an int, ``cond`` (B, G)
    -> (B, H, A) estimate of the clean normalized chunk."""

    def col(name: str) -> torch.Tensor:  # (B, 1, 1) per row, or a scalar for an int t
        v = table[name][t]
        return v[:, None, None] if v.ndim else v

    return col("c_skip") * (x / col("sqrt_alpha")) + col("c_out") * net(x, t, cond)


def consistency_sample(net: nn.Module, cond: torch.Tensor, noise: torch.Tensor,
                       timesteps: Sequence[int], table: Mapping[str, torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """The sampler: ``noise`` (B, S, H, A) with S = len(timesteps), ``cond`` (B, G) ->
    (B, H, A) clean chunk in [-1, 1] (normalized). Shared by the policy and its graph."""
    x0 = noise[:, 0]
    for s, t in enumerate(timesteps):
        x = noise[:, 0] if s == 0 else (table["sqrt_alpha"][t] * x0
                                        + table["sqrt_one_minus_alpha"][t] * noise[:, s])  # fmt: skip
        x0 = consistency_output(net, x, int(t), cond, table).clamp(-1.0, 1.0)
    return x0


def chunk_distance(pred: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean distance between chunks (B, H, A): ``mse``, or iCT's pseudo-Huber per sample
    over the whole chunk, with c = 0.00054 sqrt(H A)."""
    sq = (pred - target).pow(2).flatten(1)
    if loss == "mse":
        return sq.mean()
    k = 0.00054 * math.sqrt(sq.shape[1])
    return ((sq.sum(1) + k * k).sqrt() - k).mean()


@torch.no_grad()
def update_target(target: nn.Module, online: nn.Module, mu: float) -> None:
    """theta- <- mu theta- + (1 - mu) theta, parameter by parameter."""
    for p_target, p in zip(target.parameters(), online.parameters(), strict=True):
        p_target.lerp_(p.detach(), 1.0 - mu)


class ConsistencyGraph(nn.Module):
    """The exported graph: ``forward(obs (B, To, D) raw, noise (B, S, H, A)) -> chunk
    (B, H, A)`` in env units, normalization, un-scaling and action limits inside."""

    def __init__(self, net: nn.Module, table: Mapping[str, torch.Tensor],
                 timesteps: Sequence[int], obs_normalize: nn.Module,
                 action_unnormalize: nn.Module, low: torch.Tensor | None,
                 high: torch.Tensor | None):  # fmt: skip
        super().__init__()
        self.net, self.timesteps = net, [int(t) for t in timesteps]
        self.names = ("sqrt_alpha", "sqrt_one_minus_alpha", "c_skip", "c_out")
        for name in self.names:
            self.register_buffer(name, table[name].detach().cpu().clone())
        self.obs_normalize, self.action_unnormalize = obs_normalize, action_unnormalize
        self.limits = low is not None
        if self.limits:
            self.register_buffer("low", low)
            self.register_buffer("high", high)

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        table = {name: getattr(self, name) for name in self.names}
        x0 = consistency_sample(self.net, self.obs_normalize(obs), noise, self.timesteps, table)
        chunk = self.action_unnormalize(x0)
        return torch.clamp(chunk, self.low, self.high) if self.limits else chunk


@register_policy
class ConsistencyStudent(ChunkedPolicy):
    """Observation history -> action chunk in ``len(inference_timesteps)`` network calls.

    ``net`` is trained, ``ema_net`` (its evaluation EMA, written through :meth:`make_ema` /
    :meth:`load_ema`) acts and is exported; ``normalizer`` is a copy of the teacher's.
    """

    kind = "consistency"

    def __init__(self, config: ConsistencyStudentConfig, normalizer: Normalizer | None = None):
        self.config = c = config
        self.net = c.denoiser()
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False).eval()
        if normalizer is None:
            normalizer = Normalizer({"obs": (c.obs_dim,), "action": (c.action_dim,)})
        if {"obs", "action"} - set(normalizer.keys):
            raise ValueError("the normalizer needs statistics for 'obs' and 'action'")
        self.normalizer = normalizer
        self.schedules = DenoisingSchedule(c.num_train_timesteps, c.beta_schedule, c.clip_sample)
        self.table = schedule_table(self.schedules, c.sigma_data)
        self.grid = torch.tensor(timestep_grid(c.num_train_timesteps, c.ode_steps))
        self.device = torch.device("cpu")
        self._generator = torch.Generator().manual_seed(c.seed)
        self._state: dict[str, torch.Tensor] | None = None

    @classmethod
    def from_teacher(cls, teacher: Any, *, ode_steps: int = 50, sigma_data: float = 0.5,
                     inference_steps: int = 1, init_from_teacher: bool = True,
                     seed: int | None = None) -> ConsistencyStudent:  # fmt: skip
        """A student of a :class:`DiffusionPolicy`: its horizons, UNet, schedule, action
        limits and (a copy of) its normalizer; with ``init_from_teacher`` both networks
        start from the teacher's EMA weights."""
        t = teacher.config
        config = ConsistencyStudentConfig(
            obs_dim=t.obs_dim, action_dim=t.action_dim, obs_horizon=t.obs_horizon,
            pred_horizon=t.pred_horizon, action_horizon=t.action_horizon,
            **network_fields(t), num_train_timesteps=t.num_train_timesteps,
            beta_schedule=t.beta_schedule, clip_sample=t.clip_sample, sigma_data=sigma_data,
            ode_steps=ode_steps,
            inference_timesteps=inference_timesteps(t.num_train_timesteps, ode_steps,
                                                    inference_steps),
            temporal_ensemble=t.temporal_ensemble, action_low=t.action_low,
            action_high=t.action_high, seed=t.seed if seed is None else seed,
        )  # fmt: skip
        normalizer = Normalizer.from_config(teacher.normalizer.config())
        normalizer.load_state_dict(teacher.normalizer.state_dict())
        student = cls(config, normalizer.cpu())
        if init_from_teacher:
            weights = {k: v.cpu() for k, v in teacher.ema_net.state_dict().items()}
            student.net.load_state_dict(weights)
            student.ema_net.load_state_dict(weights)
        return student

    # -- bookkeeping ---------------------------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        return count_parameters(self.net)

    @property
    def inference_steps(self) -> int:
        return len(self.config.inference_timesteps)

    def to(self, device: str | torch.device) -> ConsistencyStudent:
        self.device = torch.device(device)
        for module in (self.net, self.ema_net, self.normalizer):
            module.to(self.device)
        self.table = {k: v.to(self.device) for k, v in self.table.items()}
        self.grid = self.grid.to(self.device)
        self._state = None
        return self

    def make_ema(self, decay: float = 0.999, power: float = 0.75) -> EMAModel:
        """diffusers' EMAModel over ``net`` with the teacher's warm-up
        ``decay_n = min(decay, 1 - (1 + n) ** -power)``."""
        return EMAModel(self.net.parameters(), decay=decay, use_ema_warmup=True, inv_gamma=1.0,
                        power=power)  # fmt: skip

    def load_ema(self, ema: EMAModel) -> None:
        """Copy the EMA's shadow weights into ``ema_net`` (before evaluating or saving)."""
        ema.copy_to(self.ema_net.parameters())

    # -- inputs ------------------------------------------------------------------------------
    def _as_tensor(self, x: Any, name: str) -> torch.Tensor:
        t = torch.as_tensor(x if torch.is_tensor(x) else np.asarray(x))
        t = t.to(self.device, torch.float32)
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf")
        return t

    def condition(self, obs_hist: Any) -> torch.Tensor:
        """(B, To, D) raw observations -> (B, To * D) normalized conditioning (the teacher's)."""
        c = self.config
        obs = self._as_tensor(obs_hist, "obs_hist")
        if obs.ndim != 3 or tuple(obs.shape[1:]) != (c.obs_horizon, c.obs_dim):
            raise ValueError(f"obs_hist must have shape (B, obs_horizon={c.obs_horizon}, "
                             f"obs_dim={c.obs_dim}), got {tuple(obs.shape)}")  # fmt: skip
        return self.normalizer.normalize("obs", obs).flatten(1)

    def consistency_fn(self, x: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor,
                       net: nn.Module | None = None) -> torch.Tensor:  # fmt: skip
        """f(x_t, t) with ``net`` (default ``self.net``); shapes as :func:`consistency_output`."""
        return consistency_output(self.net if net is None else net, x, t, cond, self.table)

    # -- training ------------------------------------------------------------------------------
    def compute_loss(self, batch: Mapping[str, Any], teacher_net: nn.Module,
                     target_net: nn.Module, generator: torch.Generator | None = None,
                     loss: str = "pseudo_huber",
                     dsm_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
        """Consistency distillation loss (module docstring) on ``batch``: ``obs`` (B, To, D)
        and ``action`` (B, H, A) in env units. ``teacher_net`` is the teacher's EMA UNet
        (eps-prediction), ``target_net`` theta-; neither gets gradients. Grid indices and
        noise come from ``generator`` (CPU). Returns the loss and a log dict."""
        c = self.config
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        cond = self.condition(batch["obs"])
        x0 = self.normalizer.normalize("action", self._as_tensor(batch["action"], "action"))
        if tuple(x0.shape[1:]) != (c.pred_horizon, c.action_dim):
            raise ValueError(f"batch['action'] must be (B, {c.pred_horizon}, {c.action_dim}), "
                             f"got {tuple(x0.shape)}")  # fmt: skip
        n = torch.randint(0, len(self.grid) - 1, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        t_next, t_cur = self.grid[n.to(self.device) + 1], self.grid[n.to(self.device)]
        x_next = self.schedules.ddpm.add_noise(x0, noise, t_next)
        with torch.no_grad():
            a = self.table["alpha"]
            x_cur = self.schedules.step_mean(
                teacher_net(x_next, t_next, cond), x_next, a[t_next][:, None, None],
                a[t_cur][:, None, None], torch.zeros((), device=self.device),
            )  # fmt: skip
            target = self.consistency_fn(x_cur, t_cur, cond, net=target_net)
        pred = self.consistency_fn(x_next, t_next, cond)
        consistency = chunk_distance(pred, target, loss)
        logs = {"consistency": float(consistency.detach())}
        total = consistency
        if dsm_weight > 0:
            dsm = (pred - x0).pow(2).mean()
            total = total + dsm_weight * dsm
            logs["dsm"] = float(dsm.detach())
        logs["loss"] = float(total.detach())
        return total, logs

    def trajectory_loss(self, obs: Any, teacher: Any, generator: torch.Generator | None = None,
                        loss: str = "pseudo_huber") -> torch.Tensor:  # fmt: skip
        """The whole chain in one jump: ``obs`` (B, To, D) in env units, fresh noise ``z``
        (B, H, A); the target is the teacher's own deterministic sampler from ``z``
        (``teacher.ddim_from``, its configured steps, clipped to [-1, 1]); the prediction is
        ``f(z, T - 1)``, the student's 1-step sample from the same noise. This is CTM's
        long-jump anchor with the teacher's solver run to t = 0 (Luhman & Luhman's direct
        distillation): it pins the 1-step map where the per-interval consistency loss only
        reaches it through ``ode_steps`` bootstrapped links."""
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        c = self.config
        cond = self.condition(obs)
        z = torch.randn((cond.shape[0], c.pred_horizon, c.action_dim), generator=generator)
        z = z.to(self.device)
        target = teacher.ddim_from(cond, z).clamp(-1.0, 1.0)
        pred = self.consistency_fn(z, c.num_train_timesteps - 1, cond)
        return chunk_distance(pred, target, loss)

    # -- sampling ------------------------------------------------------------------------------
    def _noise(self, batch: int, noise: Any, generator: torch.Generator | None) -> torch.Tensor:
        c = self.config
        shape = (batch, self.inference_steps, c.pred_horizon, c.action_dim)
        if noise is None:
            gen = self._generator if generator is None else generator
            return torch.randn(shape, generator=gen).to(self.device)
        z = self._as_tensor(noise, "noise")
        if z.ndim == 3 and self.inference_steps == 1:
            z = z[:, None]
        if tuple(z.shape) != shape:
            raise ValueError(f"noise must have shape {shape} (B, S, H, A), got {tuple(z.shape)}")
        return z

    @torch.no_grad()
    def predict_action_chunk(self, obs_hist: Any, noise: Any = None,
                             generator: torch.Generator | None = None,
                             use_ema: bool = True) -> torch.Tensor:  # fmt: skip
        """(B, To, D) observations -> (B, H, A) actions in env units (not clipped to the
        action limits; :meth:`act` and the exported graph do that). ``noise`` (B, S, H, A),
        or (B, H, A) when S = 1, standard normal; drawn from ``generator`` (else the policy's
        own) when ``None``. Same noise, same chunk."""
        cond = self.condition(obs_hist)
        z = self._noise(cond.shape[0], noise, generator)
        net = self.ema_net if use_ema else self.net
        x0 = consistency_sample(net, cond, z, self.config.inference_timesteps, self.table)
        return self.normalizer.unnormalize("action", x0)

    def plan(self, obs_hist: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(n, To, D) histories -> (n, H, A) chunks with the EMA network."""
        return self.predict_action_chunk(obs_hist)

    # -- export ------------------------------------------------------------------------------
    def onnx_spec(self) -> dict[str, Any]:
        """``direct``-mode export (contract: :meth:`Policy.onnx_spec`) of :class:`ConsistencyGraph`
        with the EMA network; the runtime draws ``noise`` (B, S, H, A) from N(0, 1) per chunk
        and executes actions ``[To - 1, To - 1 + Ta)`` of it, like :meth:`act`."""
        c, norm = self.config, self.normalizer
        low = None if c.action_low is None else torch.tensor(c.action_low, dtype=torch.float32)
        high = None if c.action_high is None else torch.tensor(c.action_high, dtype=torch.float32)
        graph = ConsistencyGraph(
            copy.deepcopy(self.ema_net).cpu().eval(), {k: v.cpu() for k, v in self.table.items()},
            c.inference_timesteps, Affine(norm.obs_offset, norm.obs_scale, flatten=True),
            Affine(norm.action_offset, norm.action_scale, clip=True), low, high,
        )  # fmt: skip
        h, t_o, a_dim, s = c.pred_horizon, c.obs_horizon, c.action_dim, self.inference_steps
        ensemble = c.temporal_ensemble is not None
        return {
            "module": graph.eval(),
            "inputs": [
                {"name": "obs", "role": "observation", "example": torch.zeros(2, t_o, c.obs_dim)},
                {"name": "noise", "role": "noise", "example": torch.zeros(2, s, h, a_dim)},
            ],
            "outputs": [{"name": "chunk", "role": "chunk"}],
            "metadata": {
                "policy_kind": self.kind,
                "policy": c.to_dict(),
                "mode": "direct",
                "deterministic": False,
                "noise_std": 1.0,
                # The config records no observation bounds: null here, and the export stage
                # fills in the env's observation space (robodistill.export).
                "observation": {"shape": [c.obs_dim], "low": None, "high": None, "layout": None},
                "action": {"shape": [a_dim], "low": c.action_low, "high": c.action_high},
                "horizons": dict(
                    observation=t_o, prediction=h, execute=c.action_horizon, start=t_o - 1
                ),
                "chunk_execution": "ensemble" if ensemble else "receding",
                **({"ensemble_decay": float(c.temporal_ensemble)} if ensemble else {}),
                "normalization": {
                    "observation": f"{norm.mode}: (obs - offset) / scale per step of the "
                    "history, flattened to (B, To * D) as the network's conditioning",
                    "action": "clip(x0, -1, 1) * scale + offset"
                    + (", clipped to [low, high]" if low is not None else ""),
                },
            },
        }

    # -- checkpoints ---------------------------------------------------------------------------
    def _modules(self) -> tuple[tuple[str, nn.Module], ...]:
        return ("net", self.net), ("ema_net", self.ema_net), ("normalizer", self.normalizer)

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json`` and ``model.safetensors`` (``net.*``, ``ema_net.*``,
        ``normalizer.*``)."""
        config = {"kind": self.kind, "policy": self.config.to_dict(),
                  "normalizer": self.normalizer.config(), "num_parameters": self.num_parameters}  # fmt: skip
        tensors = {f"{prefix}.{k}": v for prefix, module in self._modules()
                   for k, v in module.state_dict().items()}  # fmt: skip
        return save_checkpoint(directory, config, tensors)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ConsistencyStudent:
        config, tensors = load_checkpoint(directory, kind=cls.kind)
        try:
            policy_cfg = ConsistencyStudentConfig(**config["policy"])
            normalizer = Normalizer.from_config(config["normalizer"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{directory}/config.json does not describe a consistency "
                                  f"student this version can build: {e}") from e  # fmt: skip
        policy = cls(policy_cfg, normalizer)
        for prefix, module in policy._modules():
            part = {k[len(prefix) + 1 :]: v for k, v in tensors.items()
                    if k.startswith(prefix + ".")}  # fmt: skip
            load_state_dict_strict(module, part, f"{directory} ({prefix})")
        return policy
