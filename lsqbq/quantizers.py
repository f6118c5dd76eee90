"""Least-squares binary quantizers: pure-torch functions on 2-D tensors, one row at a time, free of scheme names.

These are the reference maths; :mod:`lsqbq._ops` runs the same computations through the C++ ops where they
apply, and :mod:`lsqbq.schemes` resolves names to them.

Every scheme represents a row ``x`` (length n) as a *foldable* sum of k scaled sign vectors::

    x_q = sum_{i=1..k} v_i * b_i,   b_1 = sign(x),   b_i = sign(x - sum_{j<i} v_j b_j),   sign(0) = +1

and differs only in how the scales ``v`` (one row of the ``(R, k)`` result of :func:`fit`) are chosen:

==========  ==========================================  =============================================
scheme      scales                                      optimality
==========  ==========================================  =============================================
``ls-1``    v = mean|x|                                 exact minimiser of ||x - v b||^2 (v >= 0)
``gf-k``    v_i = mean|r_i|, r_{i+1} = r_i - v_i b_i     greedy: ls-1 on each residual
``ls-T``    v: levels {-2v, 0, 2v}                      exact least-squares ternary (sort + scan)
``ls-2``    (v_1, v_2): levels {±(v_1-v_2), ±(v_1+v_2)} exact least-squares 2-bit (sort + scan)
==========  ==========================================  =============================================

Gradients. The fits are differentiable wherever their discrete choices (signs, the optimal split) do not change,
i.e. almost everywhere: the scales are means of ``|x|`` (or of residual magnitudes) over fixed index sets, and
autograd returns that derivative on every dtype and device (the CPU sorts by bit pattern, then gathers the values
so the gradient follows them). :func:`fit_official_skip3` runs in NumPy and carries none. The encodings
(:func:`foldable_quantize`) are piecewise constant in ``x``; the gradient :func:`lsqbq.quantize` and the layers
use instead is the straight-through estimator of :mod:`lsqbq.ste`.

Reference: Pouransari, Tu, Tuzel, *Least squares binary quantization of neural networks*,
CVPR-W 2020 (arXiv 2001.02786), Sec. 3.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .errors import InputError, InputTypeError

__all__ = [
    "sign", "fit_ls1", "fit_greedy", "fit_ls2", "fit_ternary", "fit_official_skip3", "foldable_bits",
    "foldable_quantize", "foldable_quantize_with_slope", "rows_per_sample", "check_finite", "check_2d", "work_dtype", "as_row_scales",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def sign(x: Tensor) -> Tensor:
    """``+1`` where ``x >= 0`` (so ``sign(0) = sign(-0.0) = +1``), else ``-1``; same dtype as ``x``."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def rows_per_sample(x: Tensor) -> Tensor:
    """View an N-D tensor as ``(x.shape[0], -1)``: one row per output channel (weights) or sample (activations)."""
    if x.dim() < 1:
        raise InputError(f"expected a tensor with at least one dimension, got a scalar of shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def check_finite(x: Tensor, scheme: str) -> None:
    """Raise ``ValueError`` naming ``scheme`` and the first row of ``x`` holding NaN or Inf."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        row = int(bad.reshape(x.shape[0], -1).any(dim=1).nonzero()[0, 0])
        kind = "NaN" if bool(torch.isnan(x[row]).any()) else "Inf"
        raise InputError(f"{scheme}: row {row} of the input holds {kind}; quantizers need finite values")


def check_2d(x: Tensor, scheme: str) -> None:
    """Raise naming ``scheme`` unless ``x`` is a 2-D floating-point tensor (rows are quantized independently)."""
    if not isinstance(x, Tensor):
        raise InputTypeError(f"{scheme}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise InputError(
            f"{scheme}: expected a 2-D tensor (rows are quantized independently), got shape {tuple(x.shape)}; "
            "use lsqbq.quantizers.rows_per_sample(x) to view weights per output channel or activations per sample"
        )
    if not x.is_floating_point():
        raise InputTypeError(f"{scheme}: expected a floating-point tensor, got {x.dtype}")


def work_dtype(x: Tensor) -> torch.dtype:
    """float32 for fp16/bf16 (their sums overflow or lose precision), else the dtype itself."""
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


# --------------------------------------------------------------------------------------------- fits


def fit_ls1(x: Tensor) -> Tensor:
    """1-bit least squares: ``v = mean|x|`` per row.

    Why: for fixed v >= 0 the nearest of ±v is ``v sign(x)``; the cost ``n v^2 - 2 v sum|x| + sum x^2`` is then
    minimised at ``v = mean|x|``. Shapes: ``x: (R, n) -> (R, 1)``. Cost: O(n) per row.
    """
    return fit_greedy(x, 1)


def fit_greedy(x: Tensor, k: int) -> Tensor:
    """Greedy foldable k-bit (gf-k, Algorithm 1 of the paper): ls-1 applied to the running residual.

    Math: ``r_1 = x``; ``v_i = mean|r_i|``; ``r_{i+1} = x - sum_{j<=i} v_j sign(r_j)``.
    Shapes: ``x: (R, n) -> (R, k)``. Cost: O(k n) per row. ``gf-1`` equals ``ls-1``.
    """
    scales = []
    approx = torch.zeros_like(x)
    for i in range(k):
        v = (x - approx).abs().mean(dim=1, keepdim=True, dtype=torch.float64).to(x.dtype)  # (R, 1)
        scales.append(v)
        if i + 1 < k:
            approx = approx + torch.where(x >= approx, v, -v)
    return torch.cat(scales, dim=1)


_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.float64: torch.int64}


def _sort_nonnegative(m: Tensor) -> Tensor:
    """Sort each row of a tensor of magnitudes (all >= +0.0, NaN positive) ascending.

    IEEE-754 bit patterns of non-negative floats order exactly like the same-width integers (+0 < subnormals <
    normals < +Inf < NaN), and torch sorts integers faster than floats (no NaN handling), so sort the bits.
    Bits carry no gradient: when ``m`` requires grad the bits give the order and the values are gathered from
    ``m`` (a sort's gradient: each sorted entry passes its gradient to the entry it came from).
    """
    int_dtype = _SAME_WIDTH_INT.get(m.dtype)
    if int_dtype is None or m.device.type != "cpu":
        return torch.sort(m, dim=1).values
    if m.requires_grad and torch.is_grad_enabled():
        order = torch.sort(m.detach().contiguous().view(int_dtype), dim=1).indices
        return m.gather(1, order)
    return torch.sort(m.contiguous().view(int_dtype), dim=1).values.view(m.dtype)


def _sorted_magnitudes(x: Tensor, scheme: str) -> tuple[Tensor, Tensor]:
    """Prefix sums of the sorted magnitudes of each row, with the finiteness check folded in.

    Returns ``(prefix, norm)``: ``prefix[:, j] = sum of the j smallest |x| / norm`` for j = 0..n, accumulated in
    float64 (exact enough that the scan below compares costs at float64 precision), and ``norm`` (R, 1), the
    factor that was divided out: 1 for float32/16 input (float64 holds their squared sums without overflow),
    the row maximum for float64 input. NaN and Inf sort last, so checking the last sorted entry checks the row.
    """
    mag = x.abs()
    if x.dtype == torch.float64:
        norm = mag.amax(dim=1, keepdim=True)
        norm = torch.where((norm > 0) & torch.isfinite(norm), norm, torch.ones_like(norm))
        mag = mag / norm
    else:
        norm = x.new_ones(x.shape[0], 1)
    a = _sort_nonnegative(mag)  # (R, n) ascending; NaN and Inf last
    if not bool(torch.isfinite(a[:, -1]).all()):
        check_finite(x, scheme)
    if a.requires_grad:  # out= records no gradient
        prefix = torch.cat([a.new_zeros(a.shape[0], 1, dtype=torch.float64), a.cumsum(1, dtype=torch.float64)], 1)
    else:
        prefix = torch.zeros(a.shape[0], a.shape[1] + 1, dtype=torch.float64, device=a.device)
        torch.cumsum(a, dim=1, dtype=torch.float64, out=prefix[:, 1:])
    return prefix, norm


def _inverse_counts(n: int, device) -> tuple[Tensor, Tensor]:
    """``1/j`` (0 for j = 0) and ``1/(n - j)`` for j = 0..n-1, float64."""
    j = torch.arange(n, device=device, dtype=torch.float64)
    inv_low = torch.where(j > 0, 1 / j.clamp(min=1), 0.0)
    return inv_low, 1 / (n - j)


def fit_ls2(x: Tensor) -> Tensor:
    """Exact least-squares 2-bit foldable quantizer (ls-2): ``(v_1, v_2)`` per row minimising ``||x - x_q||^2``.

    Math: the representable values are ``±a, ±b`` with ``a = v_1 - v_2 >= 0`` and ``b = v_1 + v_2``. A value's
    sign is free, so the problem is the best 2-level quantizer ``{a, b}`` of the magnitudes ``m = |x|``, i.e.
    1-D 2-means. Its optimal clusters are contiguous in sorted order: with ``m_(1) <= ... <= m_(n)`` and split
    ``j`` (the j smallest go to ``a``), ``a = mean(m_(1..j))``, ``b = mean(m_(j+1..n))`` and the error is
    ``sum m^2 - S_j^2 / j - (S_n - S_j)^2 / (n - j)`` with prefix sums ``S``. Scanning all ``j = 0..n-1`` (j = 0
    is the 1-bit solution, a = b) finds the global optimum; then ``v_1 = (a + b)/2``, ``v_2 = (b - a)/2``.
    The foldable encoding assigns ``|x| <= v_1`` to ``a`` and ``|x| > v_1`` to ``b``, the nearest level, so
    ``quantize(x, fit(x))`` attains the optimum. This solves the paper's conditions (10)-(11) globally instead
    of testing them at sampled points. Ties between equal costs go to the smallest ``j``.

    Shapes: ``x: (R, n) -> (R, 2)``. Cost: O(n log n) per row (one sort, prefix sums, one scan), vectorised over
    rows. Reference: paper Sec. 3.2.2, eqs. (10)-(11).
    """
    prefix, norm = _sorted_magnitudes(x, "ls-2")
    n = prefix.shape[1] - 1
    inv_low, inv_high = _inverse_counts(n, x.device)
    low_sum = prefix[:, :n]  # (R, n): S_j
    high_sum = prefix[:, n:] - low_sum  # S_n - S_j
    # Between-cluster gain S_j^2/j + (S_n - S_j)^2/(n - j) = sum m^2 - error; maximise it.
    gain = low_sum.square().mul_(inv_low).add_(high_sum.square().mul_(inv_high))
    best = gain.argmax(dim=1, keepdim=True)  # (R, 1), first maximiser
    high = high_sum.gather(1, best) * inv_high[best]
    low = torch.where(best > 0, low_sum.gather(1, best) * inv_low[best], high)
    v = torch.cat([(high + low) / 2, (high - low) / 2], dim=1)  # (R, 2)
    return (v * norm).to(x.dtype)


def fit_ternary(x: Tensor) -> Tensor:
    """Exact least-squares ternary quantizer (ls-T): ``v`` per row with values ``{-2v, 0, 2v}``, returned ``(v, v)``.

    Math: the magnitudes get the levels ``{0, c}`` with ``c = 2v``; the optimal partition is contiguous in sorted
    order, the ``n - j`` largest going to ``c = mean(m_(j+1..n))`` with error ``sum m^2 - (S_n - S_j)^2 / (n - j)``.
    Scanning ``j = 0..n-1`` gives the global optimum. The foldable encoding ``v (b_1 + b_2)`` sends ``|x| > v``
    to ``±2v`` and ``|x| <= v`` to 0, the nearest level. Solves the paper's condition (12),
    ``v = E[|x| : |x| > v] / 2``, globally.

    Shapes: ``x: (R, n) -> (R, 2)`` with equal columns. Cost: O(n log n) per row. Reference: paper Sec. 3.2.3.
    """
    prefix, norm = _sorted_magnitudes(x, "ls-T")
    n = prefix.shape[1] - 1
    _, inv_high = _inverse_counts(n, x.device)
    high_sum = prefix[:, n:] - prefix[:, :n]  # (R, n): S_n - S_j
    best = high_sum.square().mul_(inv_high).argmax(dim=1, keepdim=True)
    v = (high_sum.gather(1, best) * inv_high[best] / 2 * norm).to(x.dtype)  # (R, 1)
    return torch.cat([v, v], dim=1)


# ------------------------------------------------------------------------------------------- encode


def as_row_scales(scales: Tensor, x: Tensor, k: int, scheme: str) -> Tensor:
    """``scales`` as ``(R, k)`` or ``(1, k)`` in ``x.dtype``; raise naming the expected and given shapes."""
    scales = torch.as_tensor(scales, device=x.device)
    if scales.dim() == 1:
        scales = scales.unsqueeze(0)
    if scales.dim() != 2 or scales.shape[1] != k or scales.shape[0] not in (1, x.shape[0]):
        raise InputError(
            f"{scheme}: scales must have shape ({x.shape[0]}, {k}) or ({k},), got {tuple(scales.shape)}"
        )
    return scales.to(x.dtype)


def foldable_bits(x: Tensor, scales: Tensor) -> Tensor:
    """The sign planes of the foldable encoding.

    Math: ``b_1 = sign(x)``, ``b_i = sign(x - sum_{j<i} v_j b_j)``, ``sign(0) = +1``; ``x_q = sum_i v_i b_i``.
    Shapes: ``x: (R, n)``, ``scales: (R, k)`` or ``(k,)`` -> ``(k, R, n)`` of ±1 in ``x.dtype``. Cost: O(k n) per row.
    """
    scales = as_row_scales(scales, x, scales.shape[-1], "foldable_bits")
    bits = []
    approx = torch.zeros_like(x)
    for i in range(scales.shape[1]):
        b = sign(x - approx)
        bits.append(b)
        approx = approx + scales[:, i : i + 1] * b
    return torch.stack(bits) if bits else x.new_zeros((0, *x.shape))


# ------------------------------------------------------------------------------ official reference


def fit_official_skip3(x: Tensor, ternary: bool = False, skip: int = 3) -> Tensor:
    """The official code's candidate search for ls-2 / ls-T scales, re-implemented from its description.

    For every row: take ``a = sort(|x[::skip]|)`` (n' values) and prefix sums. At each interior split j
    (``1 <= j <= n'-2``: the first and last sorted entries are skipped) form the fixed-point targets
    ``m = (E_lo + E_hi)/2`` (condition (10); ls-2 only) and ``t = E_hi/2`` (condition (12), the ternary-type
    target) with ``E_lo = mean(a_0..a_j)`` and ``E_hi = mean(a_{j+1}..a_{n'-1})``. The *data value* ``a_j`` is a
    candidate v_1 when a target lies in ``[a_j, a_{j+1}]``. Ternary edge case: if ``min a > mean(a)/2``,
    ``mean(a)/2`` is added. The winner minimises, on the subsample, ``||r - v_2 sign(r)||`` with
    ``r = |x| - v_1`` (equivalently ``x - v_1 sign(x)``) and ``v_2 = mean|r|`` (ls-2) or ``v_2 = v_1`` (ls-T).
    Finally, for ls-2, ``v_2`` is recomputed as ``mean|x - v_1 sign(x)|`` over the full row; for ls-T the
    subsample's v is kept.

    Differences from the exact :func:`fit_ls2`: only every ``skip``-th entry is searched and v_1 is a data
    value, not the fixed point itself; rows without candidates fall back to ``v_1 = 0`` (the official code pads
    candidate lists with zeros), so ``v_2 > v_1`` can happen.

    Shapes: ``x: (R, n) -> (R, 2)``, float64 search, returned in ``x.dtype``. Cost: O(n/skip log(n/skip)) per
    row plus O(c n/skip) for c candidates.
    """
    check_2d(x, "official search")
    rows = x.detach().double().cpu().numpy()
    out = np.zeros((rows.shape[0], 2))
    for i, row in enumerate(rows):
        sub = np.abs(row[::skip])
        a = np.sort(sub)
        n = a.size
        cands: list[float] = []
        if n >= 3:
            cs = np.cumsum(a)
            j = np.arange(1, n - 1)
            lo = cs[j] / (j + 1)
            hi = (cs[-1] - cs[j]) / (n - 1 - j)
            targets = [hi / 2] if ternary else [hi / 2, (lo + hi) / 2]
            mask = np.zeros(j.size, dtype=bool)
            for t in targets:
                mask |= (a[j] <= t) & (t <= a[j + 1])
            cands = list(a[j][mask])
        if ternary and n and a[0] > a.mean() / 2:
            cands.append(a.mean() / 2)
        if not cands:
            cands = [0.0]
        v1s = np.asarray(cands)[:, None]  # (c, 1)
        r = sub[None, :] - v1s  # |x| - v1 has the magnitude of x - v1 sign(x)
        v2s = v1s if ternary else np.abs(r).mean(axis=1, keepdims=True)
        cost = np.linalg.norm(r - v2s * np.where(r >= 0, 1.0, -1.0), axis=1)
        v1 = float(v1s[int(np.argmin(cost)), 0])
        v2 = v1 if ternary else float(np.abs(np.abs(row) - v1).mean())
        out[i] = (v1, v2)
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)


def foldable_quantize(x: Tensor, scales: Tensor) -> Tensor:
    """``x_q = sum_i v_i b_i`` of the foldable encoding (see :func:`foldable_bits`) for given scales.

    Shapes: ``x: (R, n)``, ``scales: (R, k)`` or ``(1, k)`` -> ``(R, n)``. Cost: O(k n) per row. No checks: the
    name-based :func:`lsqbq.schemes.quantize` validates its inputs first.
    """
    if scales.shape[1] == 0:
        return torch.zeros_like(x)
    v = scales[:, :1]
    approx = torch.where(x >= 0, v, -v)
    for i in range(1, scales.shape[1]):
        v = scales[:, i : i + 1]
        approx = approx + torch.where(x >= approx, v, -v)  # sign(x - approx) with sign(0) = +1
    return approx


def foldable_quantize_with_slope(x: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
    """``x_q`` and the straight-through derivative ``d x_q / d x = 1 - prod_i (1 - v_i 1{|r_i| <= 1})``.

    ``r_i = x - sum_{j<i} v_j b_j`` is the residual the i-th sign sees; each sign is a hard tanh in the backward
    pass, so the chain rule through the fold gives the product. Shapes as :func:`foldable_quantize`.
    """
    approx = torch.zeros_like(x)
    keep = torch.ones_like(x)  # prod_i (1 - v_i 1_{|r_i| <= 1})
    for i in range(scales.shape[1]):
        v = scales[:, i : i + 1]
        r = x - approx
        approx = approx + v * sign(r)
        keep = keep * (1 - v * (r.abs() <= 1).to(x.dtype))
    return approx, 1 - keep
