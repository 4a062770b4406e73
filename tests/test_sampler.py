from __future__ import annotations

import numpy as np
import pytest

from robodistill.data.sampler import SequenceSampler
from robodistill.data.store import Episode, TrajectoryStore

LENGTHS = [5, 1, 12, 3]


@pytest.fixture
def buffer():
    ends = np.cumsum(LENGTHS)
    n = int(ends[-1])
    # Value at step s encodes (episode, step): easy to check windows stay in one episode.
    episode = np.repeat(np.arange(len(LENGTHS)), LENGTHS)
    obs = np.stack([episode * 1000 + np.arange(n), -np.arange(n)], axis=1).astype(np.float32)
    action = (episode * 1000 + np.arange(n)).astype(np.float32)[:, None]
    return {"obs": obs, "action": action, "episode_ends": ends}, ends


def test_len_matches_formula(buffer):
    data, ends = buffer
    s = SequenceSampler(data, ends, obs_horizon=2, pred_horizon=4)
    assert len(s) == sum(LENGTHS)  # defaults: one window per step
    s = SequenceSampler(data, ends, obs_horizon=2, pred_horizon=4, pad_before=0, pad_after=0)
    assert len(s) == sum(max(0, t - 4 + 1) for t in LENGTHS)
    s = SequenceSampler(data, ends, obs_horizon=1, pred_horizon=6, pad_before=2, pad_after=1)
    assert len(s) == sum(max(0, t - 6 + 2 + 1 + 1) for t in LENGTHS)


def test_windows_never_cross_episodes_and_pad_with_edges(buffer):
    data, ends = buffer
    s = SequenceSampler(data, ends, obs_horizon=3, pred_horizon=8)
    starts = np.concatenate([[0], ends[:-1]])
    for i in range(len(s)):
        item = s[i]
        ep = int(item["action"][0, 0] // 1000)
        assert (item["action"][:, 0] // 1000 == ep).all()
        assert (item["obs"][:, 0] // 1000 == ep).all()
        local = item["action"][:, 0] - ep * 1000 - starts[ep]
        t = LENGTHS[ep]
        pad = item["action_is_pad"]
        real = np.flatnonzero(~pad)
        lo, hi = real[0], real[-1]
        assert not pad[lo : hi + 1].any()  # padding only at the two ends
        if lo > 0:
            np.testing.assert_array_equal(local[: lo + 1], 0)  # leading pad repeats the first
        if hi < len(pad) - 1:
            np.testing.assert_array_equal(local[hi:], t - 1)  # trailing pad repeats the last
        np.testing.assert_array_equal(np.diff(local[lo : hi + 1]), 1)
        np.testing.assert_array_equal(item["obs_is_pad"], pad[:3])
        np.testing.assert_array_equal(item["obs"], data["obs"][starts[ep] + local[:3].astype(int)])
    first = s[0]  # window starting 2 steps before episode 0
    np.testing.assert_array_equal(first["obs_is_pad"], [True, True, False])
    np.testing.assert_array_equal(first["obs"][:, 0], [0, 0, 0])
    np.testing.assert_array_equal(first["action"][:, 0], [0, 0, 0, 1, 2, 3, 4, 4])
    np.testing.assert_array_equal(first["action_is_pad"], [1, 1, 0, 0, 0, 0, 0, 1])
    last = s[-1]  # current step is the last step of the last episode
    np.testing.assert_array_equal(last["obs_is_pad"], [False, False, False])
    assert last["action_is_pad"][3:].all() and not last["action_is_pad"][:3].any()
    np.testing.assert_array_equal(last["obs"][:, 0], [3018, 3019, 3020])
    np.testing.assert_array_equal(last["action"][:, 0], [3018, 3019] + [3020] * 6)
    single = [s[i] for i in range(len(s)) if s[i]["action"][0, 0] // 1000 == 1]
    assert len(single) == 1  # the length-1 episode gives one all-edge window
    assert single[0]["action_is_pad"].sum() == 7


def test_sample_matches_getitem(buffer):
    data, ends = buffer
    s = SequenceSampler(data, ends, obs_horizon=2, pred_horizon=5)
    batch = s.sample(64, np.random.default_rng(0))
    idx = np.random.default_rng(0).integers(0, len(s), size=64)
    assert batch["obs"].shape == (64, 2, 2) and batch["action"].shape == (64, 5, 1)
    assert batch["obs_is_pad"].shape == (64, 2) and batch["action_is_pad"].dtype == bool
    for b, i in enumerate(idx):
        for k, v in s[int(i)].items():
            np.testing.assert_array_equal(batch[k][b], v)


def test_episode_mask(buffer):
    data, ends = buffer
    s = SequenceSampler(data, ends, pred_horizon=4, episode_mask=[False, True, True, False])
    assert len(s) == LENGTHS[1] + LENGTHS[2]
    assert set(s.episode_index.tolist()) == {1, 2}
    eps = s.sample(200, 0)["action"][:, :, 0] // 1000
    assert set(np.unique(eps).tolist()) == {1, 2}
    with pytest.raises(ValueError, match="no windows"):
        SequenceSampler(data, ends, episode_mask=[False] * 4)
    with pytest.raises(ValueError, match="episode_mask has shape"):
        SequenceSampler(data, ends, episode_mask=[True, False])


def test_errors(buffer):
    data, ends = buffer
    with pytest.raises(ValueError, match="obs_horizon <= pred_horizon"):
        SequenceSampler(data, ends, obs_horizon=5, pred_horizon=4)
    with pytest.raises(ValueError, match=r"data has no \['state'\]"):
        SequenceSampler(data, ends, obs_keys=("state",))
    with pytest.raises(ValueError, match="no windows"):  # no padding, all episodes too short
        SequenceSampler(data, ends, pred_horizon=16, pad_before=0, pad_after=0)
    with pytest.raises(IndexError):
        SequenceSampler(data, ends)[10**6]


def test_from_store_load(tmp_path):
    with TrajectoryStore.create(tmp_path / "s.zarr", flush_every=3) as store:
        for i, t in enumerate(LENGTHS):
            store.add_episode(
                Episode(
                    data={
                        "obs": np.full((t, 2), i, np.float32),
                        "action": np.full((t, 1), i, np.float32),
                        "reward": np.zeros(t),
                        "terminated": np.zeros(t, bool),
                        "truncated": np.zeros(t, bool),
                    },
                    final={"obs": np.zeros(2, np.float32)},
                    seed=i,
                    env_id="e",
                )
            )
        data = store.load()  # last episode still in the journal
    s = SequenceSampler(data, data["episode_ends"], pred_horizon=4)
    batch = s.sample(32, 0)
    assert len(s) == sum(LENGTHS)
    idx = np.random.default_rng(0).integers(0, len(s), size=32)
    expected = np.broadcast_to(s.episode_index[idx, None], (32, 2))
    np.testing.assert_array_equal(batch["obs"][:, :, 0], expected)
