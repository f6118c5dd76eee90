"""Straight-through gradients: closed form vs autograd through an explicit chain of STE signs."""
import pytest
import torch

import lsqbq
from lsqbq.ste import foldable_ste, sign_ste


def test_sign_ste_forward_and_gradient():
    x = torch.tensor([-2.0, -1.0, -0.5, -0.0, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    y = sign_ste(x)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1, 1]
    y.backward(torch.arange(1.0, 9.0))
    assert x.grad.tolist() == [0, 2, 3, 4, 5, 6, 7, 0]


def chained(x, scales):
    """Reference: x_q = sum_i v_i sign_ste(r_i), r_{i+1} = r_i - v_i sign_ste(r_i), autograd does the chain rule."""
    out = torch.zeros_like(x)
    r = x
    for i in range(scales.shape[1]):
        b = sign_ste(r)
        out = out + scales[:, i : i + 1] * b
        r = r - scales[:, i : i + 1] * b
    return out


@pytest.mark.parametrize("scheme", ["ls-1", "gf-2", "ls-2", "ls-T", "gf-3", "gf-4"])
def test_foldable_gradient_equals_chained_ste(scheme):
    x = (torch.randn(6, 50, dtype=torch.float64) * 1.5).requires_grad_()
    v = lsqbq.fit(x.detach(), scheme)
    g = torch.randn(6, 50, dtype=torch.float64)
    ours = foldable_ste(x, v)
    (gx,) = torch.autograd.grad(ours, x, g)
    ref = chained(x, v)
    (gr,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours, lsqbq.quantize(x.detach(), scheme, v), rtol=0, atol=1e-12)
    torch.testing.assert_close(gx, gr, rtol=1e-12, atol=1e-12)


def test_ls1_gradient_is_scale_times_indicator():
    x = torch.tensor([[-3.0, -0.5, 0.2, 0.9, 2.0]], requires_grad=True)
    v = torch.tensor([[0.4]])
    foldable_ste(x, v).sum().backward()
    assert x.grad[0].tolist() == pytest.approx([0.0, 0.4, 0.4, 0.4, 0.0])


def test_scales_receive_no_gradient():
    x = torch.randn(3, 8, requires_grad=True)
    v = torch.rand(3, 2, requires_grad=True)
    foldable_ste(x, v).sum().backward()
    assert v.grad is None
    assert x.grad is not None


@pytest.mark.parametrize("scheme", ["ls-1", "ls-2", "gf-3"])
def test_without_a_gradient_to_compute_the_values_are_the_same(scheme):
    """No grad mode, or an input that does not require grad: the plain encoding (no slope), the same values."""
    x = torch.randn(4, 30, requires_grad=True)
    v = lsqbq.fit(x.detach(), scheme)
    with_grad = foldable_ste(x, v)
    with torch.no_grad():
        off = foldable_ste(x, v)
    const = foldable_ste(x.detach(), v.requires_grad_())
    assert with_grad.grad_fn is not None and off.grad_fn is None and const.grad_fn is None
    assert torch.equal(off, with_grad.detach()) and torch.equal(const, off)
