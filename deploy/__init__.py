"""Deploy: ONNX export and the torch-free runtime.

Imported as ``robodistill.deploy``. The runtime — :class:`OnnxPolicy` (``runtime``),
:class:`Controller` (``controller``, its checks in ``guards``, its result in
``control_result``), asynchronous inference (:class:`AsyncPolicy`, ``async_control``) with
real-time chunking (:class:`RtcSettings`, ``rtc``) and a high-rate interpolation layer
(:class:`InterpolatingPolicy`, ``interpolation``), :class:`Robot` / :class:`SimRobot`
(``robot``), the metadata document (``metadata``) and the file's digest check
(``integrity``) — imports numpy and onnxruntime only, so ``pip install robodistill[deploy]`` runs an exported policy on a robot without torch.
``robodistill.deploy.export`` (torch, onnx) writes the files; it is never imported here.

Names are resolved on first use, so ``import robodistill.deploy`` itself needs nothing
beyond numpy, and a robot without gymnasium can still use everything except SimRobot.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "OnnxPolicy": "robodistill.deploy.runtime",
    "Controller": "robodistill.deploy.controller",
    "AsyncPolicy": "robodistill.deploy.async_control",
    "RtcSettings": "robodistill.deploy.rtc",
    "InterpolatingPolicy": "robodistill.deploy.interpolation",
    "ControlResult": "robodistill.deploy.controller",
    "Robot": "robodistill.deploy.robot",
    "SimRobot": "robodistill.deploy.robot",
    "MetadataError": "robodistill.deploy.metadata",
    "ModelFileError": "robodistill.deploy.metadata",
    "read_metadata": "robodistill.deploy.metadata",
}

__all__ = sorted(_EXPORTS)


def __dir__() -> list[str]:
    """The module's own names plus the lazily loaded ones, so ``dir()`` and tab completion
    show them before first use."""
    return sorted(set(globals()) | set(_EXPORTS))


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'robodistill.deploy' has no attribute {name!r}")
