"""Straight-through gradients for the foldable quantizers: the one gradient rule of every lsqbq quantizer.

Forward: ``x_q = sum_i v_i sign(r_i)`` with ``r_1 = x``, ``r_{i+1} = r_i - v_i sign(r_i)`` (scales fixed).
Backward: every sign passes its gradient where ``|r_i| <= 1`` and blocks it elsewhere (the STE
``d sign(r)/dr = 1_{|r| <= 1}``); the scales are treated as constants (no gradient), as in the paper. Chaining
through the residuals gives the closed form

    d x_q / d x = 1 - prod_i (1 - v_i 1_{|r_i| <= 1})

(k = 1: ``v 1_{|x| <= 1}``), computed in the forward pass and stored as one tensor, so the backward costs one
multiply and memory is one tensor of ``x``'s size whatever ``k`` is.

Who uses it: the quantized layers (:mod:`lsqbq.layers`, through :func:`foldable_ste`) for weights and activations,
and the public :func:`lsqbq.quantize`; both call :func:`lsqbq._ops.foldable_quantize`, where the rule is implemented
once (the slope comes from the fused C++ op or from :func:`lsqbq.quantizers.foldable_quantize_with_slope`), on the
C++ and the pure-torch paths alike. Scales, fitted or given, never receive a gradient and pass none back to ``x`` (a
fit's dependence on ``x`` is ignored, as the layers fit on detached inputs). When no gradient is needed (``x`` does
not require grad, or grad mode is off) the slope is not computed.
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


def sign_ste(x: Tensor) -> Tensor:
    """``sign(x)`` (``sign(0) = +1``) with the straight-through gradient ``1_{|x| <= 1}``."""
    return _SignSTE.apply(x)


def foldable_ste(x: Tensor, scales: Tensor) -> Tensor:
    """Foldable quantization of the rows of ``x`` with fixed ``scales`` and the STE gradient (module docstring).

    Math: ``x_q = sum_i v_i b_i``; ``d x_q / d x = 1 - prod_i (1 - v_i 1_{|r_i| <= 1})``; ``d x_q / d v = 0``.
    Shapes: ``x: (R, n)``, ``scales: (R, k)`` or ``(1, k)`` -> ``(R, n)``.
    """
    return _ops.foldable_quantize(x, scales)
