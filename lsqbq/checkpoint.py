"""Checkpoint files: atomic writes, safe (``weights_only``) loads, and rebuilding a model from a checkpoint.

A checkpoint is a plain dict of tensors and Python primitives so that
``torch.load(path, weights_only=True)`` can read it without unpickling arbitrary objects::

    {"format": 1, "config": {...}, "model_options": {...}, "epoch": int (epochs completed), "model": state_dict,
     "history": [...], "run_id": str, "data_hash": str, "train_time_s": float}

That is the published ``checkpoint.pt`` (weights, weight scales and activation moving averages are in the state
dict). The working ``resume.pt`` adds ``"optimizer"``, ``"schedule": {"step": int}`` and ``"rng"``
(:data:`RESUME_KEYS`), which only continuing the training needs.

Every problem with a file (missing, empty, truncated, random bytes, pickled code, a foreign dict, weights that
do not fit the model) raises :class:`~lsqbq.errors.CheckpointError` naming the file and what to do.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError, CheckpointNotFoundError, ConfigError

__all__ = ["save_atomic", "write_text_atomic", "load", "rng_state", "set_rng_state", "FORMAT", "build_model",
           "load_weights", "load_model", "LoadedModel", "remove_stale_tmp", "MODEL_KEYS", "RESUME_KEYS"]

FORMAT = 1
MODEL_KEYS = ("config", "model_options", "model")                       # enough to rebuild the model
RESUME_KEYS = MODEL_KEYS + ("epoch", "optimizer", "schedule", "rng", "history")  # enough to continue training
_ADAPTIVE = ("w_scales", "x_scales_ema", "x_ema_updates")  # quantizer buffers that adapt (lsqbq.layers)
_RETRAIN = "restore it from a backup or `dvc pull`, or retrain"


def _tmp_glob(path: Path) -> str:
    return f".{path.name}.*.tmp"


def remove_stale_tmp(path: str | Path) -> list[Path]:
    """Delete temporary files a killed :func:`save_atomic` of ``path`` left behind; returns what was removed."""
    path = Path(path)
    removed = []
    if path.parent.is_dir():
        for tmp in path.parent.glob(_tmp_glob(path)):
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` to ``path`` via a temporary file in the same directory, fsync and ``os.replace``.

    A reader (or a run killed mid-write) sees either the previous complete file or the new one, never a
    truncated file. The temporary file is removed on any exception; one left by ``kill -9`` is removed by the
    next save of the same path.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _write_atomic(path, "wb", lambda f: torch.save(obj, f))


def _write_atomic(path: str | Path, mode: str, write) -> Path:
    """``write(f)`` into a temporary file beside ``path``, fsync, then rename over ``path`` (atomic on POSIX);
    the temporary file is removed on any exception."""
    path = Path(path)
    remove_stale_tmp(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a small text file (``metrics.json``) with the same temporary-file-and-rename as :func:`save_atomic`:
    a reader never sees half of it."""
    return _write_atomic(path, "w", lambda f: f.write(text))


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:160]}" if lines else type(e).__name__


def load(path: str | Path, map_location: str | torch.device = "cpu", require: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load an lsqbq checkpoint with ``weights_only=True``; ``require`` lists keys it must hold.

    Raises:
        CheckpointNotFoundError: no such file.
        CheckpointError: a directory, an empty / truncated / random file, pickled code (refused, never run),
            something other than an lsqbq checkpoint dict, or a missing key of ``require``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}; check the path (a checkpoint.pt written by "
                                      "lsqbq train)")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; pass the checkpoint file inside it ({path / 'checkpoint.pt'})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); {_RETRAIN}")
    try:
        with warnings.catch_warnings():  # random bytes can look like an unusual pickle protocol: say it once, below
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if refused:
            raise CheckpointError(f"{path}: refused to load: it holds Python code ({refused.group(1)}) and "
                                  "checkpoints are read with torch.load(weights_only=True), which never runs code; "
                                  "use a checkpoint written by lsqbq train from a source you trust") from None
        raise CheckpointError(f"{path}: not a torch checkpoint (unreadable pickle data); {_RETRAIN}") from None
    except Exception as e:  # noqa: BLE001  arbitrary bytes reach any branch of the unpickler (IndexError, struct.error, ...)
        raise CheckpointError(f"{path}: truncated or not a torch checkpoint ({_first_line(e)}); {_RETRAIN}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        what = f"a {type(obj).__name__}" if not isinstance(obj, dict) else f"a dict without 'format': {FORMAT}"
        raise CheckpointError(f"{path}: not an lsqbq checkpoint (it holds {what}); pass a checkpoint.pt written by "
                              "lsqbq train")
    missing = [k for k in require if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: incomplete lsqbq checkpoint, missing {', '.join(missing)}; "
                              f"{_RETRAIN} with this version of lsqbq")
    if "model_options" in require and not (isinstance(obj["model_options"], dict) and obj["model_options"]):
        raise CheckpointError(f"{path}: the checkpoint holds no model options; {_RETRAIN} with this version of lsqbq")
    bad = [k for k in require if k in ("config", "model", "optimizer") and not isinstance(obj[k], dict)]
    if bad:
        raise CheckpointError(f"{path}: malformed lsqbq checkpoint ({bad[0]} is a {type(obj[bad[0]]).__name__}, "
                              f"not a mapping); {_RETRAIN}")
    return obj


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ------------------------------------------------------------------------------------------ models


def build_model(name: str, options: dict[str, Any]) -> nn.Module:
    """``lsqbq.models.build(name, **options)``; an unknown name raises ConfigError listing the registered ones."""
    from .models import build, list_models

    if name not in list_models():
        raise ConfigError(f"model.name: unknown model {name!r}; choose one of {', '.join(list_models())}")
    return build(name, **options)


def load_weights(model: nn.Module, state_dict: dict[str, Any], path: str | Path) -> nn.Module:
    """``model.load_state_dict(state_dict)`` (strict); a key or shape mismatch raises CheckpointError naming
    ``path`` and the first differing entries (e.g. another ``model.width``)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith(_ADAPTIVE)]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} in the file, {tuple(v.shape)} in the model" for k, v in own.items()
              if k in state_dict and isinstance(state_dict[k], torch.Tensor) and state_dict[k].shape != v.shape
              and not k.endswith(_ADAPTIVE)]
    problems = ([f"shape of {shapes[0]}"] if shapes else []) + \
               ([f"missing {missing[0]}"] if missing else []) + ([f"unexpected {unexpected[0]}"] if unexpected else [])
    if not problems:
        try:
            model.load_state_dict(state_dict)
            return model
        except RuntimeError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = next((ln for ln in lines[1:] if ln), lines[0] if lines else type(e).__name__)
            problems = [detail[:200]]
    raise CheckpointError(f"{path}: the weights do not fit the model ({'; '.join(problems)}); the model options "
                          "(model.name, width, layers, block, ...) must be those the checkpoint was trained with")


class LoadedModel(NamedTuple):
    """A model rebuilt from a checkpoint: ``model`` (eval mode), its validated ``config``, the raw ``state``."""

    model: nn.Module
    config: Any
    state: dict[str, Any]


def load_model(path: str | Path, map_location: str | torch.device = "cpu",
               options: dict[str, Any] | None = None, state: dict[str, Any] | None = None) -> LoadedModel:
    """Rebuild the model stored in checkpoint ``path`` and load its weights (weights_only load).

    ``options`` override entries of the stored builder options (e.g. ``{"w_quant": "ls-2"}`` for post-training
    quantization with another scheme); ``state`` reuses an already loaded checkpoint dict.
    """
    from .config import from_dict

    state = load(path, map_location, require=MODEL_KEYS) if state is None else state
    try:
        cfg = from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its stored config is not valid ({e}); {_RETRAIN}") from None
    opts = {**state["model_options"], **(options or {})}
    try:
        model = build_model(cfg.model.name, opts)
    except ConfigError:
        raise                                         # an unknown model or scheme name: says which
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model from its options ({_first_line(e)})") from None
    load_weights(model, state["model"], path)
    return LoadedModel(model.eval(), cfg, state)
