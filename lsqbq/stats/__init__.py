"""Statistics of the claims table, one idea per module:

:mod:`~lsqbq.stats.paired_t`      the seed-only paired t interval and p-value;
:mod:`~lsqbq.stats.bootstrap`     paired hierarchical bootstrap of a difference in accuracy over seeds and test
                                  images together (percentile intervals, two-sided p-values);
:mod:`~lsqbq.stats.multiplicity`  Holm's step-down correction, as an adjusted confidence level per claim so that
                                  the adjusted interval and the verdict agree;
:mod:`~lsqbq.stats.equivalence`   one-sided 95 % bounds (the largest differences the data exclude) and the TOST
                                  equivalence test at a stated margin.

Both analyses (:class:`PairedT`, :class:`Bootstrap`) offer ``estimate``, ``interval(level)`` and ``pvalue``.
"""
from .bootstrap import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, Bootstrap, hierarchical_bootstrap, percentile_interval
from .equivalence import EQUIVALENCE_MARGIN, equivalent, one_sided_bounds
from .multiplicity import FAMILY_ALPHA, holm_levels
from .paired_t import PairedT, paired_t

__all__ = ["BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "Bootstrap", "hierarchical_bootstrap", "percentile_interval",
           "EQUIVALENCE_MARGIN", "equivalent", "one_sided_bounds", "FAMILY_ALPHA", "holm_levels", "PairedT",
           "paired_t"]
