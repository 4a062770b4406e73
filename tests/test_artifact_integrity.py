"""Artifact integrity: a saved policy's weights and an exported ONNX graph carry a SHA-256
checked at load; a changed byte is an error naming the file and both digests, a damaged
.onnx file an error naming its path, and older artifacts without a digest still load."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch
from gymnasium import spaces

from robodistill.deploy import runtime
from robodistill.deploy.export import check_model, export_policy, quantize_int8
from robodistill.deploy.integrity import file_digest
from robodistill.deploy.metadata import METADATA_KEY, MetadataError, ModelFileError, read_metadata
from robodistill.deploy.runtime import OnnxPolicy
from robodistill.policies import MLPStudent, load_policy
from robodistill.policies.checkpoint import (
    DIGEST_KEY,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from robodistill.policies.mlp_student import array_stats

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _student() -> MLPStudent:
    """A deterministic MLP student on Pendulum's spaces (obs (3,) in ±8, action (1,) in ±2)."""
    obs_space = spaces.Box(-8.0, 8.0, (3,), np.float32)
    action_space = spaces.Box(-2.0, 2.0, (1,), np.float32)
    data = np.random.default_rng(0).normal(size=(64, 3))
    return MLPStudent.build(obs_space, action_space, array_stats(data),
                            array_stats(data[:, :1]), [16, 16], head="deterministic", seed=0)  # fmt: skip


def _flip(path, offset: int, mask: int = 0x80) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


# -- saved policies ---------------------------------------------------------------------------
def test_checkpoint_records_the_weights_digest_and_refuses_flipped_bytes(tmp_path):
    save_checkpoint(tmp_path, {"kind": "toy", "width": 3}, {"w": torch.arange(256.0)})
    weights, config_path = tmp_path / "model.safetensors", tmp_path / "config.json"
    recorded = json.loads(config_path.read_text())[DIGEST_KEY]
    assert recorded == hashlib.sha256(weights.read_bytes()).hexdigest()
    config, tensors = load_checkpoint(tmp_path, kind="toy")
    assert config == {"format": 1, "kind": "toy", "width": 3}  # the digest is not a setting
    assert torch.equal(tensors["w"], torch.arange(256.0))

    _flip(weights, weights.stat().st_size - 7)  # inside the tensor data, not the header
    actual = hashlib.sha256(weights.read_bytes()).hexdigest()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    message = str(info.value)
    assert str(weights) in message and recorded in message and actual in message

    # A digest that is not one is a corrupt config, said so.
    config_path.write_text(json.dumps({"format": 1, "kind": "toy", DIGEST_KEY: "abc"}))
    with pytest.raises(CheckpointError, match="64-digit hex"):
        load_checkpoint(tmp_path)


def test_a_policy_with_flipped_weights_does_not_load(tmp_path):
    student = _student()
    student.save(tmp_path / "policy")
    obs = np.random.default_rng(1).uniform(-8, 8, size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(load_policy(tmp_path / "policy").act(obs), student.act(obs))
    weights = tmp_path / "policy" / "model.safetensors"
    _flip(weights, weights.stat().st_size - 3)
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match the digest"):
        load_policy(tmp_path / "policy")


def test_a_checkpoint_written_before_digests_still_loads(tmp_path):
    student = _student()
    student.save(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    del config[DIGEST_KEY]  # as every checkpoint saved before this change
    config_path.write_text(json.dumps(config))
    obs = np.random.default_rng(2).uniform(-8, 8, size=(4, 3)).astype(np.float32)
    np.testing.assert_array_equal(load_policy(tmp_path).act(obs), student.act(obs))


# -- exported ONNX ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An exported MLP student: (path, the file's bytes)."""
    path = tmp_path_factory.mktemp("onnx") / "policy.onnx"
    export_policy(_student(), path, exporter="torchscript")
    return path, path.read_bytes()


def _copy(exported, tmp_path, data: bytes | None = None):
    path = tmp_path / "policy.onnx"
    path.write_bytes(exported[1] if data is None else data)
    return path


def _first_weight_offset(data: bytes) -> int:
    """Byte offset of the largest initializer's raw data inside the serialized model."""
    model = onnx.load_from_string(data)
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    offset = data.find(weight.raw_data)
    assert offset > 0 and len(weight.raw_data) >= 64
    return offset


def test_export_records_the_graph_digest_and_the_runtime_checks_it(exported, tmp_path):
    path = _copy(exported, tmp_path)
    doc = read_metadata(path)
    assert doc["integrity"]["sha256"] == file_digest(path)
    policy = OnnxPolicy(path)
    assert policy.integrity == "verified"
    assert check_model(path)["integrity"] == doc["integrity"]
    # The observation bounds travel in the metadata too (the controller checks them).
    np.testing.assert_array_equal(policy.observation_low, [-8.0] * 3)
    # int8 quantization writes a new graph: it gets its own digest, also verified.
    quantize_int8(path, tmp_path / "policy.int8.onnx")
    q = OnnxPolicy(tmp_path / "policy.int8.onnx")
    assert q.integrity == "verified" and q.metadata["integrity"] != doc["integrity"]


def test_flipped_initializer_bytes_are_an_error_naming_the_path_and_both_digests(
    exported, tmp_path
):
    path = _copy(exported, tmp_path)
    recorded = read_metadata(path)["integrity"]["sha256"]
    _flip(path, _first_weight_offset(exported[1]) + 3)  # a float's sign bit
    actual = file_digest(path)
    assert actual != recorded
    with pytest.raises(ModelFileError) as info:
        OnnxPolicy(path)
    message = str(info.value)
    assert str(path) in message and recorded in message and actual in message
    with pytest.raises(ModelFileError, match="digest recorded at export"):
        check_model(path)  # the export side refuses it as well
    # Why it matters: without the check the file runs, and acts differently.
    obs = np.random.default_rng(3).uniform(-8, 8, size=(16, 3)).astype(np.float32)
    (tmp_path / "intact").mkdir()
    good = OnnxPolicy(_copy(exported, tmp_path / "intact")).predict(obs)
    assert not np.array_equal(OnnxPolicy(path, verify=False).predict(obs), good)


def test_opting_out_skips_the_digest_only(exported, tmp_path, monkeypatch):
    path = _copy(exported, tmp_path)
    _flip(path, _first_weight_offset(exported[1]) + 3)

    def no_hashing(path):
        raise AssertionError("verify=False must not read or hash the file")

    monkeypatch.setattr(runtime, "file_digest", no_hashing)
    policy = OnnxPolicy(path, verify=False)
    assert policy.integrity == "skipped" and policy.act(np.zeros((1, 3), np.float32)).shape == (
        1,
        1,
    )
    # Damaged files still fail clearly without the digest.
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty.onnx is empty"):
        OnnxPolicy(tmp_path / "empty.onnx", verify=False)


@pytest.mark.parametrize(
    "damage",
    ["half", "last byte cut", "first 10 bytes", "empty", "text", "random bytes"],
)
@pytest.mark.parametrize("verify", [True, False])
def test_a_damaged_onnx_file_is_a_clear_error_naming_the_path(exported, tmp_path, damage, verify):
    data = exported[1]
    damaged = {
        "half": data[: len(data) // 2],
        "last byte cut": data[:-1],
        "first 10 bytes": data[:10],
        "empty": b"",
        "text": b"this is not a model\n",
        "random bytes": np.random.default_rng(0).bytes(4096),
    }[damage]
    path = _copy(exported, tmp_path, damaged)
    with pytest.raises(ModelFileError) as info:
        OnnxPolicy(path, verify=verify)
    message = str(info.value)
    assert str(path) in message
    assert any(
        w in message for w in ("empty", "truncated", "not an ONNX model", "cannot be loaded")
    )
    if damage in ("half", "last byte cut") and verify:
        assert "truncated" in message
    with pytest.raises(ModelFileError, match=str(path)):
        read_metadata(path)


def test_a_file_exported_before_digests_loads_unchecked(exported, tmp_path):
    model = onnx.load_from_string(exported[1])
    entry = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    doc = json.loads(entry.value)
    del doc["integrity"]
    entry.value = json.dumps(doc)
    path = tmp_path / "old.onnx"
    onnx.save(model, str(path))
    assert OnnxPolicy(path).integrity == "not recorded"

    doc["integrity"] = {"sha256": "not a digest"}
    entry.value = json.dumps(doc)
    onnx.save(model, str(path))
    with pytest.raises(MetadataError, match="integrity.sha256"):
        OnnxPolicy(path)
