"""What an unresolved claim still says: one-sided 95 % bounds and the TOST equivalence test.

One-sided bounds: for a difference d = A - B, the lower and upper ends (L, U) of its two-sided 90 % interval
(t or bootstrap) are one-sided 95 % confidence bounds: "d > U is excluded" and "d < L is excluded", each at 95 %.

Equivalence (two one-sided tests, Schuirmann 1987): with margin delta, test H0: d <= -delta and H0: d >= +delta,
each at 5 %. Both are rejected, and "A and B are equivalent within ±delta" holds at 5 %, exactly when
-delta < L and U < +delta. The margin is :data:`EQUIVALENCE_MARGIN` points of top-1, fixed in advance and the same
for every accuracy claim (not derived from the data). The equivalence test is not multiplicity-adjusted.
"""
from __future__ import annotations

import math

__all__ = ["EQUIVALENCE_MARGIN", "ONE_SIDED_LEVEL", "one_sided_bounds", "equivalent"]

#: Equivalence margin, top-1 points: half a point of test accuracy, a fixed margin for every accuracy claim.
EQUIVALENCE_MARGIN = 0.5
#: Confidence of each one-sided bound (each TOST test is at 1 - 0.95 = 5 %).
ONE_SIDED_LEVEL = 0.95


def one_sided_bounds(analysis, level: float = ONE_SIDED_LEVEL) -> tuple[float, float]:
    """``(L, U)``: the ends of the two-sided ``2 level - 1`` interval of ``analysis`` (anything with
    ``interval(level)``: :class:`~lsqbq.stats.paired_t.PairedT` or :class:`~lsqbq.stats.bootstrap.Bootstrap`)."""
    return analysis.interval(2 * level - 1)


def equivalent(low: float, high: float, margin: float = EQUIVALENCE_MARGIN) -> bool:
    """TOST at 5 % per side: True when both one-sided 95 % bounds lie strictly inside ``(-margin, +margin)``."""
    if math.isnan(low) or math.isnan(high):
        return False
    return -margin < low and high < margin
