"""Diffusion policy: network shapes, training signal, the DDIM chain and its log-probs,
receding-horizon acting, checkpoints and input errors. Tiny networks; seconds in total."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from robodistill.policies import load_policy
from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from robodistill.policies.diffusion_nets import ConditionalUnet1D, UnetConfig, count_parameters
from robodistill.policies.normalizer import Normalizer

OBS, ACT = 3, 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**kw) -> DiffusionPolicyConfig:
    base = dict(obs_dim=OBS, action_dim=ACT, obs_horizon=2, pred_horizon=8, action_horizon=4,
                down_dims=(16, 32), n_groups=4, step_embed_dim=16, num_inference_steps=5,
                action_low=[-2.0, -2.0], action_high=[2.0, 2.0])  # fmt: skip
    return DiffusionPolicyConfig(**{**base, **kw})


def _stats() -> dict:
    return {
        "obs": {"min": [-1.0, 0.0, 2.0], "max": [1.0, 4.0, 3.0], "mean": [0] * 3, "std": [1] * 3},
        "action": {"min": [-2.0, -1.0], "max": [2.0, 1.0], "mean": [0, 0], "std": [1, 1]},
    }


def _policy(**kw) -> DiffusionPolicy:
    torch.manual_seed(0)
    return DiffusionPolicy(_config(**kw), Normalizer.from_stats(_stats()))


def _obs_hist(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 2, OBS, generator=torch.Generator().manual_seed(seed))


# -- network -----------------------------------------------------------------------------------


def test_unet_shapes_and_default_size():
    net = ConditionalUnet1D(UnetConfig(action_dim=ACT, global_cond_dim=10, down_dims=(16, 32, 64),
                                       n_groups=4, step_embed_dim=16))  # fmt: skip
    x = torch.randn(5, 16, ACT)
    assert net(x, torch.arange(5), torch.randn(5, 10)).shape == (5, 16, ACT)
    assert net(x, 7, torch.randn(5, 10)).shape == (5, 16, ACT)  # scalar timestep broadcasts
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.randn(2, 10, ACT), 0, torch.randn(2, 10))
    with pytest.raises(ValueError, match="global_cond must be"):
        net(x, 0, torch.randn(5, 9))
    # The default network is sized for a 2-core CPU (~1.1 M parameters for PushT's dims).
    default = ConditionalUnet1D(UnetConfig(action_dim=2, global_cond_dim=2 * 5))
    assert 500_000 <= count_parameters(default) <= 5_000_000


def test_policy_shapes():
    policy = _policy()
    obs = _obs_hist(3)
    assert policy.predict_action_chunk(obs).shape == (3, 8, ACT)
    chain = policy.sample_chain(obs)
    assert chain.latents.shape == (3, 6, 8, ACT) and chain.log_probs.shape == (3, 5)
    assert chain.actions.shape == (3, 8, ACT) and chain.timesteps.tolist() == [99, 79, 59, 39, 19]
    assert policy.sample_chain(obs, num_inference_steps=2).log_probs.shape == (3, 2)
    assert policy.act(np.zeros((4, OBS), np.float32)).shape == (4, ACT)


def test_loss_decreases_on_a_tiny_dataset():
    policy = _policy()
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, size=(16, 2, OBS)).astype(np.float32)
    # Each window's actions are a smooth function of its observation: learnable.
    ramp = np.linspace(0, 1, 8, dtype=np.float32)[None, :, None]
    action = np.tanh(obs[:, -1:, :ACT]) * (1 - ramp) + 0.5 * ramp
    batch = {"obs": obs, "action": action}

    def fixed_loss() -> float:  # same noise and timesteps every time
        with torch.no_grad():
            return float(policy.compute_loss(batch, torch.Generator().manual_seed(123))[0])

    before = fixed_loss()
    optimizer = torch.optim.AdamW(policy.net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss, logs = policy.compute_loss(batch, gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert logs["loss"] == pytest.approx(float(loss.detach()))
    after = fixed_loss()
    assert after < 0.6 * before, (before, after)


# -- the DDIM chain ----------------------------------------------------------------------------


def test_deterministic_sampling_equals_diffusers_ddim_step():
    policy = _policy(num_inference_steps=4)
    obs, noise = _obs_hist(3), torch.randn(3, 8, ACT)
    ours = policy.predict_action_chunk(obs, noise=noise, use_ema=False)
    ddim = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                         set_alpha_to_one=True, timestep_spacing="trailing")  # fmt: skip
    ddim.set_timesteps(4)
    x, cond = noise.clone(), policy.condition(obs)
    with torch.no_grad():
        for t in ddim.timesteps:
            x = ddim.step(policy.net(x, t, cond), t, x).prev_sample
    expected = policy.normalizer.unnormalize("action", x.clamp(-1, 1))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    # The same noise gives the same chunk; another generator draw gives another one.
    torch.testing.assert_close(policy.predict_action_chunk(obs, noise=noise, use_ema=False), ours)


def test_step_log_probs_equal_a_direct_gaussian_computation():
    eta, min_std = 1.0, 0.05
    policy = _policy()
    obs = _obs_hist(4)
    chain = policy.sample_chain(obs, eta=eta, min_std=min_std,
                                generator=torch.Generator().manual_seed(1))  # fmt: skip
    # Independent reference: diffusers' DDIM step with zero noise gives the step's mean; its
    # std is eta * sqrt(DDIM variance), floored at min_std.
    ddim = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                         set_alpha_to_one=True, timestep_spacing="trailing")  # fmt: skip
    ddim.set_timesteps(5)
    cond = policy.condition(obs)
    floored = 0
    for k, t in enumerate(ddim.timesteps):
        x_t, x_prev = chain.latents[:, k], chain.latents[:, k + 1]
        with torch.no_grad():
            eps = policy.net(x_t, t, cond)
        mean = ddim.step(eps, t, x_t, eta=eta, variance_noise=torch.zeros_like(x_t)).prev_sample
        sigma = eta * float(ddim._get_variance(int(t), int(t) - 20)) ** 0.5
        floored += sigma < min_std
        std = max(sigma, min_std)
        expected = torch.distributions.Normal(mean, std).log_prob(x_prev).sum(dim=(1, 2))
        torch.testing.assert_close(chain.log_probs[:, k], expected, rtol=1e-5, atol=1e-3)
    assert floored >= 1  # the last step (sigma = 0) exercised the minimum std
    assert torch.isfinite(chain.log_probs).all()
    # The last latent is the action, unnormalized.
    torch.testing.assert_close(
        chain.actions, policy.normalizer.unnormalize("action", chain.latents[:, -1].clamp(-1, 1))
    )


def test_chain_log_prob_recomputes_the_samplers_log_probs_differentiably():
    policy = _policy()
    obs = _obs_hist(3)
    chain = policy.sample_chain(obs, generator=torch.Generator().manual_seed(2))
    recomputed = policy.chain_log_prob(obs, chain.latents)
    # Batched vs step-by-step network calls differ only by float32 rounding.
    torch.testing.assert_close(recomputed, chain.log_probs, rtol=1e-5, atol=1e-3)
    last_two = policy.chain_log_prob(obs, chain.latents, steps=[3, 4])
    torch.testing.assert_close(last_two, chain.log_probs[:, 3:], rtol=1e-5, atol=1e-3)
    elements = policy.chain_log_prob(obs, chain.latents, steps=[3, 4], per_element=True)
    c = policy.config
    assert elements.shape == (3, 2, c.pred_horizon, c.action_dim)
    torch.testing.assert_close(elements.sum(dim=(-2, -1)), last_two)
    recomputed.sum().backward()
    grads = [p.grad for p in policy.net.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # Other weights give other log-probs (what a PPO ratio measures).
    with torch.no_grad():
        for p in policy.net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    assert not torch.allclose(policy.chain_log_prob(obs, chain.latents), chain.log_probs)
    with pytest.raises(ValueError, match=r"latents must be \(B, K\+1, H, A\)"):
        policy.chain_log_prob(obs, chain.latents[:, :-1])
    with pytest.raises(ValueError, match="steps must be"):
        policy.chain_log_prob(obs, chain.latents, steps=[5])


# -- acting ------------------------------------------------------------------------------------


class _Recorder:
    """Wraps predict_action_chunk, recording each call's observation history and chunk."""

    def __init__(self, policy: DiffusionPolicy):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.original = policy.predict_action_chunk
        policy.predict_action_chunk = self

    def __call__(self, obs_hist, *args, **kwargs):
        chunk = self.original(obs_hist, *args, **kwargs)
        self.calls.append((torch.as_tensor(obs_hist).clone(), chunk.clone()))
        return chunk


def test_receding_horizon_queue_and_per_row_reset():
    policy = _policy()  # To = 2, H = 8, Ta = 4: executes chunk[1:5]
    rec = _Recorder(policy)
    obs = [np.full((2, OBS), i, np.float32) + np.array([[0], [10]], np.float32) for i in range(9)]
    actions = [policy.act(obs[0])]
    hist0, chunk0 = rec.calls[0]
    # A fresh episode's history is its first observation repeated.
    torch.testing.assert_close(hist0, torch.as_tensor(obs[0])[:, None].expand(-1, 2, -1))
    actions += [policy.act(o) for o in obs[1:4]]
    assert len(rec.calls) == 1  # Ta = 4 actions from one plan
    for i, a in enumerate(actions):
        np.testing.assert_allclose(a, chunk0[:, 1 + i].clamp(-2, 2).numpy(), atol=1e-6)
    policy.act(obs[4])  # queue empty: both rows plan again with the last two observations
    assert len(rec.calls) == 2 and rec.calls[1][0].shape[0] == 2
    torch.testing.assert_close(rec.calls[1][0], torch.as_tensor(np.stack(obs[3:5], axis=1)))

    policy.reset(env_ids=[1])  # row 1 starts a new episode; row 0 keeps its plan
    policy.act(obs[5])
    hist, _ = rec.calls[2]
    assert hist.shape[0] == 1  # only row 1 planned
    torch.testing.assert_close(hist[0], torch.as_tensor(obs[5][1]).expand(2, -1))
    with pytest.raises(ValueError, match="call reset"):
        policy.act(np.zeros((3, OBS), np.float32))
    policy.reset()
    assert policy.act(np.zeros((3, OBS), np.float32)).shape == (3, ACT)


def test_temporal_ensembling_averages_overlapping_plans():
    policy = _policy(temporal_ensemble=0.0)  # k = 0: a plain average
    rec = _Recorder(policy)
    obs = np.random.default_rng(0).normal(size=(6, 2, OBS)).astype(np.float32)
    actions = [policy.act(o) for o in obs]
    assert len(rec.calls) == 6  # one plan per step
    t = 5  # plans from steps 2..5 cover step 5 at chunk index 1 + (5 - s)
    expected = torch.stack([rec.calls[s][1][:, 1 + t - s] for s in range(t - 3, t + 1)]).mean(0)
    np.testing.assert_allclose(actions[t], expected.clamp(-2, 2).numpy(), atol=1e-5)


# -- checkpoints -------------------------------------------------------------------------------


def test_save_load_round_trip_with_ema_and_normalizers(tmp_path):
    policy = _policy()
    ema = policy.make_ema(power=0.75)
    optimizer = torch.optim.AdamW(policy.net.parameters(), lr=1e-2)
    batch = {"obs": np.ones((4, 2, OBS), np.float32), "action": np.zeros((4, 8, ACT), np.float32)}
    for _ in range(3):
        loss, _ = policy.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.step(policy.net.parameters())
    policy.load_ema(ema)
    assert not torch.equal(policy.net.final[1].weight, policy.ema_net.final[1].weight)

    loaded = load_policy(policy.save(tmp_path / "p"))
    assert isinstance(loaded, DiffusionPolicy) and loaded.config == policy.config
    for name in ("net", "ema_net", "normalizer"):
        a, b = getattr(policy, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    obs, noise = _obs_hist(2), torch.randn(2, 8, ACT)
    for use_ema in (True, False):
        assert torch.equal(policy.predict_action_chunk(obs, noise, use_ema=use_ema),
                           loaded.predict_action_chunk(obs, noise, use_ema=use_ema))  # fmt: skip
    # act is reproducible: reset() reseeds the sampling generator.
    steps = np.random.default_rng(1).normal(size=(6, 2, OBS)).astype(np.float32)
    policy.reset(), loaded.reset()
    for o in steps:
        np.testing.assert_array_equal(policy.act(o), loaded.act(o))
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["kind"] == "diffusion" and config["policy"]["pred_horizon"] == 8
    assert config["normalizer"]["mode"] == "minmax"


# -- errors ------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    policy = _policy()
    with pytest.raises(ValueError, match=r"obs must have shape \(B, 3\), got \(2, 4\)"):
        policy.act(np.zeros((2, 4), np.float32))
    bad = np.zeros((2, OBS), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="obs contains NaN"):
        policy.act(bad)
    with pytest.raises(
        ValueError, match=r"obs_hist must have shape \(B, obs_horizon=2, obs_dim=3\)"
    ):
        policy.predict_action_chunk(torch.zeros(2, 3, OBS))
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 8, 2\)"):
        policy.predict_action_chunk(torch.zeros(2, 2, OBS), noise=torch.zeros(2, 4, ACT))
    with pytest.raises(ValueError, match=r"batch\['action'\] must be"):
        policy.compute_loss({"obs": np.zeros((2, 2, OBS)), "action": np.zeros((2, 5, ACT))})
    with pytest.raises(ValueError, match="action_horizon must be in"):
        _config(action_horizon=8)
    with pytest.raises(ValueError, match="multiple of 2"):
        _config(pred_horizon=7)
