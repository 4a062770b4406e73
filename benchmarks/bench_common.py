"""Helpers shared by the diffusion benchmarks (``rl100_stages.py``, ``students.py``): the
same fixed evaluation seeds for every policy, inference variants of one diffusion teacher,
and markdown tables."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


def evaluate(cfg, policy, seeds: list[int], num_envs: int | None = None) -> dict[str, Any]:
    """Success rate, mean max score (``max_score_mean``, of ``info["score"]`` or else the
    reward: ``score_source``), mean return and mean episode length of ``policy`` on ``seeds``."""
    from robodistill.core.rollout import rollout
    from robodistill.core.summaries import summarize_episode_list

    episodes = rollout(cfg.env.id, policy, seeds, num_envs=num_envs or cfg.env.num_envs,
                       max_episode_steps=cfg.env.max_episode_steps, env_kwargs=cfg.env.kwargs)  # fmt: skip
    return summarize_episode_list(episodes)


def diffusion_variant(path: str | Path, **changes):
    """The diffusion policy saved at ``path`` with its config changed (e.g.
    ``num_inference_steps=100, inference_eta=1.0`` for DDPM-100, ``rti_steps=3``); for a
    residual policy on a diffusion base, the base's sampler changes."""
    from robodistill.policies import load_policy
    from robodistill.policies.diffusion import DiffusionPolicy

    policy = load_policy(path)
    diffusion = getattr(policy, "base", policy)
    if not isinstance(diffusion, DiffusionPolicy):
        raise TypeError(f"{path} holds a {policy.kind!r} policy, not a diffusion policy")
    diffusion.config = dataclasses.replace(diffusion.config, **changes)
    return policy


def observation(cfg, seed: int):
    """The first observation of ``env.id`` at ``seed`` (what latency is measured on)."""
    from robodistill.envs import make_env

    env = make_env(cfg.env.id, **cfg.env.kwargs)
    try:
        obs, _ = env.reset(seed=seed)
    finally:
        env.close()
    return obs


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f} %"


def score(x: float | None) -> str:
    """A mean max score (``max_score_mean``) for a table cell."""
    return "—" if x is None else f"{x:.3f}"


def markdown(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
