"""Reading a configuration: the YAML file, then ``key=value`` overrides, validated as one
:class:`RunConfig`; errors are gathered into one :class:`ConfigError` message."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from robodistill.config.base import ConfigError
from robodistill.config.run import RunConfig


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """Allowed keys of the model section that ``loc`` (minus its last part) points into."""
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return sorted(model.model_fields)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _fields_at(RunConfig, e["loc"]) or []
            close = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            lines.append(f"  {key}: unknown key{hint} allowed keys here: {', '.join(allowed)}")
        else:
            given = e.get("input")
            shown = repr(given) if not isinstance(given, dict) else "a mapping"
            lines.append(f"  {key}: {e['msg']} (got {shown})")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"collect.episodes=20"`` -> ``(["collect", "episodes"], 20)``; values are YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key.subkey=value")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise ConfigError(f"override {text!r} has an empty part in its key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({e})") from e
    return parts, value


def apply_override(document: dict[str, Any], parts: list[str], value: Any) -> None:
    node = document
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"override {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is a value, not a section"
            )
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return document


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, validated as one :class:`RunConfig`."""
    document = read_yaml(path) if path else {}
    for text in overrides:
        apply_override(document, *parse_override(text))
    source = f"{path}" if path else "defaults"
    if overrides:
        source += " + --set " + " ".join(overrides)
    try:
        return RunConfig.model_validate(document)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def describe(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """One line per leaf key: ``key = default  # docstring`` (for ``--help``-like listings)."""
    lines = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.extend(describe(annotation, f"{prefix}{name}."))
            continue
        default = json.dumps(field.get_default(call_default_factory=True), default=str)
        doc = (field.description or "").replace("\n", " ")
        lines.append(f"{prefix}{name} = {default}  # {doc}")
    return lines
