import json

import numpy as np
import pytest
import torch
from torch import nn

from robodistill.policies import RandomPolicy, load_policy
from robodistill.policies.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from robodistill.policies.normalizer import Normalizer

STATS = {"obs": {"min": [-2.0, 0.0, 5.0], "max": [2.0, 1.0, 5.0], "mean": [0.0, 0.5, 5.0],
                 "std": [1.0, 0.25, 0.0], "count": 10}}  # fmt: skip


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))


def test_round_trip_is_exact(tmp_path):
    net, norm = _net(), Normalizer.from_stats(STATS)
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    tensors |= {f"norm.{k}": v for k, v in norm.state_dict().items()}
    save_checkpoint(tmp_path, {"kind": "toy", "normalizer": norm.config()}, tensors)
    config, loaded = load_checkpoint(tmp_path, kind="toy")
    assert config["kind"] == "toy" and config["format"] == 1
    net2 = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    load_state_dict_strict(net2, {k[4:]: v for k, v in loaded.items() if k.startswith("net.")},
                           tmp_path)  # fmt: skip
    norm2 = Normalizer.from_config(config["normalizer"])
    norm2.load_state_dict({k[5:]: v for k, v in loaded.items() if k.startswith("norm.")})
    x = torch.randn(4, 3)
    torch.testing.assert_close(net2(norm2.normalize("obs", x)), net(norm.normalize("obs", x)))
    # The files are plain JSON and a safetensors header: nothing to unpickle.
    json.loads((tmp_path / "config.json").read_text())
    header_len = int.from_bytes((tmp_path / "model.safetensors").read_bytes()[:8], "little")
    assert json.loads((tmp_path / "model.safetensors").read_bytes()[8 : 8 + header_len])


def test_corrupt_and_missing_files_fail_clearly(tmp_path):
    save_checkpoint(tmp_path, {"kind": "toy"}, {"w": torch.ones(100)})
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(
        CheckpointError, match="model.safetensors cannot be read.*corrupt or truncated"
    ):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_kind_format_and_shape_mismatch(tmp_path):
    save_checkpoint(
        tmp_path, {"kind": "toy"}, {"0.weight": torch.ones(8, 4), "0.bias": torch.ones(8)}
    )
    with pytest.raises(CheckpointError, match="holds a 'toy' policy, not a 'random' policy"):
        load_checkpoint(tmp_path, kind="random")
    _, tensors = load_checkpoint(tmp_path)
    net = nn.Sequential(nn.Linear(3, 8))
    with pytest.raises(CheckpointError, match=r"0.weight: checkpoint \(8, 4\) vs model \(8, 3\)"):
        load_state_dict_strict(net, tensors, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"format": 99}))
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path)


def test_load_policy_dispatches_on_kind(tmp_path):
    policy = RandomPolicy(np.array([-1.0, 0.0]), np.array([1.0, 2.0]), seed=3)
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, RandomPolicy)
    np.testing.assert_array_equal(loaded.act(np.zeros((5, 4))), policy.act(np.zeros((5, 4))))
    save_checkpoint(tmp_path / "q", {"kind": "martian"}, {})
    with pytest.raises(CheckpointError, match="kind 'martian'.*known kinds: .*'random'"):
        load_policy(tmp_path / "q")


def test_random_policy_respects_bounds():
    policy = RandomPolicy(np.array([-1.0, 0.0]), np.array([1.0, 2.0]), seed=0)
    actions = policy.act(np.zeros((1000, 3)))
    assert actions.shape == (1000, 2) and actions.dtype == np.float32
    assert (actions[:, 0] >= -1).all() and (actions[:, 1] <= 2).all() and actions[:, 1].min() >= 0
    with pytest.raises(ValueError, match="finite action bounds"):
        RandomPolicy(np.array([-np.inf]), np.array([1.0]))


def test_normalizer_modes():
    x = torch.tensor([[-2.0, 0.0, 5.0], [2.0, 1.0, 5.0]])
    minmax = Normalizer.from_stats(STATS, "minmax")
    torch.testing.assert_close(minmax.normalize("obs", x), torch.tensor([[-1.0, -1.0, 0.0],
                                                                         [1.0, 1.0, 0.0]]))  # fmt: skip
    torch.testing.assert_close(minmax.unnormalize("obs", minmax.normalize("obs", x)), x)
    gauss = Normalizer.from_stats(STATS, "gaussian")
    torch.testing.assert_close(gauss.normalize("obs", x)[:, 1], torch.tensor([-2.0, 2.0]))
    with pytest.raises(KeyError, match="no statistics for 'action'"):
        gauss.normalize("action", x)
    bad = {"obs": STATS["obs"] | {"max": [np.nan, 1.0, 5.0]}}
    with pytest.raises(ValueError, match="NaN or inf"):
        Normalizer.from_stats(bad)


@pytest.mark.parametrize("legacy", ["optimizer.pt", "optimizers.pt"])
def test_a_pickled_optimizer_of_an_older_version_is_a_clear_error(tmp_path, legacy):
    """The COMPASS base (optimizer.pt) and SB3 teachers (optimizers.pt) kept their optimizers
    with torch.save before the one checkpoint format: such a run is refused, never unpickled."""
    from robodistill.data.store import StoreError
    from robodistill.training import checkpoint, sb3

    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    # As the old writers wrote them: the COMPASS base's state.json had no format field.
    old_state = {"step": 3, "best": None, "evals": []} if legacy == "optimizer.pt" else {
        "format": 1, "num_timesteps": 3, "algo": "ppo"}  # fmt: skip
    (ckpt / "state.json").write_text(json.dumps(old_state))
    (ckpt / legacy).write_bytes(b"\x80\x04not a real pickle")
    restore = checkpoint.restore_checkpoint if legacy == "optimizer.pt" else (
        lambda d, trainer: sb3.restore_checkpoint(d, trainer, None, None))  # fmt: skip
    with pytest.raises(StoreError, match=r"--overwrite") as err:
        restore(ckpt, None)
    assert str(ckpt) in str(err.value)
