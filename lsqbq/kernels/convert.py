"""Convert a quantized model to bitwise inference: ``to_bitwise(model)``.

Every convertible :class:`~lsqbq.layers.QuantConv2d` / :class:`~lsqbq.layers.QuantLinear` (both schemes quantized,
float32, plain zero-padded convolution of at most 64 taps: :mod:`.convertibility`) becomes a
:class:`~lsqbq.kernels.bitwise.BitwiseConv2d` / :class:`~lsqbq.kernels.bitwise.BitwiseLinear` (:mod:`.bitwise`:
packed weight planes, run-time activation encode, XNOR/popcount dot products). With ``fuse=True`` the
neighbouring BatchNorms, activations and residual adds run inside those ops (:mod:`.fused`), the full-precision
parts (stem, projection shortcuts) are folded with their BatchNorm, ReLU and max-pool (:mod:`.float_parts`), and
the model's remaining 4-D parameters are made channels_last, so the float layers read and write the NHWC layout
the bitwise ops use, without conversions in between. ``float_parts="int8"`` runs the full-precision convs and
linear layers in int8 instead (:mod:`.float_parts`: quantization, error bound); the default ``"fp32"`` keeps
them full precision, as in the paper.

Quantized layers that cannot be converted stay simulated (float). The returned model carries a
:class:`ConversionReport` (``model.bitwise_report``: which layers were converted, which stay simulated and why),
``return_report=True`` returns it beside the model, and one :class:`SimulatedLayersWarning` lists the layers that
stay simulated.

This module also re-exports the names that lived here before the split (``BitwiseConv2d``, ``FusedXnorBlock``,
``bn_affine``, ``convertible``, ...), so ``lsqbq.kernels.convert.X`` keeps working.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..layers import SCALE_MODES, QuantConv2d, QuantLinear, name_layers
from ..models.lenet import LeNet5
from ..models.resnet import RegularBlock, XnorBlock
from .bitwise import _ACTS, BitwiseConv2d, BitwiseLinear, _fit_code, _reraise, bn_affine  # noqa: F401 (re-exports)
from .chunks import BatchChunks, check_chunk
from .convertibility import convertible, is_quantized, unconvertible_reason
from .float_parts import FLOAT_PARTS, check_float_parts, fuse_float_parts
from .fused import FusedRegularBlock, FusedXnorBlock, fuse_lenet, fuse_sequential

__all__ = ["to_bitwise", "ConversionReport", "FLOAT_PARTS", "SimulatedLayersWarning", "BitwiseConv2d", "BitwiseLinear",
           "FusedXnorBlock", "FusedRegularBlock", "convertible", "unconvertible_reason", "bn_affine", "SCALE_MODES"]


class SimulatedLayersWarning(UserWarning):
    """:func:`to_bitwise` left quantized layers simulated (float); the message lists them and why."""


@dataclass
class ConversionReport:
    """What :func:`to_bitwise` did, by qualified layer name (``""`` for a lone layer).

    Attributes:
        converted: layers now run by the bitwise kernels (fused blocks list their convolutions).
        simulated: quantized layers that stay simulated, with the reason (:func:`unconvertible_reason`).
        float_parts: full-precision layers folded or run in int8 (:mod:`.float_parts`), with what they absorbed
            (``"fp32: conv + BatchNorm2d + ReLU + MaxPool2d"``).
    """

    converted: list[str] = field(default_factory=list)
    simulated: dict[str, str] = field(default_factory=dict)
    float_parts: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{len(self.converted)} layer(s) bitwise, {len(self.simulated)} simulated"]
        lines += [f"  {name or '<model>'}: {why}" for name, why in self.simulated.items()]
        return "\n".join(lines)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _convert(module: nn.Module, make_conv, make_linear, fuse: bool, report: ConversionReport, prefix: str) -> None:
    for name, child in list(module.named_children()):
        path = _join(prefix, name)
        replacement = None
        if fuse and isinstance(child, XnorBlock):
            replacement = FusedXnorBlock.build(child, make_conv)
        elif fuse and isinstance(child, RegularBlock):
            replacement = FusedRegularBlock.build(child, make_conv)
        if replacement is not None:
            report.converted += [_join(path, "conv1"), _join(path, "conv2")]
        elif convertible(child):
            replacement = make_conv(child) if isinstance(child, QuantConv2d) else make_linear(child)
            report.converted.append(path)
        elif is_quantized(child):
            report.simulated[path] = unconvertible_reason(child)
        if replacement is not None:
            setattr(module, name, replacement)
        else:
            _convert(child, make_conv, make_linear, fuse, report, path)
    if fuse and isinstance(module, nn.Sequential):
        fuse_sequential(module)
    if fuse and isinstance(module, LeNet5):
        fuse_lenet(module)


def to_bitwise(model: nn.Module, *, backend: str | None = None, scales: str = "auto", inplace: bool = False,
               fuse: bool = True, float_parts: str = "fp32", chunk: int | str | None = "auto",
               return_report: bool = False):
    """Replace every convertible quantized layer of ``model`` by its bitwise inference module.

    Works in and out of ``torch.inference_mode()`` (the result then holds inference tensors and is for inference
    only, as always).

    Args:
        model: any module tree (a lone ``QuantConv2d`` / ``QuantLinear`` too).
        backend: kernel back end for the new modules (None: the fastest available at call time).
        scales: activation-scale mode, ``auto`` | ``fitted`` | ``stored`` (see :mod:`.bitwise`).
        inplace: modify ``model`` instead of a deep copy.
        fuse: fold neighbouring BatchNorms, activations and residual adds into the bitwise ops, fold the
            full-precision convs with their BatchNorm / ReLU / max-pool, and make the remaining 4-D parameters
            channels_last (module docstring).
        float_parts: ``"fp32"`` (default, the paper's full-precision stem, shortcuts and classifier) or ``"int8"``
            (those layers in int8 on oneDNN, CPU only; needs ``fuse=True``).
        chunk: images per pass of a large batch through the converted network (:mod:`.chunks`: the activations
            of a few images stay in cache): ``"auto"`` (even passes of as many images as keep the network's
            largest activation within ``PASS_ACTIVATION_BYTES``, at least ``MIN_PASS_IMAGES``; measured during
            the first batch of each input shape), a number, or None (the whole batch in one pass, layer by layer).
            Only for a network converted with ``fuse=True``; a lone layer always runs the whole batch.
        return_report: also return the :class:`ConversionReport`.
    Returns:
        The converted module, in eval mode (bitwise modules are inference-only), with the report attached as
        ``bitwise_report``; ``(module, report)`` with ``return_report=True``.
    Warns:
        SimulatedLayersWarning: once, listing the quantized layers that stay simulated and why.
    Raises:
        ValueError: unknown ``scales``, a ``chunk`` that is not ``"auto"``, None or a positive int, or stored scales
            requested where a layer recorded none.
        ConfigError: unknown ``float_parts``, or ``"int8"`` without ``fuse``, off the CPU or without oneDNN.
        InputError: stored scales that are non-finite, non-positive or break the scheme's rule, naming the layer.
    """
    if scales not in SCALE_MODES:
        raise ValueError(f"scales must be one of {SCALE_MODES}, got {scales!r}")
    check_float_parts(float_parts)
    check_chunk(chunk)
    if float_parts != "fp32" and not fuse:
        raise ConfigError(f"float_parts={float_parts!r} needs fuse=True (the int8 layers are the folded ones)")
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    name_layers(model)
    report = ConversionReport()

    def make_conv(layer):
        return BitwiseConv2d(layer, backend, scales)

    def make_linear(layer):
        return BitwiseLinear(layer, backend, scales)

    if convertible(model):
        model = (make_conv(model) if isinstance(model, QuantConv2d) else make_linear(model)).eval()
        report.converted.append("")
    else:
        if is_quantized(model):
            report.simulated[""] = unconvertible_reason(model)
        _convert(model, make_conv, make_linear, fuse, report, "")
        if fuse:
            report.float_parts = fuse_float_parts(model, float_parts, backend)
        if fuse:  # the bitwise ops write NHWC: run the float layers around them channels_last too (same values)
            model.to(memory_format=torch.channels_last)
            if chunk is not None:
                model.forward = BatchChunks(model, chunk)
        model.eval()
    if report.simulated:
        listed = "; ".join(f"{(name or type(model).__name__)!r}: {why}" for name, why in report.simulated.items())
        warnings.warn(f"to_bitwise: {len(report.simulated)} quantized layer(s) stay simulated (float): {listed}",
                      SimulatedLayersWarning, stacklevel=2)
    model.bitwise_report = report
    return (model, report) if return_report else model
