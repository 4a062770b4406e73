"""The per-episode training record: one JSON line per finished training episode.

::

    log = EpisodeLog(stage.dir / "episodes.jsonl", resume_step=model.num_timesteps)
    log.add(ret=12.5, length=200, success=None, env_steps=4096)
    log.close()

Each row is ``{"episode", "return", "length", "success", "env_steps", "wall_s"}``:
``episode`` counts from 0 over the whole stage, ``return`` is the env's raw reward summed
(before any normalization or exploration bonus), ``success`` is ``info["is_success"]`` at
the episode's end (``null``: the env does not say), ``env_steps`` the trainer's env-step
counter when the episode ended and ``wall_s`` the training seconds since the stage began
(summed over resumed attempts, not counting the time between them). Training episodes run
on the trainer's own seeds and policy (exploration noise included): this is the learning
curve, not an evaluation (the keeper's validation rows in ``metrics.jsonl`` are).

A resumed stage continues the file: rows of episodes that ended after the checkpoint it
resumes from are dropped first, as those steps run again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from robodistill.core.summaries import read_jsonl

EPISODES_NAME = "episodes.jsonl"


class EpisodeLog:
    """Appends training episodes to ``path`` (module docstring)."""

    def __init__(self, path: Path, resume_step: int | None = None):
        """``resume_step``: the env step the trainer resumes from (``None``: a fresh start,
        which empties the file)."""
        self.path = Path(path)
        rows = read_jsonl(self.path) if resume_step is not None else []
        rows = [r for r in rows if r.get("env_steps", 0) <= resume_step] if rows else []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w") as out:  # kept rows only: a cut-short line goes too
            out.writelines(json.dumps(r) + "\n" for r in rows)
        self.episodes = len(rows)
        self.wall_offset = float(rows[-1].get("wall_s", 0.0)) if rows else 0.0
        self.t0 = time.monotonic()
        self._out = open(self.path, "a")  # noqa: SIM115 (closed by close())

    def add(self, ret: float, length: int, success: Any, env_steps: int) -> dict[str, Any]:
        row = {
            "episode": self.episodes,
            "return": float(ret),
            "length": int(length),
            "success": None if success is None else bool(success),
            "env_steps": int(env_steps),
            "wall_s": round(self.wall_offset + time.monotonic() - self.t0, 3),
        }
        self._out.write(json.dumps(row) + "\n")
        self.episodes += 1
        return row

    def flush(self) -> None:
        if not self._out.closed:
            self._out.flush()

    def close(self) -> None:
        if not self._out.closed:
            self._out.close()
