"""Paired hierarchical bootstrap of a difference in test accuracy over seeds and test images together.

Data: for S units (a seed, with the teacher its students share) and the N images of the shared test set,
``correct_a[s, i]`` and ``correct_b[s, i]`` say whether the model of scheme A / B of unit s classifies image i
correctly. The estimate is the mean paired difference in accuracy, in points,

    d = 100 / (S N) * sum_s sum_i D[s, i],        D = correct_a - correct_b   (values -1, 0, +1).

Resampling (one replicate): draw S units with replacement (counts w ~ Multinomial(S, 1/S)) and, independently,
N images with replacement from the shared test set (counts v ~ Multinomial(N, 1/N)); the same image draw is used
for every unit and for both schemes, since all runs are scored on the same images (seeds and images are crossed
random factors, and A and B stay paired at both levels). The replicate is

    d* = 100 / (S N) * w^T D v.

Only images on which A and B differ for some unit (columns of D not all zero, M of them) change d*. Their counts
are drawn exactly: the number of the N draws that land on them is T ~ Binomial(N, M / N), and given T they are
Multinomial(T, 1/M); the other columns contribute zero whatever their counts.

Interval and p-value (percentile bootstrap over B replicates sorted as x_(1) <= ... <= x_(B)): the two-sided
level-L interval is [x_(j+1), x_(B-j)] with j = floor(B (1 - L) / 2), and the two-sided p-value of d = 0 is
p = min(1, 2 min(#{d* <= 0}, #{d* >= 0}) / B). With these definitions the level-L interval excludes 0 exactly when
p <= 1 - L, so a verdict read off an interval and a test on p agree.

Caveats: resampling both crossed factors counts the per-(seed, image) variation once at each level, so the
interval is conservative when that variation dominates (McCullagh 2000, "Resampling and exchangeable arrays";
about 25 % above the true spread in the simulation of tests/unit/test_stats.py, 8 seeds and 300 images); with few
units the seed level alone is narrow (variance (S - 1)/S of the sample variance, and only 10 distinct unit draws
for S = 3). The seed-only t interval is reported beside it.

Determinism: replicates are drawn in chunks from ``numpy.random.default_rng(BOOTSTRAP_SEED)``, so the same inputs
give the same replicates, bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "Bootstrap", "hierarchical_bootstrap", "percentile_interval",
           "bootstrap_pvalue"]

#: Bootstrap replicates per claim: enough for the tails of Holm-adjusted levels (alpha / m = 0.05 / 14 leaves
#: about 18 replicates beyond each end of the interval).
BOOTSTRAP_RESAMPLES = 10_000
#: Seed of the bootstrap's random generator (fixed: tables are reproducible byte for byte).
BOOTSTRAP_SEED = 20_240_521
_CHUNK = 500  # replicates drawn at once (memory: CHUNK x M counts)


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """``[x_(j+1), x_(B-j)]`` with ``j = floor(B (1 - level) / 2)`` of the sorted replicates (module docstring)."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    if x.size == 0 or math.isnan(level):
        return float("nan"), float("nan")
    j = min(int(math.floor(x.size * (1 - level) / 2 + 1e-9)), (x.size - 1) // 2)
    return float(x[j]), float(x[x.size - 1 - j])


def bootstrap_pvalue(samples: np.ndarray) -> float:
    """Two-sided p-value of a zero difference: ``min(1, 2 min(#{d* <= 0}, #{d* >= 0}) / B)``."""
    x = np.asarray(samples, dtype=np.float64)
    return min(1.0, 2 * min(int((x <= 0).sum()), int((x >= 0).sum())) / x.size)


@dataclass(frozen=True)
class Bootstrap:
    """A paired difference (points) with its bootstrap replicates."""

    estimate: float
    samples: np.ndarray  # (B,) replicates d*
    units: int  # S
    images: int  # N

    def interval(self, level: float) -> tuple[float, float]:
        """Two-sided percentile interval at ``level``."""
        return percentile_interval(self.samples, level)

    @property
    def pvalue(self) -> float:
        return bootstrap_pvalue(self.samples)


def _check(correct_a: np.ndarray, correct_b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.ndim != 2 or a.shape != b.shape:
        raise InputError(f"hierarchical_bootstrap: correct_a and correct_b must both be (units, images), got "
                         f"{a.shape} and {b.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError(f"hierarchical_bootstrap: need at least one unit and one image, got shape {a.shape}")
    return a.astype(np.int8) - b.astype(np.int8)  # (S, N) in {-1, 0, 1}


def hierarchical_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                           seed: int = BOOTSTRAP_SEED) -> Bootstrap:
    """Bootstrap of ``100 * mean(correct_a - correct_b)`` resampling units and images (module docstring).

    Shapes: ``correct_a, correct_b: (S, N)`` booleans, row s of both from the same unit -> ``samples: (resamples,)``.
    Cost: O(S N) once, then O(resamples (S + M) + resamples S M / CHUNK) with M the images where A and B differ.

    Raises:
        InputError: shapes differ or are empty, or ``resamples < 1``.
    """
    if resamples < 1:
        raise InputError(f"hierarchical_bootstrap: resamples must be >= 1, got {resamples}")
    d = _check(correct_a, correct_b)
    s, n = d.shape
    differ = np.flatnonzero(np.any(d != 0, axis=0))
    dj = d[:, differ].astype(np.float64)  # (S, M)
    m = differ.size
    rng = np.random.default_rng(seed)
    out = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, _CHUNK):
        b = min(_CHUNK, resamples - start)
        w = rng.multinomial(s, np.full(s, 1 / s), size=b)  # (b, S) unit counts
        if m == 0:
            out[start:start + b] = 0.0
            continue
        total = rng.binomial(n, m / n, size=b)  # (b,) draws landing on the M informative images
        v = rng.multinomial(total, np.full(m, 1 / m))  # (b, M) their counts
        out[start:start + b] = ((w @ dj) * v).sum(axis=1)
    return Bootstrap(estimate=100 * float(d.mean()), samples=100 * out / (s * n), units=s, images=n)
