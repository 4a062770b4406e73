"""Domain randomization: dynamics drawn per episode, and the draw as a privileged observation.

::

    env = DomainRandomization(make_env("Hopper-v5"), {"mass": (0.8, 1.2), "friction": (0.7, 1.3)})
    obs, info = env.reset(seed=3)       # same seed -> same parameters
    info["privileged"]                  # (P,) float32, each in [-1, 1] inside the ranges
    env.params                          # {"mass": 1.07, "friction": 0.91}: this episode's draw

Every parameter is one scalar per episode, drawn uniformly from ``[low, high]`` (the
integer ``action_delay`` from ``{low, ..., high}``):

==============  ==========================================================================
key             what it changes
==============  ==========================================================================
mass            scale of every robot body's mass and inertia (``model.body_mass``,
                ``body_inertia``; the subtree of the body named ``robot`` where one exists,
                else every body but the world)
friction        scale of every geom's friction (``model.geom_friction``; MuJoCo takes the
                larger of a pair's, so scaling all of them scales every contact's)
actuator_gain   motor strength: scale of ``actuator_gainprm[:, 0]``, ``biasprm[:, 1:3]`` (a
                velocity / position servo's gain with its bias, so the set-point stays) and
                ``forcerange``
speed           scale of an embodiment's speed limits (``max_vx``, ``max_vy``,
                ``max_yaw_rate``): robodistill's navigation tasks only
action_delay    whole control steps between a policy's action and its application (latency);
                the first steps of an episode apply the zero action
obs_noise       standard deviation of Gaussian noise added to every observation entry
==============  ==========================================================================

Nominal model values are copied once, and every reset writes ``nominal * scale``, so draws
never compound. A parameter whose range is ``None`` (or absent) is not randomized and not
part of the privileged vector.

**Privileged observation.** ``info["privileged"]`` (every step and reset) holds the draw
normalized to the *training* ranges: ``2 (value - low) / (high - low) - 1`` (0 where the
range is a single point), in :data:`PARAM_ORDER`. Out-of-distribution ranges
(``reference=`` the training ranges) give values outside ``[-1, 1]``. With
``privileged_obs=True`` the vector is also appended to the flat observation as the layout
entry ``{"key": "privileged", "privileged": True}``: privileged teachers read it there, and
students drop every ``privileged`` entry (:func:`robot_indices`). The navigation tasks'
embodiment descriptor stays the nominal one, so a drawn speed limit never leaks into what a
student sees.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

PARAM_ORDER: tuple[str, ...] = ("mass", "friction", "actuator_gain", "speed", "action_delay",
                                "obs_noise")  # fmt: skip
"""The keys a range table may hold, in the order of the privileged vector."""
SCALE_KEYS = ("mass", "friction", "actuator_gain", "speed")
"""Keys whose value multiplies a nominal one: they must stay > 0."""

Ranges = Mapping[str, "tuple[float, float] | list[float] | None"]


class RandomizationError(ValueError):
    """A randomization range is invalid; the message names the key."""


def check_ranges(ranges: Ranges, where: str = "randomization") -> dict[str, tuple[float, float]]:
    """Validate ``{key: [low, high]}`` and return it with ``None`` entries dropped, in
    :data:`PARAM_ORDER`. Raises :class:`RandomizationError` naming ``where.key`` for an
    unknown key, a range that is not two finite numbers, ``low > high``, a scale ``<= 0``
    (mass, friction, gain, speed), a negative delay or noise, or a fractional delay."""
    unknown = sorted(set(ranges) - set(PARAM_ORDER))
    if unknown:
        raise RandomizationError(f"{where}: unknown key(s) {unknown}; known: {list(PARAM_ORDER)}")
    out: dict[str, tuple[float, float]] = {}
    for key in PARAM_ORDER:
        r = ranges.get(key)
        if r is None:
            continue
        name = f"{where}.{key}"
        try:
            low, high = (float(v) for v in r)
        except (TypeError, ValueError):
            raise RandomizationError(f"{name} must be [low, high], got {r!r}") from None
        if not (np.isfinite(low) and np.isfinite(high)):
            raise RandomizationError(f"{name} must be finite, got [{low}, {high}]")
        if low > high:
            raise RandomizationError(f"{name}: min {low} > max {high}")
        if key in SCALE_KEYS and low <= 0:
            raise RandomizationError(f"{name}: a {key} scale must be > 0, got min {low}")
        if key in ("action_delay", "obs_noise") and low < 0:
            raise RandomizationError(f"{name} must be >= 0, got min {low}")
        if key == "action_delay" and not (low.is_integer() and high.is_integer()):
            raise RandomizationError(f"{name} counts control steps: integers, got {r!r}")
        out[key] = (low, high)
    return out


def robot_indices(layout: list[dict[str, Any]] | None, dim: int) -> np.ndarray:
    """Indices of the flat observation a student may see: every layout entry not marked
    ``"privileged": True`` (all ``dim`` entries without a layout)."""
    if not layout:
        return np.arange(dim)
    keep = [np.arange(p["start"], p["stop"]) for p in layout if not p.get("privileged")]
    return np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)


class DomainRandomization(gym.Wrapper):
    """Draw dynamics per episode on a MuJoCo env (see the module doc).

    Args:
        env: a gymnasium env whose ``unwrapped.model`` is a ``mujoco.MjModel`` (every
            robodistill task, gymnasium's MuJoCo tasks), with a flat Box observation.
        ranges: ``{key: [low, high] | None}`` to draw from (keys of :data:`PARAM_ORDER`).
        reference: the training ranges the privileged vector is normalized to (default:
            ``ranges``); must hold the same keys. Give the training ranges here when
            ``ranges`` are out-of-distribution test ranges.
        privileged_obs: append the privileged vector to the observation (layout entry
            ``privileged``); else it is only in ``info["privileged"]``.
    """

    def __init__(
        self,
        env: gym.Env,
        ranges: Ranges,
        reference: Ranges | None = None,
        privileged_obs: bool = False,
    ):
        super().__init__(env)
        self.ranges = check_ranges(ranges)
        self.reference = check_ranges(reference if reference is not None else ranges,
                                      "randomization.reference")  # fmt: skip
        if set(self.reference) != set(self.ranges):
            raise RandomizationError(
                f"randomization.reference holds {sorted(self.reference)} but the ranges hold "
                f"{sorted(self.ranges)}: the privileged vector needs the same keys"
            )
        self.keys = tuple(self.ranges)
        model = getattr(env.unwrapped, "model", None)
        if not isinstance(model, mujoco.MjModel):
            raise RandomizationError(
                f"randomization needs a MuJoCo env (env.unwrapped.model), not {env.unwrapped}"
            )
        space = env.observation_space
        if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):
            raise RandomizationError(f"randomization needs a flat Box observation, got {space}")
        self.model = model
        self._nominal = {
            "body_mass": model.body_mass.copy(),
            "body_inertia": model.body_inertia.copy(),
            "geom_friction": model.geom_friction.copy(),
            "actuator_gainprm": model.actuator_gainprm.copy(),
            "actuator_biasprm": model.actuator_biasprm.copy(),
            "actuator_forcerange": model.actuator_forcerange.copy(),
        }
        self._bodies = self._robot_bodies(model)
        self._spec = getattr(env.unwrapped, "embodiment_spec", None)
        if "speed" in self.ranges and self._spec is None:
            raise RandomizationError(
                "randomization.speed scales an embodiment's speed limits: only robodistill's "
                "navigation tasks (Nav-v0, AGVMaze-v0) have one"
            )
        base_layout = getattr(env.unwrapped, "observation_layout", None) or [
            {"key": "", "start": 0, "stop": int(space.shape[0])}
        ]
        self._descriptor = None
        for part in base_layout:  # keep the nominal embodiment descriptor (see module doc)
            if part["key"] == "embodiment" and self._spec is not None:
                self._descriptor = (part["start"], part["stop"], self._spec.descriptor())
        self.privileged_obs = bool(privileged_obs)
        self.privileged_dim = len(self.keys)
        self.observation_layout = [dict(p) for p in base_layout]
        # float32 throughout (gymnasium's MuJoCo tasks observe float64).
        self.observation_space = gym.spaces.Box(
            space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32
        )
        if self.privileged_obs:
            n = int(space.shape[0])
            self.observation_layout.append(
                {
                    "key": "privileged",
                    "start": n,
                    "stop": n + self.privileged_dim,
                    "privileged": True,
                    "fields": list(self.keys),
                }  # fmt: skip
            )
            # Bounds: in-range values are in [-1, 1]; out-of-distribution draws go beyond.
            bound = np.full(self.privileged_dim, np.inf, dtype=np.float32)
            self.observation_space = gym.spaces.Box(
                np.concatenate([space.low, -bound]).astype(np.float32),
                np.concatenate([space.high, bound]).astype(np.float32),
                dtype=np.float32,
            )
        self._rng = np.random.default_rng()
        self._noise_rng = np.random.default_rng()
        self._scratch = mujoco.MjData(model)
        self.params: dict[str, float] = {}
        self._queue: deque = deque()
        self._noise_std = 0.0

    @staticmethod
    def _robot_bodies(model: mujoco.MjModel) -> np.ndarray:
        """The bodies whose mass ``mass`` scales: the subtree of ``robot`` if it exists."""
        try:
            root = model.body("robot").id
        except KeyError:
            return np.arange(1, model.nbody)
        inside = [b for b in range(model.nbody) if _ancestor(model, b, root)]
        return np.asarray(inside)

    # -- drawing ----------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        """One draw of every randomized key (floats; ``action_delay`` integral)."""
        out = {}
        for key, (low, high) in self.ranges.items():
            if key == "action_delay":
                out[key] = float(rng.integers(int(low), int(high) + 1))
            else:
                out[key] = float(rng.uniform(low, high))
        return out

    def privileged(self) -> np.ndarray:
        """(P,) float32: this episode's draw normalized to the reference ranges."""
        values = []
        for key in self.keys:
            low, high = self.reference[key]
            v = self.params[key]
            values.append(0.0 if high == low else 2.0 * (v - low) / (high - low) - 1.0)
        return np.asarray(values, dtype=np.float32)

    def apply(self, params: Mapping[str, float]) -> None:
        """Write ``nominal * scale`` into the model (every key absent from ``params`` at
        its nominal value) and set the episode's delay and noise."""
        m, nom = self.model, self._nominal
        m.body_mass[:] = nom["body_mass"]
        m.body_inertia[:] = nom["body_inertia"]
        s = params.get("mass", 1.0)
        m.body_mass[self._bodies] *= s
        m.body_inertia[self._bodies] *= s
        m.geom_friction[:] = nom["geom_friction"] * params.get("friction", 1.0)
        g = params.get("actuator_gain", 1.0)
        m.actuator_gainprm[:] = nom["actuator_gainprm"]
        m.actuator_biasprm[:] = nom["actuator_biasprm"]
        m.actuator_forcerange[:] = nom["actuator_forcerange"] * g
        m.actuator_gainprm[:, 0] *= g
        m.actuator_biasprm[:, 1:3] *= g
        if self._spec is not None:
            v = params.get("speed", 1.0)
            self.env.unwrapped.embodiment_spec = dataclasses.replace(
                self._spec, max_vx=self._spec.max_vx * v, max_vy=self._spec.max_vy * v,
                max_yaw_rate=self._spec.max_yaw_rate * v,
            )  # fmt: skip
        self._delay = int(params.get("action_delay", 0))
        self._noise_std = float(params.get("obs_noise", 0.0))

    # -- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:  # the draw depends on the episode seed alone
            self._rng = np.random.default_rng([int(seed), 24])
            self._noise_rng = np.random.default_rng([int(seed), 25])  # noise never shifts draws
        self.params = self.sample(self._rng)
        self.apply(self.params)
        # Derived constants (subtree masses, dof inverse weights) follow the new masses; a
        # scratch MjData, since mj_setConst overwrites the state it is given.
        mujoco.mj_setConst(self.model, self._scratch)
        obs, info = self.env.reset(seed=seed, options=options)
        self._queue = deque(np.zeros(self.action_space.shape, self.action_space.dtype)
                            for _ in range(self._delay))  # fmt: skip
        return self._observe(obs, info)

    def step(self, action):
        if self._delay:
            self._queue.append(np.array(action, copy=True))
            action = self._queue.popleft()
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs, info = self._observe(obs, info)
        return obs, reward, terminated, truncated, info

    def _observe(self, obs: np.ndarray, info: dict[str, Any]):
        obs = np.asarray(obs, dtype=np.float32).copy()
        if self._descriptor is not None:
            start, stop, nominal = self._descriptor
            obs[start:stop] = nominal
        if self._noise_std > 0:
            obs += self._noise_rng.normal(0.0, self._noise_std, obs.shape).astype(np.float32)
        priv = self.privileged()
        info = {**info, "privileged": priv, "randomization": dict(self.params)}
        if self.privileged_obs:
            obs = np.concatenate([obs, priv])
        return obs, info


def _ancestor(model: mujoco.MjModel, body: int, root: int) -> bool:
    while body > 0:
        if body == root:
            return True
        body = int(model.body_parentid[body])
    return root == 0


__all__ = [
    "PARAM_ORDER",
    "DomainRandomization",
    "RandomizationError",
    "check_ranges",
    "robot_indices",
]
