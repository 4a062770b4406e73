"""Denoising networks for diffusion policies (a 1-D temporal UNet with FiLM conditioning)
and the noise schedules they are trained and sampled with (:class:`DenoisingSchedule`).

The network predicts the noise that was added to an action chunk, given the diffusion
timestep and a global conditioning vector (the flattened, normalized observation history)::

    sample (B, H, A) ──► (B, A, H) ─► down ─► mid ─► up ─► (B, A, H) ──► eps_hat (B, H, A)
                                       ▲       ▲      ▲
    timestep (B,) ─► sinusoid ─► MLP ──┴───────┴──────┴── FiLM: every residual block
    global_cond (B, G) ───────────────── concat ─────────┘    gets scale & bias per channel

The UNet convolves over the time axis of the chunk (length H) with the action dimensions
as channels: the temporal-convolution design of Chi et al.'s diffusion policy. Each level
halves the time axis, so ``H`` must be divisible by ``2 ** (len(down_dims) - 1)``. An
optional per-position input ``local_cond`` (B, H, L) joins the sample's channels at the
input (``UnetConfig.local_cond_dim``; the streaming student tells each action its own noise
level this way); with ``local_cond_dim = 0`` (the default) the network is unchanged.

Sizes (``count_parameters``, obs 5 x To 2, action 2) and the cost of one training step
(batch 64, H 16, one torch thread) measured on this project's 2-core CPU:

==========================  ==============  ==========  ===================
``down_dims``               step embed dim  parameters  train step (B 64)
==========================  ==============  ==========  ===================
(32, 64, 128)   (default)   64              1.1 M       110 ms
(48, 96, 192)               64              2.3 M       174 ms
(64, 128, 256)              64              4.1 M       311 ms
(128, 256, 512)             128             16 M        (rl100_pusht.yaml)
(256, 512, 1024) (paper)    256             65 M        (a GPU)
==========================  ==============  ==========  ===================

The default fits the default pipeline's few-minute imitation budget on a 2-core CPU;
``configs/teachers/rl100_pusht.yaml`` trains a 16 M network for a real teacher.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class UnetConfig:
    """Everything needed to rebuild a :class:`ConditionalUnet1D` (goes into config.json)."""

    action_dim: int
    global_cond_dim: int
    down_dims: tuple[int, ...] = (32, 64, 128)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 64
    local_cond_dim: int = 0
    """Per-position features (B, H, L) concatenated to the sample's channels at the input
    (e.g. each action's own noise level in a streaming buffer); 0: none."""

    def __post_init__(self) -> None:
        self.down_dims = tuple(int(d) for d in self.down_dims)
        problems = []
        if self.action_dim < 1:
            problems.append(f"action_dim must be >= 1, got {self.action_dim}")
        if self.global_cond_dim < 0:
            problems.append(f"global_cond_dim must be >= 0, got {self.global_cond_dim}")
        if not self.down_dims:
            problems.append("down_dims needs at least one level, e.g. [64, 128, 256]")
        bad = [d for d in self.down_dims if d % self.n_groups]
        if bad:
            problems.append(
                f"every down_dims entry must be divisible by n_groups={self.n_groups} "
                f"(GroupNorm), got {bad}"
            )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            problems.append(f"kernel_size must be odd (same-length conv), got {self.kernel_size}")
        if self.step_embed_dim < 4 or self.step_embed_dim % 2:
            problems.append(f"step_embed_dim must be even and >= 4, got {self.step_embed_dim}")
        if self.local_cond_dim < 0:
            problems.append(f"local_cond_dim must be >= 0, got {self.local_cond_dim}")
        if problems:
            raise ValueError("invalid UNet config: " + "; ".join(problems))

    @property
    def horizon_multiple(self) -> int:
        """The prediction horizon must be a multiple of this (one halving per level)."""
        return 2 ** (len(self.down_dims) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["down_dims"] = list(self.down_dims)
        if not self.local_cond_dim:  # configs written before the field existed stay identical
            del d["local_cond_dim"]
        return d


class SinusoidalStepEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of integer diffusion timesteps: (B,) -> (B, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        # Geometric frequencies from 1 down to 1/10000 (Vaswani et al.); a buffer so that it
        # follows .to(device) but is not a trainable parameter (and is saved, which is harmless).
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        args = timesteps.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class Conv1dBlock(nn.Sequential):
    """Conv1d (same length) -> GroupNorm -> Mish: (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int):
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )


class FiLMResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM between them and a residual connection.

    ``forward(x (B, C_in, T), cond (B, cond_dim)) -> (B, C_out, T)``. The conditioning
    produces a per-channel scale and bias applied after the first conv block
    (``scale * h + bias``, Perez et al.'s FiLM, as in Chi et al.'s UNet).
    """

    def __init__(
        self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int
    ):
        super().__init__()
        self.block1 = Conv1dBlock(in_channels, out_channels, kernel_size, n_groups)
        self.block2 = Conv1dBlock(out_channels, out_channels, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.residual = (
            nn.Conv1d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)  # (B, C_out, 1) each
        h = self.block2(scale * h + bias)
        return h + self.residual(x)


def _check_conditions(net: str, c, sample: torch.Tensor, timestep, global_cond, local_cond
                      ) -> torch.Tensor:  # fmt: skip
    """Shape checks shared by the denoisers (``c``: their config, with ``global_cond_dim``
    and ``local_cond_dim``); returns the timesteps as a (B,) tensor."""
    batch, horizon = sample.shape[0], sample.shape[1]
    timestep = torch.as_tensor(timestep, device=sample.device)
    if timestep.ndim == 0:
        timestep = timestep.expand(batch)
    if c.global_cond_dim and (global_cond is None
                              or tuple(global_cond.shape) != (batch, c.global_cond_dim)):  # fmt: skip
        got = None if global_cond is None else tuple(global_cond.shape)
        raise ValueError(f"{net}: global_cond must be ({batch}, {c.global_cond_dim}), got {got}")
    if local_cond is not None and not c.local_cond_dim:
        raise ValueError(f"{net}: local_cond given but local_cond_dim is 0")
    want = (batch, horizon, c.local_cond_dim)
    if c.local_cond_dim and (local_cond is None or tuple(local_cond.shape) != want):
        got = None if local_cond is None else tuple(local_cond.shape)
        raise ValueError(f"{net}: local_cond must be {want}, got {got}")
    return timestep


class ConditionalUnet1D(nn.Module):
    """Noise predictor ``eps_hat = net(sample, timestep, global_cond, local_cond)``.

    Shapes: ``sample`` (B, H, A) noisy normalized actions; ``timestep`` (B,) or scalar int
    diffusion step in ``[0, num_train_timesteps)``; ``global_cond`` (B, G) the flattened
    normalized observation history; ``local_cond`` (B, H, L) per-position features, only
    when ``config.local_cond_dim = L > 0`` (joined to the sample's channels, so the input
    layer sees A + L channels). Returns (B, H, A).
    """

    def __init__(self, config: UnetConfig):
        super().__init__()
        self.config = config
        c = config
        dims = (c.action_dim + c.local_cond_dim, *c.down_dims)
        cond_dim = c.step_embed_dim + c.global_cond_dim
        self.step_encoder = nn.Sequential(
            SinusoidalStepEmbedding(c.step_embed_dim),
            nn.Linear(c.step_embed_dim, 4 * c.step_embed_dim),
            nn.Mish(),
            nn.Linear(4 * c.step_embed_dim, c.step_embed_dim),
        )

        def block(cin: int, cout: int) -> FiLMResidualBlock1D:
            return FiLMResidualBlock1D(cin, cout, cond_dim, c.kernel_size, c.n_groups)

        pairs = list(zip(dims[:-1], dims[1:], strict=True))
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(pairs):
            last = i == len(pairs) - 1
            # Stride-2 conv halves the time axis between levels (not after the deepest one).
            sample = nn.Identity() if last else nn.Conv1d(cout, cout, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([block(cin, cout), block(cout, cout), sample]))
        mid = dims[-1]
        self.mid = nn.ModuleList([block(mid, mid), block(mid, mid)])
        self.up = nn.ModuleList()
        # The up path mirrors the down path except the first level; each up level
        # concatenates the skip connection of the down level with the same length.
        # Every up level doubles the time axis back, so the output has the input's length.
        for cin, cout in reversed(pairs[1:]):
            upsample = nn.ConvTranspose1d(cin, cin, 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([block(2 * cout, cin), block(cin, cin), upsample]))
        start = c.down_dims[0]
        self.final = nn.Sequential(
            Conv1dBlock(start, start, c.kernel_size, c.n_groups), nn.Conv1d(start, c.action_dim, 1)
        )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        global_cond: torch.Tensor | None = None,
        local_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c = self.config
        if sample.ndim != 3 or sample.shape[-1] != c.action_dim:
            raise ValueError(
                f"ConditionalUnet1D: sample must be (B, H, {c.action_dim}), got "
                f"{tuple(sample.shape)}"
            )
        horizon = sample.shape[1]
        if horizon % c.horizon_multiple:
            raise ValueError(
                f"ConditionalUnet1D: horizon {horizon} must be a multiple of "
                f"{c.horizon_multiple} for {len(c.down_dims)} UNet levels"
            )
        timestep = _check_conditions("ConditionalUnet1D", c, sample, timestep, global_cond,
                                     local_cond)  # fmt: skip
        cond = self.step_encoder(timestep)
        if c.global_cond_dim:
            cond = torch.cat([cond, global_cond], dim=-1)
        if c.local_cond_dim:
            sample = torch.cat([sample, local_cond.to(sample.dtype)], dim=-1)

        x = sample.transpose(1, 2)  # (B, A, H): actions are channels, time is the conv axis
        skips = []
        for level, (res1, res2, downsample) in enumerate(self.down):
            x = res2(res1(x, cond), cond)
            if level:  # the first level's output has no up level of its length to join
                skips.append(x)
            x = downsample(x)
        for res in self.mid:
            x = res(x, cond)
        for res1, res2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = res2(res1(x, cond), cond)
            x = upsample(x)
        return self.final(x).transpose(1, 2)


@dataclass
class MlpDenoiserConfig:
    """Everything needed to rebuild a :class:`MlpDenoiser` (goes into config.json)."""

    action_dim: int
    global_cond_dim: int
    horizon: int
    width: int = 512
    blocks: int = 3
    step_embed_dim: int = 64
    local_cond_dim: int = 0
    """Per-position features (B, H, L) flattened into the input (see UnetConfig)."""

    def __post_init__(self) -> None:
        problems = [f"{name} must be >= {low}, got {value}" for name, value, low in (
            ("action_dim", self.action_dim, 1), ("global_cond_dim", self.global_cond_dim, 0),
            ("horizon", self.horizon, 1), ("width", self.width, 1), ("blocks", self.blocks, 0),
            ("local_cond_dim", self.local_cond_dim, 0)) if value < low]  # fmt: skip
        if self.step_embed_dim < 4 or self.step_embed_dim % 2:
            problems.append(f"step_embed_dim must be even and >= 4, got {self.step_embed_dim}")
        if problems:
            raise ValueError("invalid MLP denoiser config: " + "; ".join(problems))


class MlpDenoiser(nn.Module):
    """Residual-MLP noise predictor with :class:`ConditionalUnet1D`'s ``forward`` signature.

    DPPO's denoiser for state-based tasks: the flattened noisy chunk (H * A), the flattened
    ``local_cond`` (H * L), the timestep embedding and ``global_cond`` are concatenated and
    mapped to ``width``, then ``blocks`` pre-LayerNorm residual blocks (Linear, Mish,
    Linear) and a linear head to (H * A). It costs about 1/H of a UNet's multiply-adds per
    parameter (nothing is convolved along the chunk), so on a CPU it trains and samples much
    faster than a UNet of the same size; the price is no built-in temporal smoothness.
    """

    def __init__(self, config: MlpDenoiserConfig):
        super().__init__()
        self.config = c = config
        self.step_encoder = nn.Sequential(
            SinusoidalStepEmbedding(c.step_embed_dim),
            nn.Linear(c.step_embed_dim, 4 * c.step_embed_dim),
            nn.Mish(),
            nn.Linear(4 * c.step_embed_dim, c.step_embed_dim),
        )
        inputs = c.horizon * (c.action_dim + c.local_cond_dim) + c.step_embed_dim
        self.inp = nn.Linear(inputs + c.global_cond_dim, c.width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(c.width),
                nn.Linear(c.width, c.width),
                nn.Mish(),
                nn.Linear(c.width, c.width),
            )  # fmt: skip
            for _ in range(c.blocks)
        )
        self.head = nn.Sequential(nn.LayerNorm(c.width), nn.Mish(),
                                  nn.Linear(c.width, c.horizon * c.action_dim))  # fmt: skip

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        global_cond: torch.Tensor | None = None,
        local_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c = self.config
        if sample.ndim != 3 or tuple(sample.shape[1:]) != (c.horizon, c.action_dim):
            raise ValueError(f"MlpDenoiser: sample must be (B, {c.horizon}, {c.action_dim}), "
                             f"got {tuple(sample.shape)}")  # fmt: skip
        timestep = _check_conditions("MlpDenoiser", c, sample, timestep, global_cond, local_cond)
        parts = [sample.flatten(1), self.step_encoder(timestep)]
        if c.global_cond_dim:
            parts.append(global_cond)
        if c.local_cond_dim:
            parts.append(local_cond.to(sample.dtype).flatten(1))
        h = self.inp(torch.cat(parts, dim=-1))
        for block in self.blocks:
            h = h + block(h)
        return self.head(h).unflatten(1, (c.horizon, c.action_dim))


BACKBONES = ("unet", "mlp")
"""Denoiser families: Chi et al.'s temporal UNet, DPPO's residual MLP."""


def build_denoiser(backbone: str, *, action_dim: int, global_cond_dim: int, horizon: int,
                   down_dims: Sequence[int] = (32, 64, 128), kernel_size: int = 5,
                   n_groups: int = 8, step_embed_dim: int = 64, mlp_width: int = 512,
                   mlp_blocks: int = 3, local_cond_dim: int = 0) -> nn.Module:  # fmt: skip
    """The noise predictor of a policy config: a :class:`ConditionalUnet1D` (``"unet"``;
    ``mlp_*`` ignored) or an :class:`MlpDenoiser` (``"mlp"``; the UNet's sizes ignored).
    Both map ``(sample (B, H, A), timestep, global_cond (B, G), local_cond (B, H, L))`` to
    (B, H, A)."""
    if backbone == "unet":
        return ConditionalUnet1D(UnetConfig(action_dim, global_cond_dim, tuple(down_dims),
                                            kernel_size, n_groups, step_embed_dim,
                                            local_cond_dim=local_cond_dim))  # fmt: skip
    if backbone == "mlp":
        return MlpDenoiser(MlpDenoiserConfig(action_dim, global_cond_dim, horizon, mlp_width,
                                             mlp_blocks, step_embed_dim, local_cond_dim))  # fmt: skip
    raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")


NETWORK_FIELDS = (
    "backbone",
    "down_dims",
    "kernel_size",
    "n_groups",
    "step_embed_dim",
    "mlp_width",
    "mlp_blocks",
)
"""The policy-config fields that shape the denoiser: a student copies them from its teacher."""


def network_fields(config) -> dict:
    """``config``'s :data:`NETWORK_FIELDS` (a student's config takes them from its teacher's,
    so that the two build the same network)."""
    return {name: getattr(config, name) for name in NETWORK_FIELDS}


def denoiser_for(config, horizon: int, local_cond_dim: int = 0) -> nn.Module:
    """:func:`build_denoiser` from a policy config (the teacher's or a student's): its
    ``backbone``, sizes and ``obs_dim * obs_horizon`` conditioning, over ``horizon``."""
    c = config
    return build_denoiser(
        c.backbone, action_dim=c.action_dim, global_cond_dim=c.obs_dim * c.obs_horizon,
        horizon=horizon, down_dims=c.down_dims, kernel_size=c.kernel_size, n_groups=c.n_groups,
        step_embed_dim=c.step_embed_dim, mlp_width=c.mlp_width, mlp_blocks=c.mlp_blocks,
        local_cond_dim=local_cond_dim,
    )  # fmt: skip


class DenoisingSchedule:
    """diffusers' ``DDPMScheduler`` (training: ``ddpm.add_noise``) and ``DDIMScheduler``
    (sampling: timesteps and alphas) plus the Gaussian DDIM step written out, so that its
    mean and std are explicit, batched over rows at different steps, and differentiable::

        x0_hat = clip((x_t - sqrt(1 - a_t) eps) / sqrt(a_t), -1, 1)        (clip_sample)
        sigma  = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        mean   = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps,  std = max(sigma, min_std)

    With ``eta = 0`` the mean is exactly ``DDIMScheduler.step``'s output.
    """

    def __init__(self, num_train_timesteps: int = 100, beta_schedule: str = "squaredcos_cap_v2",
                 clip_sample: bool = True, timestep_spacing: str = "trailing"):  # fmt: skip
        self.num_train_timesteps, self.clip_sample = int(num_train_timesteps), bool(clip_sample)
        self.ddpm = DDPMScheduler(
            num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
            clip_sample=clip_sample, prediction_type="epsilon",
        )  # fmt: skip
        # set_alpha_to_one: the last step lands on the clean sample (alpha_prev = 1).
        self.ddim = DDIMScheduler(
            num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
            clip_sample=clip_sample, set_alpha_to_one=True, steps_offset=0,
            prediction_type="epsilon", timestep_spacing=timestep_spacing,
        )  # fmt: skip
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}

    def steps(self, k: int, eta: float = 0.0, min_std: float = 0.0,
              device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:  # fmt: skip
        """Constants of a K-step DDIM chain, each (K,), noisiest step first: ``timesteps``,
        ``alpha`` (a_t), ``alpha_prev``, ``sigma`` (DDIM's std times eta), ``std``."""
        key = (int(k), float(eta), float(min_std), str(device))
        if key not in self._cache:
            if not 1 <= k <= self.num_train_timesteps:
                raise ValueError(f"num_inference_steps must be in [1, "
                                 f"{self.num_train_timesteps}], got {k}")  # fmt: skip
            self.ddim.set_timesteps(int(k))
            timesteps = self.ddim.timesteps.clone().long()
            cumprod = self.ddim.alphas_cumprod.double()
            # diffusers' DDIM convention: the previous timestep is t - T // K, and a negative
            # one means the clean sample (alpha_prev = 1 with set_alpha_to_one).
            prev = timesteps - self.num_train_timesteps // int(k)
            alpha = cumprod[timesteps]
            alpha_prev = torch.where(prev >= 0, cumprod[prev.clamp(min=0)], torch.ones(()))
            var = (1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)
            sigma = eta * var.clamp(min=0).sqrt()
            named = {"alpha": alpha, "alpha_prev": alpha_prev, "sigma": sigma,
                     "std": sigma.clamp(min=min_std)}  # fmt: skip
            self._cache[key] = {"timesteps": timesteps.to(device),
                                **{n: v.float().to(device) for n, v in named.items()}}  # fmt: skip
        return self._cache[key]

    def step_mean(self, eps, x, alpha, alpha_prev, sigma) -> torch.Tensor:
        """Mean of one DDIM step from ``x`` (N, H, A) and the predicted noise ``eps``
        (N, H, A); ``alpha``, ``alpha_prev``, ``sigma`` are scalars or (N, 1, 1)."""
        x0 = (x - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        if self.clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
        direction = (1 - alpha_prev - sigma**2).clamp(min=0).sqrt()
        return alpha_prev.sqrt() * x0 + direction * eps


def gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduce: bool = True
) -> torch.Tensor:
    """Diagonal Gaussian log-density: (N, H, A) -> (N,) summed over the last two dims, or
    per element (N, H, A) with ``reduce=False``."""
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    z = (x - mean) / std
    per_element = -0.5 * z.pow(2) - std.log() - _LOG_SQRT_2PI
    return per_element.sum(dim=(-2, -1)) if reduce else per_element


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_unet(
    action_dim: int,
    global_cond_dim: int,
    down_dims: Sequence[int] = (32, 64, 128),
    kernel_size: int = 5,
    n_groups: int = 8,
    step_embed_dim: int = 64,
) -> ConditionalUnet1D:
    """Convenience constructor; see :class:`UnetConfig` for the arguments."""
    return ConditionalUnet1D(
        UnetConfig(
            action_dim, global_cond_dim, tuple(down_dims), kernel_size, n_groups, step_embed_dim
        )  # fmt: skip
    )


__all__ = [
    "BACKBONES",
    "ConditionalUnet1D",
    "Conv1dBlock",
    "DenoisingSchedule",
    "FiLMResidualBlock1D",
    "SinusoidalStepEmbedding",
    "MlpDenoiser",
    "MlpDenoiserConfig",
    "UnetConfig",
    "build_denoiser",
    "build_unet",
    "denoiser_for",
    "network_fields",
    "count_parameters",
    "gaussian_log_prob",
]
