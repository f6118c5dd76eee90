"""The training configuration's schema: one pydantic model per section, its defaults and its cross-field rules.

Every key is optional and falls back to the default written next to it (``config/README.md`` documents them).
Validation is strict (unknown keys, bools for ints, NaN and +-Inf are refused) with one allowance: a float key
also takes a string in exponent notation such as ``1e-3``, which YAML 1.2 reads as a number but PyYAML (YAML
1.1, which wants ``1.0e-3``) reads as a string. Names come from their owners: datasets from
:mod:`lsqbq.data.registry`, schemes from :mod:`lsqbq.schemes`, ``act_stats`` modes from :mod:`lsqbq.layers`,
schedules from :mod:`lsqbq.schedules`, ResNet blocks from :mod:`lsqbq.models.resnet`.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .data.registry import get_dataset, list_datasets
from .layers import ACT_STATS_MODES
from .models.resnet import BLOCKS
from .schedules import ANNEALED, SCHEDULES
from .schemes import get_scheme, is_scheme_name, list_schemes

__all__ = ["Config", "DataConfig", "ModelConfig", "OptimConfig", "ScheduleConfig", "KDConfig", "TrackingConfig",
           "OutputConfig", "SECTIONS", "MAX_SEED"]

MAX_SEED = 2**63 - 1
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _exponent_string_to_float(v: Any) -> Any:
    """``"1e-3"`` -> 0.001: YAML 1.2 float syntax that PyYAML (YAML 1.1) leaves as a string; anything else as is."""
    return float(v) if isinstance(v, str) and _EXPONENT_FLOAT.match(v.strip()) else v


Float = Annotated[float, BeforeValidator(_exponent_string_to_float)]
Pos = Annotated[int, Field(ge=1)]
NonNeg = Annotated[int, Field(ge=0)]


class _Section(BaseModel):
    """Strict: unknown keys, strings for numbers, bools for ints, NaN and +-Inf are all refused."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class DataConfig(_Section):
    name: str = "fashion-mnist"              # a dataset in lsqbq.data.list_datasets()
    root: str = "data/fashion-mnist"         # dataset directory (relative to the working directory)
    train_subset: Optional[Pos] = None       # train on a fixed random subset of this many images (seed 0)
    test_subset: Optional[Pos] = None        # evaluate on a fixed random subset of this many images
    batch_size: Annotated[int, Field(ge=2)] = 128  # global batch, split evenly over distributed ranks
    eval_batch_size: Pos = 1000
    augment: bool = True                     # per-dataset training augmentation (see lsqbq.data)
    workers: NonNeg = 0                      # DataLoader worker processes
    download: bool = False                   # allow torchvision downloads (mnist/cifar) when files are missing
    image_size: Optional[Pos] = None         # imagefolder: crop size (None: 224)

    @field_validator("name")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if v not in list_datasets():
            raise PydanticCustomError("lsqbq", "data.name: {value} is not one of {valid}",
                                      {"value": repr(v), "valid": ", ".join(map(repr, list_datasets()))})
        return v


class ModelConfig(_Section):
    name: str = "resnet_small"               # a builder in lsqbq.models.list_models()
    block: Optional[Literal[tuple(BLOCKS)]] = None     # ResNet block; None: by the schemes
    stem: Optional[Literal["cifar", "imagenet"]] = None    # ResNet stem; None: by dataset
    stem_stride: Optional[Pos] = None        # stride of the cifar stem conv (None: 1)
    width: Optional[Pos] = None              # base channels of the first stage (ResNet)
    layers: Optional[Annotated[list[Pos], Field(min_length=1)]] = None  # blocks per stage, e.g. [2, 2, 2, 2]
    x_quant: str = "fp"                      # activation scheme of every quantized conv
    w_quant: str = "fp"                      # weight scheme of every quantized conv
    clamp: Optional[Annotated[Float, Field(gt=0)]] = None  # symmetric activation clamp alpha before quantization
    act_stats: Literal[ACT_STATS_MODES] = "off"  # EMA of activation scales
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
    lr: Annotated[Float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[Float, Field(ge=0)] = 0.0
    momentum: Annotated[Float, Field(ge=0, lt=1)] = 0.9   # sgd only
    nesterov: bool = True                    # sgd only


class ScheduleConfig(_Section):
    name: Literal[SCHEDULES] = "cosine"
    step_size: Pos = 30                      # step: epochs between decays
    gamma: Annotated[Float, Field(gt=0)] = 0.1             # step / multistep: decay factor
    milestones: list[NonNeg] = Field(default_factory=list)  # multistep: epochs at which lr *= gamma
    min_lr: Annotated[Float, Field(ge=0)] = 0.0            # linear / cosine: final learning rate (per batch)


class KDConfig(_Section):
    teacher: Optional[str] = None            # teacher checkpoint.pt; None: plain cross-entropy
    temperature: Annotated[Float, Field(gt=0)] = 1.0       # T; the KL term is scaled by T^2
    ce_weight: Annotated[Float, Field(ge=0, le=1)] = 0.0   # loss = (1 - ce_weight) * KD + ce_weight * CE
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


SECTIONS = ("data", "model", "optim", "schedule", "kd", "tracking", "output")


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

    @field_validator(*SECTIONS, mode="before")
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
        if get_dataset(cfg.data.name).image_size != 28:
            fits = " or ".join(n for n in list_datasets() if get_dataset(n).image_size == 28)
            return f"model.name: {m.name!r} needs 28x28 inputs ({fits}), not data.name={cfg.data.name!r}"
    if m.stem_stride is not None and m.stem == "imagenet":
        return f"model.stem_stride: only the cifar stem has a stride option, got {m.stem_stride} with stem imagenet"
    if m.block == "regular" and m.double_shortcut:
        return "model.double_shortcut: only the xnor block has the double shortcut"
    s = cfg.schedule
    if s.name == "multistep" and not s.milestones:
        return "schedule.milestones: the multistep schedule needs at least one milestone"
    if s.name in ANNEALED and s.min_lr > cfg.optim.lr:
        return f"schedule.min_lr: {s.min_lr} is above optim.lr {cfg.optim.lr}"
    kd = cfg.kd
    if kd.teacher is None and (kd.teacher_correction or kd.ce_weight > 0):
        return "kd.teacher: kd.teacher_correction / kd.ce_weight need a teacher checkpoint"
    if kd.teacher is not None and not kd.teacher.strip():
        return "kd.teacher: empty path; give a checkpoint.pt or null for plain cross-entropy"
    if cfg.amp and cfg.device == "cpu":
        return "amp: automatic mixed precision is only used on CUDA (device: cpu)"
    return None
