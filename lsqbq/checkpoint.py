"""Checkpoint files: atomic writes and safe (``weights_only``) loads.

A checkpoint is a plain dict of tensors and Python primitives so that
``torch.load(path, weights_only=True)`` can read it without unpickling arbitrary objects::

    {"format": 1, "config": {...}, "epoch": int (epochs completed), "model": state_dict,
     "optimizer": state_dict, "schedule": {"step": int}, "rng": {...}, "metrics": {...}, "history": [...]}
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_atomic", "load", "rng_state", "set_rng_state", "FORMAT"]

FORMAT = 1


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` to ``path`` via a temporary file in the same directory and ``os.replace``.

    A reader (or a run killed mid-write) sees either the previous complete file or the new one,
    never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a missing file names the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path}: not an lsqbq checkpoint (format {FORMAT})")
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
