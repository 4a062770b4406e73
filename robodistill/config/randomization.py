"""``env.randomization``: dynamics drawn per episode (:mod:`robodistill.envs.randomization`).

::

    env:
      id: Hopper-v5
      randomization: {mass: [0.8, 1.2], friction: [0.7, 1.3], privileged_obs: true}

Every range is ``[low, high]`` of a scale (mass, friction, actuator_gain, speed), of whole
control steps (action_delay) or of a noise standard deviation (obs_noise); ``null`` leaves
that parameter nominal. ``ood`` holds the out-of-distribution ranges evaluations test on.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from robodistill.config.base import ConfigError, Section
from robodistill.envs.randomization import RandomizationError, check_ranges

Range = list[float] | None


class RandomizationConfig(Section):
    """Domain randomization ranges (one scalar per parameter and episode, drawn uniformly
    from the episode's seed) and where the draw is exposed."""

    mass: Range = Field(default_factory=lambda: [0.8, 1.2])
    """Scale of every robot body's mass and inertia."""
    friction: Range = Field(default_factory=lambda: [0.7, 1.3])
    """Scale of every geom's friction coefficients."""
    actuator_gain: Range = Field(default_factory=lambda: [0.9, 1.1])
    """Motor strength: scale of each actuator's gain (with its servo bias) and force range."""
    speed: Range = None
    """Scale of the embodiment's speed limits (robodistill's navigation tasks only)."""
    action_delay: Range = None
    """Control steps between an action and its application, ``[min, max]`` integers."""
    obs_noise: Range = None
    """Standard deviation of Gaussian observation noise (in observation units)."""
    privileged_obs: bool = False
    """Append the normalized draw to the observation as the layout entry ``privileged``
    (what privileged teachers read; students drop it). It is always in
    ``info["privileged"]``."""
    ood: dict[str, list[float]] = Field(
        default_factory=lambda: {
            "mass": [1.2, 1.6],
            "friction": [0.4, 0.7],
            "actuator_gain": [0.7, 0.9],
        }  # fmt: skip
    )
    """Out-of-distribution ranges for evaluation, by key; a randomized key not named here
    keeps its training range, a key not randomized in training is ignored."""

    def ranges(self) -> dict[str, list[float]]:
        """The training ranges, ``{key: [low, high]}``, randomized keys only."""
        keys = ("mass", "friction", "actuator_gain", "speed", "action_delay", "obs_noise")
        return {k: list(getattr(self, k)) for k in keys if getattr(self, k) is not None}

    def ood_ranges(self) -> dict[str, list[float]]:
        """The evaluation ranges out of distribution: ``ood`` over the training ranges."""
        train = self.ranges()
        return {k: list(self.ood.get(k, v)) for k, v in train.items()}

    def make_kwargs(self, ood: bool = False) -> dict[str, Any]:
        """Keyword arguments of :class:`~robodistill.envs.randomization.DomainRandomization`
        (JSON-able: they travel in a rollout's ``env_kwargs``)."""
        return {
            "ranges": self.ood_ranges() if ood else self.ranges(),
            "reference": self.ranges(),
            "privileged_obs": self.privileged_obs,
        }

    @model_validator(mode="after")
    def _check(self) -> RandomizationConfig:
        try:
            check_ranges(self.ranges(), "env.randomization")
            check_ranges(self.ood, "env.randomization.ood")
            check_ranges(self.ood_ranges(), "env.randomization.ood")
        except RandomizationError as e:
            raise ConfigError(str(e)) from None
        return self
