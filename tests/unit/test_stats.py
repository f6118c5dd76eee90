"""lsqbq.stats: the hierarchical bootstrap against exact enumeration and simulated coverage, Holm against adjusted
p-values, the paired t analysis and TOST against scipy."""
import itertools
import math

import numpy as np
import pytest
from scipy import stats as S

from lsqbq.errors import InputError
from lsqbq.stats import (EQUIVALENCE_MARGIN, equivalent, hierarchical_bootstrap, holm_levels, one_sided_bounds,
                         paired_t, percentile_interval)
from lsqbq.stats.bootstrap import bootstrap_pvalue


def test_bootstrap_matches_exact_enumeration_on_a_tiny_case():
    a = np.array([[1, 0, 1, 1], [1, 1, 0, 0]], dtype=bool)  # (S=2, N=4); image 3... differs, image 0 never
    b = np.array([[1, 1, 0, 1], [1, 0, 0, 1]], dtype=bool)
    d = a.astype(int) - b.astype(int)
    s, n = d.shape
    exact = []  # every ordered draw of units and of images is equally likely
    for units in itertools.product(range(s), repeat=s):
        for images in itertools.product(range(n), repeat=n):
            exact.append(100 * d[np.ix_(units, images)].mean())
    exact = np.array(exact)
    boot = hierarchical_bootstrap(a, b, resamples=40_000, seed=3)
    assert boot.estimate == pytest.approx(100 * d.mean())
    assert boot.samples.mean() == pytest.approx(exact.mean(), abs=0.3)
    assert boot.samples.std() == pytest.approx(exact.std(), rel=0.02)
    values = np.unique(exact)
    cdf_exact = np.array([(exact <= v).mean() for v in values])
    cdf_boot = np.array([(boot.samples <= v + 1e-9).mean() for v in values])
    assert np.max(np.abs(cdf_exact - cdf_boot)) < 0.01  # Kolmogorov distance, 40,000 replicates


SCALE = math.sqrt(1 + 1 + 0.05**2 + 1)  # sd of the latent score below


def _simulate(rng, seeds: int, images: int, mu_a: float, mu_b: float):
    """Correctness of A and B: image difficulty u_i shared by all runs, an image effect g_i per scheme shared by
    its seeds (the images a scheme gets wrong), a per-run offset (sd 0.05) and per-(run, image) noise:
    P(correct) over everything = Phi(mu / SCALE)."""
    u = rng.standard_normal(images)
    out = []
    for mu in (mu_a, mu_b):
        g = rng.standard_normal(images)
        offset = 0.05 * rng.standard_normal((seeds, 1))
        out.append(u + g + mu + offset + rng.standard_normal((seeds, images)) > 0)
    return out


def test_bootstrap_covers_a_known_difference_where_seed_only_t_does_not():
    rng = np.random.default_rng(0)
    mu_a, mu_b = 1.3, 1.2
    truth = 100 * (S.norm.cdf(mu_a / SCALE) - S.norm.cdf(mu_b / SCALE))
    boot_hits = t_hits = 0
    estimates, spreads = [], []
    trials = 150
    for i in range(trials):
        a, b = _simulate(rng, seeds=8, images=300, mu_a=mu_a, mu_b=mu_b)
        boot = hierarchical_bootstrap(a, b, resamples=400, seed=i)
        lo, hi = boot.interval(0.9)
        boot_hits += lo <= truth <= hi
        estimates.append(boot.estimate)
        spreads.append(boot.samples.std())
        tlo, thi = paired_t(100 * (a.mean(axis=1) - b.mean(axis=1))).interval(0.9)
        t_hits += tlo <= truth <= thi
    # The test images are a sample too: an interval over seeds alone misses it; the bootstrap covers at least
    # the nominal 90 %. Resampling both crossed factors counts the per-(seed, image) noise more than once
    # (McCullagh 2000), so it is conservative: its spread exceeds the true one, but by less than a factor 2.
    assert boot_hits / trials >= 0.86
    assert t_hits / trials < 0.7
    ratio = np.mean(spreads) / np.std(estimates)
    assert 1.0 < ratio < 2.0
    assert np.mean(estimates) == pytest.approx(truth, abs=3 * np.std(estimates) / math.sqrt(trials))


def test_bootstrap_is_deterministic_and_seeded():
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 500)) < 0.9, rng.random((3, 500)) < 0.88
    first, again = hierarchical_bootstrap(a, b, resamples=1000), hierarchical_bootstrap(a, b, resamples=1000)
    assert np.array_equal(first.samples, again.samples)
    assert not np.array_equal(first.samples, hierarchical_bootstrap(a, b, resamples=1000, seed=7).samples)


def test_identical_models_give_a_point_interval():
    a = np.random.default_rng(2).random((3, 50)) < 0.5
    boot = hierarchical_bootstrap(a, a.copy(), resamples=100)
    assert boot.interval(0.95) == (0.0, 0.0) and boot.pvalue == 1.0


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99, 0.996, 0.5])
def test_percentile_interval_excludes_zero_exactly_when_p_is_small(level):
    rng = np.random.default_rng(4)
    for shift in np.linspace(-0.3, 0.3, 61):
        x = np.round(rng.standard_normal(400) * 0.1 + shift, 2)  # ties at zero included
        lo, hi = percentile_interval(x, level)
        assert (lo > 0 or hi < 0) == (bootstrap_pvalue(x) <= 1 - level + 1e-12)


def _holm_reference(p, alpha):
    """Holm's adjusted p-values: p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)); rejected when <= alpha."""
    order = np.argsort(p, kind="stable")
    m = len(p)
    adj = np.maximum.accumulate([min(1.0, (m - j) * p[i]) for j, i in enumerate(order)])
    out = np.empty(m, dtype=bool)
    out[order] = adj <= alpha
    return out


def test_holm_levels_reject_what_holm_rejects():
    rng = np.random.default_rng(5)
    for _ in range(300):
        m = int(rng.integers(1, 15))
        p = rng.random(m) ** rng.uniform(1, 6)  # many small p-values
        levels = holm_levels(p.tolist(), 0.05)
        assert np.array_equal(np.array([pi <= 1 - lv + 1e-15 for pi, lv in zip(p, levels)]), _holm_reference(p, 0.05))


def test_holm_levels_worked_example_and_missing_values():
    levels = holm_levels([0.01, 0.04, 0.03, float("nan"), 0.2])
    # m = 4: 0.01 <= 0.05/4 is rejected (level 1 - 0.0125); 0.03 > 0.05/3 stops: it and the rest at 1 - 0.05/3
    assert levels[0] == pytest.approx(0.9875) and math.isnan(levels[3])
    assert levels[1] == levels[2] == levels[4] == pytest.approx(1 - 0.05 / 3)


@pytest.mark.parametrize("bad, message", [
    (dict(pvalues=[0.1, 1.5]), "p-values must lie in [0, 1], got 1.5"),
    (dict(pvalues=[0.1], alpha=0.0), "alpha must lie in (0, 1), got 0.0"),
])
def test_holm_levels_rejects_bad_input(bad, message):
    with pytest.raises(InputError, match=re_escape(message)):
        holm_levels(**bad)


def re_escape(s: str) -> str:
    import re

    return re.escape(s)


def test_paired_t_matches_scipy():
    d = [0.5, 0.7, 0.4, 0.1]
    t = paired_t(d)
    ref = S.ttest_1samp(d, 0.0)
    assert t.pvalue == pytest.approx(ref.pvalue)
    lo, hi = S.t.interval(0.95, len(d) - 1, loc=np.mean(d), scale=S.sem(d))
    assert t.interval(0.95) == (pytest.approx(lo), pytest.approx(hi))
    assert math.isnan(paired_t([0.3]).pvalue) and math.isnan(paired_t([0.3]).interval(0.95)[0])


def test_tost_agrees_with_two_one_sided_t_tests():
    rng = np.random.default_rng(6)
    delta = EQUIVALENCE_MARGIN
    for _ in range(200):
        d = rng.normal(rng.uniform(-0.6, 0.6), rng.uniform(0.02, 0.4), size=int(rng.integers(3, 11)))
        se, df = S.sem(d), d.size - 1
        p_low = S.t.sf((d.mean() + delta) / se, df)  # H0: mean <= -delta
        p_high = S.t.cdf((d.mean() - delta) / se, df)  # H0: mean >= +delta
        assert equivalent(*one_sided_bounds(paired_t(d))) == (max(p_low, p_high) < 0.05)


@pytest.mark.parametrize("a, b, message", [
    (np.ones((2, 3), bool), np.ones((3, 3), bool), "must both be (units, images), got (2, 3) and (3, 3)"),
    (np.ones((0, 3), bool), np.ones((0, 3), bool), "need at least one unit and one image, got shape (0, 3)"),
])
def test_bootstrap_rejects_bad_shapes(a, b, message):
    with pytest.raises(InputError, match=re_escape(message)):
        hierarchical_bootstrap(a, b)
