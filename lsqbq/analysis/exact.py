"""A foldable scheme against the Lloyd-Max optimum on a unit-variance density, computed rather than sampled.

Math: the scheme is fitted once to the density's quantile grid x_j = F^{-1}((j - 1/2) / n), j = 1..n (a
deterministic n-point stand-in for the density); its codebook {sum_i s_i v_i : s in {-1, +1}^k} is then scored on
the density itself by :func:`~lsqbq.analysis.lloyd_max.codebook_mse` (adaptive quadrature), and compared with
:func:`~lsqbq.analysis.lloyd_max.lloyd_max_exact` with the same number of levels. Both MSEs are exact up to
quadrature (~1e-13); the codebook fitted on the grid differs from the density's optimal one by O(1/n), which
raises its MSE by O(1/n^2) only (the MSE is stationary at the optimum). So a scheme that is the optimal
quantizer with its number of levels shows a relative excess below :data:`EXACT_RTOL`, and one that is not
(gf-2, ls-1 with more levels available) shows an excess orders of magnitude larger.
"""
from __future__ import annotations

import itertools

import numpy as np

from .lloyd_max import codebook_mse, lloyd_max_exact, unit_variance

__all__ = ["GRID_POINTS", "EXACT_RTOL", "scheme_codebook", "scheme_mse_exact", "excess_over_lloyd_max"]

#: Points of the quantile grid the scheme is fitted to.
GRID_POINTS = 1 << 18
#: Numerical tolerance of the exact comparison: |MSE / Lloyd-Max MSE - 1| below this counts as equal.
EXACT_RTOL = 1e-6


def scheme_codebook(scheme: str, dist: str, points: int = GRID_POINTS) -> np.ndarray:
    """Sorted distinct levels of ``scheme`` fitted to the ``points``-point quantile grid of ``dist``."""
    import torch

    from ..schemes import fit

    grid = unit_variance(dist).ppf((np.arange(points) + 0.5) / points)  # (n,)
    v = fit(torch.from_numpy(grid).reshape(1, -1), scheme)[0].double().numpy()  # (k,)
    levels = {round(float(np.dot(s, v)), 15) for s in itertools.product((-1.0, 1.0), repeat=v.size)}
    return np.array(sorted(levels))


def scheme_mse_exact(scheme: str, dist: str, points: int = GRID_POINTS) -> float:
    """E[(X - q(X))^2] of ``scheme``'s codebook (fitted on the quantile grid) on the density ``dist``."""
    return codebook_mse(dist, scheme_codebook(scheme, dist, points))


def excess_over_lloyd_max(scheme: str, dist: str, points: int = GRID_POINTS) -> tuple[float, float, int]:
    """``(scheme MSE, Lloyd-Max MSE, levels)`` on ``dist``, Lloyd-Max with as many levels as the codebook."""
    code = scheme_codebook(scheme, dist, points)
    return codebook_mse(dist, code), lloyd_max_exact(dist, code.size)[1], int(code.size)
