"""Which windows each step trains on, and how data-parallel processes combine their work.

**The batch stream.** A trainer's global batches are cut from one endless stream of window
indices: epoch ``e`` is a permutation of all ``n`` windows seeded by ``(batch_seed, e)``,
epochs follow each other, and global batch ``k`` is stream positions ``[kB, (k+1)B)``::

    stream:   | perm(e=0) of n windows | perm(e=1) | perm(e=2) | ...
    batches:  |  B  |  B  |  B  |  B  |  B  | ...        (a batch may straddle two epochs)
    rank r of W workers computes rows r, r+W, r+2W, ... of each global batch

Every window is seen once per epoch, reshuffled each epoch from the run seed, and batch
``k`` is a pure function of ``k``: a resumed run draws what an uninterrupted one would, with
nothing to checkpoint. Rank ``r``'s rows over a run are exactly what PyTorch's
``DistributedSampler`` (``rank::world`` of each permutation) feeding a per-rank loader of
``B/W`` would give, and the union of the ranks' rows at step ``k`` is the one-process batch
``k``: so ``workers`` changes how a batch is computed, not which windows it holds.

**Combining.** Rank ``r`` holds ``n_r`` of the ``B`` rows (``n_r`` differ by at most one
when ``W`` does not divide ``B``). Its loss is the mean over its rows, so the global
batch's mean loss is ``Σ_r (n_r/B)·loss_r``, and so is its gradient: :class:`ProcessGroup`
scales each rank's gradients by ``n_r/B`` and sums them (one flattened ``all_reduce`` per
step: PyTorch DDP's averaging for equal shards, exact for unequal ones). Every rank then
applies the same gradient to the same weights, so weights, optimizer, EMA and target
networks stay identical without further traffic. Losses normalized over masked elements
(padded actions, transitions with a successor) are means over each shard's own unmasked
elements: they weigh shards by rows, which equals the one-process loss when the masked
share is the same in every shard and differs slightly otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Shard:
    """This process's place among the data-parallel workers."""

    rank: int = 0
    world: int = 1

    @property
    def writer(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics, policies and results, and validates."""
        return self.rank == 0


@lru_cache(maxsize=4)
def _permutation(n: int, seed: tuple[int, ...], epoch: int) -> np.ndarray:
    # A batch straddles at most two epochs; a few cached permutations cover every step.
    return np.random.default_rng([*seed, epoch]).permutation(n)


def global_batch(n: int, batch_size: int, step: int, seed: tuple[int, ...]) -> np.ndarray:
    """Window indices (B,) of global batch ``step`` of the stream (module docstring)."""
    if n < 1:
        raise ValueError("no windows to draw batches from")
    pos = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(pos, n)
    out = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = _permutation(n, tuple(int(s) for s in seed), int(e))[offsets[sel]]
    return out


def shard_batch(n: int, batch_size: int, step: int, seed: tuple[int, ...],
                shard: Shard = Shard()) -> np.ndarray:  # fmt: skip
    """This shard's rows (n_r,) of global batch ``step``: every ``world``-th from ``rank``."""
    return global_batch(n, batch_size, step, seed)[shard.rank :: shard.world]


def rank_noise_seed(seed: int, rank: int, step: int) -> int:
    """The torch noise seed of rank ``rank > 0`` at ``step``: each rank draws its own noise
    (rank 0 keeps the trainer's checkpointed stream), reseeded every step so a resumed run
    draws what an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


class ProcessGroup:
    """The collectives the loop needs over the ``torch.distributed`` default group (set up
    by Ray Train): start from rank 0's weights, combine gradients, combine logged losses."""

    def __init__(self, shard: Shard):
        import torch.distributed as dist

        self.shard, self.dist = shard, dist
        # Python objects (the logged parts) travel over gloo even when tensors use NCCL.
        self.objects = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    def broadcast(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers of ``module`` to every rank."""
        for tensor in [*module.parameters(), *module.buffers()]:
            self.dist.broadcast(tensor.data, src=0)

    def combine_gradients(self, params: list[torch.nn.Parameter], weight: float) -> None:
        """``grad = Σ_r weight_r · grad_r`` over the ranks (``weight``: this rank's ``n_r/B``),
        in one flattened ``all_reduce``. A parameter no rank has a gradient for stays
        ``None`` (the optimizer skips it as it would in one process); one that only some
        ranks have counts as zero on the others."""
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        device = params[0].device
        flat = torch.cat([
            (p.grad.detach().reshape(-1) * weight if p.grad is not None
             else torch.zeros(p.numel(), device=device, dtype=p.dtype))
            for p in params
        ] + [torch.tensor([float(p.grad is not None) for p in params], device=device)])  # fmt: skip
        self.dist.all_reduce(flat)
        has = flat[-len(params) :]
        offset = 0
        for p, present in zip(params, has.tolist(), strict=True):
            chunk = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            p.grad = chunk.clone() if present > 0 else None

    def combine_logs(self, sums: dict[str, float], weights: dict[str, float]
                     ) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
        """Every rank's weighted sums of logged parts, summed (key by key; a part some
        ranks did not log counts where it was logged)."""
        gathered: list[Any] = [None] * self.shard.world
        self.dist.all_gather_object(gathered, (sums, weights), group=self.objects)
        total_s: dict[str, float] = {}
        total_w: dict[str, float] = {}
        for s, w in gathered:
            for k, v in s.items():
                total_s[k] = total_s.get(k, 0.0) + v
                total_w[k] = total_w.get(k, 0.0) + w[k]
        return total_s, total_w
