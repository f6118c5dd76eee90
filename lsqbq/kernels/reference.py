"""Pure-torch reference kernels: exact, device-agnostic (CPU or GPU), and the oracle of the tests.

Every function here takes and returns the same packed layouts as the compiled ops (see :mod:`lsqbq.kernels.ops`),
but is written for clarity: popcount is the SWAR bit trick on int64 tensors, a convolution loops over its taps
and zeroes the taps that fall into the padding (no correction trick), so these results are an independent
check of the compiled path. Inputs are checked by the shape rules the C++ ops enforce (:mod:`.shapes`), so a
shape the compiled back ends refuse is an :class:`~lsqbq.errors.InputError` here too.

Math: for sign vectors packed as bits (bit = 1 <=> -1), ``<a, w> = K - 2 popcount(a XOR w)``; for a ternary
row ``t = s (m)`` (sign bits s, non-zero mask m), ``<t, w> = popcount(m) - 2 popcount((s XOR w) AND m)``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import quantizers
from ..quantizers import foldable_bits
from . import shapes

__all__ = [
    "FIT_GIVEN",
    "FIT_GREEDY",
    "FIT_LS2",
    "FIT_TERNARY",
    "popcount64",
    "pack_signs",
    "unpack_signs",
    "encode",
    "encode_fit",
    "bitwise_conv2d",
    "xnor_gemm",
    "xnor_gemm_scaled",
    "xnor_conv2d",
    "xnor_conv2d_scaled",
]

# How the activation scales of a call are obtained (the ``fit`` argument of the fused ops):
FIT_GIVEN = 0    # passed in (moving averages, or fitted by the caller)
FIT_GREEDY = 1   # v_i = mean |r_i| per sample (ls-1 = gf-1, gf-k), fitted while encoding
FIT_LS2 = 2      # exact least-squares 2-bit fit per sample
FIT_TERNARY = 3  # exact least-squares ternary fit per sample

_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F
_CHUNK = 1 << 24  # elements of the largest broadcast intermediate


def popcount64(x: Tensor) -> Tensor:
    """Bit count of every int64 word (SWAR: 2-, 4-, 8-bit partial sums). ``x: (...)`` int64 -> ``(...)`` int64."""
    x = x - ((x >> 1) & _M1)  # arithmetic shifts are harmless: the masks clear the sign-extended bits
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4  # bytes 0..8, bit 63 clear from here on
    x = x + (x >> 8)
    x = x + (x >> 16)
    x = x + (x >> 32)
    return x & 0x7F


def pack_signs(x: Tensor) -> Tensor:
    """Pack signs along the last axis: ``(..., K)`` float -> ``(..., ceil(K/64))`` int64.

    Bit ``c mod 64`` of word ``c // 64`` is 1 iff ``not x_c >= 0`` (so ``sign(0) = sign(-0.0) = +1``); tail bits
    are 0 (+1).
    """
    K = x.shape[-1]
    kw = (K + 63) // 64
    neg = ~(x >= 0)
    neg = torch.nn.functional.pad(neg, (0, kw * 64 - K)).reshape(*x.shape[:-1], kw, 64).to(torch.int64)
    shifts = torch.arange(64, device=x.device, dtype=torch.int64)
    low = (neg[..., :32] << shifts[:32]).sum(-1)  # < 2^32, no overflow
    high = (neg[..., 32:] << shifts[:32]).sum(-1)
    return low | (high << 32)


def unpack_signs(words: Tensor, k: int) -> Tensor:
    """Inverse of :func:`pack_signs`: ``(..., Kw)`` int64 -> ``(..., k)`` float32 of ±1."""
    shifts = torch.arange(64, device=words.device, dtype=torch.int64)
    bits = (words.unsqueeze(-1) >> shifts) & 1  # (..., Kw, 64)
    bits = bits.reshape(*words.shape[:-1], -1)[..., :k]
    return (1 - 2 * bits).to(torch.float32)


def encode(x: Tensor, scales: Tensor, clamp: float | None = None, mask: bool = False,
           padding: tuple[int, int] = (0, 0)) -> Tensor:
    """Foldable sign planes of per-sample activations, packed along channels (NHWC), zero words at the padding.

    Math: ``r_1 = clamp(x)``, ``b_i = sign(r_i)``, ``r_{i+1} = r_1 - sum_{j<=i} v_j b_j`` (as the layer computes).
    With ``mask`` (ternary ``ls-T``, scales ``(v, v)``) the planes are ``s = b_1`` and ``m = [b_1 == b_2]``.
    Shapes: ``x: (B, C, H, W)``, ``scales: (B, k)`` -> ``(k, B, H + 2 ph, W + 2 pw, ceil(C/64))`` int64;
    ``x: (B, n)`` -> ``(k, B, ceil(n/64))``.
    """
    shapes.check_encode(x, scales.shape[-1], 0, scales, mask, padding)
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    B = x.shape[0]
    planes = foldable_bits(x.reshape(B, -1).float(), scales.float()).reshape(-1, *x.shape)  # (k, *x.shape) of ±1
    if mask:
        nonzero = planes[0] == planes[1]
        planes = torch.stack([planes[0], torch.where(nonzero, -1.0, 1.0)])  # bit set = sign < 0 / non-zero
    if x.dim() == 2:
        return pack_signs(planes)
    nhwc = planes.permute(0, 1, 3, 4, 2)  # (k, B, H, W, C)
    ph, pw = padding
    nhwc = torch.nn.functional.pad(nhwc, (0, 0, pw, pw, ph, ph), value=1.0)  # +1 = bit 0 = zero word
    return pack_signs(nhwc)


def _dots(a: Tensor, w: Tensor, k: int, mask: bool) -> Tensor:
    """Binary dot products of word rows. ``a: (P_a, R, Kw)``, ``w: (P_w, N, Kw)`` -> ``(P_a', P_w, R, N)`` int64."""
    R, N, kw = a.shape[1], w.shape[1], a.shape[2]
    step = max(1, _CHUNK // max(1, N * kw * w.shape[0] * a.shape[0]))
    outs = []
    for r0 in range(0, R, step):
        ab = a[:, None, r0 : r0 + step, None, :]  # (P_a, 1, r, 1, Kw)
        wb = w[None, :, None, :, :]  # (1, P_w, 1, N, Kw)
        if mask:
            s, m = ab[0:1], ab[1:2]
            outs.append(popcount64(m).sum(-1) - 2 * popcount64((s ^ wb) & m).sum(-1))
        else:
            outs.append(k - 2 * popcount64(ab ^ wb).sum(-1))
    return torch.cat(outs, dim=2)


def xnor_gemm(a: Tensor, w_rows: Tensor, k: int, mask: bool = False) -> Tensor:
    """Integer dot products of packed rows. ``a: (P_a, M, Kw)``, ``w_rows: (P_w, N, Kw)`` -> ``(P_a', P_w, M, N)``
    int32 with ``P_a' = P_a`` (sign planes) or 1 (ternary mask)."""
    shapes.check_gemm_words(a, w_rows, k, mask)
    return _dots(a, w_rows, k, mask).to(torch.int32)


def _scale(d: Tensor, sa: Tensor, sw: Tensor, bias: Tensor | None) -> Tensor:
    """``out[m, n] = bias[n] + sum_ij sa[m, i] sw[n, j] d[i, j, m, n]``; ``d: (P_a, P_w, M, N)``."""
    out = torch.einsum("ijmn,mi,nj->mn", d.to(torch.float64), sa.double(), sw.double()).float()
    return out if bias is None else out + bias


def xnor_gemm_scaled(a: Tensor, w_rows: Tensor, k: int, sa: Tensor, sw: Tensor, bias: Tensor | None = None,
                     mask: bool = False) -> Tensor:
    """Scaled output ``(M, N)``; ``sa: (M, P_a')`` activation scales, ``sw: (N, P_w)`` weight scales."""
    return _scale(xnor_gemm(a, w_rows, k, mask), sa, sw, bias)


def xnor_conv2d(a: Tensor, w_rows: Tensor, c_in: int, hw: tuple[int, int], kernel: tuple[int, int],
                stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask: bool = False) -> Tensor:
    """Binary convolution with zero padding of the quantized activations, tap by tap.

    Shapes: ``a: (P_a, B, H + 2 ph, W + 2 pw, Cw)``, ``w_rows: (P_w, N, KH * KW, Cw)`` ->
    ``(P_a', P_w, B, OH, OW, N)`` int32. A tap that falls into the padding contributes 0 (the padded activation is
    the value 0, not ±1).
    """
    OH, OW = shapes.check_conv_words(a, w_rows, c_in, hw, kernel, stride, padding, dilation, mask)
    H, W = hw
    KH, KW = kernel
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    B = a.shape[1]
    dev = a.device
    total = None
    for kh in range(KH):
        ih = torch.arange(OH, device=dev) * sh - ph + kh * dh
        for kw in range(KW):
            iw = torch.arange(OW, device=dev) * sw - pw + kw * dw
            valid = ((ih >= 0) & (ih < H))[:, None] & ((iw >= 0) & (iw < W))[None, :]  # (OH, OW)
            r0, c0 = kh * dh, kw * dw
            tap = a[:, :, r0 : r0 + sh * (OH - 1) + 1 : sh, c0 : c0 + sw * (OW - 1) + 1 : sw, :]  # (P_a,B,OH,OW,Cw)
            d = _dots(tap.reshape(a.shape[0], -1, a.shape[-1]), w_rows[:, :, kh * KW + kw, :], c_in, mask)
            d = d.reshape(d.shape[0], d.shape[1], B, OH, OW, -1) * valid[None, None, None, :, :, None]
            total = d if total is None else total + d
    return total.to(torch.int32)


def xnor_conv2d_scaled(a: Tensor, w_rows: Tensor, c_in: int, hw, kernel, sa: Tensor, sw: Tensor,
                       bias: Tensor | None = None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                       mask: bool = False) -> Tensor:
    """Scaled convolution ``(B, OH, OW, N)``; ``sa: (B, P_a')`` per-sample scales, ``sw: (N, P_w)``."""
    d = xnor_conv2d(a, w_rows, c_in, hw, kernel, stride, padding, dilation, mask)  # (Pa, Pw, B, OH, OW, N)
    Pa, Pw, B, OH, OW, N = d.shape
    rows_sa = sa.repeat_interleave(OH * OW, dim=0)  # (B*OH*OW, Pa)
    out = _scale(d.reshape(Pa, Pw, B * OH * OW, N), rows_sa, sw, bias)
    return out.reshape(B, OH, OW, N)


def fma32(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``x * a + b`` rounded once to float32 (a fused multiply-add: the float32 product is exact in float64), as
    torch's CPU BatchNorm evaluates it."""
    return (x.double() * a.double() + b.double()).float()


def encode_fit(x: Tensor, planes: int, fit: int, scales: Tensor | None = None, clamp: float | None = None,
               mask: bool = False, padding: tuple[int, int] = (0, 0),
               prologue: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Fused activation encode: ``y = clamp(fma(x, a_c, b_c))``, per-sample scales, packed planes.

    ``prologue = (a, b)``: per-channel ``(C,)`` affine in front (a BatchNorm in eval mode). ``fit``: one of the
    ``FIT_*`` codes; ``scales`` ``(B | 1, planes)`` for ``FIT_GIVEN``. Scales are fitted on the rows
    ``y.reshape(B, -1)`` as the simulated layer does. Shapes: ``x: (B, C, H, W)`` or ``(B, n)`` ->
    ``(words, scales (B, planes))``.
    """
    shapes.check_encode(x, planes, fit, scales, mask, padding)
    y = x.float()
    if prologue is not None:
        shape = (1, -1) + (1,) * (y.dim() - 2)
        y = fma32(y, prologue[0].reshape(shape), prologue[1].reshape(shape))
    if clamp:
        y = y.clamp(-clamp, clamp)
    B = y.shape[0]
    rows = y.reshape(B, -1)
    if fit == FIT_GIVEN:
        v = scales.float().reshape(-1, planes).expand(B, planes).contiguous()
    elif fit == FIT_GREEDY:
        v = quantizers.fit_greedy(rows, planes)
    elif fit in (FIT_LS2, FIT_TERNARY):
        v = (quantizers.fit_ternary if fit == FIT_TERNARY else quantizers.fit_ls2)(rows)
    else:
        raise ValueError(f"unknown fit mode {fit}")
    if fit != FIT_GIVEN and not bool(torch.isfinite(v).all()):
        b = int((~torch.isfinite(v)).any(1).nonzero()[0, 0])
        raise ValueError(f"lsqbq: the activation scales of sample {b} are not finite: the input holds NaN or Inf")
    return encode(y, v, None, mask, padding), v


def bitwise_conv2d(x: Tensor, w_rows: Tensor, sw: Tensor, bias: Tensor | None, kernel, stride, padding, dilation,
                   planes: int, fit: int, scales: Tensor | None = None, clamp: float | None = None,
                   mask: bool = False, prologue=None, residual: Tensor | None = None, act: int = 0,
                   slope: Tensor | None = None, residual_first: bool = True, c_in: int | None = None) -> Tensor:
    """A whole bitwise convolution layer: :func:`encode_fit`, :func:`xnor_conv2d_scaled` and the epilogue
    ``y (+ residual if residual_first); act (0 none, 1 ReLU, 2 PReLU); (+ residual otherwise)``.

    Shapes: ``x: (B, C, H, W)``, ``w_rows: (P_w, N, T, Cw)``, ``sw: (N, P_w)``, ``residual: (B, N, OH, OW)`` ->
    ``(B, OH, OW, N)``. ``c_in``: the weights' input channels (None: checked against the words of ``w_rows``).
    """
    shapes.check_conv_input(x, c_in, act, weight_words=w_rows.shape[-1])
    out = shapes.check_geometry(tuple(x.shape[-2:]), kernel, stride, padding, dilation)
    shapes.check_epilogue(residual, slope, act, (x.shape[0], w_rows.shape[1], *out))
    a, v = encode_fit(x, planes, fit, scales, clamp, mask, tuple(padding), prologue)
    sa = 2 * v[:, :1] if mask else v
    y = xnor_conv2d_scaled(a, w_rows, x.shape[1], tuple(x.shape[-2:]), tuple(kernel), sa, sw, bias, tuple(stride),
                           tuple(padding), tuple(dilation), mask)
    res = None if residual is None else residual.float().permute(0, 2, 3, 1)
    if res is not None and residual_first:
        y = y + res
    if act == 1:
        y = torch.relu(y)
    elif act == 2:
        y = torch.where(y > 0, y, slope.float() * y)
    if res is not None and not residual_first:
        y = y + res
    return y
