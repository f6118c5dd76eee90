"""Convert a quantized model to bitwise inference: ``to_bitwise(model)``.

Every :class:`~lsqbq.layers.QuantConv2d` / :class:`~lsqbq.layers.QuantLinear` whose activation *and* weight schemes
are quantized (``ls-1``, ``ls-2``, ``ls-T``, ``gf-k``) becomes a :class:`BitwiseConv2d` / :class:`BitwiseLinear`:

* weights: the foldable sign planes ``c_j`` of ``Q_w(W)`` (the layer's cached per-channel scales ``u_j``) packed
  once; ``W_q = sum_j u_j c_j``;
* activations, at run time exactly as ``layer.quantize_input``: clamp, per-sample scales ``v_i`` (fitted per
  sample, or the moving averages), foldable sign planes packed along channels (ternary ``ls-T`` as sign +
  non-zero mask), all in one fused pass per plane (:func:`lsqbq.kernels.ops.encode_fit`);
* output: ``y = bias + sum_ij v_i u_j <b_i, c_j>`` with the integer dot products from XNOR/popcount kernels
  (exact), scaled in float32 (equal to the simulated layer within float rounding).

Activation scales (``scales=``): ``"fitted"`` fits them on every sample at run time (what the official code
evaluates), ``"stored"`` uses the moving averages recorded in training (what the paper uses at inference), and
``"auto"`` (default) does what the layer does in evaluation (its ``act_stats``).

Fusion (``fuse=True``, default): the float work next to a binary convolution runs inside its op instead of as
separate torch ops:

* a BatchNorm *in front* of the layer (XNOR blocks: ``BN -> quantize -> conv``; LeNet-5's ``bn2``) becomes the
  encode's per-channel prologue ``y = fma(x, a, b)``, with ``a = rsqrt(var + eps) w`` and
  ``b = fma(-mean, a, bias)`` -- the float operations of torch's CPU BatchNorm, so the signs, scales and integer
  dot products equal the eager model's bit for bit;
* a BatchNorm *after* the layer (regular blocks) is folded into the weight scales and the bias:
  ``u_j <- a u_j``, ``bias <- a bias + b`` (float rounding only);
* the following ReLU / PReLU and the residual add of the block (before or after the nonlinearity, single or
  double shortcut) run in the epilogue on the tile still in cache;
* the model's remaining 4-D parameters (full-precision stem, shortcuts) are made channels_last, so the float
  layers read and write the NHWC layout the bitwise ops use, without conversions in between.

Patterns are found in ``nn.Sequential`` containers (``[BN, conv]``, ``[conv, BN, act]``) and in the project's
blocks (:class:`~lsqbq.models.resnet.XnorBlock`, :class:`~lsqbq.models.resnet.RegularBlock`,
:class:`~lsqbq.models.lenet.LeNet5`); fused modules are replaced by ``nn.Identity`` or by a fused block.

Layers with a full-precision side, grouped convolutions or non-zero padding modes stay as they are. Convolution
outputs are NHWC in memory (a ``channels_last`` NCHW tensor), which the next bitwise layer reads without a copy.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..errors import InputError, InputTypeError
from ..layers import SCALE_MODES, QuantConv2d, QuantLinear
from ..models.lenet import LeNet5
from ..models.resnet import RegularBlock, XnorBlock
from ..quantizers import foldable_bits
from ..schemes import fit
from . import ops
from .reference import fma32

__all__ = ["to_bitwise", "BitwiseConv2d", "BitwiseLinear", "FusedXnorBlock", "FusedRegularBlock", "convertible",
           "bn_affine", "SCALE_MODES"]

_ACTS = {"none": 0, "relu": 1, "prelu": 2}
# Run-time fits the fused encode performs itself, by the registry's fit function (other fits run in Python).
_FUSED_FITS = {"fit_ls1": ops.FIT_GREEDY, "fit_greedy": ops.FIT_GREEDY, "fit_ls2": ops.FIT_LS2,
               "fit_ternary": ops.FIT_TERNARY}


def convertible(layer: nn.Module) -> bool:
    """True for quantized layers that :func:`to_bitwise` replaces (both schemes non-fp, plain zero-padded conv)."""
    if not isinstance(layer, (QuantConv2d, QuantLinear)):
        return False
    if layer.x_scheme.is_fp or layer.w_scheme.is_fp:
        return False
    if layer.weight.dtype != torch.float32:
        return False
    if isinstance(layer, QuantConv2d):
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            return False
        if layer.kernel_size[0] * layer.kernel_size[1] > 64:
            return False
    return True


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
        self.mask = layer.x_scheme.ternary  # sign + non-zero mask encoding
        self.planes = layer.x_scheme.planes
        if scales == "auto":
            scales = "stored" if layer.act_stats in ("eval_only", "train_and_eval") else "fitted"
        self.scale_mode = scales
        self.use_ema = scales == "stored"
        if self.use_ema and int(layer.x_ema_updates) == 0:
            raise ValueError(f"{type(layer).__name__}: stored activation scales requested but the layer recorded "
                             "no moving averages (train with act_stats=eval_only, or convert with scales='fitted')")
        self.register_buffer("x_scales_ema", layer.x_scales_ema.detach().clone().float())
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
            return self.x_scales_ema.reshape(1, -1)
        if self.fit != ops.FIT_GIVEN:
            return None
        y = x.float()
        if self.prologue is not None:
            shape = (1, -1) + (1,) * (y.dim() - 2)
            y = fma32(y, self.prologue[0].reshape(shape), self.prologue[1].reshape(shape))
        if self.clamp is not None:
            y = y.clamp(-self.clamp, self.clamp)
        return fit(y.reshape(y.shape[0], -1), self.x_scheme).float()

    def _check(self, x: Tensor, dims: str, size: int, size_name: str, axis: int) -> None:
        """Raise :class:`InputError` naming expected and given sizes (the kernels would not notice)."""
        if not isinstance(x, Tensor):
            raise InputTypeError(f"{type(self).__name__}: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise InputTypeError(f"{type(self).__name__}: expected a floating-point input, got {x.dtype}")
        wrong_rank = x.dim() < len(dims) if dims[-1] == "..." else x.dim() != len(dims)
        if wrong_rank:
            raise InputError(f"{type(self).__name__}: expected input ({', '.join(dims)}), got shape {tuple(x.shape)}")
        if x.shape[axis] != size:
            raise InputError(f"{type(self).__name__}: expected {size} {size_name}, got {x.shape[axis]} "
                             f"(input shape {tuple(x.shape)})")

    def _encode(self, x: Tensor, padding=(0, 0)) -> tuple[Tensor, Tensor]:
        """Packed planes and the ``(B, k)`` scales of ``x`` (fused encode)."""
        return _reraise(ops.encode_fit, x, self.planes, self.fit, scales=self._given_scales(x), clamp=self.clamp,
                        mask=self.mask, padding=padding, prologue=self.prologue, backend=self.backend)

    def _fusion_repr(self) -> str:
        parts = [f"scales={self.scale_mode}"]
        if self.prologue is not None:
            parts.append("prologue=bn")
        return ", ".join(parts)


def _reraise(fn, *args, **kwargs):
    """Call a kernel; its report of a non-finite input (NaN or Inf gives no scale) becomes an :class:`InputError`."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, RuntimeError) as exc:
        if "not finite" in str(exc):
            raise InputError(str(exc).split("\n")[0].removeprefix("lsqbq: ")) from None
        raise


class BitwiseConv2d(_BitwiseBase):
    """Bitwise inference version of a :class:`~lsqbq.layers.QuantConv2d`: ``y = b + sum_ij v_i u_j conv(b_i, c_j)``,
    with the fused prologue / epilogue of the module docstring.

    Shapes: ``x: (B, C, H, W)`` -> ``(B, N, OH, OW)`` float32 in channels_last memory; ``residual`` (when the layer
    fuses a residual add): ``(B, N, OH, OW)``.
    """

    def __init__(self, layer: QuantConv2d, backend: str | None = None, scales: str = "auto"):
        super().__init__()
        if not convertible(layer):
            raise ValueError(f"layer cannot be converted to bitwise inference: {layer}")
        self._init_from(layer, backend, scales)
        self.stride, self.padding, self.dilation = tuple(layer.stride), tuple(layer.padding), tuple(layer.dilation)
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.act = "none"
        self.slope: Tensor | None = None
        self.residual: str | None = None  # None, "before" (added before the activation) or "after"
        self._args = None  # cached op arguments (see _op_args)

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

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        self._check(x, ("B", "C", "H", "W"), self.in_channels, "input channels", 1)
        oh, ow = self.output_size(x.shape[-2:])
        if oh < 1 or ow < 1:
            raise InputError(f"BitwiseConv2d: input {tuple(x.shape[-2:])} is smaller than the kernel "
                             f"{tuple(self.packed.kernel)} with padding {self.padding} and dilation {self.dilation}")
        if (residual is None) != (self.residual is None):
            raise InputError(f"BitwiseConv2d: a residual is {'expected' if self.residual else 'not fused'} here")
        if residual is not None and tuple(residual.shape) != (x.shape[0], self.out_channels, oh, ow):
            raise InputError(f"BitwiseConv2d: residual must be {(x.shape[0], self.out_channels, oh, ow)}, "
                             f"got {tuple(residual.shape)}")
        if x.shape[0] == 0:
            return x.new_zeros(0, self.out_channels, oh, ow, dtype=torch.float32)
        if residual is not None:
            residual = residual.float()
        isa = ops.compiled_isa(self.backend, x.device)
        if isa is not None:  # the C++ op directly, with the cached arguments
            before, after = self._op_args()
            y = _reraise(torch.ops.lsqbq.bitwise_conv2d, x.float(), *before, self._given_scales(x), residual, *after,
                         isa)
            return y.permute(0, 3, 1, 2)
        y = _reraise(ops.bitwise_conv2d, x, self.packed, self.bias, self.stride, self.padding, self.dilation,
                     planes=self.planes, fit=self.fit, scales=self._given_scales(x), clamp=self.clamp,
                     mask=self.mask, prologue=self.prologue, residual=residual, act=_ACTS[self.act],
                     slope=self.slope, residual_first=self.residual == "before", backend=self.backend)
        return y.permute(0, 3, 1, 2)  # (B, N, OH, OW) view of NHWC memory

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
        if not convertible(layer):
            raise ValueError(f"layer cannot be converted to bitwise inference: {layer}")
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
        self._check(x, ("B", "..."), self.in_features, "input features", -1)
        if x.numel() == 0:
            return x.new_zeros(*x.shape[:-1], self.out_features, dtype=torch.float32)
        a, per_row = self._rows(x)
        sa = 2 * per_row[:, :1] if self.mask else per_row  # ternary t = x_q / (2v) has scale 2v
        y = ops.xnor_gemm_scaled(a, self.packed, sa, self.bias, mask=self.mask, backend=self.backend)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"x_quant={self.x_scheme.name}, w_quant={self.w_scheme.name}, {self._fusion_repr()}")


# ------------------------------------------------------------------------------------------ fused blocks


class FusedXnorBlock(nn.Module):
    """:class:`~lsqbq.models.resnet.XnorBlock` with both binary convs fused: ``BN -> quantize -> conv -> act``
    (and the shortcut add) in one op each.

    double shortcut: ``out1 = act1(conv1(Q(BN1(x)))) + sc(x)``, ``out = act2(conv2(Q(BN2(out1)))) + out1``;
    single: ``out = act2(conv2(Q(BN2(act1(conv1(Q(BN1(x))))))) + sc(x))``.
    """

    def __init__(self, block: XnorBlock, conv1: BitwiseConv2d, conv2: BitwiseConv2d):
        super().__init__()
        self.double_shortcut = block.double_shortcut
        self.conv1, self.conv2, self.shortcut = conv1, conv2, block.shortcut
        if self.double_shortcut:
            conv1.fuse_residual("after")
            conv2.fuse_residual("after")
        else:
            conv2.fuse_residual("before")

    @staticmethod
    def build(block: XnorBlock, make) -> "FusedXnorBlock | None":
        if not (convertible(block.conv1) and convertible(block.conv2)):
            return None
        c1, c2 = make(block.conv1), make(block.conv2)
        if not (c1.fuse_input_bn(block.bn1) and c1.fuse_activation(block.act1) and c2.fuse_input_bn(block.bn2)
                and c2.fuse_activation(block.act2)):
            return None
        return FusedXnorBlock(block, c1, c2)

    def forward(self, x: Tensor) -> Tensor:
        sc = self.shortcut(x)
        if self.double_shortcut:
            out1 = self.conv1(x, sc)
            return self.conv2(out1, out1)
        return self.conv2(self.conv1(x), sc)


class FusedRegularBlock(nn.Module):
    """:class:`~lsqbq.models.resnet.RegularBlock` with quantized convs: ``conv -> BN -> act`` and
    ``conv -> BN -> (+ sc(x)) -> act`` in one op each (BatchNorms folded into the scales and bias)."""

    def __init__(self, block: RegularBlock, conv1: BitwiseConv2d, conv2: BitwiseConv2d):
        super().__init__()
        self.conv1, self.conv2, self.shortcut = conv1, conv2, block.shortcut
        conv2.fuse_residual("before")

    @staticmethod
    def build(block: RegularBlock, make) -> "FusedRegularBlock | None":
        if not (convertible(block.conv1) and convertible(block.conv2)):
            return None
        c1, c2 = make(block.conv1), make(block.conv2)
        if not (c1.fuse_output_bn(block.bn1) and c1.fuse_activation(block.act1) and c2.fuse_output_bn(block.bn2)):
            return None
        fused = FusedRegularBlock(block, c1, c2)  # residual added before act2
        return fused if c2.fuse_activation(block.act2) else None

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x), self.shortcut(x))


def _fuse_lenet(model: LeNet5) -> None:
    """LeNet-5's ``bn2`` feeds only the quantized ``conv2``: run it in the encode."""
    if isinstance(model.conv2, BitwiseConv2d) and model.conv2.fuse_input_bn(model.bn2):
        model.bn2 = nn.Identity()


def _fuse_sequential(seq: nn.Sequential) -> None:
    """``[BN, BitwiseConv2d]`` -> prologue; ``[BitwiseConv2d, BN?, ReLU|PReLU?]`` -> epilogue."""
    mods = list(seq._modules.items())
    for i, (name, m) in enumerate(mods):
        if not isinstance(m, BitwiseConv2d):
            continue
        if i > 0 and isinstance(mods[i - 1][1], nn.BatchNorm2d) and m.fuse_input_bn(mods[i - 1][1]):
            seq._modules[mods[i - 1][0]] = nn.Identity()
        j = i + 1
        if j < len(mods) and isinstance(mods[j][1], nn.BatchNorm2d) and m.fuse_output_bn(mods[j][1]):
            seq._modules[mods[j][0]] = nn.Identity()
            j += 1
        if j < len(mods) and m.fuse_activation(mods[j][1]):
            seq._modules[mods[j][0]] = nn.Identity()
        mods = list(seq._modules.items())


def _convert(module: nn.Module, make_conv, make_linear, fuse: bool) -> None:
    for name, child in list(module.named_children()):
        replacement = None
        if fuse and isinstance(child, XnorBlock):
            replacement = FusedXnorBlock.build(child, make_conv)
        elif fuse and isinstance(child, RegularBlock):
            replacement = FusedRegularBlock.build(child, make_conv)
        if replacement is None and convertible(child):
            replacement = make_conv(child) if isinstance(child, QuantConv2d) else make_linear(child)
        if replacement is not None:
            setattr(module, name, replacement)
        else:
            _convert(child, make_conv, make_linear, fuse)
    if fuse and isinstance(module, nn.Sequential):
        _fuse_sequential(module)
    if fuse and isinstance(module, LeNet5):
        _fuse_lenet(module)


def to_bitwise(model: nn.Module, *, backend: str | None = None, scales: str = "auto", inplace: bool = False,
               fuse: bool = True) -> nn.Module:
    """Replace every convertible quantized layer of ``model`` by its bitwise inference module.

    Args:
        model: any module tree (a lone ``QuantConv2d`` / ``QuantLinear`` too).
        backend: kernel back end for the new modules (None: the fastest available at call time).
        scales: activation-scale mode, ``auto`` | ``fitted`` | ``stored`` (see the module docstring).
        inplace: modify ``model`` instead of a deep copy.
        fuse: fold neighbouring BatchNorms, activations and residual adds into the bitwise ops, and make the
            remaining 4-D parameters channels_last (module docstring).
    Returns:
        The converted module, in eval mode (bitwise modules are inference-only).
    """
    if scales not in SCALE_MODES:
        raise ValueError(f"scales must be one of {SCALE_MODES}, got {scales!r}")
    model = model if inplace else copy.deepcopy(model)
    model.eval()

    def make_conv(layer):
        return BitwiseConv2d(layer, backend, scales)

    def make_linear(layer):
        return BitwiseLinear(layer, backend, scales)

    if convertible(model):
        return (make_conv(model) if isinstance(model, QuantConv2d) else make_linear(model)).eval()
    _convert(model, make_conv, make_linear, fuse)
    if fuse:  # the bitwise ops write NHWC: run the float layers around them channels_last too (same values)
        model.to(memory_format=torch.channels_last)
    return model.eval()
