"""The three RL-100 sub-stages run in order inside one ``teach`` stage and hand off."""

import json

import pytest
import torch

from robodistill.collect import run_collect
from robodistill.config import load_config
from robodistill.teach.stage import run_teach

TINY_RL = [
    "teach.rl100.stages=[il, offline, online]",
    "teach.offline.rounds=1",
    "teach.offline.updates_per_round=2",
    "teach.offline.batch_size=8",
    "teach.offline.iql_steps=20",
    "teach.offline.critic_hidden=[16]",
    "teach.offline.dynamics_steps=20",
    "teach.offline.dynamics_members=2",
    "teach.offline.dynamics_elites=1",
    "teach.offline.dynamics_hidden=[16]",
    "teach.offline.ope_starts=8",
    "teach.offline.ope_horizon=1",
    "teach.online.iterations=1",
    "teach.online.num_envs=2",
    "teach.online.decisions_per_env=2",
    "teach.online.epochs=1",
    "teach.online.minibatch_size=4",
    "teach.online.value_hidden=[8]",
    "teach.online.ft_denoising_steps=1",
    "teach.online.eval_every=1",
]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_il_offline_online_run_in_order_and_hand_off(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, *TINY_RL])
    run_collect(cfg)
    metrics = run_teach(cfg)
    teach = tmp_path / "runs/default/teach"
    assert metrics["stages"] == ["il", "offline", "online"]
    for sub in ("il", "offline", "online"):
        assert (teach / sub / "result.json").is_file(), sub
    offline = metrics["offline"]
    assert offline["rounds"] == 1 and offline["accepted"] + offline["rejected"] == 1
    assert "success_rate" in offline["validation"]
    gate_rows = [
        json.loads(line)
        for line in (teach / "metrics.jsonl").read_text().splitlines()
        if "gate_accepted" in line
    ]
    assert len(gate_rows) == 2  # the imitation policy's estimate, then one round's verdict
    # Online RL starts from the offline stage's policy when offline RL accepted an update
    # (it writes offline/policy only then), else from the imitation policy.
    offline_policy = teach / "offline" / "policy"
    expected = offline_policy if offline_policy.is_dir() else teach / "il" / "policy"
    assert metrics["online"]["started_from"] == str(expected)
    # RL checkpoints are chosen on teach.rl100.rl_eval_episodes seeds (3 here, imitation's 2):
    # the kept policy was re-validated on them before the RL stages compared against it.
    best = json.loads((teach / "best.json").read_text())
    assert best["episodes"] == 3
    assert best["stage"] in ("il", "offline", "online")
    # A second call finds every sub-stage done and trains nothing.
    again = run_teach(cfg)
    assert again["best_stage"] == metrics["best_stage"]
