"""The online RL loop of RL-100 (issue 21): log-probs from the sampling pass, running reward
scaling, a DPPO update on a constructed one-step task, the wall-clock budget, re-validation
of the kept policy on the RL stages' seeds, and which policy online RL starts from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import Recorder

from robodistill.config import load_config
from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from robodistill.teach.rl100 import online as rl100_online
from robodistill.teach.rl100.online import ReturnScaler, dppo_loss, run_online_rl
from robodistill.teach.rl100.teacher import online_start
from robodistill.training.selection import BestPolicyKeeper

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K = 4
NETS = {
    "unet": {"down_dims": (16, 32), "n_groups": 4, "step_embed_dim": 16, "kernel_size": 3},
    "mlp": {"backbone": "mlp", "mlp_width": 32, "mlp_blocks": 2, "step_embed_dim": 16},
}


def _policy(backbone: str, obs_dim: int = 5, **kw) -> DiffusionPolicy:
    torch.manual_seed(0)
    return DiffusionPolicy(DiffusionPolicyConfig(
        obs_dim=obs_dim, action_dim=2, obs_horizon=2, pred_horizon=4, action_horizon=2,
        num_inference_steps=K, **NETS[backbone], **kw))  # fmt: skip


def _cfg(tmp_path, *extra):
    return load_config(None, [
        f"runs_dir={tmp_path / 'runs'}", "env.id=robodistill/PushT-v0", "env.num_envs=2",
        "env.max_episode_steps=8", "teach.eval_episodes=2", "teach.rl100.rl_eval_episodes=2",
        f"teach.diffusion.num_inference_steps={K}", "teach.online.num_envs=3",
        "teach.online.decisions_per_env=2", "teach.online.epochs=1",
        "teach.online.minibatch_size=4", "teach.online.value_hidden=[16]",
        "teach.online.ft_denoising_steps=2", "teach.online.eval_every=1",
        "teach.online.min_std=0.1", *extra,
    ])  # fmt: skip


@pytest.mark.parametrize("backbone", ["unet", "mlp"])
@pytest.mark.parametrize("form", ["executed_mean", "chunk_sum"])
def test_batched_chain_log_probs_equal_the_per_env_recomputation(backbone, form, tmp_path):
    policy = _policy(backbone)
    o = _cfg(tmp_path, f"teach.online.log_prob={form}").teach.online
    obs = torch.randn(5, 2, 5)
    chain = policy.sample_chain(obs, min_std=0.1, generator=torch.Generator().manual_seed(3),
                                per_element=True)  # fmt: skip
    assert chain.log_probs.shape == (5, K, 4, 2)
    batched = rl100_online.reduce_log_probs(policy, chain.log_probs[:, K - 2 :], o)
    # Each env alone, through a second pass of the network, gives the same numbers.
    for i in range(5):
        alone = rl100_online.step_log_probs(policy, obs[i : i + 1], chain.latents[i : i + 1], o,
                                            K, 0.1)  # fmt: skip
        torch.testing.assert_close(alone[0], batched[i], rtol=1e-5, atol=1e-4)
    # The per-element densities sum to the plain chain's per-step log-probs.
    plain = policy.sample_chain(obs, min_std=0.1, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(chain.log_probs.sum(dim=(-2, -1)), plain.log_probs)


def test_return_scaler_divides_by_the_std_of_the_discounted_returns():
    rng = np.random.default_rng(0)
    reward = rng.normal(3.0, 2.0, size=(6, 4))
    disc = np.full((6, 4), 0.9)
    end = np.zeros((6, 4), bool)
    end[2, 1] = True
    scaler = ReturnScaler()
    scaled = scaler.scale(reward, disc, end)
    # The returns it saw, by hand.
    ret, seen = np.zeros(4), []
    for t in range(6):
        ret = ret * 0.9 + reward[t]
        seen.append(ret.copy())
        ret[end[t]] = 0.0
    np.testing.assert_allclose(scaler.var, np.var(seen), rtol=1e-9)
    np.testing.assert_allclose(scaled, reward / np.sqrt(np.var(seen) + 1e-8))
    # A second batch: the variance is that of all returns seen (the running return continues).
    more = rng.normal(0.0, 5.0, size=(3, 4))
    scaler.scale(more, disc[:3], np.zeros((3, 4), bool))
    for t in range(3):
        ret = ret * 0.9 + more[t]
        seen.append(ret.copy())
    np.testing.assert_allclose(scaler.var, np.var(seen), rtol=1e-9)


def test_a_dppo_update_moves_the_mean_chunk_toward_the_rewarded_one(tmp_path):
    """One decision, one reward per chunk: r = -|x_0 - target|^2. PPO on the chain's last
    steps must pull the mean chunk toward the target."""
    policy = _policy("mlp", obs_dim=1)
    cfg = _cfg(tmp_path, "teach.online.clip=0.2", "teach.online.log_prob=chunk_sum")
    o = cfg.teach.online
    obs = torch.zeros(64, 2, 1)
    target = torch.full((4, 2), 0.6)
    gen = torch.Generator().manual_seed(0)
    value = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(policy.net.parameters(), lr=3e-3)

    def mean_distance() -> float:
        with torch.no_grad():
            x0 = policy.sample_chain(obs, min_std=0.1, generator=torch.Generator().manual_seed(9))
        return float((x0.latents[:, -1] - target).pow(2).sum(dim=(-2, -1)).mean())

    before = mean_distance()
    for _ in range(15):
        with torch.no_grad():
            chain = policy.sample_chain(obs, min_std=0.1, generator=gen)
            logp = rl100_online.step_log_probs(policy, obs, chain.latents, o, K, 0.1)
        reward = -(chain.latents[:, -1] - target).pow(2).sum(dim=(-2, -1))
        batch = {"obs": obs, "latents": chain.latents, "logp": logp, "adv": reward,
                 "ret": reward}  # fmt: skip
        for _ in range(4):
            actor_loss, _, _ = dppo_loss(policy, value, batch, o, K, 0.1)
            optimizer.zero_grad()
            actor_loss.backward()
            optimizer.step()
    after = mean_distance()
    assert after < 0.6 * before, (before, after)


def test_online_reports_its_own_iterates_and_stops_on_its_time_budget(tmp_path):
    start = _policy("mlp").save(tmp_path / "start")
    cfg = _cfg(tmp_path, "teach.online.iterations=50", "teach.online.max_minutes=0.0001")
    stage = Recorder(tmp_path / "teach")
    result = run_online_rl(cfg, stage, start, tmp_path / "teach/online")
    assert result["iterations"] == 1 and result["stopped_by_budget"]
    assert [e["step"] for e in result["evals"]] == [0, 1]  # the start, then the last iterate
    assert result["best_iterate"]["iteration"] == 1 and result["last_iterate"]["iteration"] == 1
    assert result["started_from"] == str(start)
    assert result["env_steps"] == 3 * 2 * 2 and result["env_steps_per_s"] > 0
    assert result["validation_episodes"] == 2
    rows = [r for r in stage.rows if "online_env_steps_per_s" in r]
    assert rows and rows[0]["online_reward_std"] > 0


def test_online_dppo_keeps_a_per_episode_training_record(tmp_path):
    start = _policy("mlp").save(tmp_path / "start")
    cfg = _cfg(tmp_path, "teach.online.iterations=1", "teach.online.max_episode_steps=3")
    run_online_rl(cfg, Recorder(tmp_path / "teach"), start, tmp_path / "teach/online")
    record = [json.loads(line) for line in (tmp_path / "teach/episodes.jsonl").open()]
    # 3 envs stepped in turn, 2 decisions of 2 actions, 3-step episodes: each env's episode
    # ends at its second decision's first step, the counter then at 7, 8 and 9.
    assert [r["length"] for r in record] == [3, 3, 3]
    assert [r["env_steps"] for r in record] == [7, 8, 9] and record[0]["success"] is not None


def test_the_kept_policy_is_revalidated_on_the_rl_seeds(tmp_path):
    cfg = _cfg(tmp_path)
    policy = _policy("mlp")
    few = BestPolicyKeeper(cfg, tmp_path, episodes=2)
    first, _ = few.evaluate(policy, 7, tag={"stage": "il"})
    assert first["episodes"] == 2
    assert few.revalidate() is None  # same seeds: nothing to do
    many = BestPolicyKeeper(cfg, tmp_path, episodes=4)
    record = many.revalidate()
    assert record["episodes"] == 4 and record["revalidated_from_episodes"] == 2
    assert record["stage"] == "il" and record["step"] == 7
    assert json.loads((tmp_path / "best.json").read_text()) == record
    assert many.revalidate() is None


def test_online_starts_from_the_offline_policy_when_there_is_one(tmp_path):
    cfg = load_config(None, ["teach.rl100.stages=[il, offline, online]"])
    (tmp_path / "il" / "policy").mkdir(parents=True)
    assert online_start(cfg, tmp_path) == tmp_path / "il" / "policy"  # offline accepted none
    (tmp_path / "offline" / "policy").mkdir(parents=True)
    assert online_start(cfg, tmp_path) == tmp_path / "offline" / "policy"
    without = load_config(None, ["teach.rl100.stages=[il, online]"])
    assert online_start(without, tmp_path) == tmp_path / "il" / "policy"


def test_dppo_step_schedule_and_per_step_clips(tmp_path):
    o = _cfg(tmp_path, "teach.online.ft_denoising_steps=3", "teach.online.clip=0.01",
             "teach.online.clip_base=0.001", "teach.online.gamma_denoising=0.9").teach.online  # fmt: skip
    clips, discounts = rl100_online.step_schedule(o)
    torch.testing.assert_close(clips[[0, -1]], torch.tensor([0.001, 0.01]))
    mid = 0.001 + 0.009 * (np.exp(1.5) - 1) / np.expm1(3.0)  # s = 1/2, rate 3
    assert float(clips[1]) == pytest.approx(mid, rel=1e-5)
    torch.testing.assert_close(discounts, torch.tensor([0.81, 0.9, 1.0]))
    plain = _cfg(tmp_path, "teach.online.ft_denoising_steps=3").teach.online
    clips, discounts = rl100_online.step_schedule(plain)
    assert torch.equal(clips, torch.full((3,), plain.clip)) and torch.equal(discounts,
                                                                            torch.ones(3))  # fmt: skip
    # Each step is clipped at its own bound: a ratio of 1.005 is clipped at step 0 only.
    from robodistill.teach.rl100.offline import clipped_surrogate

    new_lp = torch.log(torch.full((2, 2), 1.005))
    loss, stats = clipped_surrogate(new_lp, torch.zeros(2, 2), torch.ones(2, 2),
                                    torch.tensor([0.001, 0.01]))  # fmt: skip
    assert stats["clip_frac"] == 0.5
    assert float(loss) == pytest.approx(-(1.001 + 1.005), rel=1e-6)
