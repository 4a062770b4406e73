"""The thread rule every trainer and timing follows.

A trainer runs with its section's ``torch_threads`` (0 = torch's default) and restores the
previous count when it ends, through :func:`torch_threads`. Small models on few cores run far
faster with one thread than with torch's default of one per core.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (``None`` / 0: unchanged)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
