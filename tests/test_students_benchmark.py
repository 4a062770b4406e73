"""benchmarks/students.py's command line: measuring students saved elsewhere under a tag."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("students_bench",
                                                      ROOT / "benchmarks" / "students.py")  # fmt: skip
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def test_a_given_student_needs_a_known_name_and_a_saved_policy(bench, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert bench.student_arg(f"streaming={tmp_path}") == ("streaming", tmp_path)
    with pytest.raises(argparse.ArgumentTypeError, match="NAME one of"):
        bench.student_arg(f"dagger={tmp_path}")
    with pytest.raises(argparse.ArgumentTypeError, match="NAME one of"):
        bench.student_arg("consistency=")
    with pytest.raises(argparse.ArgumentTypeError, match="no saved policy"):
        bench.student_arg(f"consistency={tmp_path / 'missing'}")


def test_a_tag_renames_every_file_written(bench):
    assert bench.tagged("students.json", None) == "students.json"
    assert bench.tagged("students.json", "pilot") == "students-pilot.json"
    assert bench.tagged("success_latency.png", "pilot") == "success_latency-pilot.png"
