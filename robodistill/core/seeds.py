"""Every seed a run uses, named: episode seed offsets and random-number streams.

Episode ``i`` of a purpose runs on seed ``cfg.seed · 10⁶ + OFFSET + i``. The offsets keep
the purposes apart, so no policy is chosen or trained on the seeds it is reported on::

    collection         0 …
    DAgger rounds      100 000 …
    student rollouts   300 000 …   (a consistency student's visited states)
    online RL          600 000 …
    offline flywheel   700 000 …
    validation         800 000 …   (checkpoint selection)
    evaluation         900 000 …   (``robodistill eval``, export, control)
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from robodistill.config import RunConfig

SEEDS_PER_RUN = 1_000_000
"""Each run seed owns this many episode seeds."""
COLLECT_SEED_OFFSET = 0
"""Collection's episodes (``robodistill collect``)."""
DAGGER_SEED_OFFSET = 100_000
"""Round ``i``'s episode ``j`` of a DAgger student runs on offset
``100000 + i·episodes_per_round + j``."""
STUDENT_ROLLOUT_SEED_OFFSET = 300_000
"""Episodes a consistency student plays to add the states it visits to its training data
(``distill.consistency.visited_every``): round ``r``'s episode ``j`` runs on offset
``300000 + r·visited_episodes + j``."""
ONLINE_RL_SEED_OFFSET = 600_000
"""Training episodes of RL-100's online stage."""
FLYWHEEL_SEED_OFFSET = 700_000
"""Episodes RL-100's offline stage rolls out to grow its data (``offline.flywheel``)."""
VALIDATION_SEED_OFFSET = 800_000
"""Seeds a training stage picks its best checkpoint on: disjoint from the evaluation seeds,
so the numbers ``robodistill eval`` reports are not the ones the checkpoint was chosen on."""
EVAL_SEED_OFFSET = 900_000
"""Evaluation seeds start here (per run seed), far from collection's, so they never overlap."""


def episode_seeds(cfg: RunConfig, count: int, offset: int = COLLECT_SEED_OFFSET) -> list[int]:
    """``count`` episode seeds of ``cfg.seed`` starting at ``offset`` (one of the offsets
    above)."""
    base = cfg.seed * SEEDS_PER_RUN + offset
    return [base + i for i in range(count)]


class RNGStream(IntEnum):
    """Ids of the numpy random streams trainers draw batches from: ``[cfg.seed, stream]``
    seeds a generator independent of every other stream of the same run seed (the loop's
    trainers draw epoch permutations seeded by ``[cfg.seed, stream, epoch]``:
    :mod:`robodistill.training.shards`)."""

    IMITATION_BATCHES = 1
    """The RL-100 teacher's imitation batches."""
    STUDENT_BATCHES = 6
    """A diffusion teacher's students' batches (consistency, streaming)."""
    COMPASS_BASE_BATCHES = 7
    """The COMPASS base's batches."""


def stream_rng(seed: int, stream: RNGStream) -> np.random.Generator:
    """The numpy generator of ``stream`` for run seed ``seed``."""
    return np.random.default_rng([seed, int(stream)])
