"""Shuffled epochs over an in-memory dataset with a fresh Adam: how DAgger-style students
train after each round (the dataset just changed, so the optimizer starts over)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def train_epochs(
    module: torch.nn.Module,
    data: dict[str, np.ndarray],
    loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: list[int],
    device: torch.device | str = "cpu",
) -> list[float]:
    """``epochs`` shuffled passes of Adam over ``data`` (every array (N, ...)); ``loss_fn``
    maps a batch of the same keys (on ``device``) to the mean loss. Shuffles and torch's
    global RNG are seeded from ``seed``, so a repeated call repeats the training. Returns
    each epoch's mean loss; ``module`` trains on ``device`` and ends on CPU (where the
    students act) in eval mode."""
    torch.manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
    rng = np.random.default_rng(seed)
    tensors = {k: torch.from_numpy(v) for k, v in data.items()}
    n = len(next(iter(tensors.values())))
    device = torch.device(device)
    module.to(device)  # before the optimizer: Adam's state lives where the weights do
    optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate)
    module.train()
    losses = []
    for _ in range(epochs):
        perm = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            value = loss_fn({k: v[idx].to(device) for k, v in tensors.items()})
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            total += float(value.detach()) * len(idx)
        losses.append(total / n)
    module.to("cpu").eval()
    return losses
