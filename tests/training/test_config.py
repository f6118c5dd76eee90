"""Config loading, validation, overrides, flattening and hashing."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lsqbq.config import (Config, ConfigError, apply_overrides, config_hash, dump_yaml, flatten, from_dict,
                          load_config, load_yaml, model_options, to_dict)

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


@pytest.mark.parametrize("data, key", [
    ({"optim": {"lr": float("inf")}}, "optim.lr"),
    ({"optim": {"lr": float("nan")}}, "optim.lr"),
    ({"optim": {"lr": 0}}, "optim.lr"),
    ({"optim": {"weight_decay": float("nan")}}, "optim.weight_decay"),
    ({"optim": {"weight_decay": -1e-4}}, "optim.weight_decay"),
    ({"optim": {"momentum": 1.0}}, "optim.momentum"),
    ({"optim": {"momentum": float("-inf")}}, "optim.momentum"),
    ({"model": {"clamp": float("inf")}}, "model.clamp"),
    ({"kd": {"teacher": "t.pt", "temperature": float("nan")}}, "kd.temperature"),
    ({"kd": {"teacher": "t.pt", "temperature": 0.0}}, "kd.temperature"),
    ({"kd": {"teacher": "t.pt", "ce_weight": float("nan")}}, "kd.ce_weight"),
    ({"schedule": {"gamma": float("inf")}}, "schedule.gamma"),
    ({"schedule": {"gamma": 0}}, "schedule.gamma"),
    ({"schedule": {"min_lr": -1.0}}, "schedule.min_lr"),
    ({"schedule": {"name": "multistep", "milestones": [-1]}}, r"schedule.milestones\[0\]"),
    ({"data": {"batch_size": 1}}, "data.batch_size"),
    ({"data": {"train_subset": 0}}, "data.train_subset"),
    ({"data": {"workers": -1}}, "data.workers"),
    ({"threads": 0}, "threads"),
    ({"seed": 2**64}, "seed"),
    ({"progress_every": 0}, "progress_every"),
    ({"output": {"dir": ""}}, "output.dir"),
])
def test_non_finite_and_out_of_range_values_are_named(data, key):
    with pytest.raises(ConfigError, match=f"^{key}: ") as err:
        from_dict(data)
    assert "\n" not in str(err.value)


def test_negative_seed_message_is_clear():
    with pytest.raises(ConfigError, match=r"^seed: must be >= 0, got -1 \(seeds are non-negative integers\)$"):
        load_config(None, ["seed=-1"])


def test_schemes_come_from_the_registry():
    from lsqbq.schemes import is_scheme_name, list_schemes

    for name in list_schemes(examples=True, trainable_only=True):
        assert from_dict({"model": {"x_quant": name}}).model.x_quant == name and is_scheme_name(name)
    with pytest.raises(ConfigError, match="model.w_quant: unknown scheme 'ls-2-official'"):
        from_dict({"model": {"w_quant": "ls-2-official"}})   # a reference scheme of the analyses, not trainable


def test_duplicate_yaml_keys_are_rejected_with_the_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("seed: 0\nepochs: 1\nmodel:\n  width: 8\n  x_quant: ls-1\n  width: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}, line 6, column 3: invalid YAML: duplicate key 'width' "
                                     "(first given on line 4)")
    path.write_text("epochs: 1\nepochs: 2\n")
    with pytest.raises(ConfigError, match=r"line 2, .*duplicate key 'epochs' \(first given on line 1\)"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"--set .*duplicate key 'a'"):
        load_config(None, ["tracking.tags={a: x, a: y}"])
    assert load_yaml("a: &b {x: 1}\nc:\n  <<: *b\n  x: 2\n", "s") == {"a": {"x": 1}, "c": {"x": 2}}  # merge keys


@pytest.mark.parametrize("text, line", [
    ("seed: 0\nmodel: {width: 4\n", 3),
    ("seed: 0\n  epochs: 2\n", 2),
    ("data:\n\t batch_size: 4\n", 2),
])
def test_yaml_syntax_errors_name_file_and_line(tmp_path, text, line):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{path}, line {line}, column \d+: invalid YAML: ") as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert load_config(tmp_path / "empty.yaml") == from_dict({})


def test_empty_section_means_defaults():
    assert from_dict({"kd": None, "tracking": None}) == from_dict({})


def test_readme_documents_every_key():
    readme = (PROJECT / "config" / "README.md").read_text()
    missing = [key for key in flatten(from_dict({})) if f"`{key}`" not in readme]
    assert not missing, f"config/README.md does not document {missing}"


def test_only_true_and_false_are_booleans(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("progress: off\nmodel: {x_quant: ls-1, act_stats: off}\ndata: {augment: false}\n")
    cfg = load_config(path, ["model.act_stats=eval_only", "progress=on"])
    assert (cfg.progress, cfg.model.act_stats, cfg.data.augment) == ("on", "eval_only", False)
    assert load_config(path).model.act_stats == "off"
    with pytest.raises(ConfigError, match=r"^data.augment: expected bool, got str 'yes'$"):
        load_config(None, ["data.augment=yes"])


# ------------------------------------------------------------------------ names owned by their modules

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def test_workflow_schema_datasets_are_the_registry():
    from lsqbq.data import list_datasets

    schema = yaml.safe_load(SCHEMA.read_text())
    assert schema["properties"]["dataset"]["enum"] == list_datasets()


def test_workflow_schema_models_are_the_registry():
    """The workflow reads its config without importing torch: the model names are an enum of the schema."""
    from lsqbq.models import list_models

    schema = yaml.safe_load(SCHEMA.read_text())["properties"]
    assert schema["models"]["items"]["enum"] == list_models()
    assert schema["row_seeds"]["propertyNames"]["enum"] == list_models()


@pytest.mark.parametrize("name", __import__("lsqbq.data", fromlist=["list_datasets"]).list_datasets())
def test_every_registered_dataset_is_a_valid_data_name(name):
    assert from_dict({"data": {"name": name}}).data.name == name


def test_unknown_dataset_lists_the_registry():
    from lsqbq.data import list_datasets

    with pytest.raises(ConfigError) as e:
        from_dict({"data": {"name": "svhn"}})
    assert str(e.value) == f"data.name: 'svhn' is not one of {', '.join(map(repr, list_datasets()))}"


def test_a_newly_registered_dataset_is_accepted_by_the_config():
    from lsqbq.data import registry

    spec = registry.DatasetSpec(name="tiny-test", num_classes=3, in_chans=1, image_size=28, stem="cifar",
                                info=None, build=None, prepare=None, hash=None)
    registry.register_dataset(spec)
    try:
        cfg = from_dict({"data": {"name": "tiny-test"}, "model": {"name": "lenet5"}})   # 28x28: LeNet fits
        assert cfg.data.name == "tiny-test"
    finally:
        registry._REGISTRY.pop("tiny-test")


def test_act_stats_and_schedule_names_come_from_their_modules():
    from lsqbq.layers import ACT_STATS_MODES
    from lsqbq.schedules import SCHEDULES

    x_quant = {"x_quant": "ls-2"}
    assert [from_dict({"model": {**x_quant, "act_stats": m}}).model.act_stats for m in ACT_STATS_MODES] == \
        list(ACT_STATS_MODES)
    milestones = {"milestones": [1]}
    assert [from_dict({"schedule": {"name": s, **milestones}}).schedule.name for s in SCHEDULES] == list(SCHEDULES)
    for key, value in (("model.act_stats", "sometimes"), ("schedule.name", "exponential")):
        section, leaf = key.split(".")
        with pytest.raises(ConfigError, match=f"{key}: '{value}' is not one of"):
            from_dict({section: {leaf: value}})


@pytest.mark.parametrize("x_quant, w_quant", [("fp", "fp"), ("ls-2", "ls-1"), ("fp", "ls-1"), ("ls-T", "fp")])
def test_default_block_is_the_resnets_own(x_quant, w_quant):
    from lsqbq.models import create_model

    cfg = from_dict({"model": {"x_quant": x_quant, "w_quant": w_quant}})
    opts = model_options(cfg, num_classes=10, in_chans=1)
    built = create_model("resnet_small", **{k: v for k, v in opts.items() if k != "block"})
    assert opts["block"] == built.block_type == ("regular" if x_quant == w_quant == "fp" else "xnor")


@pytest.mark.parametrize("text, value", [("lr: 1e-3", 1e-3), ("lr: 5E-4", 5e-4), ("lr: -1e-3", None),
                                         ("lr: 1.0e-3", 1e-3), ("lr: 2e+0", 2.0), ("lr: .5e-1", 0.05)])
def test_yaml_exponent_floats_are_numbers(tmp_path, text, value):
    """PyYAML (YAML 1.1) reads ``1e-3`` as a string; float keys take it as the number YAML 1.2 means."""
    path = tmp_path / "c.yaml"
    path.write_text(f"optim:\n  {text}\n")
    assert isinstance(yaml.safe_load(path.read_text())["optim"]["lr"], (str, float))
    if value is None:
        with pytest.raises(ConfigError, match=r"optim.lr: must be > 0, got '-1e-3'"):
            load_config(path)
    else:
        assert load_config(path).optim.lr == value
        assert load_config(None, [f"optim.{text.replace(': ', '=')}"]).optim.lr == value


@pytest.mark.parametrize("raw", ["fast", "1e", "e-3", "1e-3x", "nan", "inf", "0x10", "1_000e-3"])
def test_non_numeric_float_strings_are_refused_with_the_hint(raw):
    with pytest.raises(ConfigError) as e:
        from_dict({"optim": {"lr": raw}})
    assert str(e.value) == f"optim.lr: expected float, got str {raw!r} (write a number, e.g. 0.001, 1e-3 or 1.0e-3)"


def test_exponent_strings_stay_strings_for_int_keys():
    with pytest.raises(ConfigError, match=r"epochs: expected int, got str '1e2'"):
        from_dict({"epochs": "1e2"})
