"""The metadata's JSON Schema (format version 2): shipped with the package, a valid draft
2020-12 schema that jsonschema agrees with, validated at export and at load with errors that
name the file and the JSON path; version-1 files still load; the rule fields (history,
chunk, noise, state, env and its registering module, units, step limit, embodiments)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from robodistill.deploy.contract import complete_document, env_entry
from robodistill.deploy.export import ExportError, export_policy
from robodistill.deploy.metadata import METADATA_KEY, MetadataError, read_metadata
from robodistill.deploy.metadata import validate_metadata as validate
from robodistill.deploy.runtime import OnnxPolicy
from robodistill.deploy.schema import SchemaError, check_keywords, load_schema, schema_path
from robodistill.envs.embodiments import DESCRIPTOR_FIELDS, EMBODIMENTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PENDULUM = {"obs_dim": 3, "action_dim": 1, "action_low": [-2.0], "action_high": [2.0],
            "obs_horizon": 2, "down_dims": (8, 16), "n_groups": 4, "step_embed_dim": 8}  # fmt: skip


def _streaming():
    from robodistill.policies.streaming import StreamingStudent, StreamingStudentConfig

    torch.manual_seed(0)
    return StreamingStudent(StreamingStudentConfig(buffer_horizon=4, **PENDULUM))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A streaming student (history, state, noise of shape (B, 1, A)) and its document."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("schema") / "streaming.onnx"
    doc = export_policy(_streaming(), path, exporter="torchscript",
                        metadata={"env_id": "Pendulum-v1"})  # fmt: skip
    torch.set_num_threads(threads)
    return path, doc


def _rewrite(src, dst, doc) -> None:
    """``src`` with its metadata replaced by ``doc`` (the graph digest stays valid)."""
    model = onnx.load(str(src))
    entry = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    entry.value = json.dumps(doc)
    onnx.save(model, str(dst))


def test_the_schema_ships_with_the_package_and_is_a_valid_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = load_schema()
    assert schema_path().endswith("deploy/metadata_schema.json")
    assert schema["properties"]["format_version"]["const"] == 2
    jsonschema.Draft202012Validator.check_schema(schema)
    # Our validator implements every keyword the schema uses, and refuses others.
    with pytest.raises(ValueError, match="oneOf"):
        check_keywords({"properties": {"x": {"oneOf": [{"type": "null"}]}}})


def test_an_export_writes_a_complete_document_that_jsonschema_accepts(exported):
    jsonschema = pytest.importorskip("jsonschema")
    path, doc = exported
    assert read_metadata(str(path)) == doc
    jsonschema.validate(doc, load_schema())
    assert doc["format_version"] == 2 and "upgraded_from" not in doc
    assert doc["history"] == {"order": "oldest_first", "padding": "repeat_first"}
    assert doc["chunk"] is None  # one action per call (the buffer is state)
    assert doc["noise"] == {"distribution": "normal", "mean": 0.0, "std": 1.0, "draw": "per_call",
                            "inputs": [{"name": "noise", "shape": ["batch", 1, 1]}]}  # fmt: skip
    assert [(s["init"], s["reset"]) for s in doc["state"]] == [("normal", "episode"),
                                                               ("zeros", "episode")]  # fmt: skip
    assert doc["episode"]["reset"] == ["history", "state"]
    assert doc["observation"]["dtype"] == "float32" and doc["observation"]["units"] is None
    assert doc["env"] == {"id": "Pendulum-v1", "module": None, "make": "Pendulum-v1",
                          "kwargs": {}, "max_episode_steps": None, "embodiment": None}  # fmt: skip


def test_a_chunked_export_states_its_indices(tmp_path):
    from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig

    torch.manual_seed(0)
    config = DiffusionPolicyConfig(pred_horizon=8, action_horizon=4, num_inference_steps=2,
                                   inference_eta=1.0, **PENDULUM)  # fmt: skip
    doc = export_policy(DiffusionPolicy(config), tmp_path / "d.onnx", exporter="torchscript")
    # To = 2: chunk index 0 is the step of the older observation, index 1 the current step.
    assert doc["horizons"]["start"] == 1
    assert doc["chunk"] == {"axis": 1, "current_index": 1, "executed": [1, 5]}
    assert doc["noise"]["draw"] == "per_denoise_step" and doc["noise"]["std"] == 1.0
    assert doc["episode"]["reset"] == ["history", "action_queue", "ensemble"]


@pytest.mark.parametrize(
    ("keys", "path"),
    [(("observation", "units"), "$.observation"), (("history",), "$"), (("env",), "$"),
     (("state", 0, "reset"), "$.state[0]"), (("noise",), "$"), (("inputs", 2, "dtype"),
     "$.inputs[2]"), (("episode",), "$"), (("action", "dtype"), "$.action")],
)  # fmt: skip
def test_a_document_missing_a_required_field_is_refused_naming_it(exported, tmp_path, keys, path):
    jsonschema = pytest.importorskip("jsonschema")
    src, doc = exported
    broken = copy.deepcopy(doc)
    parent = broken
    for key in keys[:-1]:
        parent = parent[key]
    field = keys[-1]
    del parent[field]
    assert not jsonschema.Draft202012Validator(load_schema()).is_valid(broken)
    with pytest.raises(MetadataError, match=rf"at {re.escape(path)}: the required field "
                                            rf"'{field}' is missing"):  # fmt: skip
        validate(copy.deepcopy(broken))
    # Read from a file, the message names the file too.
    _rewrite(src, tmp_path / "broken.onnx", broken)
    with pytest.raises(MetadataError, match=str(tmp_path / "broken.onnx")) as e:
        OnnxPolicy(tmp_path / "broken.onnx")
    assert f"'{field}'" in str(e.value) and "metadata_schema.json" in str(e.value)


@pytest.mark.parametrize(
    ("change", "where"),
    [(lambda d: d["observation"].update(units="mm"), r"\$\.observation\.units"),
     (lambda d: d["history"].update(padding="zeros"), r"\$\.history\.padding"),
     (lambda d: d["state"][0].update(reset="never"), r"\$\.state\[0\]\.reset"),
     (lambda d: d["noise"].update(distribution="uniform"), r"\$\.noise\.distribution"),
     (lambda d: d["env"].update(max_episode_steps=0), r"\$\.env\.max_episode_steps"),
     (lambda d: d["inputs"][0].update(shape=["batch", "x"]), r"\$\.inputs\[0\]\.shape\[1\]"),
     (lambda d: d.update(format_version=2.5), "format_version")],
)  # fmt: skip
def test_invalid_values_are_refused_by_both_validators(exported, change, where):
    jsonschema = pytest.importorskip("jsonschema")
    broken = copy.deepcopy(exported[1])
    change(broken)
    assert not jsonschema.Draft202012Validator(load_schema()).is_valid(broken)
    with pytest.raises(MetadataError, match=where):
        validate(broken)


def test_rules_between_fields_are_checked(exported):
    doc = copy.deepcopy(exported[1])
    doc["noise"]["inputs"][0]["shape"] = ["batch", 1]  # the size-1 axis dropped
    with pytest.raises(MetadataError, match="noise.inputs"):
        validate(doc)
    doc = copy.deepcopy(exported[1])
    doc["env"]["id"] = "Other-v0"
    with pytest.raises(MetadataError, match="env.id"):
        validate(doc)


def test_the_export_validates_and_names_the_file(tmp_path):
    spec = _streaming().onnx_spec()
    spec["metadata"]["observation"]["units"] = "rad"  # one string for a 3-entry observation
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match=rf"{path}.*\$\.observation\.units"):
        export_policy(None, path, exporter="torchscript", spec=spec)
    assert not path.exists()  # refused before anything is written
    spec = _streaming().onnx_spec()
    spec["metadata"]["observation"]["units"] = ["rad", "rad"]  # not one per entry
    with pytest.raises(ExportError, match="observation.units has 2 entries, expected 3"):
        export_policy(None, path, exporter="torchscript", spec=spec)


def _as_version_1(doc: dict) -> dict:
    """What the version-1 exporter wrote: none of the fields version 2 added."""
    old = copy.deepcopy(doc)
    for key in ("history", "chunk", "noise", "env", "episode"):
        del old[key]
    for part in ("observation", "action"):
        del old[part]["units"], old[part]["dtype"]
    for s in old["state"]:
        del s["reset"]
    old["format_version"] = 1
    return old


def test_a_file_of_format_version_1_loads_and_acts_the_same(exported, tmp_path):
    src, doc = exported
    _rewrite(src, tmp_path / "v1.onnx", _as_version_1(doc))
    old, new = OnnxPolicy(tmp_path / "v1.onnx", seed=4), OnnxPolicy(src, seed=4)
    assert old.integrity == "verified"
    assert old.metadata["upgraded_from"] == 1 and old.metadata["format_version"] == 2
    upgraded = {k: v for k, v in old.metadata.items() if k != "upgraded_from"}
    assert upgraded == doc  # every added field gets the value version 1 behaved as
    obs = np.random.default_rng(0).uniform(-1, 1, size=(6, 2, 3)).astype(np.float32)
    for t, o in enumerate(obs):
        if t == 3:
            old.reset(env_ids=[1]), new.reset(env_ids=[1])
        np.testing.assert_array_equal(old.act(o), new.act(o))
    # Hand-written version-1 documents (the minimum version 1 needed) load too.
    minimal = {"format": "robodistill-policy", "format_version": 1, "policy_kind": "x",
               "observation": {"shape": [3]}, "action": {"shape": [1]},
               "inputs": [{"name": "obs", "role": "observation", "shape": ["batch", 3]}],
               "outputs": [{"name": "action", "role": "action", "shape": ["batch", 1]}]}  # fmt: skip
    assert validate(minimal)["observation"]["units"] is None
    with pytest.raises(MetadataError, match="reads versions 1, 2"):
        validate({**minimal, "format_version": 3})


def test_env_entries_name_the_module_that_registers_the_id():
    assert env_entry("robodistill/Nav-v0")["make"] == "robodistill.envs:robodistill/Nav-v0"
    assert env_entry("mypkg.envs:Foo-v1") == {
        "id": "Foo-v1", "module": "mypkg.envs", "make": "mypkg.envs:Foo-v1", "kwargs": {},
        "max_episode_steps": None, "embodiment": None}  # fmt: skip
    assert env_entry("Pendulum-v1")["module"] is None
    doc = complete_document({"env_id": "robodistill/AGVMaze-v0", "inputs": [], "outputs": []})
    assert doc["env"]["module"] == "robodistill.envs"


@pytest.mark.slow
def test_the_recorded_make_string_builds_the_env_in_a_fresh_process():
    make = env_entry("robodistill/Nav-v0")["make"]
    code = f"import gymnasium; print(gymnasium.make({make!r}).observation_space.shape)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(27,)"


def test_the_export_stage_records_env_module_step_limit_units_and_body(tmp_path):
    from robodistill.config import load_config
    from robodistill.export import run_export
    from robodistill.policies.compass import CompassBase
    from robodistill.policies.mlp_student import array_stats

    env_id = "robodistill/AGVMaze-v0"  # a diffdrive body by default
    from robodistill.envs import make_env

    env = make_env(env_id)
    stats = array_stats(np.random.default_rng(0).normal(size=(32, 27)))
    acts = array_stats(np.random.default_rng(1).normal(size=(32, 3)))
    policy = CompassBase.build(env.observation_space, env.action_space, stats, acts, hidden=[8],
                               latent_dim=4, seed=0)  # fmt: skip
    policy.save(tmp_path / "runs" / "maze" / "teach" / "policy")
    cfg = load_config(None, [
        f"runs_dir={tmp_path / 'runs'}", "name=maze", f"env.id={env_id}",
        "env.max_episode_steps=7", "export.exporter=torchscript", "export.parity_random=8",
        "export.parity_real_steps=4", "export.latency_calls=10",
    ])  # fmt: skip
    doc = read_metadata(run_export(cfg)["model"])
    assert doc["env"]["module"] == "robodistill.envs" and doc["env_id"] == env_id
    assert doc["env"]["make"] == f"robodistill.envs:{env_id}"
    assert doc["env"]["max_episode_steps"] == 7  # the run's limit
    body = doc["env"]["embodiment"]
    assert body["name"] == "diffdrive" and body["descriptor"]["fields"] == list(DESCRIPTOR_FIELDS)
    assert body["descriptor"]["values"] == EMBODIMENTS["diffdrive"].descriptor().tolist()
    assert body["spec"]["max_vx"] == 1.0 and body["spec"]["can_strafe"] is False
    units = doc["observation"]["units"]
    assert len(units) == 27 and units[:4] == ["5 m", "1", "1", "4 m"] and units[-1] == "150 kg"
    assert doc["action"]["units"] == ["1 m/s", "0 m/s", "2 rad/s"]
    assert doc["observation"]["low"] is not None and doc["control_rate_hz"] == 10.0


def test_a_generalist_records_the_descriptor_of_every_body():
    from robodistill.envs import make_env
    from robodistill.policies.generalist import EmbodimentTable, Generalist
    from robodistill.policies.mlp_student import array_stats

    table = EmbodimentTable.from_specs([EMBODIMENTS[n] for n in ("holonomic", "heavy")], 4)
    rng = np.random.default_rng(0)
    stats = {k: array_stats(rng.normal(size=(16, n)))
             for k, n in (("obs", 27), ("action", 3), ("log_std", 3))}  # fmt: skip
    policy = Generalist.build(table, make_env("robodistill/Nav-v0").action_space, stats,
                              hidden=[8], embedding="onehot", embed_dim=4, seed=0)  # fmt: skip
    table_doc = policy.onnx_spec()["metadata"]["embodiments"]
    descriptors = table_doc["descriptors"]
    assert list(descriptors) == ["holonomic", "heavy"]
    assert (
        descriptors["heavy"]["descriptor"]["values"] == EMBODIMENTS["heavy"].descriptor().tolist()
    )
    assert descriptors["heavy"]["spec"]["mass"] == 120.0


def test_schema_errors_carry_the_json_path():
    with pytest.raises(SchemaError) as e:
        from robodistill.deploy.schema import validate as validate_schema

        validate_schema({"a": [1, "x"]}, {"properties": {"a": {"items": {"type": "integer"}}}})
    assert e.value.path == "$.a[1]" and "integer" in e.value.reason
