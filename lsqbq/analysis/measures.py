"""What the analyses measure: quantization error against the Lloyd-Max bound, post-training weight quantization,
and the angle between activations and their quantization.

Definitions (rows quantized independently, errors pooled over all rows of a source):
    MSE = sum (x - x_q)^2 / N,   relative error = ||x - x_q||_2 / ||x||_2,
    angle = arccos(<x, x_q> / (||x|| ||x_q||)) in degrees (Anderson & Berg), per row;
    tail of a row: excess kurtosis E (x - m)^4 / s^4 - 3 and the fraction of values with |x| < 0.1 s.
"""
from __future__ import annotations

import copy
import math
from typing import Iterable, Sequence

import numpy as np
import torch

from ..schemes import get_scheme, list_schemes, quantize
from .hooks import quantizable_layers
from .lloyd_max import DISTRIBUTIONS, lloyd_max

__all__ = ["ERROR_SCHEMES", "REFERENCE_SCHEMES", "PTQ_SCHEMES", "ANGLE_SCHEMES", "synthetic_rows", "error_rows",
           "quantize_weights", "NEAR_ZERO", "tail_measures", "row_angles", "angle_rows"]

ERROR_SCHEMES = ("fp", "ls-1", "gf-2", "gf-3", "gf-4", "ls-T", "ls-2")
PTQ_SCHEMES = ("fp", "gf-1", "gf-2", "gf-3", "gf-4", "ls-T", "ls-2")
ANGLE_SCHEMES = ("ls-1", "gf-2", "gf-3", "gf-4", "ls-T", "ls-2")
#: The registered re-implementations of the official every-third-value search, measured beside the exact ones.
REFERENCE_SCHEMES = tuple(n for n in list_schemes(examples=True) if not get_scheme(n).trainable)


def synthetic_rows(dist: str, rows: int, n: int, seed: int = 0) -> torch.Tensor:
    """``(rows, n)`` float64 sample of a unit-variance ``normal``, ``laplace`` or ``uniform`` distribution."""
    g = np.random.default_rng(seed)
    if dist == "normal":
        x = g.standard_normal((rows, n))
    elif dist == "laplace":
        x = g.laplace(0.0, 1 / math.sqrt(2), (rows, n))
    elif dist == "uniform":
        x = g.uniform(-math.sqrt(3), math.sqrt(3), (rows, n))
    else:
        raise ValueError(f"unknown distribution {dist!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    return torch.from_numpy(x)


def _row_lloyd(rows: Sequence[torch.Tensor], levels: int) -> tuple[float, int]:
    """Pooled (sum of squared errors, count) of the per-row Lloyd-Max quantizer with ``levels`` levels."""
    sse, count = 0.0, 0
    for r in rows:
        v = r.detach().double().cpu().numpy().ravel()
        _, mse = lloyd_max(v, levels)
        sse += mse * v.size
        count += v.size
    return sse, count


def error_rows(source: str, blocks: Iterable[torch.Tensor], schemes: Sequence[str] = ERROR_SCHEMES,
               references: bool = True, lloyd_rows: int | None = None) -> list[dict]:
    """Quantization error of every scheme on ``blocks`` (2-D tensors; each row quantized independently).

    Errors are pooled over all blocks: ``mse = sum (x - x_q)^2 / N``, ``rel_error = ||x - x_q|| / ||x||``.
    ``lloyd_max_mse`` is the pooled error of the per-row Lloyd-Max quantizer with the scheme's number of levels
    (computed on at most ``lloyd_rows`` rows per block, all if None); ``excess = mse / lloyd_max_mse - 1``.
    With ``references`` the official skip-3 searches (:data:`REFERENCE_SCHEMES`) are measured too.
    """
    blocks = [b.detach().double().cpu() for b in blocks]
    names = list(schemes) + (list(REFERENCE_SCHEMES) if references else [])
    n = sum(b.numel() for b in blocks)
    energy = float(sum(b.square().sum() for b in blocks))
    lloyd_cache: dict[int, float] = {}
    out = []
    for name in names:
        sse = sum(float((b - quantize(b, name)).square().sum()) for b in blocks)
        levels = get_scheme(name).levels
        row = {"source": source, "scheme": name, "levels": levels or "", "n_values": n,
               "mse": sse / n, "rel_error": math.sqrt(sse / energy) if energy > 0 else 0.0}
        if levels:
            if levels not in lloyd_cache:
                s_l, c_l = 0.0, 0
                for b in blocks:
                    part = b if lloyd_rows is None else b[:lloyd_rows]
                    s, c = _row_lloyd(list(part), levels)
                    s_l, c_l = s_l + s, c_l + c
                lloyd_cache[levels] = s_l / c_l
            row["lloyd_max_mse"] = lloyd_cache[levels]
            row["excess"] = row["mse"] / row["lloyd_max_mse"] - 1 if row["lloyd_max_mse"] > 0 else 0.0
        else:
            row["lloyd_max_mse"] = 0.0
            row["excess"] = 0.0
        out.append(row)
    return out


def quantize_weights(model: torch.nn.Module, scheme: str) -> torch.nn.Module:
    """A copy of ``model`` whose quantizable layers hold ``W_q``: every output channel (row of ``W`` reshaped to
    ``(out, -1)``) quantized with ``scheme`` (post-training quantization; activations untouched)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for _, layer in quantizable_layers(m):
            w = layer.weight
            w.copy_(quantize(w.reshape(w.shape[0], -1), scheme).reshape(w.shape))
    return m


def _ci95(v: np.ndarray) -> float:
    """Half-width of the normal-approximation 95 % interval of a mean: 1.96 s / sqrt(n) (0 for one value)."""
    return 1.96 * v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else 0.0


#: A value counts as near zero when ``|x| < NEAR_ZERO * std`` of its row.
NEAR_ZERO = 0.1


def tail_measures(x: torch.Tensor) -> tuple[float, float]:
    """``(excess kurtosis, near-zero fraction)`` of the rows of ``x``, each computed per row and averaged over rows:
    ``E (x - m)^4 / s^4 - 3`` (0 for a normal, > 0 for a heavier tail) and the fraction of values with
    ``|x| < NEAR_ZERO * s`` (0.080 for a normal), ``m``, ``s`` the row's mean and (population) standard deviation.
    Constant rows are left out (NaN when every row is constant)."""
    x = x.detach().double().flatten(1)
    c = x - x.mean(1, keepdim=True)
    var = c.square().mean(1)
    ok = var > 0
    if not bool(ok.any()):
        return float("nan"), float("nan")
    kurt = c[ok].pow(4).mean(1) / var[ok].square() - 3
    near = (x[ok].abs() < NEAR_ZERO * var[ok].sqrt().unsqueeze(1)).double().mean(1)
    return float(kurt.mean()), float(near.mean())


def row_angles(x: torch.Tensor, scheme: str) -> np.ndarray:
    """Angle in degrees between every row of ``x`` and its quantization with ``scheme``."""
    x = x.detach().double()
    xq = quantize(x, scheme)
    cos = (x * xq).sum(1) / (x.norm(dim=1) * xq.norm(dim=1)).clamp_min(1e-300)
    return torch.rad2deg(torch.acos(cos.clamp(-1, 1))).numpy()


def angle_rows(layers: Sequence[str], acts: Sequence[torch.Tensor], schemes: Sequence[str] = ANGLE_SCHEMES,
               **labels) -> list[dict]:
    """Per layer and scheme: mean angle (degrees) and relative error between each row (image) of the
    activations and its quantization, each with the half-width of its 95 % interval over the rows; the standard
    deviation of the angle over the rows (``angle_std``, the spread across images); and the layer's tail measures
    (:func:`tail_measures`) of the rows the quantizers see. ``labels`` (e.g. ``input="teacher"``) go on every row."""
    rows = []
    for li, (layer, x) in enumerate(zip(layers, acts)):
        x = x.detach().double()
        kurt, near = tail_measures(x)
        for name in schemes:
            ang = row_angles(x, name)
            xq = quantize(x, name)
            rel = ((x - xq).norm(dim=1) / x.norm(dim=1).clamp_min(1e-300)).numpy()
            rows.append({**labels, "layer_index": li, "layer": layer, "scheme": name, "images": x.shape[0],
                         "angle_deg": float(ang.mean()), "angle_ci95": float(_ci95(ang)),
                         "angle_std": float(ang.std(ddof=1)) if ang.size > 1 else 0.0,
                         "rel_error": float(rel.mean()), "rel_error_ci95": float(_ci95(rel)),
                         "excess_kurtosis": kurt, "near_zero": near})
    return rows
