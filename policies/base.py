"""The policy interface every teacher and student meets, and the registry of kinds.

A policy turns a batch of observations into a batch of actions::

    policy.reset()                      # new episodes in every batch row
    actions = policy.act(obs)           # (B, obs_dim) float32 -> (B, act_dim) float32
    policy.reset(env_ids=[3])           # row 3 starts a new episode; others keep their state
    policy.save("ckpt/")                # config.json + model.safetensors
    policy = load_policy("ckpt/")       # dispatches on config.json's "kind"

Stateful policies (action-chunk queues, observation histories, streaming buffers) keep
their state per batch row; ``reset(env_ids)`` clears only those rows.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

POLICY_KINDS: dict[str, type[Policy]] = {}

LAZY_KINDS: dict[str, str] = {
    "diffusion": "robodistill.policies.diffusion",
    "consistency": "robodistill.policies.consistency",
    "streaming": "robodistill.policies.streaming",
    "compass_base": "robodistill.policies.compass",
    "compass_specialist": "robodistill.policies.compass",
    "generalist": "robodistill.policies.generalist",
    "residual": "robodistill.policies.residual",
    "privileged_teacher": "robodistill.policies.privileged",
    "history_student": "robodistill.policies.history_student",
}
"""Kinds whose module is imported only when a checkpoint of that kind is loaded (diffusers
alone takes seconds to import, which every ``robodistill`` command would otherwise pay)."""


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make ``cls`` loadable by :func:`load_policy` under ``cls.kind``."""
    if not getattr(cls, "kind", None):
        raise TypeError(f"{cls.__name__} needs a class attribute 'kind' to be registered")
    if cls.kind in POLICY_KINDS and POLICY_KINDS[cls.kind] is not cls:
        raise TypeError(f"policy kind {cls.kind!r} is registered twice")
    POLICY_KINDS[cls.kind] = cls
    return cls


class Policy(abc.ABC):
    """Observations in, actions out, for a batch of environments."""

    kind: ClassVar[str] = ""

    def reset(self, env_ids: np.ndarray | list[int] | None = None) -> None:  # noqa: B027
        """Forget episode state for ``env_ids`` (all rows when ``None``). Stateless: no-op."""

    @abc.abstractmethod
    def act(self, obs: np.ndarray) -> np.ndarray:
        """``obs`` (B, obs_dim) -> actions (B, act_dim), float32, within the action space."""

    def attach(self, envs: list) -> None:  # noqa: B027
        """Privileged policies (experts, planners) get the sub-environments of the vector env
        they act in, in batch-row order, before the first ``reset``. Others ignore it."""

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory``; return it."""
        raise NotImplementedError(
            f"{type(self).__name__} ({self.kind!r}) has nothing to save: it is rebuilt from its "
            "environment, not loaded from a checkpoint"
        )

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Policy:
        """Rebuild a policy written by :meth:`save` (no pickle involved)."""
        raise NotImplementedError(f"{cls.__name__} ({cls.kind!r}) cannot be loaded from disk")

    def onnx_spec(self) -> dict[str, Any]:
        """Everything ``robodistill.deploy.export.export_policy`` needs to write this policy
        as one self-contained ``.onnx`` file. Returns a dict:

        * ``module``: an ``nn.Module`` in eval mode whose ``forward(*inputs)`` returns the
          outputs (a tensor or a tuple, in ``outputs`` order). Observation normalization and
          action un-scaling/clipping happen *inside*: the runtime feeds raw observations and
          sends the outputs to the robot as they are.
        * ``inputs``: ``[{"name", "role", "example": Tensor, "batch_axis": 0}, ...]`` in
          ``forward``'s argument order. ``example`` fixes dtype and sizes (use a batch of 2,
          never 1, so the batch axis stays dynamic); ``batch_axis`` defaults to 0 (``None``
          for ``step_coef``). Roles: ``observation`` ((B, D), or (B, H, D) with an
          observation history of H), ``noise`` (standard normal draws the runtime makes, e.g.
          a consistency student's noise, scaled by metadata ``noise_std``), ``state`` (e.g. a
          streaming buffer, returned as a ``state`` output), ``embodiment`` (a code from
          metadata ``embodiments``), and for ``denoise`` mode ``sample``, ``timestep``,
          ``step_coef`` (see ``robodistill.deploy.export.DenoiserStep``).
        * ``outputs``: ``[{"name", "role"}, ...]``; exactly one ``action`` (B, A) or
          ``chunk`` (B, T, A), plus ``state`` outputs and, in ``denoise`` mode, ``sample``.
        * ``metadata``: this policy's part of the JSON document stored in the file (format in
          ``robodistill.deploy.metadata``): at least ``policy_kind``, ``mode`` (``direct`` or
          ``denoise``), ``observation`` and ``action`` (shape, low, high, layout), and as
          they apply ``horizons`` (observation, prediction, execute, start),
          ``chunk_execution``, ``state`` (pairs of state input/output names with their
          initial value), ``noise_std``, ``denoise`` (``steps``: timestep and the six
          scheduler coefficients per step, see ``deploy.export.ddim_steps``),
          ``embodiments``, ``normalization`` (a description) and ``deterministic`` (true when
          ``act`` is a pure function of the observation: parity is then also checked end
          to end). ``observation`` / ``action`` may also give ``units`` (one string per
          flat entry). The exporter adds input/output shapes, opset and versions, and every
          rule field of format 2 the policy leaves out (history, chunk, noise, state reset,
          dtypes, ...: ``robodistill.deploy.contract.complete_document``), then validates the
          document against the schema; the export stage adds the env (id, registering
          module, step limit, units, body), control rate and the source run.
        """
        raise NotImplementedError(
            f"{type(self).__name__} ({self.kind!r}) cannot be exported to ONNX yet"
        )


def load_policy(directory: str | os.PathLike) -> Policy:
    """Load any registered policy kind from its checkpoint directory."""
    from robodistill.policies.checkpoint import CONFIG_NAME, CheckpointError, load_checkpoint

    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file():
        # Let load_checkpoint produce its precise message (missing dir / missing file).
        load_checkpoint(directory)
    import json

    try:
        kind = json.loads((directory / CONFIG_NAME).read_text()).get("kind")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{directory / CONFIG_NAME} is corrupt: {e}") from e
    if kind not in POLICY_KINDS and kind in LAZY_KINDS:
        import importlib

        importlib.import_module(LAZY_KINDS[kind])
    if kind not in POLICY_KINDS:
        raise CheckpointError(
            f"checkpoint {directory} holds policy kind {kind!r}, which this version does not "
            f"know; known kinds: {sorted(POLICY_KINDS)}"
        )
    return POLICY_KINDS[kind].load(directory)
