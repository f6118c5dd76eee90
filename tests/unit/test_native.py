"""The fused C++ quantizers compute the same values as the pure-torch ones (float32, CPU)."""
import numpy as np
import pytest
import torch

import lsqbq
from lsqbq import _native
from lsqbq.ste import foldable_ste

pytestmark = pytest.mark.skipif(not _native.usable(torch.zeros(1)), reason="C++ quantizers could not be built")

SCHEMES = ["ls-1", "gf-2", "gf-3", "ls-T", "ls-2"]


def rows():
    gen = np.random.default_rng(0)
    out = [gen.standard_normal((9, 301)), gen.laplace(size=(5, 1000)), gen.standard_cauchy((4, 64)),
           gen.choice([-2.0, -1.0, 0.0, 1.0, 3.0], size=(6, 50)), np.zeros((2, 17)), gen.standard_normal((3, 1)),
           gen.standard_normal((2, 2)) * 1e-38, gen.standard_normal((2, 70000))]
    return [torch.tensor(r, dtype=torch.float32) for r in out]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fit_and_quantize_match_torch(scheme):
    for x in rows():
        v_native, q_native = lsqbq.fit(x, scheme), lsqbq.quantize(x, scheme)
        with _native.disabled():
            v_torch, q_torch = lsqbq.fit(x, scheme), lsqbq.quantize(x, scheme)
        if scheme.startswith("gf") or scheme == "ls-1":
            # the mean is summed in float64 in a different order: equal after rounding up to 1 ulp
            torch.testing.assert_close(v_native, v_torch, rtol=2e-7, atol=0)
            torch.testing.assert_close(lsqbq.quantize(x, scheme, v_torch), q_torch, rtol=0, atol=0)
        else:
            assert torch.equal(v_native, v_torch)
            assert torch.equal(q_native, q_torch)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_ste_forward_and_gradient_match_torch(scheme):
    x = (torch.randn(6, 500) * 1.3).requires_grad_()
    v = lsqbq.fit(x.detach(), scheme)
    g = torch.randn(6, 500)
    y = foldable_ste(x, v)
    (gx,) = torch.autograd.grad(y, x, g)
    with _native.disabled():
        y_ref = foldable_ste(x, v)
        (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    assert torch.equal(y, y_ref)
    assert torch.equal(gx, gx_ref)


def test_shared_scales_broadcast():
    x = torch.randn(5, 40)
    s = torch.rand(1, 2)
    y = lsqbq.quantize(x, "ls-2", s)
    with _native.disabled():
        assert torch.equal(y, lsqbq.quantize(x, "ls-2", s))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_non_finite_rows_reported_by_the_native_path(scheme):
    x = torch.randn(3, 10)
    x[1, 4] = float("nan")
    with pytest.raises(ValueError, match=f"{scheme}: row 1 of the input holds NaN"):
        lsqbq.fit(x, scheme)


def test_non_contiguous_input():
    x = torch.randn(40, 6).T  # (6, 40), not contiguous
    for scheme in SCHEMES:
        assert torch.equal(lsqbq.quantize(x, scheme), lsqbq.quantize(x.contiguous(), scheme))
