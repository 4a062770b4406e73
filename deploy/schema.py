"""The JSON Schema of the metadata document, shipped with the package, and its validator.

``metadata_schema.json`` (next to this module, installed as package data) is a JSON Schema
(draft 2020-12) of the document of :mod:`robodistill.deploy.metadata`, format version
:data:`SCHEMA_VERSION`. Its descriptions state the rules a runtime follows; the exporter
and every reader validate against it::

    from robodistill.deploy.schema import load_schema, validate
    validate(doc, where="policy.onnx")   # MetadataError: "policy.onnx: ... at $.observation: ..."

A robot installs numpy and onnxruntime only, so this module validates with a small
validator of the keywords the schema uses (:data:`KEYWORDS`; a schema using any other is
refused, so none is silently ignored) instead of the ``jsonschema`` package. The tests
check that ``jsonschema`` accepts the schema and agrees on valid and invalid documents.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import Any

SCHEMA_FILE = "metadata_schema.json"
SCHEMA_VERSION = 2

ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "$defs", "title", "description", "default", "examples"}
)
KEYWORDS = frozenset(
    {"type", "const", "enum", "properties", "required", "additionalProperties", "items",
     "minItems", "maxItems", "minimum", "exclusiveMinimum", "minLength", "pattern", "anyOf",
     "allOf", "if", "then", "$ref"}
)  # fmt: skip
"""The validation keywords this validator implements (draft 2020-12 semantics)."""


class SchemaError(ValueError):
    """A document does not match the schema: ``path`` (``$.a.b[0]``) and ``reason``."""

    def __init__(self, path: str, reason: str, kind: str = "value"):
        super().__init__(f"at {path}: {reason}")
        self.path, self.reason, self.kind = path, reason, kind


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The shipped schema (read once)."""
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema = json.loads(text)
    check_keywords(schema)
    return schema


def schema_path() -> str:
    """Where the shipped schema file is (for messages and for other tools)."""
    return str(resources.files(__package__).joinpath(SCHEMA_FILE))


def check_keywords(schema: Any, where: str = "#") -> None:
    """Refuse a schema that uses a keyword this validator does not implement."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise ValueError(f"schema {where} must be an object or a boolean")
    unknown = set(schema) - KEYWORDS - ANNOTATIONS
    if unknown:
        raise ValueError(f"schema {where} uses keywords {sorted(unknown)} that "
                         "robodistill.deploy.schema does not implement")  # fmt: skip
    for key in ("properties", "$defs"):
        for name, sub in schema.get(key, {}).items():
            check_keywords(sub, f"{where}/{key}/{name}")
    for key in ("items", "additionalProperties", "if", "then"):
        if key in schema:
            check_keywords(schema[key], f"{where}/{key}")
    for key in ("anyOf", "allOf"):
        for i, sub in enumerate(schema.get(key, [])):
            check_keywords(sub, f"{where}/{key}/{i}")


def validate(doc: Any, schema: dict[str, Any] | None = None) -> None:
    """Raise :class:`SchemaError` (the JSON path and why) unless ``doc`` matches."""
    root = load_schema() if schema is None else schema
    _check(doc, root, root, "$")


# -- the validator ----------------------------------------------------------------------------
def _type_ok(value: Any, name: str) -> bool:
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "integer":
        return number and (isinstance(value, int) or float(value).is_integer())
    if name == "number":
        return number
    raise ValueError(f"unknown JSON type {name!r} in the schema")


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref are supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _check(value: Any, schema: Any, root: dict[str, Any], path: str) -> None:
    if schema is True:
        return
    if schema is False:
        raise SchemaError(path, "no value is allowed here")
    if "$ref" in schema:
        _check(value, _resolve(schema["$ref"], root), root, path)
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, n) for n in names):
            raise SchemaError(path, f"{_show(value)} is not of type {' or '.join(names)}", "type")
    if "const" in schema and not _same(value, schema["const"]):
        raise SchemaError(path, f"must be {_show(schema['const'])}, got {_show(value)}")
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        raise SchemaError(path, f"must be one of {_show(schema['enum'])}, got {_show(value)}")
    _check_number_string(value, schema, path)
    if isinstance(value, dict):
        _check_object(value, schema, root, path)
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise SchemaError(path, f"has {len(value)} items, needs at least {schema['minItems']}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise SchemaError(path, f"has {len(value)} items, allows at most {schema['maxItems']}")
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], root, f"{path}[{i}]")
    if "anyOf" in schema:
        errors = []
        for sub in schema["anyOf"]:
            try:
                _check(value, sub, root, path)
                break
            except SchemaError as e:
                errors.append(e)
        else:
            # A branch of the value's type says why it fails; if none is, list the types.
            relevant = [e for e in errors if not (e.kind == "type" and e.path == path)]
            if relevant:
                raise max(relevant, key=lambda e: len(e.path))
            allowed = " or ".join(e.reason.split(" is not of type ", 1)[-1] for e in errors)
            raise SchemaError(path, f"{_show(value)} is not of type {allowed}", "type")
    for sub in schema.get("allOf", []):
        _check(value, sub, root, path)
    if "if" in schema:
        try:
            _check(value, schema["if"], root, path)
        except SchemaError:
            return
        if "then" in schema:
            _check(value, schema["then"], root, path)


def _check_number_string(value: Any, schema: dict[str, Any], path: str) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaError(path, f"{value!r} is less than the minimum {schema['minimum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            raise SchemaError(path, f"{value!r} must be greater than {schema['exclusiveMinimum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise SchemaError(path, f"{_show(value)} is shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise SchemaError(path, f"{_show(value)} does not match {schema['pattern']!r}")


def _check_object(value: dict, schema: dict[str, Any], root: dict[str, Any], path: str) -> None:
    for key in schema.get("required", []):
        if key not in value:
            raise SchemaError(path, f"the required field {key!r} is missing")
    properties = schema.get("properties", {})
    for key, sub in properties.items():
        if key in value:
            _check(value[key], sub, root, f"{path}.{key}")
    extra = schema.get("additionalProperties", True)
    if extra is not True:
        for key in value:
            if key not in properties:
                _check(value[key], extra, root, f"{path}.{key}")
