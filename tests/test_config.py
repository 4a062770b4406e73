from pathlib import Path

import pytest

from robodistill.config import ConfigError, RunConfig, describe, load_config, parse_override

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_equals_builtin_defaults():
    assert load_config(ROOT / "configs/pipelines/default.yaml") == RunConfig()


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(None, ["collect.episodes=7", "env.kwargs={a: 1}", "pipeline.stages=[eval]"])
    assert cfg.collect.episodes == 7
    assert cfg.env.kwargs == {"a": 1}
    assert cfg.pipeline.stages == ["eval"]
    assert parse_override("env.max_episode_steps=null") == (["env", "max_episode_steps"], None)


def test_unknown_key_names_key_allowed_keys_and_suggestion():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["collect.episdes=3"])
    msg = str(e.value)
    assert "collect.episdes: unknown key" in msg
    assert "did you mean 'episodes'" in msg
    assert "episodes, flush_every, policy" in msg


def test_unknown_top_level_key_from_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sead: 3\n")
    with pytest.raises(ConfigError, match=r"sead: unknown key; did you mean 'seed'") as e:
        load_config(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("env.num_envs=0", ["env.num_envs", "greater than or equal to 1", "got 0"]),
        ("env.num_envs=four", ["env.num_envs", "valid integer", "'four'"]),
        ("collect.episodes=-5", ["collect.episodes", "greater than or equal to 1"]),
        ("pipeline.stages=[colect]", ["pipeline.stages.0", "'collect'", "'control'"]),
        ("name=bad/name", ["name", "pattern"]),
    ],
)
def test_bad_values_name_key_and_allowed(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for word in words:
        assert word in str(e.value)


def test_errors_before_any_work_and_all_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["env.num_envs=0", "eval.episodes=0"])
    assert "env.num_envs" in str(e.value) and "eval.episodes" in str(e.value)


@pytest.mark.parametrize(
    ("override", "match"),
    [("episodes", "must look like key.subkey=value"), ("a..b=1", "empty part"),
     ("env.id.x=1", "env.id: Input should be a valid string"),
     ("env.kwargs=[1,", "not valid YAML")],
)  # fmt: skip
def test_malformed_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_override_below_a_value_is_refused():
    with pytest.raises(ConfigError, match="env.id is a value, not a section"):
        load_config(None, ["env.id=Hopper-v5", "env.id.x=1"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_every_key_is_documented():
    lines = describe()
    assert any(line.startswith("collect.episodes = 100") for line in lines)
    undocumented = [line for line in lines if line.endswith("#  ") or line.endswith("# ")]
    assert not undocumented, undocumented


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    load_config(path)


def test_compass_pipeline_trains_what_the_split_configs_train():
    # configs/pipelines/compass.yaml says its stages are those of the two split configs
    # (same run name, so either resumes the other's run); keep them from drifting apart.
    pipeline = load_config(ROOT / "configs/pipelines/compass.yaml", [])
    teach = load_config(ROOT / "configs/teachers/compass_nav.yaml", [])
    student = load_config(ROOT / "configs/students/generalist_nav.yaml", [])
    assert pipeline.name == teach.name == student.name
    for section, split in (("env", teach), ("collect", teach), ("teach", teach),
                           ("distill", student)):  # fmt: skip
        assert getattr(pipeline, section) == getattr(split, section), section
