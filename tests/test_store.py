from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from robodistill.data.store import Episode, StoreError, TrajectoryStore


def make_episode(rng: np.random.Generator, t: int, i: int = 0, obs_dim: int = 4) -> Episode:
    return Episode(
        data={
            "obs": rng.normal(size=(t, obs_dim)).astype(np.float32),
            "obs_image": rng.integers(0, 255, size=(t, 3, 2, 2), dtype=np.uint8),
            "action": rng.normal(size=(t, 2)).astype(np.float32),
            "reward": rng.normal(size=t),
            "terminated": np.arange(t) == t - 1,
            "truncated": np.zeros(t, dtype=bool),
        },
        final={
            "obs": rng.normal(size=obs_dim).astype(np.float32),
            "obs_image": rng.integers(0, 255, size=(3, 2, 2), dtype=np.uint8),
        },
        seed=100 + i,
        env_id="robodistill/PushT-v0",
        embodiment=f"arm{i % 2}",
        source_policy="teacher" if i % 3 else "",
        success=[None, True, False][i % 3],
    )


def assert_same_episode(a: Episode, b: Episode) -> None:
    assert sorted(a.data) == sorted(b.data)
    for k in a.data:
        np.testing.assert_array_equal(a.data[k], b.data[k])
        assert a.data[k].dtype == b.data[k].dtype, k
    assert sorted(a.final) == sorted(b.final)
    for k in a.final:
        np.testing.assert_array_equal(a.final[k], b.final[k])
    assert (a.seed, a.env_id, a.embodiment, a.source_policy, a.success) == (
        b.seed,
        b.env_id,
        b.embodiment,
        b.source_policy,
        b.success,
    )
    assert a.return_ == pytest.approx(b.return_)


def snapshot(path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


@pytest.fixture
def episodes() -> list[Episode]:
    rng = np.random.default_rng(0)
    lengths = [1, 7, 3, 1, 20, 5, 2, 11, 1, 4, 9, 6, 3]
    return [make_episode(rng, t, i) for i, t in enumerate(lengths)]


@pytest.mark.parametrize("flush_every", [1, 4, 64])
def test_round_trip(tmp_path, episodes, flush_every):
    path = tmp_path / "s.zarr"
    with TrajectoryStore.create(path, attrs={"task": "push"}, flush_every=flush_every) as store:
        assert store.add_episodes(episodes[:5]) == list(range(5))
        for ep in episodes[5:]:
            store.add_episode(ep)
        assert store.n_episodes == len(episodes)
    store = TrajectoryStore.open(path)
    assert store.n_episodes == len(episodes)
    assert store.n_steps == sum(ep.length for ep in episodes)
    assert store.keys == ("action", "obs", "obs_image", "reward", "terminated", "truncated")
    assert store.attrs == {"task": "push"}
    for i, ep in enumerate(episodes):
        assert_same_episode(store.episode(i), ep)
    assert_same_episode(store.episode(-1), episodes[-1])
    np.testing.assert_array_equal(store.episode_ends, np.cumsum([ep.length for ep in episodes]))
    assert store.episode_ends.dtype == np.int64
    loaded = store.load()
    for k in store.keys:
        np.testing.assert_array_equal(loaded[k], np.concatenate([ep.data[k] for ep in episodes]))
    np.testing.assert_array_equal(loaded["episode_ends"], store.episode_ends)
    assert sorted(store.load(["obs"])) == ["episode_ends", "obs"]
    meta = store.episode_meta()
    np.testing.assert_array_equal(meta["seed"], [ep.seed for ep in episodes])
    np.testing.assert_array_equal(meta["success"], [[-1, 1, 0][i % 3] for i in range(13)])
    np.testing.assert_allclose(meta["return"], [ep.return_ for ep in episodes])
    np.testing.assert_array_equal(meta["length"], [ep.length for ep in episodes])
    assert meta["embodiment"].tolist() == [ep.embodiment for ep in episodes]
    assert meta["source_policy"].tolist() == [ep.source_policy for ep in episodes]
    # On disk: the diffusion_policy layout, readable with plain zarr.
    root = zarr.open_group(path, mode="r")
    np.testing.assert_array_equal(root["meta/episode_ends"][:], store.episode_ends)
    assert root["meta/final_obs_image"].shape == (13, 3, 2, 2)
    assert not list((path / "pending").glob("*.npz"))


def test_pending_journal_visible_in_read_mode(tmp_path, episodes):
    path = tmp_path / "s.zarr"
    store = TrajectoryStore.create(path, flush_every=5)
    store.add_episodes(episodes[:7])  # 5 merged, 2 only in the journal
    assert len(list((path / "pending").glob("*.npz"))) == 2
    before = snapshot(path)
    reader = TrajectoryStore.open(path, mode="r")
    assert zarr.open_group(path, mode="r").attrs["committed"]["episodes"] == 5
    assert reader.n_episodes == 7
    assert_same_episode(reader.episode(6), episodes[6])
    np.testing.assert_array_equal(
        reader.load(["action"])["action"],
        np.concatenate([ep.data["action"] for ep in episodes[:7]]),
    )
    reader.compute_stats()
    assert snapshot(path) == before  # mode "r" never writes
    with pytest.raises(StoreError, match="read-only"):
        reader.add_episode(episodes[7])
    with pytest.raises(StoreError, match="already open for appending"):
        TrajectoryStore.open(path, mode="a")
    store.close()
    assert TrajectoryStore.open(path).n_episodes == 7
    with TrajectoryStore.open(path, mode="a") as store:  # append after reopen
        store.add_episodes(episodes[7:])
    assert TrajectoryStore.open(path).n_episodes == len(episodes)


def test_stats_and_attrs(tmp_path, episodes):
    path = tmp_path / "s.zarr"
    with TrajectoryStore.create(path, flush_every=4) as store:
        store.add_episodes(episodes)
        store.add_episodes([])
        obs = np.concatenate([ep.data["obs"] for ep in episodes]).astype(np.float64)
        for stats in (store.compute_stats(["obs", "reward"]), store.save_stats()):
            np.testing.assert_allclose(stats["obs"]["mean"], obs.mean(0), rtol=1e-6)
            np.testing.assert_allclose(stats["obs"]["std"], obs.std(0), rtol=1e-6)
            np.testing.assert_allclose(stats["obs"]["min"], obs.min(0))
            assert stats["obs"]["count"] == len(obs)
            assert len(stats["reward"]["max"]) == 1
        store.set_attrs(note="hi")
        with pytest.raises(StoreError, match="JSON"):
            store.set_attrs(bad=object())
        with pytest.raises(StoreError, match="reserved"):
            store.set_attrs(committed=1)
    reopened = TrajectoryStore.open(path)
    assert reopened.attrs["note"] == "hi"
    assert reopened.attrs["normalizer"]["obs"]["count"] == len(obs)
    json.dumps(reopened.attrs)
    with pytest.raises(StoreError, match="read-only"):
        reopened.set_attrs(x=1)


def test_episode_validation():
    rng = np.random.default_rng(1)
    ep = make_episode(rng, 5)
    data = dict(ep.data)
    with pytest.raises(ValueError, match=r"'action'\] has 4 steps but 'obs' has 5"):
        Episode({**data, "action": data["action"][:4]}, ep.final, 0, "e")
    with pytest.raises(ValueError, match=r"missing \['reward'\]"):
        Episode({k: v for k, v in data.items() if k != "reward"}, ep.final, 0, "e")
    bad = data["action"].copy()
    bad[3, 1] = np.nan
    with pytest.raises(
        ValueError, match=r"data\['action'\] has non-finite value nan at index \(3, 1\)"
    ):
        Episode({**data, "action": bad}, ep.final, 0, "e")
    with pytest.raises(ValueError, match=r"terminated'\] has dtype float64"):
        Episode({**data, "terminated": np.zeros(5)}, ep.final, 0, "e")
    with pytest.raises(ValueError, match=r"final\['obs'\] has shape \(3,\)"):
        Episode(data, {**ep.final, "obs": np.zeros(3, np.float32)}, 0, "e")
    with pytest.raises(ValueError, match=r"\['obs/x'\] are not usable"):
        Episode({**data, "obs/x": data["obs"]}, ep.final, 0, "e")
    with pytest.raises(ValueError, match="obs keys"):
        Episode(data, {"obs": ep.final["obs"]}, 0, "e")


def test_schema_mismatch(tmp_path):
    rng = np.random.default_rng(2)
    with TrajectoryStore.create(tmp_path / "s.zarr") as store:
        store.add_episode(make_episode(rng, 3))
        with pytest.raises(StoreError, match=r"'obs'\] has steps of shape \(5,\).*expects \(4,\)"):
            store.add_episode(make_episode(rng, 3, obs_dim=5))
        ep = make_episode(rng, 3)
        ep.data["action"] = ep.data["action"].astype(np.float64)
        with pytest.raises(StoreError, match=r"'action'\].*float64 but the store expects.*float32"):
            store.add_episodes([make_episode(rng, 2), ep])
        assert store.n_episodes == 1  # the batch was rejected as a whole
        ep = make_episode(rng, 3)
        ep.data["extra"] = np.zeros(3)
        with pytest.raises(StoreError, match=r"unexpected \['extra'\]"):
            store.add_episode(ep)


def test_create_and_open_errors(tmp_path, episodes):
    path = tmp_path / "s.zarr"
    TrajectoryStore.create(path).close()
    with pytest.raises(StoreError, match="already exists.*mode='a'.*overwrite=True"):
        TrajectoryStore.create(path)
    TrajectoryStore.create(path, overwrite=True).close()
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "precious.txt").write_text("x")
    with pytest.raises(StoreError, match="refusing"):
        TrajectoryStore.create(tmp_path / "folder", overwrite=True)
    with pytest.raises(StoreError, match="does not exist"):
        TrajectoryStore.open(tmp_path / "missing.zarr")
    with pytest.raises(StoreError, match="not a zarr group"):
        TrajectoryStore.open(tmp_path / "folder")
    with pytest.raises(StoreError, match="closed"):
        store = TrajectoryStore.open(path, mode="a")
        store.close()
        store.add_episode(episodes[0])


def _filled(tmp_path, episodes):
    path = tmp_path / "s.zarr"
    with TrajectoryStore.create(path) as store:
        store.add_episodes(episodes)
    return path, zarr.open_group(path, mode="r+")


def test_truncated_data_array(tmp_path, episodes):
    path, root = _filled(tmp_path, episodes)
    n = int(root["meta/episode_ends"][-1])
    root["data/obs"].resize((n - 10, 4))
    with pytest.raises(StoreError, match=rf"data/obs has {n - 10} steps .* commits {n}.*truncated"):
        TrajectoryStore.open(path)


def test_truncated_meta_array(tmp_path, episodes):
    path, root = _filled(tmp_path, episodes)
    root["meta/episode_seed"].resize((3,))
    with pytest.raises(StoreError, match="meta/episode_seed has 3 entries .* 13 episodes"):
        TrajectoryStore.open(path, mode="a")


def test_non_increasing_ends(tmp_path, episodes):
    path, root = _filled(tmp_path, episodes)
    ends = root["meta/episode_ends"][:]
    ends[4] = ends[3]
    root["meta/episode_ends"][:] = ends
    with pytest.raises(StoreError, match="not strictly increasing at index 4"):
        TrajectoryStore.open(path)


def test_missing_episode_ends(tmp_path, episodes):
    path, root = _filled(tmp_path, episodes)
    del root["meta"]["episode_ends"]
    with pytest.raises(StoreError, match="no meta/episode_ends"):
        TrajectoryStore.open(path)


def _plain_store(path, ends, lengths):
    # What diffusion_policy's ReplayBuffer writes: zarr v2, no meta beyond episode_ends.
    root = zarr.open_group(path, mode="w", zarr_format=2)
    root.create_group("meta").create_array("episode_ends", data=np.asarray(ends, dtype=np.int64))
    data = root.create_group("data")
    for key, n in lengths.items():
        data.create_array(key, data=np.arange(n * 2, dtype=np.float32).reshape(n, 2))
    return path


def test_plain_diffusion_policy_store(tmp_path):
    path = _plain_store(tmp_path / "dp.zarr", [3, 5, 9], {"state": 9, "action": 9})
    store = TrajectoryStore.open(path)
    assert (store.n_episodes, store.n_steps, store.keys) == (3, 9, ("action", "state"))
    np.testing.assert_array_equal(store.load()["state"][:, 0], np.arange(0, 18, 2))
    np.testing.assert_array_equal(store.episode(1).data["action"][:, 1], [7, 9])
    meta = store.episode_meta()
    np.testing.assert_array_equal(meta["seed"], [-1, -1, -1])
    assert meta["env_id"].tolist() == ["", "", ""]
    with pytest.raises(StoreError, match="plain diffusion_policy-style store.*read-only"):
        TrajectoryStore.open(path, mode="a")
    bad = _plain_store(tmp_path / "bad.zarr", [3, 5, 9], {"state": 9, "action": 8})
    with pytest.raises(StoreError, match="data/action has 8 steps but the store commits 9"):
        TrajectoryStore.open(bad)
    longer = _plain_store(tmp_path / "long.zarr", [3, 5, 9], {"state": 10, "action": 9})
    with pytest.raises(StoreError, match="data/state has 10 steps.*one row per step"):
        TrajectoryStore.open(longer)
