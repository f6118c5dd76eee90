"""Training configuration: pydantic models, YAML loading, validation and ``--set`` overrides.

A config file is nested YAML whose sections mirror the models below; every key is optional and falls back to
the default written next to it (all keys are documented in ``config/README.md``). Unknown keys, wrong types,
non-finite or out-of-range numbers, duplicate YAML keys and impossible combinations fail at load time with a
:class:`~lsqbq.errors.ConfigError` that names the dotted key (and the file and line for YAML errors)::

    seed: 0
    epochs: 8
    data:     {name: fashion-mnist, root: data/fashion-mnist, batch_size: 128}
    model:    {name: resnet_small, block: xnor, x_quant: ls-2, w_quant: ls-1, clamp: 2.0}
    optim:    {name: adam, lr: 2.0e-3}
    schedule: {name: cosine}
    kd:       {teacher: checkpoints/teacher/checkpoint.pt, temperature: 1.0}
    tracking: {experiment: fmnist-resnet}

Overrides use dotted keys with YAML values: ``--set model.x_quant=ls-2 --set data.train_subset=null``.
Validation is strict: no string-to-number coercion, integers are accepted where floats are expected.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .errors import ConfigError
from .schemes import get_scheme, is_scheme_name, list_schemes

__all__ = [
    "Config", "DataConfig", "ModelConfig", "OptimConfig", "ScheduleConfig", "KDConfig", "TrackingConfig",
    "OutputConfig", "ConfigError", "load_config", "from_dict", "to_dict", "apply_overrides", "flatten",
    "config_hash", "dump_yaml", "model_options", "load_yaml",
]

MAX_SEED = 2**63 - 1
Pos = Annotated[int, Field(ge=1)]
NonNeg = Annotated[int, Field(ge=0)]


class _Section(BaseModel):
    """Strict: unknown keys, strings for numbers, bools for ints, NaN and +-Inf are all refused."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class DataConfig(_Section):
    name: Literal["fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder"] = "fashion-mnist"
    root: str = "data/fashion-mnist"         # dataset directory (relative to the working directory)
    train_subset: Optional[Pos] = None       # train on a fixed random subset of this many images (seed 0)
    test_subset: Optional[Pos] = None        # evaluate on a fixed random subset of this many images
    batch_size: Annotated[int, Field(ge=2)] = 128  # global batch, split evenly over distributed ranks
    eval_batch_size: Pos = 1000
    augment: bool = True                     # per-dataset training augmentation (see lsqbq.data)
    workers: NonNeg = 0                      # DataLoader worker processes
    download: bool = False                   # allow torchvision downloads (mnist/cifar) when files are missing
    image_size: Optional[Pos] = None         # imagefolder: crop size (None: 224)


class ModelConfig(_Section):
    name: str = "resnet_small"               # a builder in lsqbq.models.list_models()
    block: Optional[Literal["regular", "xnor"]] = None     # ResNet block; None: by the schemes
    stem: Optional[Literal["cifar", "imagenet"]] = None    # ResNet stem; None: by dataset
    stem_stride: Optional[Pos] = None        # stride of the cifar stem conv (None: 1)
    width: Optional[Pos] = None              # base channels of the first stage (ResNet)
    layers: Optional[Annotated[list[Pos], Field(min_length=1)]] = None  # blocks per stage, e.g. [2, 2, 2, 2]
    x_quant: str = "fp"                      # activation scheme of every quantized conv
    w_quant: str = "fp"                      # weight scheme of every quantized conv
    clamp: Optional[Annotated[float, Field(gt=0)]] = None  # symmetric activation clamp alpha before quantization
    act_stats: Literal["off", "eval_only", "train_and_eval"] = "off"  # EMA of activation scales
    nonlinearity: Optional[Literal["relu", "prelu"]] = None
    double_shortcut: Optional[bool] = None   # identity around each binary conv (xnor block)

    @field_validator("x_quant", "w_quant")
    @classmethod
    def _scheme(cls, v: str, info) -> str:
        if not is_scheme_name(v):
            raise PydanticCustomError("lsqbq", "model.{key}: unknown scheme {value}; expected one of {valid}",
                                      {"key": info.field_name, "value": repr(v),
                                       "valid": ", ".join(list_schemes(trainable_only=True))})
        return v


class OptimConfig(_Section):
    name: Literal["adam", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9   # sgd only
    nesterov: bool = True                    # sgd only


class ScheduleConfig(_Section):
    name: Literal["constant", "step", "multistep", "linear", "cosine"] = "cosine"
    step_size: Pos = 30                      # step: epochs between decays
    gamma: Annotated[float, Field(gt=0)] = 0.1             # step / multistep: decay factor
    milestones: list[NonNeg] = Field(default_factory=list)  # multistep: epochs at which lr *= gamma
    min_lr: Annotated[float, Field(ge=0)] = 0.0            # linear / cosine: final learning rate (per batch)


class KDConfig(_Section):
    teacher: Optional[str] = None            # teacher checkpoint.pt; None: plain cross-entropy
    temperature: Annotated[float, Field(gt=0)] = 1.0       # T; the KL term is scaled by T^2
    ce_weight: Annotated[float, Field(ge=0, le=1)] = 0.0   # loss = (1 - ce_weight) * KD + ce_weight * CE
    teacher_correction: bool = False         # use CE instead of KD on samples the teacher gets wrong
    teacher_mode: Literal["train", "eval"] = "train"       # BN mode of the frozen teacher


class TrackingConfig(_Section):
    enabled: bool = True                     # False only for unit tests of the loop itself
    uri: Optional[str] = None                # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: Optional[str] = None         # None: "lsqbq-<data.name>"
    run_name: Optional[str] = None           # None: "{model}-a{x_quant}-w{w_quant}-s{seed}"
    log_checkpoint: bool = True              # upload checkpoint.pt as an artifact
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_keys(cls, v: Any) -> Any:
        return {str(k): val for k, val in v.items()} if isinstance(v, dict) else v


class OutputConfig(_Section):
    dir: Annotated[str, Field(min_length=1)] = "checkpoints/run"  # checkpoint.pt, metrics.json, config.yaml


_SECTIONS = ("data", "model", "optim", "schedule", "kd", "tracking", "output")


class Config(_Section):
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    epochs: Pos = 1
    threads: Optional[Pos] = None            # CPU threads; None: $LSQBQ_THREADS or torch's default
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = False                        # CUDA autocast (bf16)
    deterministic: bool = True               # deterministic algorithms where torch has them
    sync_bn: bool = True                     # synchronise BN statistics across distributed ranks
    progress: Literal["auto", "on", "lines", "off"] = "auto"  # bar (on), lines, or auto: bar on a terminal
    progress_every: Optional[Pos] = None     # batches between progress lines; None: about 10 per epoch
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    kd: KDConfig = Field(default_factory=KDConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator(*_SECTIONS, mode="before")
    @classmethod
    def _empty_section(cls, v: Any) -> Any:
        return {} if v is None else v      # ``kd:`` with nothing below it means the defaults

    @model_validator(mode="after")
    def _combinations(self) -> Config:
        why = _impossible_combination(self)
        if why:
            raise PydanticCustomError("lsqbq", "{why}", {"why": why})
        return self


def _impossible_combination(cfg: Config) -> str | None:
    """Cross-field checks; returns the message (naming the key) of the first violation, or None."""
    m = cfg.model
    if m.act_stats != "off" and get_scheme(m.x_quant).is_fp:
        return "model.act_stats: activation statistics need a quantized model.x_quant, not fp"
    if m.name.startswith("lenet"):
        for key in ("block", "stem", "stem_stride", "width", "layers", "nonlinearity", "double_shortcut"):
            if getattr(m, key) is not None:
                return f"model.{key}: not an option of {m.name!r} (ResNet only)"
        if cfg.data.name not in ("fashion-mnist", "mnist"):
            return (f"model.name: {m.name!r} needs 28x28 inputs (fashion-mnist or mnist), "
                    f"not data.name={cfg.data.name!r}")
    if m.stem_stride is not None and m.stem == "imagenet":
        return f"model.stem_stride: only the cifar stem has a stride option, got {m.stem_stride} with stem imagenet"
    if m.block == "regular" and m.double_shortcut:
        return "model.double_shortcut: only the xnor block has the double shortcut"
    s = cfg.schedule
    if s.name == "multistep" and not s.milestones:
        return "schedule.milestones: the multistep schedule needs at least one milestone"
    if s.name in ("linear", "cosine") and s.min_lr > cfg.optim.lr:
        return f"schedule.min_lr: {s.min_lr} is above optim.lr {cfg.optim.lr}"
    kd = cfg.kd
    if kd.teacher is None and (kd.teacher_correction or kd.ce_weight > 0):
        return "kd.teacher: kd.teacher_correction / kd.ce_weight need a teacher checkpoint"
    if kd.teacher is not None and not kd.teacher.strip():
        return "kd.teacher: empty path; give a checkpoint.pt or null for plain cross-entropy"
    if cfg.amp and cfg.device == "cpu":
        return "amp: automatic mixed precision is only used on CUDA (device: cpu)"
    return None


# ------------------------------------------------------------------------------------------ errors

_TYPE_NAMES = {"int": "int", "float": "float", "bool": "bool", "string": "str", "list": "a list",
               "dict": "a mapping", "model": "a mapping", "literal": None}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}
_HINTS = {"data.batch_size": "batch normalisation needs at least two samples per batch",
          "seed": "seeds are non-negative integers"}


def _dotted(loc: tuple) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _allowed(loc: tuple) -> list[str]:
    """Field names of the section at ``loc`` (for "unknown key" messages)."""
    cls: Any = Config
    for part in loc:
        cls = typing.get_type_hints(cls)[part]
    return sorted(cls.model_fields)


def _describe(err: dict) -> str:
    """One pydantic error -> today's one-line message naming the dotted key."""
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    key = _dotted(loc)
    if kind == "lsqbq":
        return err["msg"]
    if kind == "extra_forbidden":
        return f"unknown key {key!r}; allowed: {_allowed(loc[:-1])}"
    if kind == "literal_error":
        return f"{key}: {value!r} is not one of {err['ctx']['expected']}"
    if kind == "finite_number":
        return f"{key}: must be a finite number, got {value!r}"
    if kind in _BOUNDS:
        name, op = _BOUNDS[kind]
        msg = f"{key}: must be {op} {err['ctx'][name]}, got {value!r}"
        return msg + (f" ({_HINTS[key]})" if key in _HINTS else "")
    if kind.endswith("too_short"):
        return f"{key}: must not be empty, got {value!r}"
    base = kind.split("_")[0]
    if base in _TYPE_NAMES and _TYPE_NAMES[base]:
        return f"{key or 'config'}: expected {_TYPE_NAMES[base]}, got {type(value).__name__} {value!r}"
    return f"{key or 'config'}: {err['msg']}, got {value!r}"


# ------------------------------------------------------------------------------------------ public


def from_dict(data: dict | None) -> Config:
    """Build and validate a :class:`Config` from a nested dict (raises :class:`ConfigError` naming the key)."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping, got {type(data).__name__}")
    try:
        return Config.model_validate(data or {})
    except ValidationError as e:
        errors = e.errors(include_url=False)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(_describe(errors[0]) + more) from None


def to_dict(cfg: Config) -> dict:
    """Plain nested dict of ``cfg`` (field order, JSON/YAML-safe values)."""
    return cfg.model_dump()


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, typing.Hashable) and key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {first[key]}); keep one of them",
                        key_node.start_mark)
                if isinstance(key, typing.Hashable):
                    first[key] = line
        return super().construct_mapping(node, deep=deep)


# Booleans are only true / false (YAML 1.2): ``act_stats: off`` or ``--set progress=on`` stay strings.
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                       list("tTfF"))


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML with the safe loader, refusing duplicate keys (booleans: true / false only); errors name
    ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise ConfigError(f"{where}: invalid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: empty key")
    value = load_yaml(raw, f"--set {item!r}") if raw.strip() else None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict, in order; returns a copy."""
    data = copy.deepcopy(data or {})
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
    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}; pass an existing YAML file (see config/README.md)")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the config file ({e})") from None
        data = load_yaml(text, str(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of config keys, got {type(data).__name__}")
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

    Excluded: output/tracking locations, thread count, progress display, data root and loader workers.
    """
    flat = {k: v for k, v in flatten(cfg).items() if not any(k == p or k.startswith(p) for p in _NON_SEMANTIC)}
    blob = json.dumps(flat, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dump_yaml(cfg: Config, path: str | Path | None = None) -> str:
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text


def model_options(cfg: Config, num_classes: int, in_chans: int) -> dict[str, Any]:
    """Builder options for ``lsqbq.models.build`` from ``cfg.model`` and the dataset (None = builder default).

    The ResNet block is resolved here (not left to the builder) so that a checkpoint's options rebuild the
    same architecture when another scheme is swapped in later (``lsqbq evaluate --w-quant ...``).
    """
    m = cfg.model
    opts: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, x_quant=m.x_quant, w_quant=m.w_quant,
                                clamp=m.clamp, act_stats=m.act_stats)
    if not m.name.startswith("lenet"):
        stem = m.stem or ("imagenet" if cfg.data.name == "imagefolder" else "cifar")
        both_fp = get_scheme(m.x_quant).is_fp and get_scheme(m.w_quant).is_fp
        block = m.block or ("regular" if both_fp else "xnor")
        opts.update(stem=stem, stem_stride=m.stem_stride, block=block, width=m.width, layers=m.layers,
                    nonlinearity=m.nonlinearity, double_shortcut=m.double_shortcut)
    return {k: v for k, v in opts.items() if v is not None}
