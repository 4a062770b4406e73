"""The run report's delay-robustness section (``<run>/delay/delay.json`` from
``benchmarks/delay.py --run``): shown with its plot when present, absent otherwise."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _point(success: float, episodes: int = 10) -> dict:
    return {"success": success, "episodes": episodes}


RESULTS = {
    "consistency 1-step": {
        "sync": {"0": _point(0.8), "4": _point(0.5)},
        "async": {"0": _point(0.8), "4": _point(0.7)},
        "async+rtc": {"0": _point(0.8), "4": _point(0.75)},
    }
}


def _write_delay(run: Path) -> None:
    (run / "delay").mkdir(parents=True)
    doc = {"env": "robodistill/PushT-v0", "seed0": 900_000, "results": RESULTS}
    (run / "delay" / "delay.json").write_text(json.dumps(doc))


def _report(tmp_path: Path) -> str:
    from robodistill.config import load_config
    from robodistill.report import write_report

    cfg = load_config(None, [f"runs_dir={tmp_path}"])
    return write_report(cfg, {}).read_text()


def test_the_report_shows_the_delay_results_and_plot(tmp_path):
    run = tmp_path / "default"
    _write_delay(run)
    report = _report(tmp_path)
    assert "## Delay robustness" in report
    assert "](delay/delay.png)" in report
    assert "| consistency 1-step | async+rtc | 80 % (10) | 75 % (10) | 0.94 |" in report
    assert (run / "delay" / "delay.png").stat().st_size > 0


def test_the_report_has_no_delay_section_without_results(tmp_path):
    (tmp_path / "default").mkdir()
    report = _report(tmp_path)
    assert "Delay robustness" not in report
    assert not (tmp_path / "default" / "delay").exists()


def test_an_empty_delay_file_adds_no_section(tmp_path):
    run = tmp_path / "default"
    (run / "delay").mkdir(parents=True)
    (run / "delay" / "delay.json").write_text(json.dumps({"results": {}}))
    assert "Delay robustness" not in _report(tmp_path)


def test_the_benchmark_writes_into_a_run_directory(tmp_path):
    spec = importlib.util.spec_from_file_location("delay_bench", ROOT / "benchmarks" / "delay.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run = tmp_path / "pusht"
    _write_delay(run)
    (run / "config.json").write_text(json.dumps({"env": {"id": "robodistill/PushT-v0",
                                                         "kwargs": {"obs_type": "keypoints"}}}))  # fmt: skip
    assert bench.main(["--run", str(run), "--no-run", "--delays", "0", "4"]) == 0
    assert (run / "delay" / "delay.png").stat().st_size > 0
    assert json.loads((run / "delay" / "delay.json").read_text())["results"] == RESULTS
