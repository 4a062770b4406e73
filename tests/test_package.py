"""Packaging: the wheel holds every module under its robodistill.* name; deploy needs no torch."""

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = {"robodistill": "robodistill", "envs": "robodistill/envs",
               "policies": "robodistill/policies", "deploy": "robodistill/deploy"}  # fmt: skip


@pytest.mark.slow
def test_wheel_contains_every_module(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), "-q"],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("robodistill-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"{target}/{path.relative_to(ROOT / source).as_posix()}"
        for source, target in SOURCE_DIRS.items()
        for path in (ROOT / source).rglob("*.py")
    }
    assert len(expected) > 15
    assert expected <= names, sorted(expected - names)
    assert "robodistill/deploy/metadata_schema.json" in names  # package data: the ONNX contract
    assert not any(n.startswith(("tests/", "benchmarks/", "envs/", "policies/")) for n in names)
    metadata = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Provides-Extra: deploy" in text and "Provides-Extra: all" in text


def _tiny_onnx_policy(path: Path) -> None:
    """obs (B, 3) -> clip(obs @ W, -2, 2) with robodistill metadata, built without torch."""
    import json

    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["obs", "W"], ["y"]),
         helper.make_node("Clip", ["y", "lo", "hi"], ["action"])],
        "tiny",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor("W", TensorProto.FLOAT, [3, 1], [-1.0, 0.0, -0.5]),
         helper.make_tensor("lo", TensorProto.FLOAT, [], [-2.0]),
         helper.make_tensor("hi", TensorProto.FLOAT, [], [2.0])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    doc = {"format": "robodistill-policy", "format_version": 1, "policy_kind": "tiny",
           "observation": {"shape": [3]}, "action": {"shape": [1], "low": [-2.0], "high": [2.0]},
           "inputs": [{"name": "obs", "role": "observation", "shape": ["batch", 3]}],
           "outputs": [{"name": "action", "role": "action", "shape": ["batch", 1]}]}  # fmt: skip
    entry = model.metadata_props.add()
    entry.key, entry.value = "robodistill", json.dumps(doc)
    onnx.save(model, str(path))


def test_deploy_runtime_works_without_torch(tmp_path):
    """The whole runtime — policy, controller, SimRobot — in a process where torch cannot be
    imported (as on a robot with ``pip install robodistill[deploy]``)."""
    _tiny_onnx_policy(tmp_path / "tiny.onnx")
    code = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        import robodistill.deploy
        import robodistill.deploy.controller, robodistill.deploy.metadata
        import robodistill.deploy.robot, robodistill.deploy.runtime
        from robodistill.deploy import Controller, OnnxPolicy, SimRobot
        policy = OnnxPolicy({str(tmp_path / "tiny.onnx")!r})
        robot = SimRobot("Pendulum-v1", episodes=1, max_episode_steps=5)
        result = Controller(policy, robot, 500.0).run(ticks=100)
        assert result.reason == "robot done" and result.ticks == 5, result
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_envs_and_policies_do_not_import_training_code():
    code = (
        "import sys, robodistill.envs, robodistill.policies\n"
        "bad = [m for m in ('robodistill.stages', 'robodistill.core.rundir', 'robodistill.data.store',"
        " 'robodistill.pipeline') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_dir_of_deploy_lists_its_lazy_names_before_they_are_loaded():
    import robodistill.deploy as deploy

    names = dir(deploy)
    assert {"OnnxPolicy", "Controller", "SimRobot", "read_metadata"} <= set(names)
    assert names == sorted(names)
    assert set(deploy.__all__) <= set(names)
