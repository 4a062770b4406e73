"""RTI warm start: a training-free inference mode for any diffusion teacher (Real-Time
Iteration for diffusion policies, Duan et al. 2025).

Consecutive plans of a receding-horizon policy overlap, so the previous plan, shifted by
the actions executed since it was made, is already close to the next one. Instead of
denoising from pure noise through all K DDIM steps, RTI re-noises that shifted plan to an
intermediate timestep and runs only the chain's last few steps::

    previous plan (normalized):  [a_0 a_1 ... a_{s-1} | a_s ... a_{H-1}]
                                  executed (s actions)   still ahead
    warm start:                  [a_s ... a_{H-1} a_{H-1} ... a_{H-1}]   last action repeated
    x_tau = sqrt(abar_tau) * warm + sqrt(1 - abar_tau) * eps              tau = t_{K - r}
    DDIM steps K - r, ..., K - 1 from x_tau                               r = rti_steps calls

Discrete action dimensions (a gripper that is either open or closed) would be blurred by the
re-noising toward the middle of their range, where the policy's denoiser has never seen
them; following RTI's scaling rule, their shifted values are pushed to the extreme of the
normalized range they are closest to (+1 or -1) before re-noising. A row's first plan of
an episode has nothing to warm-start from and runs the full chain.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def shift_plan(plan: torch.Tensor, shift: int) -> torch.Tensor:
    """(n, H, A) -> (n, H, A): drop the first ``shift`` actions and repeat the last one at
    the end, so index j of the result is the old plan's index j + shift."""
    if shift <= 0:
        return plan.clone()
    horizon = plan.shape[1]
    shift = min(int(shift), horizon - 1)
    tail = plan[:, -1:].expand(-1, shift, -1)
    return torch.cat([plan[:, shift:], tail], dim=1)


def snap_discrete(plan: torch.Tensor, discrete_dims: Sequence[int]) -> torch.Tensor:
    """Push the normalized values of ``discrete_dims`` to the nearer of -1 and +1
    (ties at 0 go to +1), leaving the continuous dimensions untouched."""
    if not discrete_dims:
        return plan
    out = plan.clone()
    dims = list(discrete_dims)
    out[..., dims] = torch.where(plan[..., dims] >= 0, 1.0, -1.0).to(plan.dtype)
    return out


def warm_start(
    plan: torch.Tensor,
    shift: int,
    alpha_bar: torch.Tensor,
    noise: torch.Tensor,
    discrete_dims: Sequence[int] = (),
) -> torch.Tensor:
    """The re-noised warm start ``x_tau`` (n, H, A) from the previous normalized ``plan``
    (n, H, A), ``shift`` executed actions, ``alpha_bar`` = abar_tau (scalar tensor) and
    standard normal ``noise`` (n, H, A)."""
    warm = snap_discrete(shift_plan(plan, shift), discrete_dims)
    return alpha_bar.sqrt() * warm + (1 - alpha_bar).sqrt() * noise
