"""The gradient of ``lsqbq.quantize``: the layers' straight-through estimator for every registered scheme, on the
C++ and the pure-torch paths, against a reference written here from the rule alone.

Rule: ``d x_q / d x = 1 - prod_i (1 - v_i 1_{|r_i| <= 1})`` elementwise (each sign passes its gradient where
``|r_i| <= 1``); the scales, fitted or given, are constants.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

import lsqbq
from lsqbq import _native
from lsqbq.layers import QuantLinear
from lsqbq.schemes import get_scheme, list_schemes

SCHEMES = [n for n in list_schemes(examples=True) if not get_scheme(n).is_fp]
BACKENDS = ["native", "torch"]


def _backend(name: str):
    if name == "native" and not _native.load():
        pytest.skip("the C++ library could not be built")
    return _native.disabled() if name == "torch" else contextlib.nullcontext()


def _reference(x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``sum_i v_i sign(r_i)`` built from torch primitives: each sign's value is ``±1`` (``sign(0) = +1``) and its
    gradient that of ``r * 1_{|r| <= 1}`` (the window's bounds included, unlike ``clamp``'s gradient); the
    scales are detached."""
    v = scales.detach()
    out, r = torch.zeros_like(x), x
    for i in range(v.shape[1]):
        soft = r * (r.abs() <= 1).to(x.dtype)
        b = torch.where(r >= 0, 1.0, -1.0).to(x.dtype) + (soft - soft.detach())
        out = out + v[:, i : i + 1] * b
        r = r - v[:, i : i + 1] * b
    return out


def _rows(dtype, shape=(5, 40), seed=0):
    """Values on both sides of the STE window |r| <= 1, exact zeros and window bounds included."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 1.2
    x[0, :4] = torch.tensor([0.0, 1.0, -1.0, 3.0])
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_gradient_is_the_straight_through_rule(scheme, backend, dtype):
    x = _rows(dtype).requires_grad_()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    with _backend(backend):
        q = lsqbq.quantize(x, scheme)
        assert q.requires_grad, f"{scheme}: lsqbq.quantize detached its output from autograd"
        (gx,) = torch.autograd.grad(q, x, g)
        v = lsqbq.fit(x.detach(), scheme)
    ref = _reference(x, v)
    (g_ref,) = torch.autograd.grad(ref, x, g)
    assert torch.equal(q.detach(), ref.detach())
    torch.testing.assert_close(gx, g_ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_jacobian_is_diagonal_no_gradient_through_the_fit(scheme, backend):
    """The full Jacobian (float64, every output w.r.t. every input) is the reference's: diagonal, since the fitted
    scales are constants (ls-1's mean|x| passes nothing to the other entries of its row)."""
    x = _rows(torch.float64, shape=(3, 7), seed=2)
    with _backend(backend):
        jac = torch.autograd.functional.jacobian(lambda t: lsqbq.quantize(t, scheme), x)
        v = lsqbq.fit(x, scheme)
    jac_ref = torch.autograd.functional.jacobian(lambda t: _reference(t, v), x)
    torch.testing.assert_close(jac, jac_ref, rtol=1e-12, atol=1e-12)
    flat = jac.reshape(x.numel(), x.numel())
    assert torch.equal(flat, torch.diag(flat.diagonal()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_given_scales_are_constants(scheme, backend):
    x = _rows(torch.float32).requires_grad_()
    with _backend(backend):
        v = lsqbq.fit(x.detach(), scheme).mean(0).requires_grad_()  # (k,) shared, e.g. a moving average
        q = lsqbq.quantize(x, scheme, v)
        q.backward(torch.ones_like(q))
        assert v.grad is None
        torch.testing.assert_close(x.grad, torch.autograd.grad(_reference(x, v[None]).sum(), x)[0])
        alone = lsqbq.quantize(x.detach(), scheme, v)  # only the scales require grad: nothing to differentiate
    assert not alone.requires_grad and torch.equal(alone, q.detach())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_both_paths_give_the_same_values_and_gradients(scheme):
    if not _native.load():
        pytest.skip("the C++ library could not be built")
    x = _rows(torch.float32, shape=(6, 300), seed=3)
    v = lsqbq.fit(x, scheme)  # one set of scales: the greedy means may differ by an ulp between the paths
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    out = {}
    for backend in BACKENDS:
        with _backend(backend):
            xb = x.clone().requires_grad_()
            q = lsqbq.quantize(xb, scheme, v)
            out[backend] = (q.detach(), torch.autograd.grad(q, xb, g)[0])
    assert torch.equal(out["native"][0], out["torch"][0])
    assert torch.equal(out["native"][1], out["torch"][1])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_public_quantizer_and_layer_weights_share_the_gradient(scheme):
    """A QuantLinear's weight gradient equals the one through ``linear(x, lsqbq.quantize(W))``."""
    torch.manual_seed(5)
    layer = QuantLinear(12, 4, bias=False, w_quant=scheme)
    x = torch.randn(3, 12)
    layer(x).square().sum().backward()
    w = layer.weight.detach().clone().requires_grad_()
    torch.nn.functional.linear(x, lsqbq.quantize(w, scheme)).square().sum().backward()
    torch.testing.assert_close(w.grad, layer.weight.grad, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gradient_is_the_float32_one_rounded(dtype):
    x = _rows(torch.float32).to(dtype)
    xl, xf = x.clone().requires_grad_(), x.float().requires_grad_()
    lsqbq.quantize(xl, "ls-2").sum().backward()
    lsqbq.quantize(xf, "ls-2").sum().backward()
    assert xl.grad.dtype == dtype
    assert torch.equal(xl.grad, xf.grad.to(dtype))


def test_fp_is_the_identity_with_the_identity_gradient():
    x = _rows(torch.float32).requires_grad_()
    lsqbq.quantize(x, "fp").sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_no_grad_mode_gives_the_same_values_without_a_graph():
    x = _rows(torch.float32).requires_grad_()
    with torch.no_grad():
        q = lsqbq.quantize(x, "ls-T")
    assert q.grad_fn is None and torch.equal(q, lsqbq.quantize(x, "ls-T").detach())
