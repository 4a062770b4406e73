"""Fault injection (issue 22): every fault a user or the machine can cause ends in one of
three outcome classes, never in silence or a traceback:

* ``clear error`` — the command exits non-zero with one message naming the thing to fix
  (file, field, array, digest); nothing already written is lost;
* ``safe action`` — the controller keeps the robot safe, counts the fault and goes on or
  stops cleanly;
* ``exact resume`` — the interrupted work resumes to the result an uninterrupted run gives.

Each case below injects one fault and asserts its outcome. ``docs/faults.md`` shows the
table generated from :data:`FAULTS` (``python tests/test_faults.py`` rewrites it; a test
checks it is current).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "faults.md"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"

CLEAR_ERROR, SAFE_ACTION, EXACT_RESUME = "clear error", "safe action", "exact resume"


@dataclass(frozen=True)
class Fault:
    case: str
    """The fault injected."""
    before: str
    """What happened before issue 22 (the fault-injection pass that filed it)."""
    outcome: str
    """One of the three outcome classes (module docstring)."""
    now: str
    """What happens now, in a few words."""
    check: Callable[[Path], None]
    """Injects the fault under a temporary directory and asserts the outcome."""


def cli(*args: str) -> subprocess.CompletedProcess:
    """``robodistill ARGS`` as a user runs it, in this process (``robodistill.cli.main``:
    the same parsing and error handling, without a new interpreter's start-up per call); an
    exception escaping ``main`` is the traceback a user would see, and fails the case."""
    import contextlib
    import io
    import logging

    from robodistill.cli import main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 2
    finally:
        root.handlers[:], root.level = handlers, level  # main() configures logging
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def assert_clear_error(result: subprocess.CompletedProcess, *names: str) -> None:
    """Non-zero exit, no traceback, one message naming each of ``names``."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for name in names:
        assert name in result.stderr, (name, result.stderr)


TINY = ["--set", "env.id=Pendulum-v1", "--set", "env.max_episode_steps=12",
        "--set", "eval.episodes=2", "--set", "eval.video_episodes=0"]  # fmt: skip


# -- CLI, configuration and stages -------------------------------------------------------------


def env_module_missing(tmp: Path) -> None:
    r = cli("eval", "--runs-dir", str(tmp), "--set", "env.id=nopkg:Foo-v0", "--policy", "random")
    assert_clear_error(r, "'nopkg'", "env.id")


def yaml_malformed(tmp: Path) -> None:
    config = tmp / "broken.yaml"
    config.write_text("name: x\nenv: {id: [\n")
    r = cli("eval", "--config", str(config), "--runs-dir", str(tmp))
    assert_clear_error(r, str(config), "not valid YAML")


def stage_failed_on_bad_input(tmp: Path) -> None:
    bad = cli("eval", "--runs-dir", str(tmp), *TINY, "--policy", str(tmp / "no-such-policy"))
    assert_clear_error(bad, "no-such-policy")
    fixed = cli("eval", "--runs-dir", str(tmp), *TINY, "--policy", "random")
    assert fixed.returncode == 0, fixed.stderr  # not refused as "another configuration"
    manifest = json.loads((tmp / "default/eval/manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["attempts"] == 1


def sigterm_during_teach(tmp: Path) -> None:
    args = ["teach", "--runs-dir", str(tmp), "--set", "env.id=Pendulum-v1",
            "--set", "env.max_episode_steps=50", "--set", "teach.algo=ppo",
            "--set", "teach.total_timesteps=6000", "--set", "teach.n_steps=128",
            "--set", "teach.eval_every=512", "--set", "teach.eval_episodes=2",
            "--set", "teach.checkpoint_every=1024", "--set", "teach.net_arch=[16]"]  # fmt: skip
    stage = tmp / "default/teach"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robodistill.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (stage / "checkpoint").is_dir() or _rows(stage) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "teach wrote no checkpoint in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert json.loads((stage / "manifest.json").read_text())["status"] == "interrupted"
    resumed = subprocess.run([sys.executable, "-m", "robodistill.cli", *args], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").open()]
    keys = [(r.get("stage"), r["step"], tuple(sorted(r))) for r in rows]
    assert len(keys) == len(set(keys)), "a step logged twice after the resume"
    assert json.loads((stage / "manifest.json").read_text())["status"] == "done"


def _rows(stage: Path) -> int:
    path = stage / "metrics.jsonl"
    return sum(1 for _ in path.open()) if path.is_file() else 0


def pipeline_stage_not_run(tmp: Path) -> None:
    r = cli("pipeline", "--runs-dir", str(tmp), "--set", "pipeline.stages=[export]")
    assert r.returncode == 3 and "stages that did not run: export" in r.stderr, r.stderr


def kill_9_during_collect(tmp: Path) -> None:
    from robodistill.data.store import TrajectoryStore

    # The planner expert: a deterministic policy, so every seed's episode is reproducible
    # (the random policy draws on from one generator: a resumed run's later episodes differ).
    args = ["collect", "--set", "env.id=robodistill/Nav-v0", "--set", "env.max_episode_steps=80",
            "--set", "collect.policy=expert", "--set", "collect.episodes=40",
            "--set", "collect.flush_every=2"]  # fmt: skip
    whole = cli(*args, "--runs-dir", str(tmp / "whole"))
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen([sys.executable, "-m", "robodistill.cli", *args, "--runs-dir",
                             str(tmp / "killed")], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    store = tmp / "killed/default/collect"
    deadline = time.monotonic() + 120
    while not list(store.glob("**/journal*")) and not (store / "demos.zarr").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["status"] == "running", "collect ended before the kill: nothing tested"
    again = cli(*args, "--runs-dir", str(tmp / "killed"))
    assert again.returncode == 0, again.stderr
    # Episodes are stored in completion order, which a resume changes: compare seed by seed.
    with TrajectoryStore.open(tmp / "whole/default/collect/demos.zarr") as a, \
            TrajectoryStore.open(store / "demos.zarr") as b:  # fmt: skip
        assert a.n_episodes == b.n_episodes == 40
        by_seed = {int(s): i for i, s in enumerate(b.episode_meta()["seed"])}
        for i, seed in enumerate(a.episode_meta()["seed"]):
            ea, eb = a.episode(i), b.episode(by_seed[int(seed)])
            assert ea.data.keys() == eb.data.keys() and ea.success == eb.success
            for key in ea.data:
                np.testing.assert_array_equal(ea.data[key], eb.data[key])


# -- the trajectory store ---------------------------------------------------------------------


def _store(tmp: Path) -> Path:
    from test_store_integrity import LENGTHS, fill, make_episode

    rng = np.random.default_rng(0)
    tmp.mkdir(parents=True, exist_ok=True)
    return fill(tmp / "demos.zarr", [make_episode(rng, t, i) for i, t in enumerate(LENGTHS)])


def _teach_on(tmp: Path, store: Path) -> subprocess.CompletedProcess:
    return cli("teach", "--runs-dir", str(tmp / "runs"), "--set", "env.id=Pendulum-v1",
               "--set", f"teach.rl100.demos={store}", "--set", "teach.rl100.il_steps=2")  # fmt: skip


def store_chunk_deleted(tmp: Path) -> None:
    for key, chunk in (("obs", "c/1/0"), ("action", "c/1/0"), ("reward", "c/1")):
        store = _store(tmp / key)
        (store / "data" / key / chunk).unlink()
        r = _teach_on(tmp / key, store)
        assert_clear_error(r, f"data/{key}/{chunk}", "is missing")
        v = cli("store", "verify", str(store))
        assert v.returncode == 1 and f"data/{key}" in v.stdout and "episodes" in v.stdout


def store_chunk_flipped_or_truncated(tmp: Path) -> None:
    for damage in ("flip", "truncate"):
        store = _store(tmp / damage)
        chunk = store / "data/action/c/2/0"
        data = chunk.read_bytes()
        chunk.write_bytes(data[: len(data) // 2] if damage == "truncate" else
                          data[:-5] + bytes([data[-5] ^ 0x40]) + data[-4:])  # fmt: skip
        r = _teach_on(tmp / damage, store)
        assert_clear_error(r, str(chunk))
        v = cli("store", "verify", str(store))
        assert v.returncode == 1 and "data/action chunk 2" in v.stdout, v.stdout


def store_root_json_truncated(tmp: Path) -> None:
    store = _store(tmp)
    root = store / "zarr.json"
    root.write_text(root.read_text()[:20])
    r = _teach_on(tmp, store)
    assert_clear_error(r, str(root))


# -- saved and exported artifacts --------------------------------------------------------------


def _student_dir(tmp: Path) -> Path:
    from test_artifact_integrity import _student

    return _student().save(tmp / "policy")


def _flip(path: Path, from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - from_end] ^= 0x80
    path.write_bytes(bytes(data))


def safetensors_flipped(tmp: Path) -> None:
    policy = _student_dir(tmp)
    _flip(policy / "model.safetensors", 3)
    r = cli("eval", "--runs-dir", str(tmp), *TINY, "--policy", str(policy))
    assert_clear_error(r, "model.safetensors", "does not match the digest")


def _onnx(tmp: Path) -> Path:
    from robodistill.deploy.export import export_policy
    from robodistill.policies import load_policy

    path = tmp / "policy.onnx"
    export_policy(load_policy(_student_dir(tmp)), path)
    return path


def onnx_truncated_or_empty(tmp: Path) -> None:
    from robodistill.deploy.metadata import ModelFileError
    from robodistill.deploy.runtime import OnnxPolicy

    path = _onnx(tmp)
    data = path.read_bytes()
    for damaged in (data[: len(data) // 2], b""):
        path.write_bytes(damaged)
        with pytest.raises(ModelFileError, match=str(path)):
            OnnxPolicy(path)
    r = cli("control", "--runs-dir", str(tmp), "--env", "Pendulum-v1", str(path))
    assert_clear_error(r, str(path))


def onnx_initializer_flipped(tmp: Path) -> None:
    from robodistill.deploy.metadata import MetadataError
    from robodistill.deploy.runtime import OnnxPolicy

    path = _onnx(tmp)
    import onnx

    model = onnx.load(str(path))
    init = model.graph.initializer[0]
    raw = bytearray(init.raw_data or np.asarray(onnx.numpy_helper.to_array(init)).tobytes())
    raw[0] ^= 0x01  # the lowest bit of one weight: outputs differ by ~1e-7, still caught
    init.raw_data = bytes(raw)
    del init.float_data[:]
    onnx.save(model, str(path))
    with pytest.raises(MetadataError, match="digest") as e:
        OnnxPolicy(path)
    assert str(path) in str(e.value)


# -- the controller ----------------------------------------------------------------------------


def _controller(observations: dict, safe_script: dict | None = None, ticks: int = 8):
    from test_controller_strict import Robot, run

    robot = Robot()
    robot.observations.update(observations)
    robot.safe_script.update(safe_script or {})
    result, robot, policy = run(robot, ticks=ticks)
    for action in robot.applied:  # whatever happened, only valid actions reached the robot
        assert action.shape == (2,) and np.isfinite(action).all(), action
    return result, robot


def observation_same_size_other_shape(tmp: Path) -> None:
    from test_controller_strict import GOOD, is_safe

    result, robot = _controller({1: GOOD.reshape(3, 9), 3: GOOD.reshape(27, 1),
                                 5: GOOD.reshape(1, 27)})  # fmt: skip
    assert result.faults["observation"] == 3 and result.ticks == 8
    assert [is_safe(robot.applied[t]) for t in (1, 3, 5)] == [True] * 3


def observation_far_outside_bounds(tmp: Path) -> None:
    from test_controller_strict import GOOD, is_safe

    far = GOOD.copy()
    far[0] = 1e30
    result, robot = _controller({2: far})
    assert result.faults["bounds"] == 1 and is_safe(robot.applied[2])


def safe_action_raises_during_a_fault(tmp: Path) -> None:
    from test_controller_strict import SAFE

    result, robot = _controller({2: RuntimeError("sensor")}, {1: RuntimeError("brake")})
    assert result.faults["robot"] == 1 and result.faults["safe_action"] == 1
    assert "safe_action failed while handling a fault" in result.reason
    np.testing.assert_array_equal(robot.applied[-1], SAFE)  # the last valid safe action


def safe_action_nan_or_wrong_shape(tmp: Path) -> None:
    for bad in ([np.nan, 0.0], [0.0, 0.0, 0.0]):
        result, robot = _controller({2: RuntimeError("sensor")}, {1: bad})
        assert result.faults["safe_action"] == 1, bad
        result, robot = _controller({}, {0: bad})  # checked once at start: nothing runs
        assert result.ticks == 0 and robot.applied == [], bad


FAULTS: list[Fault] = [
    Fault(
        "env id `nopkg:Foo-v0` (its module is not installed)",
        "`ModuleNotFoundError` traceback",
        CLEAR_ERROR,
        "names the module and `env.id`",
        env_module_missing,
    ),
    Fault(
        "a malformed YAML config",
        "the parser's text, without the file's name",
        CLEAR_ERROR,
        "names the file",
        yaml_malformed,
    ),
    Fault(
        "a stage that failed on bad input (a missing policy path), then the corrected command",
        'the directory stayed; the corrected command was refused ("made with '
        'another configuration")',
        CLEAR_ERROR,
        "names the path; the failed attempt leaves no directory, the corrected command runs",
        stage_failed_on_bad_input,
    ),
    Fault(
        "SIGTERM during `teach`, then the same command",
        "manifest left at `running`; metrics rows duplicated after the resume",
        EXACT_RESUME,
        "manifest `interrupted`, exit 130; the resume finishes with every step logged once",
        sigterm_during_teach,
    ),
    Fault(
        "`pipeline` with a stage that did not run",
        "exit 0",
        CLEAR_ERROR,
        "exit 3, naming the stages",
        pipeline_stage_not_run,
    ),
    Fault(
        "kill -9 during `collect` (the expert, a deterministic policy), then the same command",
        "(already exact)",
        EXACT_RESUME,
        "the store equals an uninterrupted run's",
        kill_9_during_collect,
    ),
    Fault(
        "a chunk file of `data/obs`, `data/action` or `data/reward` deleted from a store",
        "the array read as zeros; `teach` trained on it with rc 0",
        CLEAR_ERROR,
        "opening names the missing file and array; `store verify` names array, chunk and episodes",
        store_chunk_deleted,
    ),
    Fault(
        "bytes flipped inside, or a truncated, store chunk",
        "silent / a zstd error naming no file",
        CLEAR_ERROR,
        "checksummed chunks: names the file, array and chunk",
        store_chunk_flipped_or_truncated,
    ),
    Fault(
        "the store's root `zarr.json` truncated",
        "a raw `JSONDecodeError`",
        CLEAR_ERROR,
        "names the file",
        store_root_json_truncated,
    ),
    Fault(
        "weight bytes flipped in `model.safetensors`",
        "loads, actions differ, rc 0",
        CLEAR_ERROR,
        "names the file and both SHA-256 digests",
        safetensors_flipped,
    ),
    Fault(
        "an `.onnx` file truncated or empty",
        "`InvalidProtobuf` traceback, rc 1",
        CLEAR_ERROR,
        "names the path (runtime and `control`)",
        onnx_truncated_or_empty,
    ),
    Fault(
        "one weight bit flipped in an `.onnx`",
        "runs, outputs differ",
        CLEAR_ERROR,
        "the graph digest in the metadata differs: names the path and both digests",
        onnx_initializer_flipped,
    ),
    Fault(
        "controller observations of shape (3, 9), (27, 1), (1, 27) where (27,) is expected",
        "reshaped and used",
        SAFE_ACTION,
        "an `observation` fault, the safe action that tick",
        observation_same_size_other_shape,
    ),
    Fault(
        "a controller observation of 1e30, outside the declared bounds",
        "accepted",
        SAFE_ACTION,
        "a `bounds` fault, the safe action that tick",
        observation_far_outside_bounds,
    ),
    Fault(
        "`safe_action()` raising while a fault is handled",
        "the exception escaped `Controller.run()`",
        SAFE_ACTION,
        "the run stops with the last valid safe action and says why",
        safe_action_raises_during_a_fault,
    ),
    Fault(
        "`safe_action()` returning NaN or a wrong shape",
        "passed to `apply()`",
        SAFE_ACTION,
        "never applied: checked at start (nothing runs) and at every call",
        safe_action_nan_or_wrong_shape,
    ),
]


def render_table(faults: list[Fault]) -> str:
    lines = ["| fault | before | outcome | now |", "| --- | --- | --- | --- |"]
    lines += [f"| {f.case} | {f.before} | **{f.outcome}** | {f.now} |" for f in faults]
    return "\n".join(lines)


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.check.__name__)
def test_fault(fault: Fault, tmp_path):
    assert fault.outcome in (CLEAR_ERROR, SAFE_ACTION, EXACT_RESUME)
    fault.check(tmp_path)


def test_the_docs_table_is_generated_from_these_cases():
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"{DOC} needs the {BEGIN} / {END} markers"
    current = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert current == render_table(FAULTS), "docs/faults.md is stale: python tests/test_faults.py"


if __name__ == "__main__":
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(f"{head}{BEGIN}\n{render_table(FAULTS)}\n{END}{rest.split(END, 1)[1]}")
    print(f"wrote {DOC}")
