"""Training configuration: validate a nested dict or YAML file into a :class:`Config`, and name a config.

A config file is nested YAML whose sections mirror the models of :mod:`lsqbq.config_schema`; every key is
optional and falls back to its default (all keys are documented in ``config/README.md``). Unknown keys, wrong
types, non-finite or out-of-range numbers, duplicate YAML keys and impossible combinations fail at load time with
a :class:`~lsqbq.errors.ConfigError` that names the dotted key (and the file and line for YAML errors)::

    seed: 0
    epochs: 8
    data:     {name: fashion-mnist, root: data/fashion-mnist, batch_size: 128}
    model:    {name: resnet_small, block: xnor, x_quant: ls-2, w_quant: ls-1, clamp: 2.0}
    optim:    {name: adam, lr: 2.0e-3}
    schedule: {name: cosine}
    kd:       {teacher: checkpoints/teacher/checkpoint.pt, temperature: 1.0}
    tracking: {experiment: fmnist-resnet}

Overrides use dotted keys with YAML values: ``--set model.x_quant=ls-2 --set data.train_subset=null``.
Validation is strict: no string-to-number coercion (except exponent floats such as ``lr: 1e-3``, which PyYAML
reads as strings), integers are accepted where floats are expected.

The pieces: :mod:`lsqbq.config_schema` (sections, defaults, cross-field rules), :mod:`lsqbq.config_messages`
(one-line errors), :mod:`lsqbq.config_yaml` (YAML loading, ``--set``); this module loads, validates, flattens
and hashes, and every name above is importable from here.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .config_messages import describe
from .config_schema import (MAX_SEED, Config, DataConfig, KDConfig, ModelConfig, OptimConfig,  # noqa: F401
                            OutputConfig, ScheduleConfig, TrackingConfig)
from .config_yaml import apply_overrides, load_yaml
from .data.registry import get_dataset
from .errors import ConfigError
from .models.resnet import default_block

__all__ = [
    "Config", "DataConfig", "ModelConfig", "OptimConfig", "ScheduleConfig", "KDConfig", "TrackingConfig",
    "OutputConfig", "ConfigError", "load_config", "from_dict", "to_dict", "apply_overrides", "flatten",
    "config_hash", "dump_yaml", "model_options", "load_yaml",
]


def from_dict(data: dict | None) -> Config:
    """Build and validate a :class:`Config` from a nested dict (raises :class:`ConfigError` naming the key)."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping, got {type(data).__name__}")
    try:
        return Config.model_validate(data or {})
    except ValidationError as e:
        errors = e.errors(include_url=False)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(describe(errors[0]) + more) from None


def to_dict(cfg: Config) -> dict:
    """Plain nested dict of ``cfg`` (field order, JSON/YAML-safe values)."""
    return cfg.model_dump()


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
        stem = m.stem or get_dataset(cfg.data.name).stem
        block = m.block or default_block(m.x_quant, m.w_quant)
        opts.update(stem=stem, stem_stride=m.stem_stride, block=block, width=m.width, layers=m.layers,
                    nonlinearity=m.nonlinearity, double_shortcut=m.double_shortcut)
    return {k: v for k, v in opts.items() if v is not None}
