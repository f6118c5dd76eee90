"""ls-2 and ls-T are the exact least-squares optimum: checked against independent brute force.

Brute force 1 (small n): every assignment of the row's magnitudes to two levels (2^n subsets), each level the
mean of its subset (ls-2), or one level fixed at 0 (ls-T). No sorting, no contiguity argument.
Brute force 2 (larger n): every split of the sorted magnitudes, evaluated by an explicit per-split loop in NumPy.
Brute force 3: a dense grid over (v_1, v_2) with the foldable encoding; the fit must beat every grid point.
"""
import itertools
import math

import numpy as np
import pytest
import torch

import lsqbq


def sq_error(x, scheme):
    return ((x - lsqbq.quantize(x, scheme)) ** 2).sum(dim=1)


def brute_subsets(m: np.ndarray, ternary: bool) -> float:
    """Min over all 2^n two-level assignments of the magnitudes m (ternary: the first level is 0)."""
    best = math.inf
    n = len(m)
    for mask in itertools.product([False, True], repeat=n):
        hi = m[np.array(mask, dtype=bool)]
        lo = m[~np.array(mask, dtype=bool)]
        cost = 0.0
        if len(hi):
            cost += ((hi - hi.mean()) ** 2).sum()
        if len(lo):
            cost += (lo**2).sum() if ternary else ((lo - lo.mean()) ** 2).sum()
        best = min(best, cost)
    return best


def brute_splits(m: np.ndarray, ternary: bool) -> float:
    a = np.sort(m)
    best = math.inf
    for j in range(len(a)):
        lo, hi = a[:j], a[j:]
        cost = ((hi - hi.mean()) ** 2).sum()
        if j:
            cost += (lo**2).sum() if ternary else ((lo - lo.mean()) ** 2).sum()
        best = min(best, cost)
    return best


def random_rows(gen: np.random.Generator, n: int, count: int) -> list[np.ndarray]:
    rows = []
    for i in range(count):
        kind = i % 7
        if kind == 0:
            r = gen.standard_normal(n)
        elif kind == 1:
            r = gen.laplace(size=n)
        elif kind == 2:
            r = gen.uniform(-1, 1, n)
        elif kind == 3:  # heavy tail / outliers
            r = gen.standard_cauchy(n)
        elif kind == 4:  # ties: a few repeated values with both signs
            r = gen.choice([-2.0, -1.0, 0.0, 1.0, 1.0, 3.0], size=n)
        elif kind == 5:  # zeros mixed in, one outlier
            r = gen.standard_normal(n) * (gen.uniform(size=n) < 0.5)
            r[0] = 50.0
        else:  # two tight clusters of magnitudes
            r = np.where(gen.uniform(size=n) < 0.3, 5.0, 0.2) * gen.choice([-1, 1], n) + 1e-3 * gen.standard_normal(n)
        rows.append(r)
    return rows


@pytest.mark.parametrize("scheme,ternary", [("ls-2", False), ("ls-T", True)])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 11])
def test_exhaustive_assignments_small_rows(scheme, ternary, n):
    gen = np.random.default_rng(n)
    rows = random_rows(gen, n, 28)
    x = torch.tensor(np.stack(rows), dtype=torch.float64)
    got = sq_error(x, scheme).numpy()
    want = np.array([brute_subsets(np.abs(r), ternary) for r in rows])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scheme,ternary", [("ls-2", False), ("ls-T", True)])
@pytest.mark.parametrize("n", [64, 257, 1000])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_split_larger_rows(scheme, ternary, n, dtype):
    gen = np.random.default_rng(1000 + n)
    rows = random_rows(gen, n, 21)
    x = torch.tensor(np.stack(rows)).to(dtype)
    got = sq_error(x.double(), scheme).numpy() if dtype == torch.float64 else sq_error(x, scheme).double().numpy()
    want = np.array([brute_splits(np.abs(r.astype(np.float32 if dtype == torch.float32 else np.float64)).astype(np.float64), ternary)
                     for r in x.double().numpy()])
    rtol = 1e-9 if dtype == torch.float64 else 2e-5  # float32: the error itself is summed in float32
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-9)


def foldable_error(x: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """Error of the foldable 2-bit encoding for a grid of (v1, v2): x (n,), v1/v2 (G,) -> (G,)."""
    b1 = torch.where(x >= 0, 1.0, -1.0).double()
    r = x[None] - v1[:, None] * b1[None]
    q = v1[:, None] * b1[None] + v2[:, None] * torch.where(r >= 0, 1.0, -1.0)
    return ((x[None] - q) ** 2).sum(1)


def test_ls2_beats_a_dense_grid_of_foldable_scales():
    gen = np.random.default_rng(7)
    for r in random_rows(gen, 200, 14):
        x = torch.tensor(r, dtype=torch.float64)
        m = x.abs().max().item()
        g = torch.linspace(0, m, 161, dtype=torch.float64)
        v1, v2 = torch.meshgrid(g, g, indexing="ij")
        keep = v1 >= v2
        grid = foldable_error(x, v1[keep], v2[keep])
        ours = sq_error(x[None], "ls-2")[0]
        assert ours <= grid.min() * (1 + 1e-12) + 1e-12


@pytest.mark.parametrize("n", [7, 100, 4608])
def test_ls2_is_never_worse_than_the_other_schemes(n):
    x = torch.cat([torch.randn(20, n), torch.distributions.Laplace(0, 1).sample((20, n)), torch.rand(20, n) - 0.5])
    e2 = sq_error(x.double(), "ls-2")
    for other in ("gf-2", "ls-T", "ls-1"):
        assert (e2 <= sq_error(x.double(), other) * (1 + 1e-12) + 1e-12).all(), other
    eT = sq_error(x.double(), "ls-T")
    assert (eT <= sq_error(x.double(), "ls-1") * (1 + 1e-12) + 1e-12).all()


def test_gaussian_mse_matches_theory_and_lloyd_max():
    """10^6 N(0,1) samples: ls-1 = 1 - 2/pi, ls-2 = 0.1175, ls-T = 0.1902 (Lloyd-Max 4 and 3 levels), each within 1%."""
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(1, 1_000_000, generator=gen, dtype=torch.float64)
    mse = {s: ((x - lsqbq.quantize(x, s)) ** 2).mean().item() for s in ("ls-1", "ls-2", "ls-T", "gf-2", "gf-3", "gf-4")}
    assert mse["ls-1"] == pytest.approx(1 - 2 / math.pi, rel=0.01)
    assert mse["ls-2"] == pytest.approx(0.1175, rel=0.01)
    assert mse["ls-T"] == pytest.approx(0.1902, rel=0.01)
    assert mse["ls-1"] > mse["gf-2"] > mse["gf-3"] > mse["gf-4"]
    assert mse["ls-2"] < mse["gf-2"]
    v = lsqbq.fit(x, "ls-2")[0]
    assert v[0].item() == pytest.approx(0.98, abs=0.01) and v[1].item() == pytest.approx(0.53, abs=0.01)


def test_gf_error_falls_with_k_per_row():
    x = torch.randn(64, 512, dtype=torch.float64)
    errs = [sq_error(x, f"gf-{k}") for k in range(1, 7)]
    for a, b in zip(errs, errs[1:]):
        assert (b < a).all()
