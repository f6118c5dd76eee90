"""Convert a quantized model to bitwise inference: ``to_bitwise(model)``.

Every :class:`~lsqbq.layers.QuantConv2d` / :class:`~lsqbq.layers.QuantLinear` whose activation *and* weight schemes
are quantized (``ls-1``, ``ls-2``, ``ls-T``, ``gf-k``) becomes a :class:`BitwiseConv2d` / :class:`BitwiseLinear`:

* weights: the foldable sign planes ``c_j`` of ``Q_w(W)`` (the layer's cached per-channel scales ``u_j``) packed
  once; ``W_q = sum_j u_j c_j``;
* activations, at run time exactly as ``layer.quantize_input``: clamp, per-sample scales ``v_i`` (fitted per
  sample, or the moving averages when the layer uses them in evaluation), foldable sign planes packed along
  channels (ternary ``ls-T`` as sign + non-zero mask);
* output: ``y = bias + sum_ij v_i u_j <b_i, c_j>`` with the integer dot products from XNOR/popcount kernels
  (exact), scaled in float32 (equal to the simulated layer within float rounding).

Layers with a full-precision side, grouped convolutions or non-zero padding modes stay as they are. Convolution
outputs are NHWC in memory (a ``channels_last`` NCHW tensor), which the next bitwise layer reads without a copy.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..layers import QuantConv2d, QuantLinear
from ..quantizers import fit, foldable_bits
from . import ops

__all__ = ["to_bitwise", "BitwiseConv2d", "BitwiseLinear", "convertible"]


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


class _BitwiseBase(nn.Module):
    """Shared activation handling: clamp, per-sample scales (fit or moving average), packed planes."""

    def _init_from(self, layer, backend: str | None) -> None:
        self.x_scheme = layer.x_scheme
        self.w_scheme = layer.w_scheme
        self.clamp = layer.clamp
        self.backend = backend
        self.mask = layer.x_scheme.ternary  # sign + non-zero mask encoding
        self.use_ema = layer.act_stats in ("eval_only", "train_and_eval")
        if self.use_ema and int(layer.x_ema_updates) == 0:
            raise RuntimeError(f"{type(layer).__name__}: act_stats={layer.act_stats!r} but no moving-average "
                               "activation scales were recorded")
        self.register_buffer("x_scales_ema", layer.x_scales_ema.detach().clone().float())
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

    def _scales(self, x: Tensor) -> Tensor:
        """Per-sample activation scales ``(B, k)`` of the clamped input, as ``QuantConv2d.quantize_input``."""
        B = x.shape[0]
        if self.use_ema:
            return self.x_scales_ema.expand(B, -1)
        return fit(x.reshape(B, -1), self.x_scheme)

    def _activation_scales(self, scales: Tensor) -> Tensor:
        """Scales of the logical activation planes: ``(B, k_x)``; ternary ``t in {-1, 0, 1}`` has scale ``2v``."""
        return 2 * scales[:, :1] if self.mask else scales

    def _prepare(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.float()
        if self.clamp is not None:
            x = x.clamp(-self.clamp, self.clamp)
        scales = self._scales(x).float()
        return x, scales


class BitwiseConv2d(_BitwiseBase):
    """Bitwise inference version of a :class:`~lsqbq.layers.QuantConv2d`: ``y = b + sum_ij v_i u_j conv(b_i, c_j)``.

    Shapes: ``x: (B, C, H, W)`` -> ``(B, N, OH, OW)`` float32 in channels_last memory.
    """

    def __init__(self, layer: QuantConv2d, backend: str | None = None):
        super().__init__()
        if not convertible(layer):
            raise ValueError(f"layer cannot be converted to bitwise inference: {layer}")
        self._init_from(layer, backend)
        self.stride, self.padding, self.dilation = tuple(layer.stride), tuple(layer.padding), tuple(layer.dilation)
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels

    def dot_products(self, x: Tensor) -> Tensor:
        """Integer dot products ``(P_a', P_w, B, OH, OW, N)`` of the activation and weight sign planes."""
        x, scales = self._prepare(x)
        a = ops.encode(x, scales, mask=self.mask, padding=self.padding, backend=self.backend)
        return ops.xnor_conv2d(a, self.packed, x.shape[-2:], self.stride, self.padding, self.dilation,
                               mask=self.mask, backend=self.backend)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"BitwiseConv2d expects (B, C, H, W), got {tuple(x.shape)}")
        x, scales = self._prepare(x)
        a = ops.encode(x, scales, mask=self.mask, padding=self.padding, backend=self.backend)
        y = ops.xnor_conv2d_scaled(a, self.packed, self._activation_scales(scales), self.bias, x.shape[-2:],
                                   self.stride, self.padding, self.dilation, mask=self.mask, backend=self.backend)
        return y.permute(0, 3, 1, 2)  # (B, N, OH, OW) view of NHWC memory

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.packed.kernel}, stride={self.stride}, "
                f"padding={self.padding}, x_quant={self.x_scheme.name}, w_quant={self.w_scheme.name}")


class BitwiseLinear(_BitwiseBase):
    """Bitwise inference version of a :class:`~lsqbq.layers.QuantLinear`; ``x: (B, ..., F) -> (B, ..., N)``."""

    def __init__(self, layer: QuantLinear, backend: str | None = None):
        super().__init__()
        if not convertible(layer):
            raise ValueError(f"layer cannot be converted to bitwise inference: {layer}")
        self._init_from(layer, backend)
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def _rows(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, scales = self._prepare(x)
        B, F = x.shape[0], x.shape[-1]
        rows = x.reshape(-1, F)  # (B * L, F): per-sample scales repeat over the L rows of a sample
        per_row = scales.repeat_interleave(rows.shape[0] // B, dim=0)
        a = ops.encode(rows, per_row, mask=self.mask, backend=self.backend)
        return a, per_row, x

    def dot_products(self, x: Tensor) -> Tensor:
        """Integer dot products ``(P_a', P_w, B * L, N)``."""
        a, _, _ = self._rows(x)
        return ops.xnor_gemm(a, self.packed, mask=self.mask, backend=self.backend)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"BitwiseLinear expects (B, ..., F), got {tuple(x.shape)}")
        a, per_row, x = self._rows(x)
        y = ops.xnor_gemm_scaled(a, self.packed, self._activation_scales(per_row), self.bias, mask=self.mask,
                                 backend=self.backend)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"x_quant={self.x_scheme.name}, w_quant={self.w_scheme.name}")


def to_bitwise(model: nn.Module, *, backend: str | None = None, inplace: bool = False) -> nn.Module:
    """Replace every convertible quantized layer of ``model`` by its bitwise inference module.

    Args:
        model: any module tree (a lone ``QuantConv2d`` / ``QuantLinear`` too).
        backend: kernel back end for the new modules (None: ``LSQBQ_KERNELS`` / auto at call time).
        inplace: modify ``model`` instead of a deep copy.
    Returns:
        The converted module, in eval mode (bitwise modules are inference-only).
    """
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    if convertible(model):
        cls = BitwiseConv2d if isinstance(model, QuantConv2d) else BitwiseLinear
        return cls(model, backend).eval()
    for name, child in list(model.named_children()):
        if convertible(child):
            cls = BitwiseConv2d if isinstance(child, QuantConv2d) else BitwiseLinear
            setattr(model, name, cls(child, backend))
        else:
            to_bitwise(child, backend=backend, inplace=True)
    return model.eval()
