"""API contract and edge cases of lsqbq.fit / lsqbq.quantize (the gradient of quantize: test_quantize_grad.py)."""
import contextlib

import pytest
import torch

import lsqbq
from lsqbq import _native
from lsqbq.quantizers import foldable_bits, rows_per_sample, sign
from lsqbq.schemes import get_scheme, list_schemes

SCHEMES = [n for n in list_schemes(examples=True, trainable_only=True) if not get_scheme(n).is_fp]
K = {n: get_scheme(n).k for n in SCHEMES}


def test_sign_of_zero_and_negative_zero_is_plus_one():
    x = torch.tensor([-2.0, -0.0, 0.0, 3.0])
    assert sign(x).tolist() == [-1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_shapes_dtype_and_foldable_form(scheme):
    x = torch.randn(5, 37)
    v = lsqbq.fit(x, scheme)
    assert v.shape == (5, K[scheme]) and v.dtype == x.dtype
    q = lsqbq.quantize(x, scheme)
    assert q.shape == x.shape
    # quantize(x) is the foldable sum sum_i v_i b_i, b_1 = sign(x), b_i = sign(x - sum_{j<i} v_j b_j)
    approx = torch.zeros_like(x)
    for i in range(v.shape[1]):
        approx = approx + v[:, i : i + 1] * torch.where(x - approx >= 0, 1.0, -1.0)
    torch.testing.assert_close(q, approx, rtol=0, atol=0)
    bits = foldable_bits(x, v)
    assert bits.shape == (v.shape[1], *x.shape)
    assert set(bits.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close((v.T[:, :, None] * bits).sum(0), q, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_scales_are_ordered_and_nonnegative(scheme):
    v = lsqbq.fit(torch.randn(50, 200) * 3, scheme)
    assert (v >= 0).all()
    assert (v[:, :-1] >= v[:, 1:]).all()


def test_ls1_is_mean_abs_and_ternary_scales_are_equal():
    x = torch.randn(4, 100)
    torch.testing.assert_close(lsqbq.fit(x, "ls-1")[:, 0], x.abs().mean(1))
    v = lsqbq.fit(x, "ls-T")
    assert torch.equal(v[:, 0], v[:, 1])
    q = lsqbq.quantize(x, "ls-T", v)
    levels = torch.stack([-2 * v[:, 0], torch.zeros(4), 2 * v[:, 0]], 1)
    assert all(set(q[r].unique().tolist()) <= set(levels[r].tolist()) for r in range(4))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_given_scales_are_used_and_broadcast(scheme):
    x = torch.randn(6, 40)
    v = lsqbq.fit(x, scheme)
    shared = v.mean(0)  # (k,) e.g. a moving average
    q = lsqbq.quantize(x, scheme, shared)
    torch.testing.assert_close(q, lsqbq.quantize(x, scheme, shared.expand(6, -1)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="scales must have shape"):
        lsqbq.quantize(x, scheme, torch.ones(6, K[scheme] + 1))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_all_zero_rows_give_zeros(scheme):
    x = torch.zeros(3, 10)
    x[1] = torch.randn(10)
    v = lsqbq.fit(x, scheme)
    q = lsqbq.quantize(x, scheme)
    assert torch.isfinite(v).all() and torch.isfinite(q).all()
    assert (v[[0, 2]] == 0).all()
    assert (q[[0, 2]] == 0).all()


@pytest.mark.parametrize("scheme", ["ls-1", "ls-2", "ls-T", "gf-2"])
def test_constant_magnitude_rows_are_exact(scheme):
    x = torch.tensor([[2.0, -2.0, 2.0, 2.0, -2.0], [0.5] * 5])
    torch.testing.assert_close(lsqbq.quantize(x, scheme), x)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n", [1, 2])
def test_tiny_rows(scheme, n):
    x = torch.tensor([[3.0, -1.0][:n], [-0.5, 0.0][:n], [0.0, 0.0][:n]])
    q = lsqbq.quantize(x, scheme)
    assert torch.isfinite(q).all()
    if n == 1 or scheme in ("ls-2", "gf-2", "gf-3", "gf-4"):
        # one value, or two magnitudes with two levels: exact (except ternary/1-bit which cannot split them)
        if scheme != "ls-T" or n == 1:
            torch.testing.assert_close(q[0], x[0])


def test_ls2_with_two_distinct_magnitudes_is_exact():
    x = torch.tensor([[3.0, -1.0, 1.0, -3.0, 3.0]])
    torch.testing.assert_close(lsqbq.quantize(x, "ls-2"), x)
    torch.testing.assert_close(lsqbq.fit(x, "ls-2"), torch.tensor([[2.0, 1.0]]))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("scale", [1e-30, 1e-6, 1e6, 1e30])
def test_scale_equivariance_for_huge_and_tiny_magnitudes(scheme, scale):
    x = torch.randn(8, 300, dtype=torch.float64)
    v = lsqbq.fit(x, scheme)
    for dtype in (torch.float32, torch.float64):
        vs = lsqbq.fit((x * scale).to(dtype), scheme)
        assert torch.isfinite(vs).all()
        torch.testing.assert_close(vs.double() / scale, v, rtol=1e-4, atol=0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_float64_in_float64_out(scheme):
    x = torch.randn(3, 50, dtype=torch.float64)
    assert lsqbq.fit(x, scheme).dtype == torch.float64
    assert lsqbq.quantize(x, scheme).dtype == torch.float64


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_computed_in_float32(scheme, dtype):
    x = torch.randn(4, 64).to(dtype)
    v, q = lsqbq.fit(x, scheme), lsqbq.quantize(x, scheme)
    assert v.dtype == dtype and q.dtype == dtype
    ref = lsqbq.fit(x.float(), scheme).to(dtype)
    torch.testing.assert_close(v, ref, rtol=0, atol=0)
    torch.testing.assert_close(q, lsqbq.quantize(x.float(), scheme).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bad,kind", [(float("nan"), "NaN"), (float("inf"), "Inf"), (-float("inf"), "Inf")])
def test_non_finite_input_names_scheme_and_row(scheme, bad, kind):
    x = torch.randn(4, 9)
    x[2, 5] = bad
    for call in (lambda: lsqbq.fit(x, scheme), lambda: lsqbq.quantize(x, scheme),
                 lambda: lsqbq.quantize(x, scheme, torch.ones(K[scheme]))):
        with pytest.raises(ValueError, match=rf"{scheme}: row 2 of the input holds {kind}"):
            call()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_values_near_float32_max_do_not_overflow(scheme):
    x = torch.full((2, 100), 3e38)
    x[0, ::2] = -3e38
    x[1, 0] = 1.0
    v = lsqbq.fit(x, scheme)
    assert torch.isfinite(v).all() and torch.isfinite(lsqbq.quantize(x, scheme)).all()
    torch.testing.assert_close(lsqbq.quantize(x, scheme)[0], x[0])


def test_non_finite_given_scales_are_rejected():
    with pytest.raises(ValueError, match="scales row 0 holds NaN"):
        lsqbq.quantize(torch.randn(2, 3), "ls-1", torch.tensor([float("nan")]))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_non_2d_input_is_rejected_with_a_hint(shape):
    with pytest.raises(ValueError, match="2-D tensor"):
        lsqbq.fit(torch.randn(shape), "ls-2")
    with pytest.raises(ValueError, match="2-D tensor"):
        lsqbq.quantize(torch.randn(shape), "ls-2")


def test_integer_and_non_tensor_input_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        lsqbq.fit(torch.ones(2, 3, dtype=torch.int64), "ls-1")
    with pytest.raises(TypeError, match="torch.Tensor"):
        lsqbq.fit([[1.0, 2.0]], "ls-1")


def test_fp_has_no_scales_and_is_identity():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="fp: full precision has no scales"):
        lsqbq.fit(x, "fp")
    assert lsqbq.quantize(x, "fp") is x


def test_empty_rows():
    with pytest.raises(ValueError, match="empty rows"):
        lsqbq.fit(torch.zeros(3, 0), "ls-2")
    assert lsqbq.quantize(torch.zeros(3, 0), "ls-2").shape == (3, 0)
    assert lsqbq.fit(torch.zeros(0, 5), "ls-2").shape == (0, 2)


def test_rows_per_sample():
    x = torch.randn(4, 3, 2, 2)
    assert rows_per_sample(x).shape == (4, 12)
    with pytest.raises(ValueError):
        rows_per_sample(torch.tensor(1.0))


def test_deterministic():
    x = torch.randn(16, 1000)
    for s in SCHEMES:
        assert torch.equal(lsqbq.fit(x, s), lsqbq.fit(x.clone(), s))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_magnitude_sort_by_bits_matches_float_sort(dtype):
    from lsqbq.quantizers import _sort_nonnegative

    tiny = torch.finfo(dtype).tiny
    x = torch.tensor([[3.0, 0.0, -0.0, tiny / 4, tiny, float("inf"), 1e-3, float("nan"), 2.5, tiny / 4]], dtype=dtype)
    got = _sort_nonnegative(x.abs())
    want = torch.sort(x.abs(), dim=1).values
    assert torch.equal(got[:, :-1], want[:, :-1]) and got[0, -1].isnan()


def _backend(name):
    if name == "native" and not _native.load():
        pytest.skip("the C++ library could not be built")
    return _native.disabled() if name == "torch" else contextlib.nullcontext()


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_fit_gradient_is_the_derivative_of_the_scales(scheme, backend):
    """The fitted scales are piecewise smooth in ``x`` (means of |x| over the optimal split, held fixed): their
    gradient matches finite differences (float64), and float32 gives the float64 gradient rounded."""
    x = torch.randn(3, 11, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 2
    with _backend(backend):
        assert torch.autograd.gradcheck(lambda t: lsqbq.fit(t, scheme), (x.clone().requires_grad_(),))
        x32 = x.float().requires_grad_()
        x64 = x.clone().requires_grad_()
        g = torch.randn(3, K[scheme], generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        (g32,) = torch.autograd.grad(lsqbq.fit(x32, scheme), x32, g.float())
        (g64,) = torch.autograd.grad(lsqbq.fit(x64, scheme), x64, g)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-5, atol=1e-6)


def test_official_search_scales_carry_no_gradient():
    """The official code's search runs in NumPy: its scales are constants (reference schemes, analyses only)."""
    official = [n for n in list_schemes(examples=True) if get_scheme(n).family == "official"]
    assert official
    for name in official:
        assert not lsqbq.fit(torch.randn(2, 30, requires_grad=True), name).requires_grad
