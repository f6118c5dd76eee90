"""Straight-through gradients for the foldable quantizers.

Forward: ``x_q = sum_i v_i sign(r_i)`` with ``r_1 = x``, ``r_{i+1} = r_i - v_i sign(r_i)`` (scales fixed).
Backward: every sign passes its gradient where ``|r_i| <= 1`` and blocks it elsewhere (the STE
``d sign(r)/dr = 1_{|r| <= 1}``); the scales are treated as constants (no gradient), as in the paper. Chaining
through the residuals gives the closed form

    d x_q / d x = 1 - prod_i (1 - v_i 1_{|r_i| <= 1})

(k = 1: ``v 1_{|x| <= 1}``), computed in the forward pass and stored as one tensor, so the backward costs one
multiply and memory is one tensor of ``x``'s size whatever ``k`` is.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _ops
from .quantizers import sign

__all__ = ["sign_ste", "foldable_ste"]


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class _FoldableSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scales: Tensor) -> Tensor:
        approx, slope = _ops.quant_encode_with_slope(x, scales)
        ctx.save_for_backward(slope)
        return approx

    @staticmethod
    def backward(ctx, grad: Tensor):
        (slope,) = ctx.saved_tensors
        return grad * slope, None


def sign_ste(x: Tensor) -> Tensor:
    """``sign(x)`` (``sign(0) = +1``) with the straight-through gradient ``1_{|x| <= 1}``."""
    return _SignSTE.apply(x)


def foldable_ste(x: Tensor, scales: Tensor) -> Tensor:
    """Foldable quantization of the rows of ``x`` with fixed ``scales`` and the STE gradient (module docstring).

    Shapes: ``x: (R, n)``, ``scales: (R, k)`` or ``(1, k)`` -> ``(R, n)``.
    """
    return _FoldableSTE.apply(x, scales.detach().to(x.dtype))
