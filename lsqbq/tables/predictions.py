"""Per-image predictions of the evaluated runs, joined to their training runs: the input of the test-set-aware
intervals of the claims table.

Each evaluation writes ``predictions.npy`` beside its ``metrics.json`` (format and reader:
:mod:`lsqbq.predictions`: ``target``, ``pred_<mode>``, ``p_true_<mode>`` per test image, in the test set's order).
A file is joined to its training run through the ``source_run_id`` of that ``metrics.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import DataError
from ..predictions import read_predictions

__all__ = ["FILENAME", "load_predictions", "correct"]

FILENAME = "predictions.npy"


def load_predictions(evaluate: Iterable[str | Path]) -> dict[str, np.ndarray]:
    """``{training run id: predictions}`` for every evaluation ``metrics.json`` with a ``predictions.npy`` beside
    it (evaluations without one are skipped: their claims fall back to the seed-only interval).

    Raises:
        DataError: an unreadable evaluation, one naming no ``source_run_id``, or a malformed predictions file.
    """
    out = {}
    for p in evaluate:
        p = Path(p)
        npy = p.with_name(FILENAME)
        if not npy.is_file():
            continue
        try:
            run_id = json.loads(p.read_text()).get("source_run_id")
        except (OSError, ValueError) as exc:
            raise DataError(f"{p}: cannot read the evaluation ({exc}); rerun `lsqbq evaluate`") from exc
        if not run_id:
            raise DataError(f"{p}: evaluation names no source_run_id, so {npy} cannot be joined to its run")
        out[str(run_id)] = read_predictions(npy)
    return out


def correct(predictions: np.ndarray, mode: str) -> np.ndarray | None:
    """``(N,)`` booleans: image i classified correctly with scale mode ``mode``; None when the mode is absent."""
    field = f"pred_{mode}"
    if field not in (predictions.dtype.names or ()):
        return None
    return predictions[field] == predictions["target"]
