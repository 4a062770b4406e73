"""What DAgger-style students share: the teacher/student mixture that drives each round's
rollouts, the teacher's share per round, and the aggregated dataset on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robodistill.config import DAggerConfig
from robodistill.policies import Policy


def beta_for_round(dagger: DAggerConfig, round_index: int) -> float:
    """Probability that the teacher acts at a step of round ``round_index`` (1 in round 0)."""
    if round_index == 0:
        return 1.0
    if dagger.beta_schedule == "exponential":
        return float(dagger.beta_decay**round_index)
    return float(max(0.0, 1.0 - dagger.beta_decay * round_index))


class MixturePolicy(Policy):
    """At each step, each batch row is driven by the teacher with probability ``beta``,
    else by the student. ``obs`` (B, D) -> actions (B, A); both policies are stateless."""

    kind = ""

    def __init__(self, teacher: Policy, student: Policy | None, beta: float, seed: list[int]):
        if student is None and beta < 1.0:
            raise ValueError("MixturePolicy: a student is needed when beta < 1")
        self.teacher, self.student, self.beta = teacher, student, float(beta)
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.beta >= 1.0:
            return self.teacher.act(obs)
        student = self.student.act(obs)
        if self.beta <= 0.0:
            return student
        use_teacher = self.rng.random(len(obs)) < self.beta
        if not use_teacher.any():
            return student
        return np.where(use_teacher[:, None], self.teacher.act(obs), student).astype(np.float32)


def save_dataset(path: Path, data: dict[str, np.ndarray]) -> None:
    """Write the aggregated dataset as ``.npz`` (no pickle), built aside and renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **data)
    tmp.replace(path)


def load_dataset(path: Path, rounds_done: int) -> dict[str, np.ndarray]:
    """The dataset rows of the ``rounds_done`` committed rounds (rows of a round that was
    saved but never committed are dropped: that round is re-collected)."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    # Rows of a round that was saved but never committed in state.json are re-collected.
    keep = data["round"] < rounds_done
    return {k: v[keep] for k, v in data.items()}
