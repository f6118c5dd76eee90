"""Python side of the ops ``torch.ops.lsqbq.*`` (schemas and CPU kernels in C++; loaded by :mod:`lsqbq._native`).

Quantizer ops (``fit_greedy``, ``fit_ls2``, ``fit_ternary``, ``quant_encode``):

* portable kernel (``CompositeExplicitAutograd``): the pure-torch code of :mod:`lsqbq.quantizers`. It serves
  every device but the CPU, and the CPU kernels hand it every dtype but float32;
* autograd: the gradient of that pure-torch code (recomputed in the backward pass), so both paths give the same
  gradients: for the fits, the derivative of the scales with the discrete choices held fixed
  (:mod:`lsqbq.quantizers`, "Gradients"). ``quant_encode``: ``x_q = sum_i v_i b_i`` is piecewise constant in ``x``
  (no gradient) and linear in the scales (``d x_q / d v_i = b_i``); its STE slope output is a constant.

The quantizer's own gradient is not the op's: :func:`foldable_quantize`, the encoding behind
:func:`lsqbq.quantize`, carries the straight-through gradient of :mod:`lsqbq.ste` (scales constant), the one
rule of the layers, on both paths.

Kernel ops (``pack_signs``, ``pack_activations``, ``encode_fused``, ``bitwise_conv2d``, ``xnor_*``,
``max_pool2d_nhwc``, ``quantize_uint8``, ``int8_conv2d``, ``int8_linear``, ``int8_direct_conv2d``,
``f32_direct_conv2d``, ``popcount_peak``, ``isa_supported``, ``direct_conv_supported``):
CPU only, inference: their outputs are registered as non-differentiable; :mod:`lsqbq.kernels.ops` picks the back
end.

Every op has a fake (meta) kernel, so it traces under FakeTensor and ``torch.compile``.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _native, quantizers

__all__ = ["NAMESPACE", "op_names", "register", "active", "fit_ls1", "fit_greedy", "fit_ls2", "fit_ternary",
           "foldable_quantize", "foldable_encode", "quant_encode_with_slope"]

NAMESPACE = "lsqbq"
_registered = False
_lib: torch.library.Library | None = None


def op_names() -> list[str]:
    """Names of the ops registered under ``torch.ops.lsqbq`` (empty when the library is not loaded)."""
    prefix = NAMESPACE + "::"
    names = {n[len(prefix):].split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix)}
    return sorted(names)


# ----------------------------------------------------------------------------------- portable kernels


def _fit_greedy(x: Tensor, k: int) -> Tensor:
    return quantizers.fit_greedy(x, k).contiguous()


def _fit_ls2(x: Tensor) -> Tensor:
    return quantizers.fit_ls2(x).contiguous()


def _fit_ternary(x: Tensor) -> Tensor:
    return quantizers.fit_ternary(x).contiguous()


def _quant_encode(x: Tensor, scales: Tensor, with_slope: bool) -> tuple[Tensor, Tensor]:
    """``x_q = sum_i v_i b_i`` and, with ``with_slope``, the STE derivative (else an empty tensor), as
    :func:`lsqbq.quantizers.foldable_quantize_with_slope`. ``x: (R, n)``, ``scales: (R|1, k)``."""
    if not with_slope:
        return quantizers.foldable_quantize(x, scales).contiguous(), x.new_empty(0)
    approx, slope = quantizers.foldable_quantize_with_slope(x, scales)
    return approx.contiguous(), slope.contiguous()


_PORTABLE = {"fit_greedy": _fit_greedy, "fit_ls2": _fit_ls2, "fit_ternary": _fit_ternary,
             "quant_encode": _quant_encode}


# --------------------------------------------------------------------------------------------- autograd


def _grad_of_portable(fn, args: tuple, wrt: tuple[int, ...], grads: tuple) -> list[Tensor | None]:
    """``sum_o grads[o] * d fn(*args)[o] / d args[i]`` for ``i`` in ``wrt``: the portable code run again with
    autograd recording, so the result is the pure-torch path's gradient bit for bit."""
    leaves = list(args)
    for i in wrt:
        leaves[i] = args[i].detach().requires_grad_()
    with torch.enable_grad():
        outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    pairs = [(o, g) for o, g in zip(outs, grads) if o.requires_grad and g is not None]
    if not pairs:
        return [None] * len(wrt)
    return list(torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in wrt], [g for _, g in pairs],
                                    allow_unused=True))


def _setup_fit(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])
    ctx.args = inputs[1:]


def _backward_fit(name: str):
    fn = _PORTABLE[name]

    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * (1 + len(ctx.args))
        (gx,) = _grad_of_portable(fn, (x, *ctx.args), (0,), (grad,))
        return (gx, *[None] * len(ctx.args))

    return backward


def _setup_quant_encode(ctx, inputs, output) -> None:
    x, scales, _ = inputs
    ctx.save_for_backward(x, scales)
    if scales.requires_grad:
        ctx.mark_non_differentiable(output[1])
    else:
        ctx.mark_non_differentiable(*output)


@once_differentiable
def _backward_quant_encode(ctx, grad, _grad_slope):
    x, scales = ctx.saved_tensors
    if not ctx.needs_input_grad[1]:
        return None, None, None
    (gs,) = _grad_of_portable(_quant_encode, (x, scales, False), (1,), (grad, None))
    return None, gs, None


# ------------------------------------------------------------------------------------------ fake kernels


def _fake_kernels() -> dict:
    def conv_out(hw, kernel, stride, padding, dilation):
        return [(hw[i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(2)]

    def fit_greedy(x, k):
        return x.new_empty((x.shape[0], k))

    def fit_two(x):
        return x.new_empty((x.shape[0], 2))

    def quant_encode(x, scales, with_slope):
        dtype = torch.promote_types(x.dtype, scales.dtype)
        out = torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format)
        return out, (torch.empty_like(out) if with_slope else x.new_empty(0))

    def pack_signs(x):
        return x.new_empty((*x.shape[:-1], (x.shape[-1] + 63) // 64), dtype=torch.int64)

    def pack_activations(x, scales, clamp, planes, mask, pad_h, pad_w, isa):
        cw = (x.shape[1] + 63) // 64
        if x.dim() == 2:
            return x.new_empty((planes, x.shape[0], cw), dtype=torch.int64)
        return x.new_empty((planes, x.shape[0], x.shape[2] + 2 * pad_h, x.shape[3] + 2 * pad_w, cw),
                           dtype=torch.int64)

    def encode_fused(x, in_scale, in_shift, x_scales, clamp, planes, fit, mask, pad_h, pad_w, isa):
        return (pack_activations(x, x_scales, clamp, planes, mask, pad_h, pad_w, isa),
                x.new_empty((x.shape[0], planes), dtype=torch.float32))

    def bitwise_conv2d(x, w, wtap, sw, bias, in_scale, in_shift, x_scales, residual, slope, clamp, planes, fit, mask,
                       act, residual_first, n_out, c_in, kernel, stride, padding, dilation, isa):
        oh, ow = conv_out(x.shape[2:], kernel, stride, padding, dilation)
        return x.new_empty((x.shape[0], oh, ow, n_out), dtype=torch.float32)

    def xnor_gemm(a, w, n_out, k, mask, isa):
        return a.new_empty((1 if mask else a.shape[0], w.shape[0], a.shape[1], n_out), dtype=torch.int32)

    def xnor_gemm_scaled(a, w, sa, sw, bias, n_out, k, mask, isa):
        return a.new_empty((a.shape[1], n_out), dtype=torch.float32)

    def xnor_conv2d(a, w, wtap, n_out, c_in, hw, kernel, stride, padding, dilation, mask, isa):
        oh, ow = conv_out(hw, kernel, stride, padding, dilation)
        return a.new_empty((1 if mask else a.shape[0], w.shape[0], a.shape[1], oh, ow, n_out), dtype=torch.int32)

    def xnor_conv2d_scaled(a, w, wtap, sa, sw, bias, n_out, c_in, hw, kernel, stride, padding, dilation, mask, isa):
        oh, ow = conv_out(hw, kernel, stride, padding, dilation)
        return a.new_empty((a.shape[1], oh, ow, n_out), dtype=torch.float32)

    def max_pool2d_nhwc(x, kernel, stride, padding, relu, isa):
        oh, ow = conv_out(x.shape[2:], kernel, stride, padding, (1, 1))
        return x.new_empty((x.shape[0], x.shape[1], oh, ow)).contiguous(memory_format=torch.channels_last)

    def quantize_uint8(x, step, levels, channels, isa):
        oh, ow = [-(-x.shape[2 + i] // step[i]) for i in (0, 1)]
        q = x.new_empty((x.shape[0], channels or x.shape[1], oh, ow), dtype=torch.uint8)
        return q.contiguous(memory_format=torch.channels_last), x.new_empty(4, dtype=torch.float64)

    def int8_conv2d(x, packed, w_scale, w_zero, bias, step, levels, channels, stride, padding, dilation, groups,
                    relu, isa):
        hw = [-(-x.shape[2 + i] // step[i]) for i in (0, 1)]
        oh, ow = conv_out(hw, packed.shape[2:], stride, padding, dilation)
        return x.new_empty((x.shape[0], w_scale.shape[0], oh, ow)).contiguous(memory_format=torch.channels_last)

    def int8_linear(x, packed, w_scale, w_zero, bias, levels, relu, isa):
        return x.new_empty((x.shape[0], w_scale.shape[0]))

    def int8_direct_conv2d(x, w_packed, w_sum, w_scale, bias, levels, step, kernel, stride, padding, relu, pool, isa,
                           fold_scales=False):
        hw = [-(-x.shape[2 + i] // step[i]) for i in (0, 1)]
        oh, ow = conv_out(hw, kernel, stride, padding, (1, 1))
        if pool:
            oh, ow = conv_out((oh, ow), (pool[0],) * 2, (pool[1],) * 2, (pool[2],) * 2, (1, 1))
        return x.new_empty((x.shape[0], w_sum.shape[0], oh, ow)).contiguous(memory_format=torch.channels_last)

    def f32_direct_conv2d(x, w_packed, bias, n_out, kernel, stride, padding, relu, pool, isa):
        oh, ow = conv_out(x.shape[2:], kernel, stride, padding, (1, 1))
        if pool:
            oh, ow = conv_out((oh, ow), (pool[0],) * 2, (pool[1],) * 2, (pool[2],) * 2, (1, 1))
        return x.new_empty((x.shape[0], n_out, oh, ow)).contiguous(memory_format=torch.channels_last)

    # No tensor arguments: the answers recorded from the C++ functions when the library loaded.
    def popcount_peak(iters, isa):
        if isa not in _macs_per_iter:
            raise RuntimeError(f"lsqbq: kernel isa {isa} is not supported on this CPU")
        return iters * _macs_per_iter[isa]

    def isa_supported(isa):
        return isa in _macs_per_iter

    def direct_conv_supported():
        return _direct_conv[0]

    # A measurement of the machine (the benchmarks' memory probe): a traced call has no value to record.
    def memory_latency_ns(nbytes, loads):
        return float("nan")

    return {"fit_greedy": fit_greedy, "fit_ls2": fit_two, "fit_ternary": fit_two, "quant_encode": quant_encode,
            "pack_signs": pack_signs, "pack_activations": pack_activations, "encode_fused": encode_fused,
            "bitwise_conv2d": bitwise_conv2d, "xnor_gemm": xnor_gemm,
            "xnor_gemm_scaled": xnor_gemm_scaled, "xnor_conv2d": xnor_conv2d,
            "xnor_conv2d_scaled": xnor_conv2d_scaled, "max_pool2d_nhwc": max_pool2d_nhwc,
            "quantize_uint8": quantize_uint8, "int8_conv2d": int8_conv2d, "int8_linear": int8_linear,
            "int8_direct_conv2d": int8_direct_conv2d, "f32_direct_conv2d": f32_direct_conv2d,
            "popcount_peak": popcount_peak, "isa_supported": isa_supported,
            "direct_conv_supported": direct_conv_supported, "memory_latency_ns": memory_latency_ns}


_macs_per_iter: dict[int, int] = {}  # supported isa -> binary MACs per iteration of popcount_peak
_direct_conv = [False]  # direct_conv_supported(), recorded when the library loaded


def register() -> None:
    """Register the portable kernels, autograd formulas and fake kernels (once, after the C++ library loaded)."""
    global _registered, _lib
    if _registered:
        return
    _registered = True
    _lib = torch.library.Library(NAMESPACE, "FRAGMENT")
    for name, fn in _PORTABLE.items():
        _lib.impl(name, fn, "CompositeExplicitAutograd")
    for name in ("fit_greedy", "fit_ls2", "fit_ternary"):
        torch.library.register_autograd(f"{NAMESPACE}::{name}", _backward_fit(name), setup_context=_setup_fit,
                                        lib=_lib)
    torch.library.register_autograd(f"{NAMESPACE}::quant_encode", _backward_quant_encode,
                                    setup_context=_setup_quant_encode, lib=_lib)
    for isa in (0, 1):
        if torch.ops.lsqbq.isa_supported(isa):
            _macs_per_iter[isa] = torch.ops.lsqbq.popcount_peak(1, isa)
    _direct_conv[0] = bool(torch.ops.lsqbq.direct_conv_supported())
    for name, fn in _fake_kernels().items():
        torch.library.register_fake(f"{NAMESPACE}::{name}", fn, lib=_lib)


def direct_conv_recorded() -> bool:
    """``torch.ops.lsqbq.direct_conv_supported()`` as recorded when the library loaded (False before)."""
    return _direct_conv[0]


# ------------------------------------------------------------------------------------------------ calls
# The functions the rest of the package calls: the op when the library is active, else the pure-torch maths.


def active() -> bool:
    """True when calls go to ``torch.ops.lsqbq``: the library is loaded, its Python side registered, and the
    calling thread is not inside :func:`lsqbq._native.disabled`."""
    if not _native.active():
        return False
    register()
    return True


def fit_greedy(x: Tensor, k: int) -> Tensor:
    """:func:`lsqbq.quantizers.fit_greedy` (gf-k scales, ``(R, n) -> (R, k)``) through the op."""
    return torch.ops.lsqbq.fit_greedy(x, k) if active() else quantizers.fit_greedy(x, k)


def fit_ls1(x: Tensor) -> Tensor:
    """ls-1 scales ``mean|x|`` per row (= gf-1), ``(R, n) -> (R, 1)``."""
    return fit_greedy(x, 1)


def fit_ls2(x: Tensor) -> Tensor:
    """:func:`lsqbq.quantizers.fit_ls2` (exact 2-bit least squares, ``(R, n) -> (R, 2)``) through the op."""
    return torch.ops.lsqbq.fit_ls2(x) if active() else quantizers.fit_ls2(x)


def fit_ternary(x: Tensor) -> Tensor:
    """:func:`lsqbq.quantizers.fit_ternary` (exact ternary, ``(R, n) -> (R, 2)``) through the op."""
    return torch.ops.lsqbq.fit_ternary(x) if active() else quantizers.fit_ternary(x)


class _FoldableSTE(torch.autograd.Function):
    """``x_q`` forward; ``grad * slope`` backward, the slope computed with ``x_q`` (:mod:`lsqbq.ste`)."""

    @staticmethod
    def forward(ctx, x: Tensor, scales: Tensor) -> Tensor:
        approx, slope = quant_encode_with_slope(x, scales)
        ctx.save_for_backward(slope)
        return approx

    @staticmethod
    def backward(ctx, grad: Tensor):
        (slope,) = ctx.saved_tensors
        return grad * slope, None


def foldable_quantize(x: Tensor, scales: Tensor) -> Tensor:
    """``x_q = sum_i v_i b_i`` for given scales with the straight-through gradient of :mod:`lsqbq.ste`.

    The encoding of :func:`lsqbq.quantize` and of the layers (:func:`lsqbq.ste.foldable_ste`):
    ``d x_q / d x = 1 - prod_i (1 - v_i 1_{|r_i| <= 1})`` with ``r_i = x - sum_{j<i} v_j b_j``; the scales are
    constants (no gradient to them, none through them to ``x``). Without a gradient to compute (``x`` does not
    require grad, or grad mode is off) the slope is skipped.
    Shapes: ``x: (R, n)``, ``scales: (R|1, k)`` -> ``(R, n)``.
    """
    scales = scales.detach().to(x.dtype)
    if not (x.requires_grad and torch.is_grad_enabled()):
        return foldable_encode(x, scales)
    return _FoldableSTE.apply(x, scales)


def foldable_encode(x: Tensor, scales: Tensor) -> Tensor:
    """``x_q = sum_i v_i b_i`` for given scales (:func:`lsqbq.quantizers.foldable_quantize`) through the op, with
    the op's own gradient (none to ``x``, ``b_i`` to scales that require grad)."""
    if scales.shape[1] == 0:
        return torch.zeros_like(x)
    if active():
        return torch.ops.lsqbq.quant_encode(x, scales.contiguous(), False)[0]
    return quantizers.foldable_quantize(x, scales)


def quant_encode_with_slope(x: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
    """``(x_q, STE slope)`` (:func:`lsqbq.quantizers.foldable_quantize_with_slope`) through the fused op."""
    if active():
        return torch.ops.lsqbq.quant_encode(x, scales, True)
    return quantizers.foldable_quantize_with_slope(x, scales)
