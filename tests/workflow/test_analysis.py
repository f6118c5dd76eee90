"""lsqbq.analysis: Lloyd-Max references, the official skip-3 search, error tables (fast unit tests)."""
import itertools
import math

import numpy as np
import pytest
import torch

import lsqbq
from lsqbq import analysis as A


@pytest.mark.parametrize("levels, mse", [(2, 1 - 2 / math.pi), (3, 0.1902), (4, 0.1175)])
def test_lloyd_max_gaussian_known_values(levels, mse):
    # Classical Lloyd-Max optima of N(0,1) (Max 1960): 0.3634, 0.1902, 0.1175.
    code, err = A.lloyd_max_density("normal", levels)
    assert err == pytest.approx(mse, abs=2e-4)
    assert np.allclose(code, -code[::-1], atol=1e-4)  # symmetric density -> symmetric codebook


def test_lloyd_max_uniform_is_uniform_quantizer():
    # Uniform on [-sqrt3, sqrt3], L levels: cells of width w = 2 sqrt3 / L, MSE = w^2 / 12.
    for levels in (2, 4, 8):
        _, err = A.lloyd_max_density("uniform", levels)
        assert err == pytest.approx((2 * math.sqrt(3) / levels) ** 2 / 12, rel=1e-3)


def _kmeans_brute(x, levels):
    """Optimal 1-D k-means by trying every split of the sorted sample into contiguous cells."""
    x = np.sort(x)
    best = math.inf
    for cuts in itertools.combinations(range(1, len(x)), levels - 1):
        cells = np.split(x, cuts)
        best = min(best, sum(((c - c.mean()) ** 2).sum() for c in cells))
    return best / len(x)


@pytest.mark.parametrize("seed", range(4))
def test_lloyd_max_sample_matches_brute_force_on_clustered_data(seed):
    g = np.random.default_rng(seed)
    x = np.concatenate([g.normal(c, 0.3, 4) for c in (-4.0, 0.0, 5.0)])
    code, err = A.lloyd_max(x, 3)
    assert err == pytest.approx(_kmeans_brute(x, 3), rel=1e-9)
    # err is the nearest-codeword error of the returned codebook
    q = code[np.abs(x[:, None] - code[None, :]).argmin(1)]
    assert err == pytest.approx(np.mean((x - q) ** 2), rel=1e-9)


def test_lloyd_max_never_beaten_by_a_foldable_scheme():
    x = A.synthetic_rows("laplace", 1, 3000, seed=3)
    for scheme, levels in (("ls-1", 2), ("ls-T", 3), ("ls-2", 4), ("gf-2", 4)):
        mse = float((x - lsqbq.quantize(x, scheme)).square().mean())
        assert A.lloyd_max(x.numpy().ravel(), levels)[1] <= mse + 1e-12


def test_official_search_close_to_exact_ls2():
    x = A.synthetic_rows("normal", 16, 4608, seed=1)
    exact = float((x - lsqbq.quantize(x, "ls-2")).square().mean())
    official = float((x - A.official_quantize(x, "ls-2")).square().mean())
    assert exact <= official  # the exact search is optimal ...
    assert official <= exact * 1.01  # ... and the every-3rd-element search is within 1 % (paper.md: <= 0.4 %)
    ternary_exact = float((x - lsqbq.quantize(x, "ls-T")).square().mean())
    ternary_official = float((x - A.official_quantize(x, "ls-T")).square().mean())
    assert ternary_exact <= ternary_official <= ternary_exact * 1.01


def test_official_search_picks_a_subsample_value_and_recomputes_v2():
    x = A.synthetic_rows("normal", 3, 999, seed=2).numpy()
    v = A.official_ls2_search(x)
    for row, (v1, v2) in zip(x, v):
        sub = np.abs(row[::3])
        assert np.min(np.abs(sub - v1)) == 0.0  # v_1 is one of the sorted data values
        assert v2 == pytest.approx(np.mean(np.abs(np.abs(row) - v1)))  # v_2 over the full row


def test_official_ternary_edge_case_constant_row():
    # min|x| > mean|x| / 2: no interior candidate; mean/2 is added, so levels +-2v = +-c reproduce x exactly.
    x = torch.full((1, 30), -0.7, dtype=torch.float64)
    v = A.official_ls2_search(x.numpy(), ternary=True)
    assert v[0, 0] == pytest.approx(0.35)
    assert torch.allclose(A.official_quantize(x, "ls-T"), x)


def test_error_rows_values():
    x = A.synthetic_rows("normal", 8, 20000, seed=0)
    rows = {r["scheme"]: r for r in A.error_rows("normal", [x])}
    assert rows["fp"]["mse"] == 0.0
    assert rows["ls-1"]["mse"] == pytest.approx(1 - 2 / math.pi, rel=0.02)
    assert rows["ls-2"]["mse"] == pytest.approx(0.1175, rel=0.02)
    assert rows["ls-T"]["mse"] == pytest.approx(0.1902, rel=0.02)
    assert rows["ls-2"]["mse"] < rows["gf-2"]["mse"]  # 0.118 vs 0.131 on N(0,1)
    assert rows["ls-2"]["levels"] == 4 and rows["ls-T"]["levels"] == 3 and rows["gf-4"]["levels"] == 16
    for r in rows.values():
        assert r["rel_error"] == pytest.approx(math.sqrt(r["mse"] / float(x.square().mean())), rel=1e-9)
        if r["levels"]:
            assert r["lloyd_max_mse"] <= r["mse"] * 1.001


def test_activation_sites_are_signed_bn_outputs():
    from lsqbq.models import build

    for name, opts in (("resnet_small", {}), ("lenet5", {})):
        model = build(name, num_classes=10, in_chans=1, **opts).train()  # BN normalises with batch statistics
        sites = A.activation_sites(model)
        assert sites, name
        assert all(isinstance(m, torch.nn.BatchNorm2d) and "shortcut" not in n for n, m in sites)
        names, acts = A._layer_inputs(model, [(torch.randn(4, 1, 28, 28), None)], images=4)
        assert len(acts) == len(sites) and all(a.shape[0] == 4 for a in acts)
        assert all((a < 0).any() for a in acts)  # signed: sign quantization is informative
