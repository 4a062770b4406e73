"""Roll a policy out in a synchronous vector env, one fixed seed per episode.

Every episode gets its own seed (``seeds[i]``), so the set of episodes does not depend on
how many environments run side by side, and an interrupted collection resumes by running
only the seeds that are not in the store yet. Sub-environments are reset by hand
(``AutoresetMode.DISABLED``) so that each reset can take the next episode's seed.

::

    slot 0: | ep 0 (seed s0) ........ | ep 2 (seed s2) ...... | idle
    slot 1: | ep 1 (seed s1) ..... | ep 3 (seed s3) ............ |
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from robodistill.envs import make_env
from robodistill.policies import Policy
from robodistill.store import Episode

log = logging.getLogger(__name__)


class RolloutError(RuntimeError):
    """The environment or the policy produced something that cannot be recorded."""


@dataclass
class _Slot:
    index: int = -1
    seed: int = 0
    obs: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    frames: list = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.index >= 0


def make_vector_env(
    env_id: str, num_envs: int, max_episode_steps: int | None = None, **kwargs
) -> SyncVectorEnv:
    return SyncVectorEnv(
        [
            lambda: make_env(env_id, max_episode_steps=max_episode_steps, **kwargs)
            for _ in range(num_envs)
        ],
        autoreset_mode=AutoresetMode.DISABLED,
        copy=False,  # rollout copies each batch once itself, cheaper than the default deepcopy
    )


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
    With ``on_frames``, every sub-env renders (``render_mode="rgb_array"``) and each
    finished episode's frames, ``(H, W, 3)`` uint8 each, go to ``on_frames(seed, frames)``.
    Observations are ``(B, obs_dim)`` float32; a NaN/inf observation or action raises
    :class:`RolloutError` naming the seed and step.
    """
    queue = deque(enumerate(seeds))
    if not queue:
        return []
    num_envs = min(num_envs, len(queue))
    env_kwargs = dict(env_kwargs or {})
    if on_frames is not None:
        env_kwargs["render_mode"] = "rgb_array"
    envs = make_vector_env(env_id, num_envs, max_episode_steps, **env_kwargs)
    collected: list[Episode] = []
    slots = [_Slot() for _ in range(num_envs)]
    try:
        start_seeds = []
        for slot in slots:
            slot.index, slot.seed = queue.popleft()
            start_seeds.append(slot.seed)
        policy.attach(list(envs.envs))
        # Multi-embodiment tasks say which body they simulate; it goes into each episode's meta.
        spec = getattr(envs.envs[0].unwrapped, "embodiment_spec", None)
        embodiment = getattr(spec, "name", "")
        obs, _ = envs.reset(seed=start_seeds)
        obs = obs.copy()
        policy.reset()
        action_space = envs.single_action_space
        while any(s.active for s in slots):
            if on_frames is not None:
                for slot, frame in zip(slots, envs.call("render"), strict=True):
                    if slot.active:
                        slot.frames.append(frame)
            _check_finite(obs, "observation", slots, env_id)
            actions = np.asarray(policy.act(obs))
            if actions.shape != (num_envs, *action_space.shape):
                raise RolloutError(
                    f"policy returned actions of shape {actions.shape}; {env_id} expects "
                    f"{(num_envs, *action_space.shape)}"
                )
            _check_finite(actions, "action", slots, env_id)
            next_obs, reward, terminated, truncated, info = envs.step(actions)
            next_obs = next_obs.copy()  # the vector env reuses its buffer (copy=False)
            # Idle rows end episodes too; they must be reset like the others before the next step.
            done = np.logical_or(terminated, truncated)
            for i, slot in enumerate(slots):
                if not slot.active:
                    continue
                slot.obs.append(obs[i])
                slot.actions.append(actions[i])
                slot.rewards.append(reward[i])
                if done[i]:
                    episode = _finish(slot, next_obs[i], terminated[i], truncated[i], info, i,
                                      env_id, source_policy, embodiment)  # fmt: skip
                    if on_episode is None:
                        collected.append(episode)
                    else:
                        on_episode(episode)
                    if on_frames is not None:
                        on_frames(slot.seed, [*slot.frames, envs.envs[i].render()])
            if not done.any():
                obs = next_obs
                continue
            reset_seeds: list[int | None] = [None] * num_envs
            for i in np.flatnonzero(done):
                slot = slots[i]
                slot.obs, slot.actions, slot.rewards, slot.frames = [], [], [], []
                if queue:
                    slot.index, slot.seed = queue.popleft()
                    reset_seeds[i] = slot.seed
                else:
                    # Idle rows keep stepping (a vector env steps all rows); their data is dropped.
                    slot.index = -1
            # Rows outside the mask keep their current observation (``next_obs``).
            obs, _ = envs.reset(seed=reset_seeds, options={"reset_mask": done})
            obs = obs.copy()
            policy.reset(env_ids=np.flatnonzero(done))
    finally:
        envs.close()
    return collected


def _check_finite(x: np.ndarray, what: str, slots: list[_Slot], env_id: str) -> None:
    # One vectorized test on the hot path; the per-row search only runs when something is bad.
    if x.dtype.kind != "f" or np.isfinite(x).all():
        return
    bad = ~np.isfinite(x).reshape(len(slots), -1).all(axis=1)
    if bad.any():
        for i in np.flatnonzero(bad):
            if slots[i].active:
                raise RolloutError(
                    f"{what} contains NaN or inf in {env_id}, episode seed {slots[i].seed}, "
                    f"step {len(slots[i].obs)}: {x[i]}"
                )


def _finish(
    slot, final_obs, terminated, truncated, info, i, env_id, source_policy, embodiment
) -> Episode:
    steps = len(slot.rewards)
    term = np.zeros(steps, dtype=bool)
    trunc = np.zeros(steps, dtype=bool)
    term[-1], trunc[-1] = bool(terminated), bool(truncated)
    success = None
    if "is_success" in info and info.get("_is_success", np.ones(len(info["is_success"])))[i]:
        success = bool(info["is_success"][i])
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
    from robodistill.envs import control_rate_hz, space_to_json

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
