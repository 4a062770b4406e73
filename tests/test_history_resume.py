"""History students resume after an interruption (robodistill.distill.history_resume): from
the last finished DAgger round, with its dataset, weights and mixing RNG, to the same result
as an uninterrupted run. Tiny budgets: Nav-v0 diffdrive without obstacles, 30-step
episodes, a randomly initialized privileged teacher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from robodistill.cli import EXIT_INTERRUPTED, main
from robodistill.distill.history import HistoryDAgger, distill_history
from robodistill.distill.history_resume import DAggerCheckpoint
from robodistill.envs import make_env
from robodistill.policies import load_policy
from robodistill.policies.privileged import PrivilegedTeacher
from robodistill.teach.rl.privileged import layout_indices

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RANGES = {"mass": [0.8, 1.2], "friction": [0.7, 1.3], "speed": [0.7, 1.1]}
ENV = {"embodiment": "diffdrive", "n_obstacles": 0,
       "randomization": {"ranges": RANGES, "privileged_obs": True}}  # fmt: skip


def make():
    return make_env("robodistill/Nav-v0", max_episode_steps=30, **ENV)


def random_teacher(seed: int = 0) -> PrivilegedTeacher:
    """An oracle-shaped privileged teacher with random weights (what it does is irrelevant
    here, only that the students distill it deterministically)."""
    env = make()
    robot, priv = layout_indices(env)
    config = {"net_arch": [32, 32], "latent_dim": 4, "encoder_arch": [16],
              "robot_idx": robot.tolist(), "priv_idx": priv.tolist(), "actor_privileged": True,
              "clip_obs": 10.0, "eps": 1e-8}  # fmt: skip
    torch.manual_seed(seed)
    net = PrivilegedTeacher._build(config, int(env.action_space.shape[0]))
    teacher = PrivilegedTeacher(net, env.observation_space, env.action_space, config)
    env.close()
    return teacher


DAGGER = HistoryDAgger(rounds=4, episodes_per_round=2, epochs=2, batch_size=32, history_len=4,
                       n_envs=2, encoder_arch=(16,), hidden=(16,), seed=3)  # fmt: skip


class Interrupt(KeyboardInterrupt):
    pass


def _without_times(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.parametrize("variant", ["rma", "hib"])
def test_resumed_rounds_equal_an_uninterrupted_run(variant, tmp_path):
    teacher = random_teacher()
    whole, whole_log = distill_history(make, teacher, variant, DAGGER,
                                       checkpoint=DAggerCheckpoint(tmp_path / "whole", {}))  # fmt: skip

    def stop_in_round_2(r, student, row):
        if r == 2:  # during round 2's on_round: rounds 0 and 1 are finished and saved
            raise Interrupt

    with pytest.raises(Interrupt):
        distill_history(make, teacher, variant, DAGGER, on_round=stop_in_round_2,
                        checkpoint=DAggerCheckpoint(tmp_path / "cut", {}))  # fmt: skip
    state = json.loads((tmp_path / "cut/state/config.json").read_text())
    assert state["round"] == 1 and len(state["log"]) == 2
    assert not (tmp_path / "cut/rows-002.safetensors").exists()

    rounds_run = []
    resumed, resumed_log = distill_history(
        make, teacher, variant, DAGGER, on_round=lambda r, s, row: rounds_run.append(r),
        checkpoint=DAggerCheckpoint(tmp_path / "cut", {}),
    )  # fmt: skip
    assert rounds_run == [2, 3]  # rounds 0 and 1 were not run again
    assert _without_times(resumed_log) == _without_times(whole_log)
    mine, theirs = resumed.net.state_dict(), whole.net.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine), "weights differ"
    for r in range(DAGGER.rounds):  # the aggregated DAgger dataset, row for row
        a = load_file(str(tmp_path / f"whole/rows-{r:03d}.safetensors"))
        b = load_file(str(tmp_path / f"cut/rows-{r:03d}.safetensors"))
        assert all(np.array_equal(a[k], b[k]) for k in a)
    if variant == "hib":  # the InfoNCE critic's state carried over too
        w = load_file(str(tmp_path / "whole/state/model.safetensors"))
        c = load_file(str(tmp_path / "cut/state/model.safetensors"))
        assert any(k.startswith("critic.") for k in w)
        assert all(np.array_equal(w[k], c[k]) for k in w)


def test_a_state_made_with_other_settings_is_not_resumed(tmp_path):
    teacher = random_teacher()
    cfg = HistoryDAgger(**{**DAGGER.__dict__, "rounds": 1})
    distill_history(make, teacher, "history", cfg,
                    checkpoint=DAggerCheckpoint(tmp_path / "s", {"lr": 1}))  # fmt: skip
    assert (tmp_path / "s/rows-000.safetensors").exists()
    ran = []
    distill_history(make, teacher, "history", cfg, on_round=lambda r, s, row: ran.append(r),
                    checkpoint=DAggerCheckpoint(tmp_path / "s", {"lr": 2}))  # fmt: skip
    assert ran == [0]  # started over
    # a changed rows file is not trusted either
    path = tmp_path / "s/rows-000.safetensors"
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    assert DAggerCheckpoint(tmp_path / "s", {"lr": 2}).load(torch.nn.Module()) is None


def _sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def _stage(tmp_path: Path, name: str, teacher: Path) -> list[str]:
    return [
        f"runs_dir={tmp_path / 'runs'}", f"name={name}", "env.id=robodistill/Nav-v0",
        "env.kwargs={embodiment: diffdrive, n_obstacles: 0}", "env.max_episode_steps=30",
        "env.num_envs=2", "env.randomization={mass: [0.8, 1.2], friction: [0.7, 1.3], "
        "actuator_gain: null, speed: [0.7, 1.1], privileged_obs: true}",
        f"distill.teacher={teacher}", "distill.students=[history]",
        "distill.history.rounds=3", "distill.history.episodes_per_round=2",
        "distill.history.epochs=2", "distill.history.eval_episodes=2", "distill.history.k=4",
        "distill.history.encoder_arch=[16]", "distill.history.hidden=[16]",
    ]  # fmt: skip


def test_the_distill_stage_resumes_an_interrupted_student(tmp_path, monkeypatch, capsys):
    teacher = tmp_path / "teacher"
    random_teacher().save(teacher)
    assert main(["distill", *_sets(_stage(tmp_path, "whole", teacher))]) == 0

    from robodistill.training import selection

    calls = {"n": 0}
    summary = selection.rollout_summary

    def stop_at_round_2(*args, **kwargs):
        calls["n"] += 1  # 1: the teacher's validation, 2..: after rounds 0, 1, 2
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return summary(*args, **kwargs)

    monkeypatch.setattr(selection, "rollout_summary", stop_at_round_2)
    assert main(["distill", *_sets(_stage(tmp_path, "cut", teacher))]) == EXIT_INTERRUPTED
    monkeypatch.setattr(selection, "rollout_summary", summary)
    cut = tmp_path / "runs/cut/distill"
    assert json.loads((cut / "history/dagger/state/config.json").read_text())["round"] == 1
    assert main(["distill", *_sets(_stage(tmp_path, "cut", teacher))]) == 0
    assert "resumed after round 1" in (cut / "stage.log").read_text()

    whole = tmp_path / "runs/whole/distill"
    a = json.loads((whole / "history/result.json").read_text())
    b = json.loads((cut / "history/result.json").read_text())
    for result in (a, b):
        result.pop("wall_s"), result.pop("policy")
        result["history"] = _without_times(result["history"])
    assert a == b
    pa, pb = load_policy(whole / "history/policy"), load_policy(cut / "history/policy")
    sa, sb = pa.net.state_dict(), pb.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # Each round is logged once: the interrupted attempt's round-2 row (if any) was dropped.
    rows = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r.get("stage") == "history"]
    assert steps == [0, 1, 2]
