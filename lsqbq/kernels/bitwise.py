"""Bitwise inference modules: :class:`BitwiseConv2d` and :class:`BitwiseLinear`, built from a convertible
:class:`~lsqbq.layers.QuantConv2d` / :class:`~lsqbq.layers.QuantLinear` (:mod:`.convertibility`):

* weights: the foldable sign planes ``c_j`` of ``Q_w(W)`` (the layer's cached per-channel scales ``u_j``) packed
  once; ``W_q = sum_j u_j c_j``;
* activations, at run time exactly as ``layer.quantize_input``: clamp, per-sample scales ``v_i`` (fitted per
  sample, or the moving averages), foldable sign planes packed along channels (ternary ``ls-T`` as sign +
  non-zero mask), all in one fused pass per plane (:func:`lsqbq.kernels.ops.encode_fit`);
* output: ``y = bias + sum_ij v_i u_j <b_i, c_j>`` with the integer dot products from XNOR/popcount kernels
  (exact), scaled in float32 (equal to the simulated layer within float rounding).

Activation scales (``scales=``): ``"fitted"`` fits them on every sample at run time (what the official code
evaluates), ``"stored"`` uses the moving averages recorded in training (what the paper uses at inference; they
are validated against the scheme's rules at conversion), and ``"auto"`` (default) does what the layer does in
evaluation (its ``act_stats``). Convolution outputs are NHWC in memory (a ``channels_last`` NCHW tensor), which
the next bitwise layer reads without a copy.

A wrong input is an :class:`~lsqbq.errors.InputError` naming the layer (``BitwiseConv2d(64->64) 'layer1.0.conv1'``),
the expected and the given size, checked before any kernel runs.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..layers import (SCALE_MODES, QuantConv2d, QuantLinear, check_input, layer_label, seen_state,
                      stored_scales_problem, unchanged)
from ..quantizers import foldable_bits
from ..schemes import fit
from . import ops
from .convertibility import unconvertible_reason
from .reference import fma32

__all__ = ["BitwiseConv2d", "BitwiseLinear", "bn_affine"]

_ACTS = {"none": 0, "relu": 1, "prelu": 2}
_NO_PLANS: dict = {}
# Run-time fits the fused encode performs itself, by the registry's fit function (other fits run in Python).
_FUSED_FITS = {"fit_ls1": ops.FIT_GREEDY, "fit_greedy": ops.FIT_GREEDY, "fit_ls2": ops.FIT_LS2,
               "fit_ternary": ops.FIT_TERNARY}


def bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor] | None:
    """``(a, b)`` with ``bn(x) = fma(x, a, b)`` per channel in eval mode, rounded as torch's CPU kernel does:
    ``a = rsqrt(var + eps) * w``, ``b = fma(-mean, a, bias)``. None when ``bn`` has no running statistics."""
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        return None
    with torch.no_grad():
        a = torch.rsqrt(bn.running_var.float() + bn.eps)
        if bn.weight is not None:
            a = a * bn.weight.float()
        bias = bn.bias.float() if bn.bias is not None else torch.zeros_like(a)
        b = fma32(-bn.running_mean.float(), a, bias)
    return a.contiguous(), b.contiguous()


def _fit_code(scheme) -> int:
    return _FUSED_FITS.get(getattr(scheme.fit_fn, "__name__", ""), ops.FIT_GIVEN)


class _BitwiseBase(nn.Module):
    """Shared activation handling: prologue, clamp, per-sample scales (fit or moving average), packed planes."""

    def _init_from(self, layer, backend: str | None, scales: str = "auto") -> None:
        if scales not in SCALE_MODES:
            raise ValueError(f"scales must be one of {SCALE_MODES}, got {scales!r}")
        self.x_scheme = layer.x_scheme
        self.w_scheme = layer.w_scheme
        self.clamp = layer.clamp
        self.backend = backend
        self.layer_name = layer.layer_name
        self.mask = layer.x_scheme.ternary  # sign + non-zero mask encoding
        self.planes = layer.x_scheme.planes
        if scales == "auto":
            scales = "stored" if layer.act_stats in ("eval_only", "train_and_eval") else "fitted"
        self.scale_mode = scales
        self.use_ema = scales == "stored"
        if self.use_ema and int(layer.x_ema_updates) == 0:
            raise ValueError(f"{layer._label()}: stored activation scales requested but the layer recorded "
                             "no moving averages (train with act_stats=eval_only, or convert with scales='fitted')")
        if self.use_ema:
            layer._check_stored_scales()  # finite, positive, the scheme's rule: InputError naming the layer
        self.register_buffer("x_scales_ema", layer.x_scales_ema.detach().clone().float())
        self._ema_seen = seen_state(self.x_scales_ema)  # validated above, in the layer
        # FIT_GIVEN with no fused fit: the scales are computed in Python (moving averages, or an unfused fit)
        self.fit = ops.FIT_GIVEN if self.use_ema else _fit_code(self.x_scheme)
        self.prologue: tuple[Tensor, Tensor] | None = None  # (a, b): y = fma(x, a, b) per input channel
        was_training = layer.training
        layer.eval()
        with torch.no_grad():
            _, w_scales = layer.quantized_weight()  # (N, k_w), the cached per-channel scales
            rows = layer.weight.detach().reshape(layer.weight.shape[0], -1).float()
            planes = foldable_bits(rows, w_scales.float())  # (k_w, N, n) of ±1
        layer.train(was_training)
        self.packed = ops.pack_weight(planes.reshape(planes.shape[0], *layer.weight.shape), w_scales)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone().float(),
                                                                 requires_grad=False)

    # ------------------------------------------------------------------------------------- fusion
    def fuse_input_bn(self, bn: nn.BatchNorm2d) -> bool:
        """Run ``bn`` (eval mode) in front of the quantizer, inside the encode. False if it cannot be fused."""
        ab = bn_affine(bn)
        if ab is None or self.prologue is not None or ab[0].numel() != self.packed.c_in:
            return False
        self.prologue = ab
        self._args = None
        return True

    def _given_scales(self, x: Tensor) -> Tensor | None:
        """Scales the op gets as input: the moving averages ``(1, k)``, or a fit in Python for schemes the fused
        encode does not fit itself (``(B, k)``, on ``clamp(prologue(x))`` as the simulated layer sees it)."""
        if self.use_ema:
            ema = self.x_scales_ema
            if not unchanged(ema, self.__dict__.get("_ema_seen")):  # changed since the last check: check again
                why = stored_scales_problem(self.x_scheme, ema)
                if why is not None:
                    raise InputError(f"{self._label()}: stored activation scales (x_scales_ema, "
                                     f"{self.x_scheme.name}) {why}; convert a valid model or use scales='fitted'")
                self._ema_seen = seen_state(ema)
            return ema.reshape(1, -1)
        if self.fit != ops.FIT_GIVEN:
            return None
        y = x.float()
        if self.prologue is not None:
            shape = (1, -1) + (1,) * (y.dim() - 2)
            y = fma32(y, self.prologue[0].reshape(shape), self.prologue[1].reshape(shape))
        if self.clamp is not None:
            y = y.clamp(-self.clamp, self.clamp)
        return fit(y.reshape(y.shape[0], -1), self.x_scheme).float()

    def _label(self) -> str:
        return layer_label(type(self).__name__, self.packed.c_in, self.packed.n_out, self.layer_name)

    def _check(self, x: Tensor, dims: tuple[str, ...], size: int, size_name: str, axis: int) -> None:
        """Raise :class:`InputError` naming the layer, the expected and the given sizes (the kernels would not
        notice); the label is only built on failure."""
        if isinstance(x, Tensor) and x.is_floating_point() and x.dim() == len(dims) and x.shape[axis] == size:
            return
        check_input(self._label(), x, dims, size, size_name, axis)

    def _encode(self, x: Tensor, padding=(0, 0)) -> tuple[Tensor, Tensor]:
        """Packed planes and the ``(B, k)`` scales of ``x`` (fused encode)."""
        return _reraise(ops.encode_fit, x, self.planes, self.fit, scales=self._given_scales(x), clamp=self.clamp,
                        mask=self.mask, padding=padding, prologue=self.prologue, backend=self.backend)

    def _fusion_repr(self) -> str:
        parts = [f"scales={self.scale_mode}"]
        if self.prologue is not None:
            parts.append("prologue=bn")
        return ", ".join(parts)


def _layer_op(backend: str | None, device: torch.device) -> tuple[int | None, object]:
    """``(isa, op)`` for a :class:`BitwiseConv2d` call: the ``isa`` argument (:func:`lsqbq.kernels.ops.cached_isa`,
    None for ``reference``) and the overload ``lsqbq::bitwise_conv2d.default`` (None for ``reference``)."""
    isa = ops.cached_isa(backend, device)
    return (None, None) if isa is None else (isa, _bitwise_conv2d_op())


@functools.cache
def _bitwise_conv2d_op():
    """``torch.ops.lsqbq.bitwise_conv2d.default``, looked up once (the attribute chain costs about 2 us a call)."""
    return torch.ops.lsqbq.bitwise_conv2d.default


def _reraise(fn, *args, **kwargs):
    """Call a kernel; its report of a non-finite input (NaN or Inf gives no scale) becomes an :class:`InputError`."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, RuntimeError) as exc:
        _raise_input_error(exc)
        raise


def _raise_input_error(exc: Exception) -> None:
    """Raise a kernel's report of a non-finite input as an :class:`InputError`; return for any other error."""
    if "not finite" in str(exc):
        raise InputError(str(exc).split("\n")[0].removeprefix("lsqbq: ")) from None


class BitwiseConv2d(_BitwiseBase):
    """Bitwise inference version of a :class:`~lsqbq.layers.QuantConv2d`: ``y = b + sum_ij v_i u_j conv(b_i, c_j)``,
    with the fused prologue / epilogue of the module docstring.

    Shapes: ``x: (B, C, H, W)`` -> ``(B, N, OH, OW)`` float32 in channels_last memory; ``residual`` (when the layer
    fuses a residual add): ``(B, N, OH, OW)``.
    """

    def __init__(self, layer: QuantConv2d, backend: str | None = None, scales: str = "auto"):
        super().__init__()
        why = unconvertible_reason(layer) if isinstance(layer, QuantConv2d) else "not a QuantConv2d"
        if why is not None:
            raise ValueError(f"layer cannot be converted to bitwise inference ({why}): {layer}")
        self._init_from(layer, backend, scales)
        self.stride, self.padding, self.dilation = tuple(layer.stride), tuple(layer.padding), tuple(layer.dilation)
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.act = "none"
        self.slope: Tensor | None = None
        self.residual: str | None = None  # None, "before" (added before the activation) or "after"
        self._args = None  # cached op arguments (see _op_args)
        self._plans: dict[torch.Size, tuple] = {}  # per input shape: output size, residual shape (see _plan)

    # ------------------------------------------------------------------------------------- fusion
    def fuse_output_bn(self, bn: nn.BatchNorm2d) -> bool:
        """Fold an eval-mode ``bn`` after the layer into the weight scales and the bias (before any activation)."""
        ab = bn_affine(bn)
        if ab is None or self.act != "none" or self.residual is not None or ab[0].numel() != self.out_channels:
            return False
        a, b = ab
        p = self.packed
        scales = p.scales.clone()
        scales[:, : p.n_out] *= a  # (P_w, Npad): u_j <- a u_j
        self.packed = ops.PackedWeight(p.rows, p.panels, p.tapsum, scales.contiguous(), p.n_out, p.c_in, p.kernel)
        bias = b if self.bias is None else fma32(self.bias.detach(), a, b)
        self.bias = nn.Parameter(bias.contiguous(), requires_grad=False)
        self._args = None
        return True

    def fuse_activation(self, act: nn.Module) -> bool:
        """Apply ``act`` (``nn.ReLU`` or ``nn.PReLU``) in the epilogue."""
        if self.act != "none" or self.residual == "after":
            return False
        if isinstance(act, nn.ReLU):
            self.act = "relu"
        elif isinstance(act, nn.PReLU) and act.weight.numel() in (1, self.out_channels):
            self.act, self.slope = "prelu", act.weight.detach().float().reshape(-1).clone()
        else:
            return False
        self._args = None
        return True

    def fuse_residual(self, where: str) -> None:
        """Take a residual in :meth:`forward` and add it ``"before"`` or ``"after"`` the fused activation."""
        if where not in ("before", "after"):
            raise ValueError(f"residual must be added 'before' or 'after' the activation, got {where!r}")
        self.residual = where
        self._args = None

    # ------------------------------------------------------------------------------------ compute
    def dot_products(self, x: Tensor) -> Tensor:
        """Integer dot products ``(P_a', P_w, B, OH, OW, N)`` of the activation and weight sign planes."""
        a, _ = self._encode(x, self.padding)
        return ops.xnor_conv2d(a, self.packed, x.shape[-2:], self.stride, self.padding, self.dilation,
                               mask=self.mask, backend=self.backend)

    def output_size(self, hw) -> tuple[int, int]:
        """``OH, OW = floor((H + 2p - d (k - 1) - 1) / s) + 1`` per axis."""
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                     zip(hw, self.padding, self.dilation, self.packed.kernel, self.stride))

    def _op_args(self) -> tuple:
        """The arguments of ``lsqbq::bitwise_conv2d`` after ``x`` that do not change between calls, as
        ``(before, after)`` around ``(x_scales, residual)``, built once (small models at batch 1 are bound by
        per-layer overhead); the ``fuse_*`` methods reset them."""
        if self._args is None:
            self._args = self._build_args()
        return self._args

    def _build_args(self) -> tuple:
        p, pro = self.packed, self.prologue or (None, None)
        before = (p.panels, p.tapsum, p.scales, None if self.bias is None else self.bias.detach(), pro[0], pro[1])
        after = (self.slope, float(self.clamp or 0.0), self.planes, self.fit, self.mask, _ACTS[self.act],
                 self.residual == "before", self.out_channels, self.in_channels, list(p.kernel), list(self.stride),
                 list(self.padding), list(self.dilation))
        return before, after

    def _plan(self, x: Tensor) -> tuple:
        """``(OH, OW, residual shape)`` for inputs of ``x``'s shape, after checking that shape (:class:`InputError`
        naming the layer); cached by shape, as it depends only on the shape and the layer's geometry."""
        self._check(x, ("B", "C", "H", "W"), self.in_channels, "input channels", 1)
        oh, ow = self.output_size(x.shape[-2:])
        if oh < 1 or ow < 1:
            raise InputError(f"{self._label()}: input {tuple(x.shape[-2:])} is smaller than the kernel "
                             f"{tuple(self.packed.kernel)} with padding {self.padding} and dilation {self.dilation}")
        plans = self.__dict__.setdefault("_plans", {})  # (a module pickled before the cache existed has none)
        if len(plans) >= 64:  # many input sizes: start over rather than grow
            plans.clear()
        plan = plans[x.shape] = (oh, ow, torch.Size((x.shape[0], self.out_channels, oh, ow)))
        return plan

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        # per call only what can change: the input's type and dtype (its shape picks a checked plan), the residual
        # against that plan, the back end (re-resolved when its switches change); the op's other arguments are cached
        if not (isinstance(x, Tensor) and x.is_floating_point()):
            self._check(x, ("B", "C", "H", "W"), self.in_channels, "input channels", 1)
        plan = self.__dict__.get("_plans", _NO_PLANS).get(x.shape)
        oh, ow, res_shape = plan if plan is not None else self._plan(x)
        if residual is None:
            if self.residual is not None:
                raise InputError(f"{self._label()}: a residual is expected here")
        else:
            if self.residual is None:
                raise InputError(f"{self._label()}: a residual is not fused here")
            if residual.shape != res_shape:
                raise InputError(f"{self._label()}: residual must be {tuple(res_shape)}, got {tuple(residual.shape)}")
            if residual.dtype != torch.float32:
                residual = residual.float()
        if x.shape[0] == 0:
            return x.new_zeros(0, self.out_channels, oh, ow, dtype=torch.float32)
        isa, op = _layer_op(self.backend, x.device)
        scales = None if self.fit != ops.FIT_GIVEN else self._given_scales(x)
        if isa is not None:  # the C++ op directly, with the cached arguments
            before, after = self._args if self._args is not None else self._op_args()
            try:
                y = op(x if x.dtype == torch.float32 else x.float(), *before, scales, residual, *after, isa)
            except (ValueError, RuntimeError) as exc:
                _raise_input_error(exc)
                raise
            return y.permute(0, 3, 1, 2)  # (B, N, OH, OW) view of NHWC memory
        y = _reraise(ops.bitwise_conv2d, x, self.packed, self.bias, self.stride, self.padding, self.dilation,
                     planes=self.planes, fit=self.fit, scales=scales, clamp=self.clamp,
                     mask=self.mask, prologue=self.prologue, residual=residual, act=_ACTS[self.act],
                     slope=self.slope, residual_first=self.residual == "before", backend=self.backend)
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        fused = self._fusion_repr()
        if self.act != "none":
            fused += f", act={self.act}"
        if self.residual:
            fused += f", residual={self.residual}"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.packed.kernel}, stride={self.stride}, "
                f"padding={self.padding}, x_quant={self.x_scheme.name}, w_quant={self.w_scheme.name}, {fused}")


class BitwiseLinear(_BitwiseBase):
    """Bitwise inference version of a :class:`~lsqbq.layers.QuantLinear`; ``x: (B, ..., F) -> (B, ..., N)``."""

    def __init__(self, layer: QuantLinear, backend: str | None = None, scales: str = "auto"):
        super().__init__()
        why = unconvertible_reason(layer) if isinstance(layer, QuantLinear) else "not a QuantLinear"
        if why is not None:
            raise ValueError(f"layer cannot be converted to bitwise inference ({why}): {layer}")
        self._init_from(layer, backend, scales)
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def _rows(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Packed rows ``(P_a, B * L, Fw)`` and per-row scales ``(B * L, k)``: the scales are per sample (all L
        rows of ``x[b]``), so the sample is encoded as an NHWC image of L pixels with F channels."""
        B, F = x.shape[0], x.shape[-1]
        L = x[0].numel() // F
        image = x.reshape(B, L, 1, F).permute(0, 3, 1, 2)  # (B, F, L, 1), channels_last memory
        a, scales = self._encode(image)
        return a.reshape(a.shape[0], B * L, a.shape[-1]), scales.repeat_interleave(L, dim=0)

    def dot_products(self, x: Tensor) -> Tensor:
        """Integer dot products ``(P_a', P_w, B * L, N)``."""
        a, _ = self._rows(x)
        return ops.xnor_gemm(a, self.packed, mask=self.mask, backend=self.backend)

    def forward(self, x: Tensor) -> Tensor:
        if not (isinstance(x, Tensor) and x.is_floating_point() and x.dim() >= 2 and x.shape[-1] == self.in_features):
            check_input(self._label(), x, ("B", "...", "F"), self.in_features, "input features", -1)
        if x.numel() == 0:
            return x.new_zeros(*x.shape[:-1], self.out_features, dtype=torch.float32)
        a, per_row = self._rows(x)
        sa = 2 * per_row[:, :1] if self.mask else per_row  # ternary t = x_q / (2v) has scale 2v
        y = ops.xnor_gemm_scaled(a, self.packed, sa, self.bias, mask=self.mask, backend=self.backend)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"x_quant={self.x_scheme.name}, w_quant={self.w_scheme.name}, {self._fusion_repr()}")
