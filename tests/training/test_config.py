"""Config loading, validation, overrides, flattening and hashing."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lsqbq.config import (Config, ConfigError, apply_overrides, config_hash, dump_yaml, flatten, from_dict,
                          load_config, to_dict)

PROJECT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((PROJECT / "config").glob("smoke.yaml")) + sorted((PROJECT / "config" / "train").glob("*.yaml"))


def test_defaults_are_valid():
    cfg = from_dict({})
    assert isinstance(cfg, Config) and cfg.data.name == "fashion-mnist" and cfg.model.x_quant == "fp"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.epochs >= 1


@pytest.mark.parametrize("data, key", [
    ({"modle": {}}, "modle"),
    ({"model": {"x_quant": "ls-1", "widht": 3}}, "model.widht"),
    ({"kd": {"temprature": 2}}, "kd.temprature"),
])
def test_unknown_key_is_named(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(data)


@pytest.mark.parametrize("data, key", [
    ({"epochs": "ten"}, "epochs"),
    ({"epochs": 2.5}, "epochs"),
    ({"model": {"width": True}}, "model.width"),
    ({"optim": {"lr": "fast"}}, "optim.lr"),
    ({"model": {"layers": [1, "two"]}}, r"model.layers\[1\]"),
    ({"data": {"augment": "yes"}}, "data.augment"),
    ({"optim": {"name": "rmsprop"}}, "optim.name"),
])
def test_wrong_type_is_named(data, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(data)


@pytest.mark.parametrize("data, key", [
    ({"model": {"x_quant": "ls-3"}}, "model.x_quant"),
    ({"model": {"w_quant": "gf-0"}}, "model.w_quant"),
    ({"schedule": {"name": "multistep"}}, "schedule.milestones"),
    ({"model": {"name": "lenet5", "stem": "cifar"}}, "model.stem"),
    ({"kd": {"teacher_correction": True}}, "kd.teacher"),
    ({"kd": {"teacher": "t.pt", "ce_weight": 1.5}}, "kd.ce_weight"),
    ({"model": {"clamp": -1.0}}, "model.clamp"),
    ({"model": {"act_stats": "eval_only"}}, "model.act_stats"),
    ({"model": {"block": "regular", "double_shortcut": True}}, "model.double_shortcut"),
    ({"model": {"name": "lenet5"}, "data": {"name": "cifar10", "root": "x"}}, "model.name"),
])
def test_impossible_combinations_are_named(data, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(data)


def test_float_accepts_int_and_null_optional():
    cfg = from_dict({"optim": {"lr": 1}, "model": {"clamp": None}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float) and cfg.model.clamp is None


def test_overrides_parse_yaml_values():
    data = apply_overrides({"model": {"x_quant": "fp"}}, [
        "model.x_quant=ls-2", "model.layers=[1, 2]", "data.train_subset=null", "epochs=3", "kd.temperature=2.5",
        "tracking.tags.note=hello world"])
    assert data["model"] == {"x_quant": "ls-2", "layers": [1, 2]}
    assert data["data"]["train_subset"] is None and data["epochs"] == 3 and data["kd"]["temperature"] == 2.5
    cfg = from_dict(data)
    assert cfg.tracking.tags == {"note": "hello world"}
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["model.x_quant"])
    with pytest.raises(ConfigError, match="unknown key 'model.nope'"):
        load_config(None, ["model.nope=1"])


def test_flatten_has_every_leaf():
    flat = flatten(from_dict({"model": {"layers": [1, 1]}}))
    assert flat["model.layers"] == [1, 1] and flat["kd.teacher"] is None and flat["seed"] == 0
    leaves = 0
    for section in to_dict(Config()).values():
        leaves += len(section) if isinstance(section, dict) else 1
    assert len(flat) == leaves


def test_hash_ignores_locations_not_semantics():
    a = from_dict({})
    assert config_hash(a) == config_hash(from_dict({"output": {"dir": "elsewhere"}, "threads": 3,
                                                    "tracking": {"experiment": "x"}}))
    assert config_hash(a) != config_hash(from_dict({"optim": {"lr": 0.5}}))
    assert config_hash(a) != config_hash(from_dict({"seed": 1}))


def test_yaml_round_trip(tmp_path):
    cfg = from_dict({"model": {"x_quant": "ls-T", "layers": [2, 2]}, "schedule": {"name": "multistep",
                                                                                 "milestones": [3, 5]}})
    dump_yaml(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["model"]["x_quant"] == "ls-T"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
