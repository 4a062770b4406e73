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
    assert not any(n.startswith(("tests/", "benchmarks/", "envs/", "policies/")) for n in names)
    metadata = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Provides-Extra: deploy" in text and "Provides-Extra: all" in text


def test_deploy_imports_without_torch():
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        import robodistill.deploy
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
        "bad = [m for m in ('robodistill.stages', 'robodistill.run', 'robodistill.store',"
        " 'robodistill.pipeline') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
