"""The columns of the claims table and the verdict read off an interval.

Verdict of a claim "A > B" (``sign = +1``; "A below B": ``sign = -1``) from the interval [lo, hi] of the
difference A - B and, for accuracy claims, the one-sided 95 % bounds (L, U) of that difference:
    reproduced                      sign * lo > 0 (the whole interval on the claimed side),
    contradicted                    sign * hi < 0 (the whole interval on the other side),
    equivalent within ±delta        otherwise, when -delta < lo and hi < +delta (two one-sided tests at the level of
                                    [lo, hi], :mod:`lsqbq.stats.equivalence`),
    not separable at this scale     otherwise (the interval holds 0, or fewer than two pairs give no interval).
For accuracy claims [lo, hi] is the Holm-adjusted interval (:mod:`lsqbq.stats.multiplicity`), so equivalence too is
claimed at the family-wise level; the unadjusted one-sided 95 % bounds (L, U) are reported beside it as the largest
differences the data rule out on their own.
"""
from __future__ import annotations

import math

from ..stats import EQUIVALENCE_MARGIN, equivalent

__all__ = ["REPRODUCED", "NOT_SEPARABLE", "CONTRADICTED", "EQUIVALENT", "COLUMNS", "TEXT_COLUMNS", "verdict",
           "decide", "row"]

REPRODUCED, NOT_SEPARABLE, CONTRADICTED = "reproduced", "not separable at this scale", "contradicted"
EQUIVALENT = f"equivalent within ±{EQUIVALENCE_MARGIN:g} points"

COLUMNS = (
    "kind", "claim", "paper", "model", "setting", "scales", "ours",
    "difference", "ci_low", "ci_high", "method",  # estimate and its unadjusted 95 % interval by `method`
    "t_low", "t_high",  # seed-only paired t interval, 95 %
    "p_value", "holm_level", "holm_low", "holm_high",  # two-sided p of d = 0; Holm-adjusted level and interval
    "bound_low", "bound_high", "margin",  # one-sided 95 % bounds by `method`; equivalence margin
    "n", "images", "unit", "pairing", "verdict")
TEXT_COLUMNS = ("kind", "claim", "paper", "model", "setting", "scales", "ours", "method", "unit", "pairing",
                "verdict")


def verdict(lo: float, hi: float, sign: int = 1) -> str:
    """Verdict for the claim ``sign * difference > 0`` from the interval ``[lo, hi]`` of the difference."""
    if math.isnan(lo) or math.isnan(hi):
        return NOT_SEPARABLE
    lo, hi = sorted((sign * lo, sign * hi))
    return REPRODUCED if lo > 0 else CONTRADICTED if hi < 0 else NOT_SEPARABLE


def decide(lo: float, hi: float, bound_low: float, bound_high: float, margin: float = EQUIVALENCE_MARGIN) -> str:
    """:func:`verdict` of ``[lo, hi]``, or :data:`EQUIVALENT` for an unresolved claim whose interval ``[lo, hi]``
    (Holm-adjusted for the accuracy claims) lies within ``±margin``; ``bound_low`` / ``bound_high`` are not used for
    the verdict (they are the unadjusted one-sided bounds shown beside it)."""
    v = verdict(lo, hi)
    if v == NOT_SEPARABLE and equivalent(lo, hi, margin):
        return f"equivalent within ±{margin:g} points"
    return v


def row(**values) -> dict:
    """One row of the claims table: the given columns, the rest empty (text) or NaN (numbers)."""
    unknown = set(values) - set(COLUMNS) - {"analysis"}
    if unknown:
        raise KeyError(f"claims row: unknown columns {sorted(unknown)}")
    return {c: values.get(c, "" if c in TEXT_COLUMNS else float("nan")) for c in COLUMNS} | (
        {"analysis": values["analysis"]} if "analysis" in values else {})
