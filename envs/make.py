"""One way to build any environment: registered robodistill ids and any gymnasium id."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from robodistill.envs.spaces import flat_layout


class EnvIdError(ValueError):
    """The environment id is not registered with gymnasium."""


class FlattenDictObservation(gym.wrappers.FlattenObservation):
    """Flattens Dict observations to one float32 vector and records where each key went.

    ``env.get_wrapper_attr("observation_layout")`` gives the layout (see
    :func:`robodistill.envs.spaces.flat_layout`), so stores and exported policies can
    name the parts of the vector.
    """

    def __init__(self, env: gym.Env):
        self.observation_layout = flat_layout(env.observation_space)
        super().__init__(env)
        space = self.observation_space
        self.observation_space = gym.spaces.Box(
            space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32
        )

    def observation(self, observation):
        return super().observation(observation).astype(np.float32)


SUCCESS_KEYS = ("is_success", "success")
"""``info`` keys read as an episode's success, in this order (gymnasium's, then
gymnasium-robotics'); ``make_env(success_key=...)`` adds one after them."""


class SuccessInfo(gym.Wrapper):
    """Sets ``info["is_success"]``, which robodistill reads, from the first of ``success`` and
    ``success_key`` the env reports when it reports no ``is_success`` itself (a ``None``
    value counts as not reported)."""

    def __init__(self, env: gym.Env, success_key: str | None = None):
        super().__init__(env)
        keys = [*SUCCESS_KEYS[1:], success_key]
        self.success_keys = tuple(dict.fromkeys(k for k in keys if k and k != "is_success"))

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if info.get("is_success") is None:
            for key in self.success_keys:
                if info.get(key) is not None:
                    info["is_success"] = bool(info[key])
                    break
        return obs, reward, terminated, truncated, info


class SuccessBonus(gym.Wrapper):
    """Adds ``bonus`` to the reward of the step on which ``info["is_success"]`` turns true
    (once per episode). For RL only: a task whose per-step reward keeps paying below success
    (Push-T's score) makes lingering worth more than finishing, which ends the stream, and
    a bonus paid once is discounted by how late it comes: there, pair it with
    :class:`ProgressReward`, under which lingering pays nothing.
    ``info["score"]`` and the success flag are untouched, so evaluations do not change."""

    def __init__(self, env: gym.Env, bonus: float):
        super().__init__(env)
        if not np.isfinite(bonus) or bonus < 0:
            raise ValueError(f"success bonus must be a finite number >= 0, got {bonus}")
        self.bonus = float(bonus)
        self._paid = False

    def reset(self, **kwargs):
        self._paid = False
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if info.get("is_success") and not self._paid:
            reward, self._paid = float(reward) + self.bonus, True
        return obs, reward, terminated, truncated, info


class ProgressReward(gym.Wrapper):
    """Replaces the reward by the change in ``info["score"]``, discounted as potential-based
    shaping (Ng, Harada & Russell 1999): ``r = gamma * score(s') - score(s)``. For RL only.

    Summed over an episode it telescopes to ``gamma**T * score(s_T) - score(s_0)``: what an
    episode is paid for is where it ends, not how long it stays near the goal, so lingering
    below success earns nothing (each idle step costs ``(1 - gamma) * score``) — the cure for
    a per-step score that pays every step an episode does not finish. Pair it with
    :class:`SuccessBonus` for the sparse reward of finishing. The final state's score is not
    zeroed at termination: a success ends on a full score and is paid for it.
    ``info["score"]`` and the success flag are untouched, so evaluations do not change.

    Raises:
        ValueError: the env reports no ``info["score"]`` at reset or step (the fix: the
            env's own reward, ``teach.online.reward: env``).
    """

    def __init__(self, env: gym.Env, gamma: float):
        super().__init__(env)
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"progress reward: gamma must be in (0, 1], got {gamma}")
        self.gamma = float(gamma)
        self._score = 0.0

    def _read_score(self, info: dict, where: str) -> float:
        score = info.get("score")
        if score is None or not np.isfinite(score):
            raise ValueError(
                f"progress reward needs info['score'] from the env at {where}; "
                f"{self.env.spec.id if self.env.spec else type(self.env.unwrapped).__name__} "
                f"gave {score!r} (use teach.online.reward: env for envs without a score)"
            )
        return float(score)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._score = self._read_score(info, "reset")
        return obs, info

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        score = self._read_score(info, "step")
        reward, self._score = self.gamma * score - self._score, score
        return obs, reward, terminated, truncated, info


def check_env_id(env_id: str) -> None:
    """Raise :class:`EnvIdError` naming close matches when ``env_id`` is unknown."""
    import robodistill.envs  # noqa: F401  (registers robodistill/... ids)

    if env_id in gym.registry:
        return
    import difflib

    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise EnvIdError(
        f"env id {env_id!r} is not registered with gymnasium{hint} "
        "(`robodistill envs --all` lists every id; a third-party id needs its package imported, "
        "e.g. env.id: 'mypkg:MyEnv-v0')"
    )


def make_env(
    env_id: str,
    *,
    render_mode: str | None = None,
    max_episode_steps: int | None = None,
    success_key: str | None = None,
    randomization: dict[str, Any] | None = None,
    **kwargs: Any,
) -> gym.Env:
    """``gymnasium.make`` plus the project's shared wrappers.

    Dict observations are flattened by :class:`FlattenDictObservation`; success is always
    ``info["is_success"]`` (:class:`SuccessInfo` copies it from ``info["success"]``, then
    from ``info[success_key]``, when the env reports no ``is_success``: ``env.success_key``).
    ``env_id`` may be ``"module:Id-v0"`` to import a third-party package that registers
    ``Id-v0``. ``success_key`` is reserved: it is never passed to the env, so a rollout's
    ``env_kwargs`` may carry it (:meth:`robodistill.config.EnvConfig.make_kwargs`).
    ``randomization`` (reserved too) is the keyword arguments of
    :class:`robodistill.envs.randomization.DomainRandomization`, which then wraps the env.
    """
    module, _, bare_id = env_id.rpartition(":")
    if module:
        import importlib

        try:
            importlib.import_module(module)
        except ImportError as e:
            raise EnvIdError(
                f"env id {env_id!r}: cannot import {module!r}, the package that should register "
                f"{bare_id!r} ({e}); install it in this environment, or fix the part before "
                "':' in env.id"
            ) from e
        env_id = bare_id
    check_env_id(env_id)
    if render_mode is not None:
        # Only when asked: envs without rendering do not accept the argument at all.
        kwargs["render_mode"] = render_mode
    env = SuccessInfo(gym.make(env_id, max_episode_steps=max_episode_steps, **kwargs),
                      success_key)  # fmt: skip
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = FlattenDictObservation(env)
    if randomization is not None:
        from robodistill.envs.randomization import DomainRandomization

        env = DomainRandomization(env, **randomization)
    return env


def control_rate_hz(env: gym.Env) -> float | None:
    """Control rate from the env's ``dt`` (MuJoCo envs) or ``metadata['render_fps']``."""
    dt = getattr(env.unwrapped, "dt", None)
    if dt:
        return float(1.0 / dt)
    fps = env.metadata.get("render_fps")
    return float(fps) if fps else None
