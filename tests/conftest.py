from __future__ import annotations

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture
def tiny_overrides(tmp_path):
    """Overrides that make any stage finish in well under a second."""
    return [
        f"runs_dir={tmp_path / 'runs'}",
        "env.id=Pendulum-v1",
        "env.num_envs=2",
        "env.max_episode_steps=12",
        "collect.policy=random",
        "collect.episodes=5",
        "collect.flush_every=2",
        "eval.policy=random",
        "eval.episodes=3",
        "eval.video_episodes=0",
    ]
