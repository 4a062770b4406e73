"""Streaming Diffusion Policy student (Høeg et al.): one network call per control step.

A buffer of Hb actions, element i for step t + i, whose noise level rises along it (the
staircase ``L_j = j T / Hb - 1``, j = 0..Hb, T training timesteps: ``L_0 = -1`` is clean,
``L_Hb = T - 1`` is pure noise)::

    level  T-1 |                              o   <- fresh noise appended (L_Hb)
               |                          #
               |                      #
               |                  #               #: the buffer after denoising,
               |              #                      element i at level L_i
               |          #
               |      #
            -1 |  #   <- element 0: clean, executed
               +----------------------------------> i (action for step t + i)
                  0   1   2   3   4   5   6   7

    element i   before a step   after denoising    after the shift
    0           L_1             L_0 (clean)        L_1 (was element 1)
    1 .. Hb-2   L_{i+1}         L_i                L_{i+1}
    Hb-1        L_Hb (noise)    L_Hb-1             L_Hb (fresh noise)

Every control step:

1. denoise: every element goes one slot down the staircase (``L_{i+1} -> L_i``) in
   ``calls_per_step`` DDIM calls (epsilon prediction, x0 clipped as the teacher) with
   per-element alphas; the network is told each element's level by ``local_cond``
   (:func:`level_features`). Element 0 ends clean (alpha_prev = 1).
2. execute element 0 (un-normalized, clipped to the action limits);
3. shift left by one and append fresh N(0, I) noise at level ``T - 1``.

A fresh episode (``age == 0``) starts from an all-noise buffer: every element is at the top
level and takes the same ``calls_per_step`` calls down to its staircase level, so its first
actions are coarse (element 0 comes from pure noise in ``calls_per_step`` DDIM steps), later
ones are refined on every step they move forward, as in steady state. Training
(:meth:`StreamingStudent.compute_loss`) draws the staircase shifted by a random fraction of
a slot per window (the levels met between the calls of one step), and with ``fresh_prob``
the fresh case.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from torch import nn

from robodistill.policies.base import Policy, register_policy
from robodistill.policies.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from robodistill.policies.diffusion_nets import (
    BACKBONES,
    DenoisingSchedule,
    count_parameters,
    denoiser_for,
)
from robodistill.policies.normalizer import Normalizer

LOCAL_COND_DIM = 3
"""Per-element features of the noise level: (level + 1) / T, sqrt(alpha), sqrt(1 - alpha)."""


@dataclass
class StreamingStudentConfig:
    """Everything that defines a :class:`StreamingStudent` (stored in ``config.json``)."""

    obs_dim: int
    action_dim: int
    obs_horizon: int = 2
    buffer_horizon: int = 16
    calls_per_step: int = 1
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
    fresh_prob: float = 0.1
    constant_prob: float = 0.0
    mask_padded_actions: bool = False
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.down_dims = tuple(int(d) for d in self.down_dims)
        problems = []
        if self.obs_horizon < 1 or self.calls_per_step < 1:
            problems.append("obs_horizon and calls_per_step must be >= 1")
        multiple = 2 ** (len(self.down_dims) - 1) if self.backbone == "unet" else 1
        if self.backbone not in BACKBONES:
            problems.append(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.buffer_horizon < 2 or self.buffer_horizon % multiple:
            problems.append(f"buffer_horizon {self.buffer_horizon} must be >= 2 and a multiple "
                            f"of {multiple} for {len(self.down_dims)} UNet levels")  # fmt: skip
        if not 0.0 <= self.fresh_prob <= 1.0:
            problems.append(f"fresh_prob must be in [0, 1], got {self.fresh_prob}")
        if not 0.0 <= self.constant_prob <= 1.0 - self.fresh_prob:
            problems.append(f"constant_prob must be in [0, 1 - fresh_prob], got "
                            f"{self.constant_prob}")  # fmt: skip
        if (self.action_low is None) != (self.action_high is None):
            problems.append("give both action_low and action_high, or neither")
        if problems:
            raise ValueError("invalid streaming student config: " + "; ".join(problems))

    def denoiser(self) -> nn.Module:
        """A fresh noise predictor of this config's backbone; each buffer slot's noise level
        enters as ``local_cond``."""
        return denoiser_for(self, self.buffer_horizon, local_cond_dim=LOCAL_COND_DIM)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"down_dims": list(self.down_dims)}


def level_features(levels: torch.Tensor, alpha: torch.Tensor, t_total: int) -> torch.Tensor:
    """(..., Hb) levels and their alphas -> (..., Hb, LOCAL_COND_DIM) ``local_cond``."""
    return torch.stack([(levels + 1) / t_total, alpha.sqrt(), (1 - alpha).clamp(min=0).sqrt()], -1)


class StreamingStep(nn.Module):
    """One control step, the graph both :meth:`StreamingStudent.act` and the export run.

    ``forward(obs (B, To, D) raw, buffer (B, Hb, A) normalized, age (B, 1), noise (B, 1, A))
    -> (action (B, A) env units, next_buffer (B, Hb, A), next_age (B, 1))``. ``age < 0.5``
    marks a fresh episode. The per-call constants are tables indexed [regime, call]
    (regime 0 steady, 1 fresh): ``sa``/``s1m`` (2, m+1, Hb) sqrt(alpha)/sqrt(1-alpha) before
    each call and after the last, ``feat`` (2, m, Hb, F), ``t_mean`` (2, m).
    """

    def __init__(self, net: nn.Module, normalizer: Normalizer, tables: dict[str, torch.Tensor],
                 clip_sample: bool, low: Any, high: Any, max_age: float):  # fmt: skip
        super().__init__()
        self.net, self.normalizer = net, normalizer
        for name, value in tables.items():
            self.register_buffer(name, value.detach().float().clone())
        self.clip_sample, self.max_age, self.limits = clip_sample, float(max_age), low is not None
        if self.limits:
            self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))

    def denoise(self, obs: torch.Tensor, buffer: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        """The buffer one slot down the staircase (B, Hb, A); element 0 is clean."""
        cond = self.normalizer.normalize("obs", obs).flatten(1)
        fresh = age[:, :1] < 0.5  # (B, 1)
        x = buffer
        for k in range(self.t_mean.shape[1]):
            sa, s1m = (torch.where(fresh, t[1, k], t[0, k])[..., None] for t in (self.sa, self.s1m))
            sa_next, s1m_next = (torch.where(fresh, t[1, k + 1], t[0, k + 1])[..., None]
                                 for t in (self.sa, self.s1m))  # fmt: skip
            feat = torch.where(fresh[..., None], self.feat[1, k], self.feat[0, k])
            # The step encoder gets the mean level (see StreamingStudent.compute_loss).
            eps = self.net(x, torch.where(fresh[:, 0], self.t_mean[1, k], self.t_mean[0, k]),
                           cond, feat)  # fmt: skip
            x0 = (x - s1m * eps) / sa
            if self.clip_sample:
                x0 = x0.clamp(-1.0, 1.0)
            x = sa_next * x0 + s1m_next * eps  # DDIM, eta 0, with each element's own alphas
        return x

    def forward(self, obs, buffer, age, noise):
        x = self.denoise(obs, buffer, age)
        action = self.normalizer.unnormalize("action", x[:, 0].clamp(-1.0, 1.0))
        if self.limits:
            action = torch.maximum(torch.minimum(action, self.high), self.low)
        return action, torch.cat([x[:, 1:], noise], dim=1), (age + 1).clamp(max=self.max_age)


@register_policy
class StreamingStudent(Policy):
    """Streaming diffusion student; see the module docstring.

    Args:
        config: the :class:`StreamingStudentConfig`.
        normalizer: :class:`Normalizer` with ``"obs"`` (D,) and ``"action"`` (A,) (the
            teacher's min-max statistics); ``None`` is the identity.
    """

    kind = "streaming"

    def __init__(self, config: StreamingStudentConfig, normalizer: Normalizer | None = None):
        self.config = c = config
        self.net = c.denoiser()
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False).eval()
        if normalizer is None:
            normalizer = Normalizer({"obs": (c.obs_dim,), "action": (c.action_dim,)})
        if {"obs", "action"} - set(normalizer.keys):
            raise ValueError("the normalizer needs statistics for 'obs' and 'action'")
        self.normalizer = normalizer
        self.schedules = DenoisingSchedule(c.num_train_timesteps, c.beta_schedule, c.clip_sample)
        cumprod = self.schedules.ddpm.alphas_cumprod.double()
        self._cumprod = torch.cat([torch.ones(1, dtype=torch.float64), cumprod])  # [-1, T-1]
        t, hb = c.num_train_timesteps, c.buffer_horizon
        self.levels = torch.arange(hb + 1, dtype=torch.float64) * t / hb - 1  # (Hb + 1,)
        self.device = torch.device("cpu")
        self._rng = np.random.default_rng(c.seed)
        self._state: dict[str, torch.Tensor] | None = None
        self._step = self.step_module(self.ema_net, self.normalizer)

    # -- levels --------------------------------------------------------------------------------
    @property
    def staircase(self) -> torch.Tensor:
        """(Hb,) level of each element after denoising: ``L_0 = -1`` (clean) .. ``L_{Hb-1}``."""
        return self.levels[:-1].clone()

    @property
    def configured_calls_per_step(self) -> int:
        """The configured network calls per control step (``calls_per_step``, fresh episodes
        included): what :class:`StreamingStep` is built to run, not a measurement. Measure
        with ``robodistill.core.latency.count_network_calls`` (a forward hook on
        ``ema_net``), as the distillation's validation and the benchmarks do."""
        return self.config.calls_per_step

    def alpha_at(self, levels: torch.Tensor) -> torch.Tensor:
        """alphas_cumprod at levels in [-1, T-1] (-1: clean, alpha 1). Staircase levels are
        fractional in general (Hb need not divide T; calls_per_step splits a slot), so the
        table is interpolated linearly; at integers this is exactly ``ddpm.add_noise``'s."""
        t = self.config.num_train_timesteps
        pos = (levels + 1).clamp(0, t)
        lo = pos.floor().clamp(max=t - 1).long()
        w = pos - lo
        table = self._cumprod.to(levels.device, levels.dtype)
        return table[lo] * (1 - w) + table[lo + 1] * w

    def call_levels(self) -> torch.Tensor:
        """(2, m + 1, Hb) levels before each of the m calls of a step and after the last;
        regime 0 steady (element i from ``L_{i+1}``), 1 fresh (every element from the top)."""
        m, lv = self.config.calls_per_step, self.levels
        frac = torch.arange(m + 1, dtype=torch.float64)[:, None] / m
        steady = lv[1:] + (lv[:-1] - lv[1:]) * frac
        fresh = lv[-1] + (lv[:-1] - lv[-1]) * frac
        return torch.stack([steady, fresh])

    def step_module(self, net: nn.Module, normalizer: Normalizer) -> StreamingStep:
        c = self.config
        levels = self.call_levels()
        alpha = self.alpha_at(levels)
        tables = {"sa": alpha.sqrt(), "s1m": (1 - alpha).clamp(min=0).sqrt(),
                  "feat": level_features(levels, alpha, c.num_train_timesteps)[:, :-1],
                  "t_mean": levels[:, :-1].mean(-1)}  # fmt: skip
        return StreamingStep(net, normalizer, tables, c.clip_sample, c.action_low, c.action_high,
                             max_age=c.buffer_horizon)  # fmt: skip

    # -- bookkeeping ---------------------------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        return count_parameters(self.net)

    def to(self, device: str | torch.device) -> StreamingStudent:
        self.device = torch.device(device)
        for module in (self.net, self.ema_net, self.normalizer, self._step):
            module.to(self.device)
        self._state = None
        return self

    def make_ema(self, decay: float = 0.999, power: float = 0.75) -> EMAModel:
        """diffusers' EMAModel over ``net`` with diffusion policy's warm-up (as the teacher)."""
        return EMAModel(self.net.parameters(), decay=decay, min_decay=0.0, use_ema_warmup=True,
                        inv_gamma=1.0, power=power)  # fmt: skip

    def load_ema(self, ema: EMAModel) -> None:
        ema.copy_to(self.ema_net.parameters())

    def _tensor(self, x: Any) -> torch.Tensor:
        x = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
        return x.to(self.device, torch.float32)

    # -- training ------------------------------------------------------------------------------
    def sample_levels(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, Hb) training levels: the staircase raised by a per-window fraction u in [0, 1)
        of a slot (``L_{i+1} - u (L_{i+1} - L_i)``, all levels met between a step's calls), or
        with ``fresh_prob`` the fresh episode's levels before a random call k < m, or with
        ``constant_prob`` one level for the whole buffer, uniform in [0, T - 1] (SDP's
        mixture: chunk-wise increasing noise ~0.8, temporally constant ~0.2, so the denoiser
        also learns whole chunks and is not only ever shown the staircase)."""
        c, lv = self.config, self.levels.float()
        draw = torch.rand(batch, generator=generator)
        fresh = draw < c.fresh_prob
        u = torch.rand(batch, generator=generator)[:, None]
        k = torch.randint(0, c.calls_per_step, (batch, 1), generator=generator) / c.calls_per_step
        steady = lv[1:] - u * (lv[1:] - lv[:-1])
        levels = torch.where(fresh[:, None], lv[-1] + (lv[:-1] - lv[-1]) * k, steady)
        if c.constant_prob > 0:  # drawn only when on: runs without it keep their noise stream
            constant = (draw >= c.fresh_prob) & (draw < c.fresh_prob + c.constant_prob)
            t = torch.randint(0, c.num_train_timesteps, (batch, 1), generator=generator)
            levels = torch.where(constant[:, None], t.float().expand_as(levels), levels)
        return levels

    def compute_loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
        """Noise-prediction MSE with chunk-wise increasing noise levels.

        ``batch``: ``obs`` (B, To, D) raw; ``action`` (B, Hb, A) env units, the buffer from
        the current step on (a whole window (B, To - 1 + Hb, A) is cut at To - 1); optionally
        ``action_is_pad`` of the same length (masked when ``mask_padded_actions``). Levels
        and noise come from ``generator``. Returns the loss and a log dict.
        """
        c = self.config
        cond = self.normalizer.normalize("obs", self._tensor(batch["obs"])).flatten(1)
        action, pad = self._tensor(batch["action"]), batch.get("action_is_pad")
        start = action.shape[1] - c.buffer_horizon if action.ndim == 3 else -1
        if start not in (0, c.obs_horizon - 1) or action.shape[-1] != c.action_dim:
            raise ValueError(f"batch['action'] must be (B, {c.buffer_horizon}, {c.action_dim}) "
                             f"or a whole window, got {tuple(action.shape)}")  # fmt: skip
        x0 = self.normalizer.normalize("action", action[:, start:])
        b = x0.shape[0]
        levels = self.sample_levels(b, generator).to(self.device)
        alpha = self.alpha_at(levels)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        noisy = alpha.sqrt()[..., None] * x0 + (1 - alpha).sqrt()[..., None] * noise
        # FiLM gives one scale/bias per sample, so per-element levels go through local_cond;
        # the mean level still tells the step encoder the regime (staircase ~T/2, fresh T-1)
        # and stays in the range the teacher's encoder was trained on (init_from_teacher).
        feat = level_features(levels, alpha, c.num_train_timesteps)
        err = (self.net(noisy, levels.mean(1), cond, feat) - noise).pow(2)  # (B, Hb, A)
        if c.mask_padded_actions and pad is not None:
            keep = ~torch.as_tensor(np.asarray(pad), device=self.device)[:, start:, None]
            keep = keep.expand_as(err).float()
            loss = (err * keep).sum() / keep.sum().clamp(min=1.0)
        else:
            loss = err.mean()
        return loss, {"loss": float(loss.detach()), "loss_first": float(err[:, 0].detach().mean())}

    # -- acting --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, obs_hist: Any, buffer: Any, fresh_mask: Any, noise: Any,
             use_ema: bool = True) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Pure step: ``obs_hist`` (B, To, D) raw, ``buffer`` (B, Hb, A) normalized,
        ``fresh_mask`` (B,) bool, ``noise`` (B, A) or (B, 1, A) -> ``(action (B, A) env
        units, next_buffer (B, Hb, A))``. Same graph as ``act`` and the export."""
        module = self._step if use_ema else self.step_module(self.net, self.normalizer)
        fresh = torch.as_tensor(np.asarray(fresh_mask, dtype=bool)).reshape(-1).to(self.device)
        age = (~fresh).float()[:, None]
        z = self._tensor(noise).reshape(fresh.shape[0], 1, self.config.action_dim)
        action, nxt, _ = module(self._tensor(obs_hist), self._tensor(buffer), age, z)
        return action, nxt

    def _draw(self, *shape: int) -> torch.Tensor:
        # numpy draws in OnnxPolicy's order (buffer init, then one noise per act), so that the
        # exported file driven by the runtime with the same seed acts identically.
        return torch.from_numpy(self._rng.standard_normal(shape).astype(np.float32)).to(self.device)

    def reset(self, env_ids: np.ndarray | list[int] | None = None) -> None:
        """Forget history and buffer of ``env_ids`` (all: ``None``, which also reseeds the
        noise generator so evaluations repeat); reset rows restart from a fresh buffer."""
        if env_ids is None or self._state is None:
            self._state = None
            if env_ids is None:
                self._rng = np.random.default_rng(self.config.seed)
            return
        ids = torch.as_tensor(np.asarray(env_ids, dtype=np.int64).reshape(-1))
        s, c = self._state, self.config
        s["hist_len"][ids] = 0
        s["buffer"][ids] = self._draw(len(ids), c.buffer_horizon, c.action_dim)
        s["age"][ids] = 0.0

    def act(self, obs: np.ndarray) -> np.ndarray:
        """``obs`` (B, D) -> (B, A) float32: history update (a new episode repeats its first
        observation), one :class:`StreamingStep`, state kept per row."""
        c = self.config
        o = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        if o.ndim != 2 or o.shape[1] != c.obs_dim:
            raise ValueError(f"act: obs must have shape (B, {c.obs_dim}), got {tuple(o.shape)}")
        if not torch.isfinite(o).all():
            raise ValueError("act: obs contains NaN or inf (check the environment)")
        o = o.to(self.device)
        b = o.shape[0]
        if self._state is None:
            self._state = {"hist": torch.zeros(b, c.obs_horizon, c.obs_dim, device=self.device),
                           "hist_len": torch.zeros(b, dtype=torch.long, device=self.device),
                           "buffer": self._draw(b, c.buffer_horizon, c.action_dim),
                           "age": torch.zeros(b, 1, device=self.device)}  # fmt: skip
        s = self._state
        if s["hist"].shape[0] != b:
            raise ValueError(f"act: got {b} rows but the policy holds state for "
                             f"{s['hist'].shape[0]}; call reset() before changing the batch size")  # fmt: skip
        new = s["hist_len"] == 0
        s["hist"][~new] = torch.roll(s["hist"][~new], -1, dims=1)
        s["hist"][~new, -1] = o[~new]
        s["hist"][new] = o[new, None].expand(-1, c.obs_horizon, -1)
        s["hist_len"] += 1
        noise = self._draw(b, 1, c.action_dim)
        with torch.no_grad():
            action, s["buffer"], s["age"] = self._step(s["hist"], s["buffer"], s["age"], noise)
        action = action.cpu().numpy().astype(np.float32)
        if c.action_low is not None:
            action = np.clip(action, np.float32(c.action_low), np.float32(c.action_high))
        return action

    # -- export --------------------------------------------------------------------------------
    def onnx_spec(self) -> dict[str, Any]:
        """``direct`` mode: the graph is one :class:`StreamingStep` of the EMA network; the
        buffer (init N(0, 1)) and age (init 0 = fresh) are state tensors the runtime carries,
        the appended element is a ``noise`` input (B, 1, A)."""
        c = self.config
        step = self.step_module(copy.deepcopy(self.ema_net).cpu().eval(),
                                copy.deepcopy(self.normalizer).cpu())  # fmt: skip
        hb, a, norm = c.buffer_horizon, c.action_dim, self.normalizer
        examples = {"obs": ("observation", (2, c.obs_horizon, c.obs_dim)),
                    "buffer": ("state", (2, hb, a)), "age": ("state", (2, 1)),
                    "noise": ("noise", (2, 1, a))}  # fmt: skip
        inputs = [{"name": name, "role": role, "example": torch.zeros(shape)}
                  for name, (role, shape) in examples.items()]  # fmt: skip
        outputs = [{"name": "action", "role": "action"}, {"name": "buffer_next", "role": "state"},
                   {"name": "age_next", "role": "state"}]  # fmt: skip
        state = [{"input": "buffer", "output": "buffer_next", "shape": [hb, a], "init": "normal",
                  "std": 1.0}, {"input": "age", "output": "age_next", "shape": [1],
                  "init": "zeros"}]  # fmt: skip
        horizons = {"observation": c.obs_horizon, "prediction": hb, "execute": 1, "start": 0}
        levels = {"staircase": [float(v) for v in self.staircase],
                  "top_level": float(self.levels[-1])}  # fmt: skip
        return {
            "module": step.eval(),
            "inputs": inputs,
            "outputs": outputs,
            "metadata": {
                "policy_kind": self.kind,
                "policy": c.to_dict(),
                "mode": "direct",
                "deterministic": False,
                # The config records no observation bounds: null here, and the export stage
                # fills in the env's observation space (robodistill.export).
                "observation": {"shape": [c.obs_dim], "low": None, "high": None, "layout": None},
                "action": {"shape": [a], "low": c.action_low, "high": c.action_high},
                "horizons": horizons,
                "state": state,
                "noise_std": 1.0,
                "network_calls_per_decision": c.calls_per_step,
                "streaming": levels,
                "normalization": {
                    "observation": f"{norm.mode}: (obs - offset) / scale, flattened to (B, To*D)",
                    "action": "clip(buffer[:, 0], -1, 1) * scale + offset, clipped to [low, high]",
                },
            },
        }

    # -- checkpoints ---------------------------------------------------------------------------
    def _modules(self) -> tuple[tuple[str, nn.Module], ...]:
        return (("net", self.net), ("ema_net", self.ema_net), ("normalizer", self.normalizer))

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json`` + ``model.safetensors`` (``net.*``, ``ema_net.*``, ``normalizer.*``)."""
        config = {"kind": self.kind, "policy": self.config.to_dict(),
                  "normalizer": self.normalizer.config(), "num_parameters": self.num_parameters}  # fmt: skip
        tensors = {f"{p}.{k}": v for p, m in self._modules() for k, v in m.state_dict().items()}
        return save_checkpoint(directory, config, tensors)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> StreamingStudent:
        config, tensors = load_checkpoint(directory, kind=cls.kind)
        try:
            policy = cls(StreamingStudentConfig(**config["policy"]),
                         Normalizer.from_config(config["normalizer"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{directory}/config.json does not describe a streaming "
                                  f"student this version can build: {e}") from e  # fmt: skip
        for prefix, module in policy._modules():
            part = {k[len(prefix) + 1 :]: v for k, v in tensors.items()
                    if k.startswith(prefix + ".")}  # fmt: skip
            load_state_dict_strict(module, part, f"{directory} ({prefix})")
        return policy
