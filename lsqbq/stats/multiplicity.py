"""Holm's step-down correction for a family of claims, expressed as one confidence level per claim.

Math: m claims with two-sided p-values p_1..p_m (null: difference 0) at family-wise level alpha. Sort them,
p_(1) <= ... <= p_(m). Holm rejects H_(1), ..., H_(r) where r is the largest rank with
p_(j) <= alpha / (m - j + 1) for every j <= r (the first rank that fails stops the procedure). This controls the
family-wise error rate at alpha for any dependence between the claims (Holm 1979).

Intervals that agree with it: the claim at rank i gets the adjusted level

    L_(i) = 1 - alpha / (m - min(i, r + 1) + 1),

i.e. the level of its own step while the procedure is still rejecting, and the level of the first non-rejected
step from there on. An interval at level L excludes 0 exactly when p <= 1 - L (for intervals and p-values from
the same test), so a rejected claim's interval excludes 0 and a non-rejected claim's (p_(i) >= p_(r+1) >
1 - L_(r+1)) contains it: the verdict read off the adjusted interval is Holm's decision. Ties in p keep the
claims' given order (stable sort), which does not change the set rejected.
"""
from __future__ import annotations

import math
from typing import Sequence

from ..errors import InputError

__all__ = ["FAMILY_ALPHA", "holm_levels"]

#: Family-wise error rate of the accuracy claims.
FAMILY_ALPHA = 0.05


def holm_levels(pvalues: Sequence[float], alpha: float = FAMILY_ALPHA) -> list[float]:
    """Adjusted two-sided confidence level of each claim (same order as ``pvalues``), see the module docstring.

    A NaN p-value (a claim with no interval) takes no part: it gets level NaN and does not count in m.

    Raises:
        InputError: ``alpha`` outside (0, 1) or a p-value outside [0, 1].
    """
    if not 0 < alpha < 1:
        raise InputError(f"holm_levels: alpha must lie in (0, 1), got {alpha}")
    bad = [p for p in pvalues if not math.isnan(p) and not 0 <= p <= 1]
    if bad:
        raise InputError(f"holm_levels: p-values must lie in [0, 1], got {bad[0]}")
    live = sorted((i for i, p in enumerate(pvalues) if not math.isnan(p)), key=lambda i: pvalues[i])
    m = len(live)
    levels = [float("nan")] * len(pvalues)
    stopped = None  # rank (1-based) of the first claim not rejected
    for rank, i in enumerate(live, start=1):
        if stopped is None and pvalues[i] > alpha / (m - rank + 1):
            stopped = rank
        step = rank if stopped is None else stopped
        levels[i] = 1 - alpha / (m - step + 1)
    return levels
