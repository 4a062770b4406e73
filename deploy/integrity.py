"""Integrity of exported ``.onnx`` files: a digest of the graph, checked at load.

An ``.onnx`` file is one serialized ``ModelProto``. The exporter records, in the metadata
document (:mod:`robodistill.deploy.metadata`), the SHA-256 of the parts of the model that
compute its outputs::

    "integrity": {"sha256": "<64 hex digits>", "covers": "graph opset_import functions"}

``graph`` holds every node and every initializer (the weights), ``opset_import`` the
operator versions, ``functions`` model-local functions. The metadata itself, the producer
name and the doc string are not covered: they sit in other fields of ``ModelProto``, so
writing the digest into the metadata does not change it. :func:`model_digest` reads the
protobuf wire format of the top-level message directly (the standard library only: a
robot has no ``onnx`` package), so it hashes the exact bytes onnxruntime will load;
the exporter checks its own output with the same function.

The same scan makes a damaged file a clear error naming the path — empty, truncated (a
field runs past the end), or not an ONNX model at all — instead of onnxruntime's
``InvalidProtobuf`` traceback; :func:`robodistill.deploy.metadata.open_session` turns
onnxruntime's own load errors into the same
:class:`~robodistill.deploy.metadata.ModelFileError`.

Cost: reading and hashing the file once, linear in its size (``benchmarks/onnx_load.py``
measures it against a load without the check). For huge models,
``OnnxPolicy(path, verify=False)`` skips the digest (the cheap empty-file check and the
clear load errors stay).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from typing import Any

# ModelFileError is defined beside MetadataError (metadata imports nothing from here).
from robodistill.deploy.metadata import ModelFileError

# ModelProto field numbers (onnx.proto3): the fields the digest covers, and graph alone.
GRAPH_FIELD, OPSET_FIELD, FUNCTIONS_FIELD = 7, 8, 25
COVERED_FIELDS = (GRAPH_FIELD, OPSET_FIELD, FUNCTIONS_FIELD)
COVERS = "graph opset_import functions"
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


def _varint(data: memoryview, pos: int, where: str) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; returns (value, next position)."""
    value = shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise ModelFileError(f"{where} is truncated: a field header runs past the end of "
                                 f"the file ({end} bytes)")  # fmt: skip
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ModelFileError(f"{where} is not an ONNX model (malformed field header at byte "
                                 f"{pos}); was it written by an ONNX exporter?")  # fmt: skip


def scan_fields(data: memoryview, where: str) -> list[tuple[int, int, int]]:
    """The top-level fields of a serialized ``ModelProto``: ``[(field, start, stop)]`` with
    ``data[start:stop]`` the field's payload. Raises :class:`ModelFileError` (naming
    ``where``) for an empty or truncated file, or one that is not a protobuf ``ModelProto``
    with a graph."""
    size = len(data)
    if size == 0:
        raise ModelFileError(f"{where} is empty (0 bytes); re-export the policy or copy the "
                             "file again")  # fmt: skip
    fields, pos = [], 0
    while pos < size:
        tag, pos = _varint(data, pos, where)
        field, wire = tag >> 3, tag & 7
        if field == 0 or wire not in (_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32):
            raise ModelFileError(f"{where} is not an ONNX model (byte {pos - 1} is no valid "
                                 "protobuf field); was it written by an ONNX exporter?")  # fmt: skip
        if wire == _WIRE_VARINT:
            _, stop = _varint(data, pos, where)
        elif wire == _WIRE_LEN:
            length, pos = _varint(data, pos, where)
            stop = pos + length
        else:
            stop = pos + (8 if wire == _WIRE_I64 else 4)
        if stop > size:
            raise ModelFileError(
                f"{where} is truncated: field {field} at byte {pos} needs {stop - pos} bytes, "
                f"the file has {size - pos} left ({size} bytes in all); copy the file again"
            )
        fields.append((field, pos, stop))
        pos = stop
    if not any(f == GRAPH_FIELD for f, _, _ in fields):
        raise ModelFileError(f"{where} is not an ONNX model (it parses as protobuf but holds no "
                             "graph)")  # fmt: skip
    return fields


def model_digest(data: bytes | memoryview, where: str = "the model") -> str:
    """Hex SHA-256 of the serialized model's ``graph``, ``opset_import`` and ``functions``
    fields, in file order, each prefixed with its field number and length (so moving bytes
    from one field to another changes it). Raises :class:`ModelFileError` for a damaged file.
    """
    view = memoryview(data)
    digest = hashlib.sha256()
    for field, start, stop in scan_fields(view, where):
        if field in COVERED_FIELDS:
            digest.update(field.to_bytes(1, "little") + (stop - start).to_bytes(8, "little"))
            digest.update(view[start:stop])
    return digest.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """:func:`model_digest` of the file at ``path`` (memory-mapped: no copy of the weights)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ModelFileError(f"{path} is empty (0 bytes); re-export the policy or copy the "
                                 "file again")  # fmt: skip
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return model_digest(view, str(path))
            except ModelFileError as e:
                # Raised after the map is closed: the traceback's frames hold views of it.
                error = str(e)
            finally:
                view.release()
    raise ModelFileError(error)


def check_digest(metadata: dict[str, Any], actual: str, where: str) -> bool:
    """Compare ``actual`` (:func:`file_digest`) with the digest the metadata records.
    Returns ``False`` when the metadata records none (a file exported before digests
    existed); raises :class:`ModelFileError` naming ``where`` and both digests on a
    mismatch."""
    recorded = (metadata.get("integrity") or {}).get("sha256")
    if recorded is None:
        return False
    if recorded != actual:
        raise ModelFileError(
            f"{where}: the graph's SHA-256 is {actual}, but the digest recorded at export is "
            f"{recorded}; the weights or nodes were modified or corrupted after export. Copy "
            "or export the file again (OnnxPolicy(..., verify=False) skips this check)"
        )
    return True
