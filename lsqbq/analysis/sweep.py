"""The synthetic sweep of ``lsqbq analyze sweep``: the angle of each scheme on rows that go from Gaussian to sparse.

Rows are spike-and-slab: each value is drawn from the spike ``N(0, (SPIKE_SCALE * s)^2)`` with probability ``p`` and
from the slab ``N(0, s^2)`` otherwise, with ``s^2 = 1 / (1 - p + p * SPIKE_SCALE^2)`` so that every row has unit
variance. ``p = 0`` is N(0, 1); as ``p`` grows the rows get a heavier tail (excess kurtosis
``3 (p c^2 + 1 - p) / (p c + 1 - p)^2 - 3`` with ``c = SPIKE_SCALE^2``, :func:`spike_slab_kurtosis`) and more
values near zero. Greedy gf-4 (16 levels) beats optimal ls-2 (4 levels) on Gaussian rows and loses on sparse ones;
:func:`crossing` says where.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .measures import ANGLE_SCHEMES, row_angles, tail_measures

__all__ = ["SPIKE_SCALE", "SWEEP_P", "spike_slab_rows", "spike_slab_kurtosis", "sweep_rows", "crossing"]

#: Standard deviation of the spike relative to the slab's.
SPIKE_SCALE = 0.01
#: Spike weights of the default sweep: Gaussian (0) to 90 % of the values in the spike.
SWEEP_P = tuple(round(0.1 * i, 1) for i in range(10))


def spike_slab_rows(p: float, rows: int, n: int, seed: int = 0) -> torch.Tensor:
    """``(rows, n)`` float64 spike-and-slab sample with spike weight ``p`` (0 <= p < 1) and unit variance."""
    if not 0 <= p < 1:
        raise ValueError(f"spike weight p must be in [0, 1), got {p!r}")
    g = np.random.default_rng(seed)
    slab = 1 / math.sqrt(1 - p + p * SPIKE_SCALE**2)
    scale = np.where(g.random((rows, n)) < p, SPIKE_SCALE * slab, slab)
    return torch.from_numpy(scale * g.standard_normal((rows, n)))


def spike_slab_kurtosis(p: float) -> float:
    """Excess kurtosis of the spike-and-slab density with spike weight ``p``: a scale mixture of two normals,
    ``E x^4 = 3 (p v_0^2 + (1 - p) v_1^2)`` with ``p v_0 + (1 - p) v_1 = 1``."""
    c = SPIKE_SCALE**2
    return 3 * (p * c * c + 1 - p) / (p * c + 1 - p) ** 2 - 3


def sweep_rows(ps: Sequence[float] = SWEEP_P, schemes: Sequence[str] = ANGLE_SCHEMES, rows: int = 32,
               n: int = 2048, seed: int = 0) -> list[dict]:
    """Per spike weight ``p`` and scheme: mean angle over the rows (degrees), its 95 % half-width (normal
    approximation), the rows' standard deviation of the angle, and the rows' mean excess kurtosis and near-zero
    fraction. Sample ``i`` of the sweep uses seed ``seed + i``: the same arguments give the same rows."""
    out = []
    for i, p in enumerate(ps):
        x = spike_slab_rows(p, rows, n, seed + i)
        kurt, near = tail_measures(x)
        for name in schemes:
            ang = row_angles(x, name)
            out.append({"p": float(p), "scheme": name, "rows": rows, "n": n, "angle_deg": float(ang.mean()),
                        "angle_ci95": float(1.96 * ang.std(ddof=1) / math.sqrt(rows)),
                        "angle_std": float(ang.std(ddof=1)), "excess_kurtosis": kurt, "near_zero": near})
    return out


def crossing(df: pd.DataFrame, a: str = "ls-2", b: str = "gf-4") -> float:
    """The first spike weight where ``a``'s angle falls below ``b``'s, linearly interpolated between the sweep's
    points (``p`` of the first point if it already is below; NaN if it never is)."""
    ga = df[df["scheme"] == a].set_index("p")["angle_deg"].sort_index()
    gb = df[df["scheme"] == b].set_index("p")["angle_deg"].sort_index()
    d = (ga - gb).dropna()
    ps, ds = d.index.to_numpy(float), d.to_numpy(float)
    for i, v in enumerate(ds):
        if v < 0:
            if i == 0:
                return float(ps[0])
            return float(ps[i - 1] + (ps[i] - ps[i - 1]) * ds[i - 1] / (ds[i - 1] - v))
    return float("nan")
