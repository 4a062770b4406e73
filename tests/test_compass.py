"""COMPASS (issue #7): padding and masks, the residual wrapper, the masked KL, the generalist
checkpoint with its embodiment table, ONNX export, and a tiny end-to-end run of the stages."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from robodistill.config import load_config
from robodistill.distill.generalist import generalist_loss, label, selection_key
from robodistill.envs import make_env
from robodistill.envs.embodiments import EMBODIMENTS
from robodistill.policies import load_policy
from robodistill.policies.compass import CompassBase
from robodistill.policies.generalist import EmbodimentTable, Generalist, action_mask, pad
from robodistill.policies.mlp_student import array_stats
from robodistill.policies.residual import base_features
from robodistill.teach.compass.wrappers import make_residual_env

NAV = "robodistill/Nav-v0"
NAMES = ["holonomic", "diffdrive", "ackermann", "heavy"]


def _nav_obs(n=24, seed=0, embodiment="holonomic"):
    env = make_env(NAV, embodiment=embodiment)
    obs, _ = env.reset(seed=seed)
    rows = [obs]
    rng = np.random.default_rng(seed)
    for _ in range(n - 1):
        obs, *_ = env.step(rng.uniform(-1, 1, 3).astype(np.float32))
        rows.append(obs)
    env.close()
    return np.asarray(rows, np.float32)


def _base(seed=0):
    env = make_env(NAV)
    obs = _nav_obs()
    acts = np.random.default_rng(seed).uniform(-1, 1, (len(obs), 3))
    return CompassBase.build(env.observation_space, env.action_space, array_stats(obs),
                             array_stats(acts), hidden=[16], latent_dim=8, seed=seed)  # fmt: skip


def _generalist(embedding="onehot", seed=0, names=("holonomic", "diffdrive")):
    table = EmbodimentTable.from_specs([EMBODIMENTS[n] for n in names], n_slots=4)
    obs = _nav_obs()
    means = np.random.default_rng(seed).normal(size=(len(obs), 3)) * 0.3
    stats = {"obs": array_stats(obs), "action": array_stats(means),
             "log_std": array_stats(means - 2.0)}  # fmt: skip
    return Generalist.build(table, make_env(NAV).action_space, stats, hidden=[16, 16],
                            embedding=embedding, embed_dim=4, seed=seed)  # fmt: skip


# -- the four tests the issue names ----------------------------------------------------------


def test_padding_and_masks_round_trip():
    small = dataclasses.replace(
        EMBODIMENTS["holonomic"], name="small", action_dim=2,
        observation_layout=({"key": "goal", "start": 0, "stop": 20},),
    )  # fmt: skip
    table = EmbodimentTable.from_specs([EMBODIMENTS["diffdrive"], small, EMBODIMENTS["heavy"]])
    assert (table.obs_dim, table.act_dim, table.n_slots) == (27, 3, 8)
    x = np.random.default_rng(0).normal(size=(5, 20)).astype(np.float32)
    padded = pad(x, table.obs_dim)
    assert padded.shape == (5, 27) and np.all(padded[:, 20:] == 0)
    np.testing.assert_array_equal(padded[:, : small.obs_dim], x)  # the round trip
    obs_masks, act_masks = table.mask_tables()
    assert obs_masks[table.slots["small"]].tolist() == [1.0] * 20 + [0.0] * 7
    # A body that cannot strafe has no vy; a 2-dim body has no third dim; free slots: nothing.
    assert action_mask(EMBODIMENTS["diffdrive"], 3).tolist() == [1, 0, 1]
    assert action_mask(EMBODIMENTS["heavy"], 3).tolist() == [1, 1, 1]
    assert act_masks[table.slots["small"]].tolist() == [1, 1, 0]
    assert act_masks[3:].abs().sum() == 0
    code = table.code("heavy")
    assert code.sum() == 1 and code[table.slots["heavy"]] == 1
    again = EmbodimentTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again.to_json() == table.to_json() and again.specs["small"] == small
    with pytest.raises(KeyError, match="finetune_embodiments"):
        table.code("ackermann")


def test_residual_wrapper_with_zero_residual_reproduces_the_base_action():
    base = _base()
    cfg = load_config(None, [f"env.id={NAV}", "env.max_episode_steps=20"])
    wrapped = make_residual_env(cfg, base, "diffdrive")
    plain = make_env(NAV, max_episode_steps=20, embodiment="diffdrive")
    features, _ = wrapped.reset(seed=5)
    obs, _ = plain.reset(seed=5)
    assert wrapped.action_space.high.tolist() == [2.0] * 3
    for _ in range(6):
        expected_features, base_action = base_features(base, obs[None])
        np.testing.assert_allclose(features, expected_features[0], atol=1e-6)
        inner = wrapped.env  # the ResidualActionWrapper
        np.testing.assert_allclose(inner.action(np.zeros(3)), base.act(obs[None])[0], atol=1e-7)
        features, *_ = wrapped.step(np.zeros(3, np.float32))
        obs, *_ = plain.step(base_action[0])
        np.testing.assert_allclose(inner.env.unwrapped._obs(), obs, atol=1e-6)  # same states


def test_kl_loss_is_zero_when_the_student_equals_the_teacher():
    student = _generalist("learned")
    obs = _nav_obs(12)
    teacher = student.for_embodiment("diffdrive")
    targets = label(teacher, obs, 3)
    slot = student.table.slots["diffdrive"]
    mask = student.table.mask_tables()[1][slot].repeat(len(obs), 1)
    batch = {"obs": torch.from_numpy(pad(obs, 27)), "slot": torch.full((len(obs),), slot),
             "mask": mask, **{k: torch.from_numpy(v) for k, v in targets.items()}}  # fmt: skip
    with torch.no_grad():
        assert float(generalist_loss(student, batch, "kl")) < 1e-6
        assert float(generalist_loss(student, batch, "mse")) < 1e-10
        # A masked dim (diffdrive's vy) does not count; an unmasked one does.
        batch["target_mean"] = batch["target_mean"] + torch.tensor([0.0, 5.0, 0.0])
        assert float(generalist_loss(student, batch, "kl")) < 1e-6
        batch["target_mean"] = batch["target_mean"] + torch.tensor([0.5, 0.0, 0.0])
        assert float(generalist_loss(student, batch, "kl")) > 1e-3


def _validation(success: dict[str, float]) -> dict:
    per = {n: {"success_rate": s, "return_mean": 10 * s} for n, s in success.items()}
    return {"success_rate": float(np.mean(list(success.values()))),
            "return_mean": float(np.mean([10 * s for s in success.values()])),
            "per_embodiment": per}  # fmt: skip


def test_selection_keeps_the_generalist_closest_to_every_specialist():
    specialists = _validation({"diffdrive": 0.8, "ackermann": 0.6, "heavy": 0.0})
    # Trades ackermann for diffdrive: the higher mean, but 0.5x the ackermann specialist.
    lopsided = _validation({"diffdrive": 1.0, "ackermann": 0.3, "heavy": 0.1})
    even = _validation({"diffdrive": 0.7, "ackermann": 0.5, "heavy": 0.0})
    assert lopsided["success_rate"] > even["success_rate"]
    key = lambda r, how: selection_key(r, specialists, how)  # noqa: E731
    assert key(lopsided, "mean_success") > key(even, "mean_success")
    assert key(even, "specialist_ratio") > key(lopsided, "specialist_ratio")
    assert key(even, "specialist_ratio")[0] == pytest.approx(0.5 / 0.6)
    # Past every specialist (ratios capped at 1) the mean success decides; a specialist that
    # never succeeds (heavy here) is matched by anything.
    beyond = _validation({"diffdrive": 0.9, "ackermann": 0.7, "heavy": 0.0})
    more = _validation({"diffdrive": 1.0, "ackermann": 0.7, "heavy": 0.2})
    assert key(beyond, "specialist_ratio")[0] == key(more, "specialist_ratio")[0] == 1.0
    assert key(more, "specialist_ratio") > key(beyond, "specialist_ratio")


@pytest.mark.parametrize("embedding", ["onehot", "learned"])
def test_generalist_checkpoint_saves_and_loads_with_its_embodiment_table(tmp_path, embedding):
    policy = _generalist(embedding)
    source = policy.add_embodiment(EMBODIMENTS["ackermann"])  # a fine-tuning's new slot
    assert source in ("holonomic", "diffdrive")
    obs = _nav_obs(9, embodiment="ackermann")
    # The new slot starts as its nearest relative (the code column was copied).
    np.testing.assert_allclose(policy.for_embodiment("ackermann").act(obs[:, :]) * [1, 0, 1],
                               policy.for_embodiment(source).act(obs) * [1, 0, 1], atol=1e-6)  # fmt: skip
    loaded = load_policy(policy.for_embodiment("diffdrive").save(tmp_path / "g"))
    assert isinstance(loaded, Generalist) and loaded.current == "diffdrive"
    assert loaded.table.to_json() == policy.table.to_json()
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    assert [e["name"] for e in config["table"]["embodiments"]] == [
        "holonomic", "diffdrive", "ackermann"]  # fmt: skip
    for name in ("holonomic", "diffdrive", "ackermann"):
        a = loaded.for_embodiment(name).act(obs)
        np.testing.assert_array_equal(a, policy.for_embodiment(name).act(obs))
        if not EMBODIMENTS[name].can_strafe:
            assert np.all(a[:, 1] == 0)  # masked output dim
    # attach() reads the embodiment from the environment, zero-shot for an unknown one.
    loaded.attach([make_env(NAV, embodiment="heavy"), make_env(NAV, embodiment="ackermann")])
    assert loaded.row_names(2) == [loaded.table.nearest(EMBODIMENTS["heavy"]), "ackermann"]
    spec = loaded.onnx_spec()
    table = spec["metadata"]["embodiments"]
    assert table["names"] == ["holonomic", "diffdrive", "ackermann"]
    assert table["default"] == "ackermann" and len(table["codes"][0]) == 4
    with pytest.raises(KeyError, match="not in the generalist's table"):
        loaded.for_embodiment("heavy")


def test_generalist_exports_to_onnx_with_its_embodiment_input(tmp_path):
    from robodistill.deploy.export import check_parity, export_policy
    from robodistill.deploy.runtime import OnnxPolicy

    policy = _generalist("learned").for_embodiment("diffdrive")
    path = tmp_path / "g.onnx"
    export_policy(policy, path, exporter="torchscript")
    obs = _nav_obs(16, embodiment="diffdrive")
    report = check_parity(policy, path, obs, n_random=16)
    assert max(report.values()) < 1e-4
    runtime = OnnxPolicy(path, embodiment="holonomic")
    np.testing.assert_allclose(runtime.act(obs), policy.for_embodiment("holonomic").act(obs),
                               atol=1e-5)  # fmt: skip


# -- end to end ------------------------------------------------------------------------------


TINY_COMPASS = [
    "name=compass", f"env.id={NAV}",
    "env.kwargs={embodiment: holonomic}", "env.num_envs=2", "env.max_episode_steps=12",
    "collect.policy=expert", "collect.episodes=2",
    "teach.algo=compass", "teach.compass.embodiments=[diffdrive]",
    "teach.compass.timesteps={diffdrive: 96}",
    "teach.compass.hidden=[16]", "teach.compass.latent_dim=8",
    "teach.compass.base_steps=4", "teach.compass.base_batch_size=8",
    "teach.compass.base_eval_every=2", "teach.compass.base_checkpoint_every=2",
    "teach.total_timesteps=64", "teach.n_steps=32", "teach.batch_size=32", "teach.n_epochs=1",
    "teach.net_arch=[16]", "teach.eval_every=64", "teach.checkpoint_every=64",
    "teach.eval_episodes=1",
]  # fmt: skip
"""A COMPASS run small enough for a test: seconds per stage."""


def test_tiny_end_to_end_collect_base_specialist_generalist(tmp_path):
    from robodistill.collect import run_collect
    from robodistill.distill.stage import run_distill
    from robodistill.teach.stage import run_teach

    overrides = [f"runs_dir={tmp_path / 'runs'}", *TINY_COMPASS]
    overrides += [
        "distill.students=[generalist]", "distill.generalist.rounds=2",
        "distill.generalist.episodes_per_round=1", "distill.generalist.epochs=2",
        "distill.generalist.hidden=[16]", "distill.generalist.eval_episodes=1",
    ]  # fmt: skip
    cfg = load_config(None, overrides)
    assert run_collect(cfg)["episodes"] == 2
    teach = run_teach(cfg)
    root = tmp_path / "runs" / "compass" / "teach"
    assert teach["base"]["steps"] == 4 and teach["specialists"]["diffdrive"]["timesteps"] >= 96
    for path in ("policy", "compass/base/policy", "compass/base/result.json",
                 "compass/specialists/diffdrive/policy", "compass/specialists/diffdrive/checkpoint"):  # fmt: skip
        assert (root / path).exists(), path
    specialist = load_policy(root / "compass/specialists/diffdrive/policy")
    assert specialist.kind == "compass_specialist" and specialist.embodiment == "diffdrive"
    obs = _nav_obs(5, embodiment="diffdrive")
    mean, log_std = specialist.distribution(obs)
    assert mean.shape == (5, 3) and float(log_std.mean()) < -0.5  # starts near log_std_init

    metrics = run_distill(cfg)["generalist"]
    assert metrics["rounds"] == 2 and metrics["embodiments"] == ["diffdrive"]
    assert metrics["selection"] == "specialist_ratio"
    generalist = load_policy(metrics["policy"])
    assert generalist.kind == "generalist" and generalist.table.names == ["diffdrive"]
    state = json.loads((tmp_path / "runs/compass/distill/generalist/state.json").read_text())
    assert [h["dataset_states"] for h in state["history"]] == [12, 24]
    # The rest of configs/pipelines/compass.yaml: base and generalist side by side, the
    # generalist exported with its embodiment input, and run by the controller.
    from robodistill.control import run_control
    from robodistill.evaluate import run_eval
    from robodistill.export import run_export

    tail = load_config(None, [*overrides, "eval.episodes=1", "eval.video_episodes=0",
                              "eval.latency_decisions=2", "control.episodes=1"])  # fmt: skip
    table = run_eval(tail)
    assert set(table["policies"]) == {"teacher", "generalist"}, table
    exported = run_export(tail)
    assert exported["policy_kind"] == "generalist", exported
    assert run_control(tail)["episodes"] == 1
    # Finished stages are skipped on a second run.
    assert run_teach(cfg)["base"]["steps"] == 4
    assert run_distill(cfg)["generalist"]["rounds"] == 2
    # An interrupted teach stage resumes each part from its checkpoint.
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps(manifest | {"status": "interrupted"}))
    (root / "compass/base/result.json").unlink()
    (root / "compass/specialists/diffdrive/result.json").unlink()
    again = run_teach(cfg)
    assert again["base"]["resumed_from_step"] == 4
    assert again["specialists"]["diffdrive"]["resumed_from_timesteps"] >= 64

    # Fine-tuning adds an embodiment no specialist has seen, replaying diffdrive.
    tuned_cfg = load_config(None, [
        *overrides, "name=compass-finetune", f"distill.teacher={root}",
        f"distill.generalist.finetune_from={metrics['policy']}",
        "distill.generalist.finetune_embodiments=[heavy]",
        "distill.generalist.finetune_residual_timesteps=32", "distill.generalist.rounds=1",
    ])  # fmt: skip
    tuned = run_distill(tuned_cfg)["generalist"]
    assert tuned["finetuned"] == ["heavy"] and sorted(tuned["embodiments"]) == [
        "diffdrive",
        "heavy",
    ]
    policy = load_policy(tuned["policy"])
    assert policy.table.names == ["diffdrive", "heavy"] and policy.table.slots["heavy"] == 1
    out = tmp_path / "runs/compass-finetune/distill/generalist/finetune"
    assert load_policy(out / "heavy/policy").base.kind == "generalist"


def test_specialists_trained_in_parallel_processes_match_one_after_another(tmp_path, monkeypatch,
                                                                         caplog):  # fmt: skip
    from safetensors.numpy import load_file

    caplog.set_level(logging.INFO)  # the workers log at the parent's level

    from robodistill.collect import run_collect
    from robodistill.teach.compass import teacher as teach_compass
    from robodistill.teach.stage import run_teach

    pools = []
    real = teach_compass.train_in_processes
    monkeypatch.setattr(teach_compass, "train_in_processes",
                        lambda *a: pools.append(a[-1]) or real(*a))  # fmt: skip

    def teach(workers: int) -> Path:
        cfg = load_config(None, [
            f"runs_dir={tmp_path / 'runs'}", *TINY_COMPASS, f"name=w{workers}",
            "teach.compass.embodiments=[diffdrive, heavy]", "teach.compass.timesteps={}",
            f"teach.compass.workers={workers}",
        ])  # fmt: skip
        run_collect(cfg)
        metrics = run_teach(cfg)
        assert list(metrics["specialists"]) == ["diffdrive", "heavy"]  # the config's order
        return tmp_path / "runs" / f"w{workers}" / "teach"

    one, two = teach(1), teach(2)
    assert pools == [2]  # only workers=2 went through the process pool
    for name in ("diffdrive", "heavy"):
        # The residual PPO's weights and observation normalizer, the best and the last, and
        # the validations: the same bits either way.
        for kept in ("policy", "policy_last"):
            a, b = (load_file(r / f"compass/specialists/{name}/{kept}/residual/model.safetensors")
                    for r in (one, two))  # fmt: skip
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name
        results = [json.loads((r / f"compass/specialists/{name}/result.json").read_text())
                   for r in (one, two)]  # fmt: skip
        assert [r.pop("wall_s") > 0 for r in results] == [True, True]
        assert results[0] | {"policy": ""} == results[1] | {"policy": ""}
        assert results[1]["timesteps"] >= 64
    # Each worker's validations reach the stage's metrics.jsonl, as whole lines.
    rows = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    stages = {r.get("stage") for r in rows}
    assert {"specialist-diffdrive", "specialist-heavy"} <= stages, stages
    assert "[heavy]" in (two / "stage.log").read_text()  # the workers' log records too


def test_parallel_specialists_name_a_body_the_workers_cannot_see(tmp_path, monkeypatch):
    from robodistill.collect import run_collect
    from robodistill.config import ConfigError
    from robodistill.envs.embodiments import ROBOT_BUILDERS
    from robodistill.teach.stage import run_teach

    # Registered in this process only: a spawned worker imports the built-in table.
    mine = dataclasses.replace(EMBODIMENTS["heavy"], name="heavy-in-this-process-only")
    monkeypatch.setitem(EMBODIMENTS, mine.name, mine)
    monkeypatch.setitem(ROBOT_BUILDERS, mine.name, ROBOT_BUILDERS["heavy"])
    cfg = load_config(None, [
        f"runs_dir={tmp_path / 'runs'}", *TINY_COMPASS,
        f"teach.compass.embodiments=[diffdrive, {mine.name}]", "teach.compass.timesteps={}",
        "teach.compass.workers=2",
    ])  # fmt: skip
    run_collect(cfg)
    with pytest.raises(ConfigError, match="registered in the parent process only.*workers: 1"):
        run_teach(cfg)


def test_per_embodiment_budget_must_name_a_trained_embodiment(tmp_path):
    from robodistill.config import ConfigError

    # A config error: it stops before any stage runs (collect included).
    with pytest.raises(
        ConfigError, match=r"teach.compass.timesteps.*not in embodiments: \['ackermann'\]"
    ):
        load_config(None, [f"runs_dir={tmp_path}", "teach.algo=compass",
                           "teach.compass.embodiments=[diffdrive]",
                           "teach.compass.timesteps={ackermann: 1000}"])  # fmt: skip
