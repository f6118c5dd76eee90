"""The seed-only paired t analysis of a difference: n paired differences d_1..d_n (one per seed / teacher).

Math: mean d = sum d_i / n, s = sqrt(sum (d_i - d)^2 / (n - 1)), t = d / (s / sqrt n) with n - 1 degrees of
freedom. Two-sided level-L interval d ± t_{(1+L)/2, n-1} s / sqrt n; two-sided p-value 2 (1 - F_{n-1}(|t|)).
The level-L interval excludes 0 exactly when p < 1 - L. With n < 2 there is no interval (NaN) and p is NaN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["PairedT", "paired_t"]


@dataclass(frozen=True)
class PairedT:
    """Mean paired difference with its t analysis."""

    estimate: float
    sd: float
    n: int

    def interval(self, level: float) -> tuple[float, float]:
        """Two-sided t interval at ``level`` (NaN ends when n < 2 or the level is NaN)."""
        from scipy.stats import t

        if self.n < 2 or math.isnan(level):
            return float("nan"), float("nan")
        half = float(t.ppf(0.5 + level / 2, self.n - 1)) * self.sd / math.sqrt(self.n)
        return self.estimate - half, self.estimate + half

    @property
    def pvalue(self) -> float:
        from scipy.stats import t

        if self.n < 2:
            return float("nan")
        if self.sd == 0:
            return 0.0 if self.estimate != 0 else 1.0
        return float(2 * t.sf(abs(self.estimate) / (self.sd / math.sqrt(self.n)), self.n - 1))


def paired_t(differences: Sequence[float]) -> PairedT:
    """:class:`PairedT` of the non-NaN ``differences``."""
    x = [float(v) for v in differences if not math.isnan(float(v))]
    n = len(x)
    mean = sum(x) / n if n else float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1)) if n > 1 else float("nan")
    return PairedT(estimate=mean, sd=sd, n=n)
