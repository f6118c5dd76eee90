"""Training configuration: typed dataclasses, YAML loading, validation and ``--set`` overrides.

A config file is nested YAML whose sections mirror the dataclasses below; every key is optional
and falls back to the default written next to it. Unknown keys, wrong types and impossible
combinations fail at load time with an error that names the key::

    seed: 0
    epochs: 8
    data:     {name: fashion-mnist, root: data/fashion-mnist, batch_size: 128}
    model:    {name: resnet_small, block: xnor, x_quant: ls-2, w_quant: ls-1, clamp: 2.0}
    optim:    {name: adam, lr: 2.0e-3}
    schedule: {name: cosine}
    kd:       {teacher: checkpoints/teacher/checkpoint.pt, temperature: 1.0}
    tracking: {experiment: fmnist-resnet}

Overrides use dotted keys with YAML values: ``--set model.x_quant=ls-2 --set data.train_subset=null``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Config", "DataConfig", "ModelConfig", "OptimConfig", "ScheduleConfig", "KDConfig", "TrackingConfig",
    "OutputConfig", "ConfigError", "load_config", "from_dict", "to_dict", "apply_overrides", "flatten",
    "config_hash", "dump_yaml",
]

SCHEME_PATTERN = r"^(fp|ls-1|ls-2|ls-T|gf-[1-9][0-9]*)$"  # same grammar as lsqbq.schemes


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or inconsistent; the message names the key."""


def _choices(*values: str, default: Any = dataclasses.MISSING) -> Any:
    return field(default=default, metadata={"choices": values})


@dataclass
class DataConfig:
    name: str = _choices("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", default="fashion-mnist")
    root: str = "data/fashion-mnist"        # dataset directory (relative to the working directory)
    train_subset: int | None = None          # train on a fixed random subset of this many images (seed 0)
    test_subset: int | None = None           # evaluate on a fixed random subset of this many images
    batch_size: int = 128                    # global batch, split evenly over distributed ranks
    eval_batch_size: int = 1000
    augment: bool = True                     # per-dataset training augmentation (see lsqbq.data)
    workers: int = 0                         # DataLoader worker processes
    download: bool = False                   # allow torchvision downloads (mnist/cifar) when files are missing
    image_size: int | None = None            # imagefolder: crop size (None: 224)


@dataclass
class ModelConfig:
    name: str = "resnet_small"               # a builder in lsqbq.models.list_models()
    block: str | None = _choices("regular", "xnor", None, default=None)  # ResNet block; None: builder default
    stem: str | None = _choices("cifar", "imagenet", None, default=None)  # ResNet stem; None: by dataset
    stem_stride: int | None = None           # stride of the cifar stem conv (None: 1)
    width: int | None = None                 # base channels of the first stage (ResNet)
    layers: list[int] | None = None          # blocks per stage (ResNet), e.g. [2, 2, 2, 2]
    x_quant: str = "fp"                      # activation scheme of every quantized conv
    w_quant: str = "fp"                      # weight scheme of every quantized conv
    clamp: float | None = None               # symmetric activation clamp alpha before quantization
    act_stats: str = _choices("off", "eval_only", "train_and_eval", default="off")  # EMA of activation scales
    nonlinearity: str | None = _choices("relu", "prelu", None, default=None)
    double_shortcut: bool | None = None      # identity around each binary conv (xnor block)


@dataclass
class OptimConfig:
    name: str = _choices("adam", "sgd", default="adam")
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9                    # sgd only
    nesterov: bool = True                    # sgd only


@dataclass
class ScheduleConfig:
    name: str = _choices("constant", "step", "multistep", "linear", "cosine", default="cosine")
    step_size: int = 30                      # step: epochs between decays
    gamma: float = 0.1                       # step / multistep: decay factor
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which lr *= gamma
    min_lr: float = 0.0                      # linear / cosine: final learning rate (stepped per batch)


@dataclass
class KDConfig:
    teacher: str | None = None               # teacher checkpoint.pt; None: plain cross-entropy
    temperature: float = 1.0                 # T; the KL term is scaled by T^2
    ce_weight: float = 0.0                   # loss = (1 - ce_weight) * KD + ce_weight * CE
    teacher_correction: bool = False         # use CE instead of KD on samples the teacher gets wrong
    teacher_mode: str = _choices("train", "eval", default="train")  # BN mode of the frozen teacher


@dataclass
class TrackingConfig:
    enabled: bool = True                     # False only for unit tests of the loop itself
    uri: str | None = None                   # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str | None = None            # None: "lsqbq-<data.name>"
    run_name: str | None = None              # None: "{model}-a{x_quant}-w{w_quant}-s{seed}"
    log_checkpoint: bool = True              # upload checkpoint.pt as an artifact
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class OutputConfig:
    dir: str = "checkpoints/run"             # checkpoint.pt, metrics.json, config.yaml go here (--out)


@dataclass
class Config:
    seed: int = 0
    epochs: int = 1
    threads: int | None = None               # CPU threads; None: $LSQBQ_THREADS or torch's default
    device: str = _choices("auto", "cpu", "cuda", default="auto")
    amp: bool = False                        # CUDA autocast (bf16) + no grad scaling needed
    deterministic: bool = True               # deterministic algorithms where torch has them
    sync_bn: bool = True                     # synchronise BN statistics across distributed ranks
    progress: str = _choices("auto", "on", "off", default="auto")  # tqdm bar; auto: only on a TTY
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# ----------------------------------------------------------------------------------------------- typing


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to ``tp`` (int -> float only) or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _check_type(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only the types above are used
        raise ConfigError(f"{key}: unsupported type {tp}")
    raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown key {prefix + str(key)!r}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key, tp, value = prefix + name, hints[name], data[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key + ".")
            continue
        value = _check_type(value, tp, key)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {[c for c in choices if c is not None]}")
        kwargs[name] = value
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    """Cross-field checks (impossible combinations)."""
    m = cfg.model
    for key in ("x_quant", "w_quant"):
        if not re.match(SCHEME_PATTERN, getattr(m, key)):
            raise ConfigError(f"model.{key}: unknown scheme {getattr(m, key)!r}; expected fp, ls-1, ls-2, ls-T or gf-<k>")
    if m.clamp is not None and m.clamp <= 0:
        raise ConfigError(f"model.clamp: must be > 0 or null, got {m.clamp}")
    if m.width is not None and m.width < 1:
        raise ConfigError(f"model.width: must be >= 1, got {m.width}")
    if m.layers is not None and (not m.layers or min(m.layers) < 1):
        raise ConfigError(f"model.layers: need at least one stage of >= 1 block, got {m.layers}")
    if m.act_stats != "off" and m.x_quant == "fp":
        raise ConfigError("model.act_stats: activation statistics need a quantized model.x_quant, not fp")
    if m.name.startswith("lenet"):
        for key in ("block", "stem", "stem_stride", "width", "layers", "nonlinearity", "double_shortcut"):
            if getattr(m, key) is not None:
                raise ConfigError(f"model.{key}: not an option of {m.name!r} (ResNet only)")
        if cfg.data.name not in ("fashion-mnist", "mnist"):
            raise ConfigError(f"model.name: {m.name!r} needs 28x28 inputs (fashion-mnist or mnist), not data.name={cfg.data.name!r}")
    if m.stem_stride is not None and (m.stem_stride < 1 or m.stem == "imagenet"):
        raise ConfigError(f"model.stem_stride: must be >= 1 and only with the cifar stem, got {m.stem_stride}")
    if m.block == "regular" and m.double_shortcut:
        raise ConfigError("model.double_shortcut: only the xnor block has the double shortcut")
    if cfg.epochs < 1:
        raise ConfigError(f"epochs: must be >= 1, got {cfg.epochs}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads: must be >= 1, got {cfg.threads}")
    if cfg.data.batch_size < 1 or cfg.data.eval_batch_size < 1:
        raise ConfigError("data.batch_size: must be >= 1")
    for key in ("train_subset", "test_subset"):
        v = getattr(cfg.data, key)
        if v is not None and v < 1:
            raise ConfigError(f"data.{key}: must be >= 1 or null, got {v}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr: must be > 0, got {cfg.optim.lr}")
    s = cfg.schedule
    if s.name == "multistep" and not s.milestones:
        raise ConfigError("schedule.milestones: the multistep schedule needs at least one milestone")
    if s.name in ("linear", "cosine") and s.min_lr > cfg.optim.lr:
        raise ConfigError(f"schedule.min_lr: {s.min_lr} is above optim.lr {cfg.optim.lr}")
    if s.name == "step" and s.step_size < 1:
        raise ConfigError("schedule.step_size: must be >= 1")
    kd = cfg.kd
    if kd.temperature <= 0:
        raise ConfigError(f"kd.temperature: must be > 0, got {kd.temperature}")
    if not 0.0 <= kd.ce_weight <= 1.0:
        raise ConfigError(f"kd.ce_weight: must be in [0, 1], got {kd.ce_weight}")
    if kd.teacher is None and (kd.teacher_correction or kd.ce_weight > 0):
        raise ConfigError("kd.teacher: kd.teacher_correction / kd.ce_weight need a teacher checkpoint")
    if cfg.amp and cfg.device == "cpu":
        raise ConfigError("amp: automatic mixed precision is only used on CUDA (device: cpu)")


# ----------------------------------------------------------------------------------------------- public


def from_dict(data: dict | None) -> Config:
    """Build and validate a :class:`Config` from a nested dict (raises :class:`ConfigError`)."""
    cfg = _build(Config, data or {}, "")
    _validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict, in order; returns a copy."""
    data = json.loads(json.dumps(data or {}))
    for item in overrides or []:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML ``path`` (or start from defaults), apply ``--set`` overrides, validate."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    return from_dict(apply_overrides(data, overrides))


def flatten(cfg: Config | dict, prefix: str = "") -> dict[str, Any]:
    """``{"model.x_quant": "ls-2", ...}``: every leaf of the config (lists and None kept as values)."""
    data = to_dict(cfg) if isinstance(cfg, Config) else cfg
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and (v or k != "tags"):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Keys that do not change what is learned (where results go, how fast, how it is shown).
_NON_SEMANTIC = ("threads", "progress", "data.workers", "data.root", "data.download", "data.eval_batch_size",
                 "tracking.", "output.")


def config_hash(cfg: Config) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of the semantic part of the config.

    Excluded: output/tracking locations, thread count, progress bar, data root and loader workers.
    """
    flat = {k: v for k, v in flatten(cfg).items() if not any(k == p or k.startswith(p) for p in _NON_SEMANTIC)}
    blob = json.dumps(flat, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dump_yaml(cfg: Config, path: str | Path | None = None) -> str:
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text
