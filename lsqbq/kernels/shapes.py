"""Shape rules of the XNOR/popcount ops, stated once: the pure-torch back end checks them here, the C++ ops
enforce the same rules with ``TORCH_CHECK`` (``lsqbq/csrc/ops_xnor.cpp``: ``check_words``, ``checked_job``,
``conv_geometry``, ``encode_impl``, ``bitwise_conv2d_cpu``), so every back end refuses the same inputs.

Rules (``Cw = ceil(C / 64)`` words per pixel, ``T = KH * KW`` taps):

* activation words are int64, ``(P_a, B, H + 2 ph, W + 2 pw, Cw)`` for a convolution and ``(P_a, M, Kw)`` for a
  GEMM; with the ternary mask encoding ``P_a = 2`` (sign, mask);
* weight words are ``(P_w, N, T, Cw)`` with the same ``Cw`` (the packed input width must match the activations');
* geometry: ``hw``, ``kernel``, ``stride``, ``padding``, ``dilation`` have 2 entries, ``stride, dilation > 0``,
  ``padding >= 0``, ``T <= 64``, and the output ``OH, OW = floor((n + 2p - d (k - 1) - 1) / s) + 1`` is non-empty;
* a fused encode takes ``(B, C, H, W)`` or ``(B, n)`` activations with ``B, C, H, W > 0``, 1 to 8 planes, the
  mask encoding with 2 planes only, a fit code of :mod:`lsqbq.kernels.reference` that fits the plane count, and
  given scales ``(B | 1, planes)``.

Each violation raises :class:`~lsqbq.errors.InputError` with the expected and the given sizes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError

__all__ = ["words_per_row", "conv_output_size", "check_words", "check_geometry", "check_conv_words",
           "check_gemm_words", "check_encode", "check_conv_input", "check_epilogue"]

MAX_TAPS = 64  # taps per output of the C++ job (one 64-bit validity mask per row)
MAX_PLANES = 8
_FIT_CODES = (0, 1, 2, 3)  # FIT_GIVEN, FIT_GREEDY, FIT_LS2, FIT_TERNARY (lsqbq.kernels.reference)


def words_per_row(n: int) -> int:
    """64-bit words holding ``n`` sign bits: ``ceil(n / 64)``."""
    return (int(n) + 63) // 64


def conv_output_size(hw, kernel, stride, padding, dilation) -> tuple[int, int]:
    """``OH, OW = floor((n + 2p - d (k - 1) - 1) / s) + 1`` per axis."""
    return tuple((int(n) + 2 * int(p) - int(d) * (int(k) - 1) - 1) // int(s) + 1
                 for n, k, s, p, d in zip(hw, kernel, stride, padding, dilation))


def check_words(t: Tensor, name: str, dim: int) -> None:
    """``t`` holds int64 packed words of rank ``dim``."""
    if not isinstance(t, Tensor):
        raise InputTypeError(f"{name} must be a tensor of int64 packed words, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise InputTypeError(f"{name} must be int64 packed words, got {t.dtype}")
    if t.dim() != dim:
        raise InputError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")


def check_geometry(hw, kernel, stride, padding, dilation) -> tuple[int, int]:
    """Validate a convolution's geometry; returns the output size ``(OH, OW)``."""
    parts = {"hw": hw, "kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation}
    short = [k for k, v in parts.items() if len(tuple(v)) != 2]
    if short:
        raise InputError(f"hw, kernel, stride, padding, dilation must have 2 entries; {short[0]} is "
                         f"{tuple(parts[short[0]])}")
    if min(stride) <= 0 or min(dilation) <= 0 or min(padding) < 0:
        raise InputError(f"bad conv geometry: stride {tuple(stride)} and dilation {tuple(dilation)} must be "
                         f"positive, padding {tuple(padding)} non-negative")
    taps = int(kernel[0]) * int(kernel[1])
    if taps > MAX_TAPS:
        raise InputError(f"kernels with more than {MAX_TAPS} taps are not supported, got {tuple(kernel)} = {taps}")
    oh, ow = conv_output_size(hw, kernel, stride, padding, dilation)
    if oh <= 0 or ow <= 0:
        raise InputError(f"empty output: input {tuple(hw)} is smaller than the kernel {tuple(kernel)} with padding "
                         f"{tuple(padding)} and dilation {tuple(dilation)}")
    return oh, ow


def _check_mask_planes(a: Tensor, mask: bool) -> None:
    if mask and a.shape[0] != 2:
        raise InputError(f"ternary mask encoding needs 2 planes (sign, mask), got {a.shape[0]}")


def check_conv_words(a: Tensor, w_rows: Tensor, c_in: int, hw, kernel, stride, padding, dilation,
                     mask: bool = False) -> tuple[int, int]:
    """Rules of an integer binary convolution (``make_job`` / ``conv_geometry``); returns ``(OH, OW)``.

    Shapes: ``a: (P_a, B, H + 2 ph, W + 2 pw, Cw)``, ``w_rows: (P_w, N, T, Cw)`` with ``Cw = ceil(c_in / 64)``.
    """
    check_words(a, "activation words", 5)
    check_words(w_rows, "weight words", 4)
    out = check_geometry(hw, kernel, stride, padding, dilation)
    cw = words_per_row(c_in)
    want = (a.shape[1], int(hw[0]) + 2 * int(padding[0]), int(hw[1]) + 2 * int(padding[1]), cw)
    if tuple(a.shape[1:]) != want:
        raise InputError(f"activation words {tuple(a.shape)} do not match the geometry (B, H + 2 ph, W + 2 pw, Cw) "
                         f"= {want} for {c_in} input channels")
    _check_mask_planes(a, mask)
    taps = int(kernel[0]) * int(kernel[1])
    if tuple(w_rows.shape[2:]) != (taps, cw):
        raise InputError(f"weight words {tuple(w_rows.shape)} expected (P_w, N, {taps}, {cw}) for {c_in} input "
                         f"channels and a {tuple(kernel)} kernel")
    return out


def check_gemm_words(a: Tensor, w_rows: Tensor, k: int, mask: bool = False) -> None:
    """Rules of an integer binary GEMM: ``a: (P_a, M, Kw)``, ``w_rows: (P_w, N, Kw)``, ``Kw = ceil(k / 64)``."""
    check_words(a, "activation words", 3)
    check_words(w_rows, "weight words", 3)
    kw = words_per_row(k)
    if a.shape[2] != kw or w_rows.shape[2] != kw:
        raise InputError(f"activation words {tuple(a.shape)} and weight words {tuple(w_rows.shape)} must both hold "
                         f"{kw} words per row for {k} values")
    _check_mask_planes(a, mask)


def check_encode(x: Tensor, planes: int, fit: int, scales: Tensor | None, mask: bool, padding) -> None:
    """Rules of the fused activation encode (``encode_impl``)."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise InputTypeError(f"activations must be a floating-point tensor, got "
                             f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    if x.dim() not in (2, 4):
        raise InputError(f"activations must be (B, C, H, W) or (B, n), got {tuple(x.shape)}")
    if not 1 <= planes <= MAX_PLANES:
        raise InputError(f"1..{MAX_PLANES} activation planes are supported, got {planes}")
    if mask and planes != 2:
        raise InputError(f"the ternary mask encoding uses 2 scales (v, v), got {planes} planes")
    if fit not in _FIT_CODES:
        raise InputError(f"unknown fit mode {fit}")
    if fit == 1 and mask:
        raise InputError("the greedy fit has no ternary encoding")
    if fit >= 2 and planes != 2:
        raise InputError(f"the exact fits have 2 scales, got {planes} planes")
    if min(padding) < 0:
        raise InputError(f"negative padding {tuple(padding)}")
    if x.dim() == 2 and max(padding) > 0:
        raise InputError(f"no padding for 2-D input, got {tuple(padding)}")
    if min(x.shape) <= 0:
        raise InputError(f"empty activations {tuple(x.shape)}")
    if fit == 0:
        if scales is None:
            raise InputError("given-scale encode needs scales")
        s = scales.reshape(1, -1) if scales.dim() == 1 else scales
        if s.dim() != 2 or s.shape[1] != planes or s.shape[0] not in (x.shape[0], 1):
            raise InputError(f"scales must be ({x.shape[0]}, {planes}) or (1, {planes}), got {tuple(scales.shape)}")


def check_conv_input(x: Tensor, c_in: int | None, act: int, weight_words: int | None = None) -> None:
    """Rules of a whole bitwise convolution's input (``bitwise_conv2d_cpu``): ``x: (B, c_in, H, W)``; with
    ``c_in`` unknown, ``x``'s channels must fill the ``weight_words`` words per tap of the packed weights."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise InputError(f"bitwise_conv2d expects (B, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if c_in is not None and x.shape[1] != c_in:
        raise InputError(f"bitwise_conv2d expects {c_in} input channels, got {x.shape[1]}")
    if weight_words is not None and words_per_row(x.shape[1]) != weight_words:
        raise InputError(f"bitwise_conv2d expects {64 * weight_words - 63} to {64 * weight_words} input channels "
                         f"(the packed weights hold {weight_words} words per tap), got {x.shape[1]}")
    if act not in (0, 1, 2):
        raise InputError(f"unknown activation code {act}")


def check_epilogue(residual: Tensor | None, slope: Tensor | None, act: int, out_shape: tuple[int, ...]) -> None:
    """Rules of the fused epilogue: ``residual: (B, N, OH, OW)`` given as ``out_shape``, PReLU slopes ``(N)`` or
    ``(1)``."""
    if residual is not None and tuple(residual.shape) != tuple(out_shape):
        raise InputError(f"residual must be {tuple(out_shape)}, got {tuple(residual.shape)}")
    if act == 2:
        if slope is None:
            raise InputError("PReLU needs slopes")
        if slope.numel() not in (out_shape[1], 1):
            raise InputError(f"PReLU slopes must be ({out_shape[1]}) or (1), got {slope.numel()}")
