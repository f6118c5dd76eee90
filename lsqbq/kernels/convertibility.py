"""Which quantized layers the bitwise kernels can run, and why the others stay simulated.

A :class:`~lsqbq.layers.QuantConv2d` / :class:`~lsqbq.layers.QuantLinear` converts when both its activation and
weight schemes are quantized (sign planes on both sides), its weights are float32, and (convolutions) it is an
ungrouped, zero-padded convolution with numeric padding and at most 64 taps (``KH * KW``, one 64-bit validity
mask per output row in the kernels). Anything else keeps running as the simulated float layer.
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers import QuantConv2d, QuantLinear
from .shapes import MAX_TAPS

__all__ = ["convertible", "unconvertible_reason", "is_quantized"]


def is_quantized(layer: nn.Module) -> bool:
    """True for a quantized layer with at least one quantized side (a layer fp on both sides is a float layer)."""
    return isinstance(layer, (QuantConv2d, QuantLinear)) and not (layer.x_scheme.is_fp and layer.w_scheme.is_fp)


def unconvertible_reason(layer: nn.Module) -> str | None:
    """Why :func:`~lsqbq.kernels.to_bitwise` leaves ``layer`` simulated, or None when it converts (or is not a
    quantized layer at all)."""
    if not isinstance(layer, (QuantConv2d, QuantLinear)):
        return None
    if layer.x_scheme.is_fp or layer.w_scheme.is_fp:
        side = "activations" if layer.x_scheme.is_fp else "weights"
        return f"{side} are full precision (x_quant={layer.x_scheme.name}, w_quant={layer.w_scheme.name})"
    if layer.weight.dtype != torch.float32:
        return f"weights are {layer.weight.dtype} (the kernels take float32 weights)"
    if isinstance(layer, QuantConv2d):
        if layer.groups != 1:
            return f"grouped convolution (groups={layer.groups})"
        if layer.padding_mode != "zeros":
            return f"padding_mode={layer.padding_mode!r} (the kernels zero-pad)"
        if isinstance(layer.padding, str):
            return f"padding={layer.padding!r} (the kernels take numeric padding)"
        taps = layer.kernel_size[0] * layer.kernel_size[1]
        if taps > MAX_TAPS:
            return (f"{layer.kernel_size[0]}x{layer.kernel_size[1]} kernel has {taps} taps "
                    f"(the kernels take at most {MAX_TAPS})")
    return None


def convertible(layer: nn.Module) -> bool:
    """True for quantized layers that :func:`~lsqbq.kernels.to_bitwise` replaces (module docstring)."""
    return isinstance(layer, (QuantConv2d, QuantLinear)) and unconvertible_reason(layer) is None
