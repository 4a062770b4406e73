"""The environment a run was made on, for the stages that only consume its outputs.

``export`` and ``control`` work on what earlier stages made (a policy, an ONNX file), so
their ``env`` is that of the run, not the built-in default: unless ``env.id`` is set (``--env``,
``--set env.id=...`` or the config file), :func:`adopt_env` takes the ``env`` section
recorded where the input was made, field by field (a field the configuration sets itself
wins). Records, in the order the callers give them:

- a stage's ``manifest.json`` (``config.env``: every stage records its whole configuration),
- the run's ``config.json`` (written by ``robodistill pipeline``),
- the env id in an exported file's metadata (``env_id``; the id only).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from robodistill.config import EnvConfig, RunConfig

log = logging.getLogger(__name__)


def env_is_set(cfg: RunConfig) -> bool:
    """Whether the configuration names ``env.id`` itself (not only by default)."""
    return "id" in cfg.env.model_fields_set


def manifest_env(directory: Path, levels: int = 1,
                 stages: tuple[str, ...] | None = None) -> tuple[dict[str, Any], Path] | None:  # fmt: skip
    """The ``env`` section recorded by the stage manifest in ``directory`` or one of its
    ``levels - 1`` parents (the first found), and the manifest's path; ``stages`` limits it
    to manifests of those stages."""
    for place in [directory, *directory.parents][:levels]:
        path = place / "manifest.json"
        doc = _read_json(path)
        if doc is None or (stages is not None and doc.get("stage") not in stages):
            continue
        env = (doc.get("config") or {}).get("env")
        if isinstance(env, dict) and env.get("id"):
            return env, path
    return None


def run_config_env(run_dir: Path) -> tuple[dict[str, Any], Path] | None:
    """The ``env`` section of ``<run>/config.json`` (written by ``robodistill pipeline``)."""
    path = run_dir / "config.json"
    doc = _read_json(path)
    env = (doc or {}).get("env")
    return (env, path) if isinstance(env, dict) and env.get("id") else None


def adopt_env(cfg: RunConfig, env: dict[str, Any], source: str | Path) -> RunConfig:
    """``cfg`` with each ``env`` field it does not set itself taken from ``env`` (the recorded
    section of ``source``); ``cfg`` unchanged when it sets ``env.id``."""
    if env_is_set(cfg):
        if env.get("id") and env["id"] != cfg.env.id:
            log.warning("env.id is %s, but %s records %s; the configuration's is used",
                        cfg.env.id, source, env["id"])  # fmt: skip
        return cfg
    explicit = cfg.env.model_fields_set
    fields = {k: v for k, v in env.items() if k in EnvConfig.model_fields and k not in explicit}
    merged = cfg.env.model_dump() | fields
    out = cfg.model_copy(deep=True)
    out.env = EnvConfig.model_validate(merged)  # every field now counts as set
    if out.env.id != cfg.env.id:
        log.info("env: %s (recorded in %s; --env chooses another)", out.env.id, source)
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("cannot read %s; ignoring the env it records", path)
        return None
    return doc if isinstance(doc, dict) else None
