"""Roll a policy out in a batch of environments, one fixed seed per episode.

Every episode gets its own seed (``seeds[i]``), so the set of episodes does not depend on
how many environments run side by side, and an interrupted collection resumes by running
only the seeds that are not in the store yet. A row whose episode ends is reset at once
with the next seed; a row with no seed left goes idle and is no longer stepped.

::

    row 0: | ep 0 (seed s0) ........ | ep 2 (seed s2) ...... | idle
    row 1: | ep 1 (seed s1) ..... | ep 3 (seed s3) ............ |

The rows are plain gymnasium envs stepped in turn rather than a
``gymnasium.vector.SyncVectorEnv``: per-episode seeding needs manual resets anyway, idle
rows must not be stepped, and the vector env's per-step info merging cost 50 µs per step
(a fifth of a PushT step) that ``benchmarks/sim_throughput.py`` showed as overhead.
Privileged policies (experts) get the env objects through ``policy.attach``.

Each episode records its **max score**: the maximum over its steps (not the reset) of
``info["score"]`` where the env reports one (Push-T: ``clip(coverage / 0.95, 0, 1)``, whose
mean over episodes is Diffusion Policy's ``mean_score``), else of the reward;
``Episode.score_source`` says which (``"info.score"`` / ``"reward"``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from robodistill.data.store import Episode
from robodistill.envs import control_rate_hz, make_env, space_to_json
from robodistill.policies import Policy

log = logging.getLogger(__name__)


class RolloutError(RuntimeError):
    """The environment or the policy produced something that cannot be recorded."""


@dataclass
class _Slot:
    seed: int
    obs: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    frames: list = field(default_factory=list)
    max_info_score: float | None = None  # max of info["score"] over the steps that report one

    def add_score(self, info: dict) -> None:
        if "score" in info and info["score"] is not None:
            score = float(info["score"])
            if self.max_info_score is None or score > self.max_info_score:
                self.max_info_score = score


def rollout(
    env_id: str,
    policy: Policy,
    seeds: Iterable[int],
    *,
    num_envs: int = 1,
    max_episode_steps: int | None = None,
    env_kwargs: dict | None = None,
    source_policy: str = "",
    on_episode: Callable[[Episode], None] | None = None,
    on_frames: Callable[[int, list[np.ndarray]], None] | None = None,
) -> list[Episode]:
    """Run one episode per seed and hand each finished :class:`Episode` to ``on_episode``.

    Episodes are reported in the order they finish. Returns them all when ``on_episode``
    is ``None`` (keep ``on_episode`` for long collections: it streams to the store).
    With ``on_frames``, every env renders (``render_mode="rgb_array"``) and each finished
    episode's frames, ``(H, W, 3)`` uint8 each, go to ``on_frames(seed, frames)``.
    The policy always sees a ``(num_envs, obs_dim)`` float32 batch (idle rows hold their
    last observation) so that per-row policy state keeps its row. A NaN/inf observation or
    action raises :class:`RolloutError` naming the seed and step. ``env_kwargs`` go to
    :func:`~robodistill.envs.make_env` (``success_key`` too: ``EnvConfig.make_kwargs``).
    """
    queue = deque(seeds)
    if not queue:
        return []
    num_envs = min(num_envs, len(queue))
    env_kwargs = dict(env_kwargs or {})
    if on_frames is not None:
        env_kwargs["render_mode"] = "rgb_array"
    envs = [make_env(env_id, max_episode_steps=max_episode_steps, **env_kwargs)
            for _ in range(num_envs)]  # fmt: skip
    collected: list[Episode] = []
    try:
        space = envs[0].observation_space
        obs = np.zeros((num_envs, *space.shape), dtype=np.float32)
        action_shape = (num_envs, *envs[0].action_space.shape)
        # Multi-embodiment tasks say which body they simulate; it goes into each episode's meta.
        embodiment = getattr(getattr(envs[0].unwrapped, "embodiment_spec", None), "name", "")
        slots: list[_Slot | None] = [None] * num_envs
        policy.attach(envs)
        policy.reset()

        def start(i: int) -> None:
            if queue:
                slots[i] = _Slot(seed=int(queue.popleft()))
                obs[i], _ = envs[i].reset(seed=slots[i].seed)
            else:
                slots[i] = None

        for i in range(num_envs):
            start(i)
        while any(slot is not None for slot in slots):
            _check_finite(obs, "observation", slots, env_id)
            if on_frames is not None:
                for slot, env in zip(slots, envs, strict=True):
                    if slot is not None:
                        slot.frames.append(env.render())
            actions = np.asarray(policy.act(obs))
            if actions.shape != action_shape:
                raise RolloutError(
                    f"policy returned actions of shape {actions.shape}; {env_id} expects "
                    f"{action_shape}"
                )
            _check_finite(actions, "action", slots, env_id)
            ended = []
            for i, slot in enumerate(slots):
                if slot is None:
                    continue
                next_obs, reward, terminated, truncated, info = envs[i].step(actions[i])
                slot.obs.append(obs[i].copy())
                slot.actions.append(actions[i])
                slot.rewards.append(reward)
                slot.add_score(info)
                obs[i] = next_obs
                if terminated or truncated:
                    episode = _finish(slot, next_obs, terminated, truncated, info, env_id,
                                      source_policy, embodiment)  # fmt: skip
                    if on_episode is None:
                        collected.append(episode)
                    else:
                        on_episode(episode)
                    if on_frames is not None:
                        on_frames(slot.seed, [*slot.frames, envs[i].render()])
                    ended.append(i)
            if ended:
                policy.reset(env_ids=np.array(ended))
                for i in ended:
                    start(i)
    finally:
        for env in envs:
            env.close()
    return collected


def _check_finite(x: np.ndarray, what: str, slots: list[_Slot | None], env_id: str) -> None:
    # One vectorized test on the hot path; the per-row search only runs when something is bad.
    if x.dtype.kind != "f" or np.isfinite(x).all():
        return
    bad = ~np.isfinite(x).reshape(len(slots), -1).all(axis=1)
    if bad.any():
        for i in np.flatnonzero(bad):
            if slots[i] is not None:
                raise RolloutError(
                    f"{what} contains NaN or inf in {env_id}, episode seed {slots[i].seed}, "
                    f"step {len(slots[i].obs)}: {x[i]}"
                )


def _finish(
    slot, final_obs, terminated, truncated, info, env_id, source_policy, embodiment
) -> Episode:
    steps = len(slot.rewards)
    term = np.zeros(steps, dtype=bool)
    trunc = np.zeros(steps, dtype=bool)
    term[-1], trunc[-1] = bool(terminated), bool(truncated)
    # make_env's SuccessInfo fills is_success from info["success"] or env.success_key.
    success = bool(info["is_success"]) if "is_success" in info else None
    if slot.max_info_score is not None:
        max_score, score_source = slot.max_info_score, "info.score"
    else:
        max_score, score_source = float(np.max(slot.rewards)), "reward"
    return Episode(
        data={
            "obs": np.asarray(slot.obs, dtype=np.float32),
            "action": np.asarray(slot.actions, dtype=np.float32),
            "reward": np.asarray(slot.rewards, dtype=np.float32),
            "terminated": term,
            "truncated": trunc,
        },
        final={"obs": np.asarray(final_obs, dtype=np.float32)},
        seed=int(slot.seed),
        env_id=env_id,
        embodiment=embodiment,
        source_policy=source_policy,
        success=success,
        max_score=max_score,
        score_source=score_source,
    )


class Throughput:
    """Episodes/s and steps/s since construction."""

    def __init__(self) -> None:
        self.t0, self.episodes, self.steps = time.monotonic(), 0, 0

    def add(self, steps: int) -> None:
        self.episodes += 1
        self.steps += steps

    def rates(self) -> dict[str, float]:
        dt = max(time.monotonic() - self.t0, 1e-9)
        return {"episodes_per_s": self.episodes / dt, "steps_per_s": self.steps / dt}


def env_spaces(env_id: str, env_kwargs: dict | None = None) -> tuple[gym.Space, gym.Space, dict]:
    """Observation space, action space and a JSON description of the env."""

    env = make_env(env_id, **(env_kwargs or {}))
    try:
        layout = env.get_wrapper_attr("observation_layout")
    except AttributeError:
        layout = None
    description = {
        "env_id": env_id,
        "observation_space": space_to_json(env.observation_space),
        "action_space": space_to_json(env.action_space),
        "observation_layout": layout,
        "control_rate_hz": control_rate_hz(env),
        "max_episode_steps": env.spec.max_episode_steps if env.spec else None,
    }
    env.close()
    return env.observation_space, env.action_space, description
