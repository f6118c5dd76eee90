"""Per-image predictions of one evaluation: what a claim's test-set uncertainty is computed from.

One file per evaluated checkpoint, ``predictions.npy``: a NumPy structured array (``np.save``; read with
``allow_pickle=False``) with one row per test image, in the test set's order, and the fields

- ``target``: the true class;
- ``pred_<mode>``: the predicted class (arg-max of the logits);
- ``p_true_<mode>``: the softmax probability of the true class, float16;

for every activation-scale mode evaluated, ``<mode>`` in ``fitted`` / ``stored``. A model whose activations are not
quantized has one mode, written as ``fitted`` (the model as it runs). Classes are ``uint8`` up to 256 classes, else
``uint16``. The file is a pure function of the logits (no timestamps), so equal evaluations are equal files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import DataError

__all__ = ["PredictionLog", "read_predictions", "MODES"]

MODES = ("fitted", "stored")


class PredictionLog:
    """Collects ``(logits, target)`` batches per mode and writes them as one ``predictions.npy``."""

    def __init__(self) -> None:
        self._target: list[Tensor] = []
        self._pred: dict[str, list[Tensor]] = {}
        self._p_true: dict[str, list[Tensor]] = {}

    def add_target(self, target: Tensor) -> None:
        self._target.append(target.detach().cpu())

    def add(self, mode: str, logits: Tensor, target: Tensor) -> None:
        """Record one batch of ``logits: (B, C)`` for ``mode`` (call in the same batch order as :meth:`add_target`)."""
        if mode not in MODES:
            raise ValueError(f"prediction mode must be one of {MODES}, got {mode!r}")
        logits = logits.detach().float().cpu()
        self._pred.setdefault(mode, []).append(logits.argmax(1))
        p = torch.softmax(logits, dim=1).gather(1, target.cpu().long()[:, None])[:, 0]
        self._p_true.setdefault(mode, []).append(p)

    def to_array(self, num_classes: int) -> np.ndarray:
        cls = np.uint8 if num_classes <= 256 else np.uint16
        modes = [m for m in MODES if m in self._pred]
        target = torch.cat(self._target).numpy() if self._target else np.zeros(0)
        dtype = [("target", cls)] + [f for m in modes for f in ((f"pred_{m}", cls), (f"p_true_{m}", np.float16))]
        out = np.zeros(len(target), dtype=dtype)
        out["target"] = target
        for m in modes:
            pred, p_true = torch.cat(self._pred[m]).numpy(), torch.cat(self._p_true[m]).numpy()
            if len(pred) != len(target):
                raise ValueError(f"mode {m}: {len(pred)} predictions for {len(target)} targets")
            out[f"pred_{m}"], out[f"p_true_{m}"] = pred, p_true
        return out

    def write(self, path: str | Path, num_classes: int) -> None:
        """Write atomically (a temporary file renamed over ``path``)."""
        from .atomic import atomic_write

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        array = self.to_array(num_classes)
        atomic_write(path, "wb", lambda f: np.save(f, array, allow_pickle=False))


def read_predictions(path: str | Path) -> np.ndarray:
    """The structured array written by :class:`PredictionLog`; :class:`DataError` naming the file otherwise."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a predictions file ({e})") from None
    names = arr.dtype.names or ()
    if arr.ndim != 1 or "target" not in names or not any(n.startswith("pred_") for n in names):
        raise DataError(f"{path}: not a predictions file (fields {list(names)}; expected target, pred_<mode>, "
                        "p_true_<mode>)")
    return arr
