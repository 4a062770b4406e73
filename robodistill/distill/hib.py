"""The historical information bottleneck (HIB) objective, as this project implements it.

He et al., *Bridging the Sim-to-Real Gap from the Information Bottleneck Perspective*
(HIB, arXiv 2305.18464) learn a representation ``z`` of the privileged knowledge ``e`` from
the history ``h`` alone, by the information bottleneck::

    max  I(z; e)  -  beta * I(z; h)          z ~ q(z | h)

* ``I(z; e)`` (keep what the history says about the dynamics) is bounded from below by a
  contrastive InfoNCE estimate: a batch's ``(z_i, e_i)`` pairs are positives, every
  ``(z_i, e_j)``, ``j != i``, a negative;
* ``I(z; h)`` (forget everything else of the history) is bounded from above by the
  variational ``E_h KL(q(z | h) || r(z))`` with ``r = N(0, I)`` and a Gaussian encoder
  (the reparameterization trick draws ``z``).

In the paper the policy ``pi(a | s, z)`` trains with PPO in the same single stage. Here the
student is distilled (DAgger on its own states), so the RL term becomes the imitation term,
and ``e`` is represented by the teacher's privileged latent ``mu(e)`` (frozen)::

    L = || (a_student(s, z) - a_teacher) / scale ||^2          imitation (replaces PPO's loss)
        + alpha * InfoNCE(W z, mu(e); tau)                    -I(z; e) bound
        + beta  * KL(N(m(h), s(h)^2) || N(0, I))              I(z; h) bound

InfoNCE uses cosine similarity over the batch with temperature ``tau``. Rows of one episode
share ``e`` and become false negatives of each other; shuffled minibatches over many
episodes keep them rare.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def gaussian_kl_standard(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) summed over the last dim: (B, L) -> (B,)."""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(-1)


def info_nce(z: torch.Tensor, target: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Mean InfoNCE loss of (B, L) projections against (B, L') targets (row i is row i's
    positive): cross-entropy of cosine similarities / tau. A lower bound on I(z; e) is
    ``log B - loss``."""
    logits = F.normalize(z, dim=-1) @ F.normalize(target, dim=-1).T / tau
    return F.cross_entropy(logits, torch.arange(len(z), device=z.device))


class HIBCritic(nn.Module):
    """The InfoNCE critic's projection ``W``: student latent (L) -> teacher latent (L')."""

    def __init__(self, latent_dim: int, target_dim: int):
        super().__init__()
        self.proj = nn.Linear(latent_dim, target_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.proj(z)
