"""ResNets with full-precision (``regular``) or quantized XNOR-style (``xnor``) basic blocks.

Layout: stem -> stages of basic blocks (stage ``i`` has ``width * 2**i`` channels, stride 2 from the
second stage on) -> global average pool -> linear classifier. The stem, the 1x1 downsampling shortcuts
and the classifier stay full precision; only the 3x3 convs inside blocks are :class:`~lsqbq.QuantConv2d`.

Stems:
    ``imagenet``: conv 7x7/2 -> BN -> ReLU -> max-pool 3x3/2 (224 -> 56).
    ``cifar``:    conv 3x3/s -> BN -> ReLU, s = ``stem_stride`` (1: 32 -> 32, or 28 -> 28 with ``in_chans=1``;
                  2 halves the resolution, which the small CPU default uses for 28x28 inputs).

Blocks (``phi`` = ReLU or PReLU, ``sc`` = identity or fp 1x1 conv + BN when the shape changes):
    ``regular``:  out = phi(BN(conv2(phi(BN(conv1(x))))) + sc(x))                 (bias-free convs)
    ``xnor``:     h = phi(conv1(Q(BN1(x))));  out = phi(conv2(Q(BN2(h))) + sc(x))   (convs with bias)
    ``xnor`` with ``double_shortcut`` (Bi-Real style, one identity around each binary conv):
                  out1 = phi(conv1(Q(BN1(x)))) + sc(x);  out = phi(conv2(Q(BN2(out1)))) + out1
``Q`` is the activation quantizer inside each QuantConv2d (clamp, then ``x_quant`` per sample); the
weights are quantized with ``w_quant`` per output channel.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import QuantConv2d
from ..schemes import get_scheme
from ._registry import register_model

__all__ = ["ResNet", "RegularBlock", "XnorBlock", "resnet18", "resnet_small"]


def _act(name: str, channels: int) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=False)
    if name == "prelu":
        return nn.PReLU(channels)
    raise ValueError(f"nonlinearity must be 'relu' or 'prelu', got {name!r}")


class ShortcutConv2d(nn.Conv2d):
    """The 1x1 convolution of a projection shortcut: ``nn.Conv2d`` (same parameters and state dict) that feeds a
    narrow input to a strided convolution in NCHW layout while gradients are on.

    Why: on CPUs without AVX-512, oneDNN 3.12 (torch 2.14) corrupts the heap when it computes the weight gradient
    of a strided 1x1 convolution whose channels_last input has fewer than 8 channels (our data loaders hand
    channels_last batches to the model). Layout is not arithmetic: the result is the same convolution; only models
    narrower than 8 channels take this path, so the published models' numerics are untouched.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (self.in_channels < 8 and self.stride != (1, 1) and x.device.type == "cpu" and torch.is_grad_enabled()
                and x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        return super().forward(x)


def _shortcut(in_planes: int, planes: int, stride: int, bias: bool) -> nn.Module:
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    return nn.Sequential(ShortcutConv2d(in_planes, planes, 1, stride=stride, bias=bias), nn.BatchNorm2d(planes))


class RegularBlock(nn.Module):
    """Full-precision basic block (He et al. 2016); ``x_quant``/``w_quant`` may still quantize its convs."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, nonlinearity: str = "relu",
                 double_shortcut: bool = False, **quant):
        super().__init__()
        if double_shortcut:
            raise ValueError("double_shortcut is an option of the xnor block only")
        self.conv1 = QuantConv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False, **quant)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = _act(nonlinearity, planes)
        self.conv2 = QuantConv2d(planes, planes, 3, stride=1, padding=1, bias=False, **quant)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = _act(nonlinearity, planes)
        self.shortcut = _shortcut(in_planes, planes, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class XnorBlock(nn.Module):
    """XNOR-Net ordering BN -> quantize -> 3x3 conv (bias) -> nonlinearity, optionally with double shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, nonlinearity: str = "relu",
                 double_shortcut: bool = True, **quant):
        super().__init__()
        self.double_shortcut = double_shortcut
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = QuantConv2d(in_planes, planes, 3, stride=stride, padding=1, bias=True, **quant)
        self.act1 = _act(nonlinearity, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = QuantConv2d(planes, planes, 3, stride=1, padding=1, bias=True, **quant)
        self.act2 = _act(nonlinearity, planes)
        self.shortcut = _shortcut(in_planes, planes, stride, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        out1 = self.act1(self.conv1(self.bn1(x)))                # (B, planes, H/s, W/s)
        if self.double_shortcut:
            out1 = out1 + self.shortcut(x)
            return self.act2(self.conv2(self.bn2(out1))) + out1
        return self.act2(self.conv2(self.bn2(out1)) + self.shortcut(x))


BLOCKS = {"regular": RegularBlock, "xnor": XnorBlock}


def default_block(x_quant: str, w_quant: str) -> str:
    """The block used when none is named: ``regular`` for a full-precision fp/fp model, ``xnor`` otherwise."""
    return "regular" if get_scheme(x_quant).is_fp and get_scheme(w_quant).is_fp else "xnor"


class ResNet(nn.Module):
    """ResNet for classification with quantizable 3x3 convs.

    Args:
        layers: blocks per stage, e.g. ``[2, 2, 2, 2]`` (ResNet-18); any number of stages >= 1.
        width: channels of the first stage (64 for ResNet-18); stage ``i`` has ``width * 2**i``.
        num_classes, in_chans: classifier outputs, image channels.
        stem: ``imagenet`` or ``cifar`` (module docstring); ``stem_stride``: stride of the cifar stem conv.
        block: ``regular`` or ``xnor``; None picks ``regular`` for fp/fp and ``xnor`` otherwise.
        x_quant, w_quant, clamp, act_stats: passed to every QuantConv2d in the blocks.
        nonlinearity: ``relu`` or ``prelu`` inside blocks (the stem uses ReLU).
        double_shortcut: identity around each binary conv (xnor block); None: True for xnor.
    Shapes: ``x: (B, in_chans, H, W) -> logits (B, num_classes)``.
    """

    def __init__(self, layers=(2, 2, 2, 2), width: int = 64, num_classes: int = 1000, in_chans: int = 3,
                 stem: str = "imagenet", block: str | None = None, x_quant: str = "fp", w_quant: str = "fp",
                 clamp: float | None = None, act_stats: str = "off", nonlinearity: str = "relu",
                 double_shortcut: bool | None = None, stem_stride: int = 1):
        super().__init__()
        if block is None:
            block = default_block(x_quant, w_quant)
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        if double_shortcut is None:
            double_shortcut = block == "xnor"
        layers = list(layers)
        if not layers or min(layers) < 1:
            raise ValueError(f"layers must list >= 1 blocks per stage, got {layers}")
        self.block_type, self.stem_type = block, stem
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, stride=2, padding=1))
        elif stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, stride=stem_stride, padding=1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if stem_stride != 1 and stem != "cifar":
            raise ValueError("stem_stride is an option of the cifar stem only")
        quant = dict(x_quant=x_quant, w_quant=w_quant, clamp=clamp, act_stats=act_stats)
        stages, in_planes = [], width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BLOCKS[block](in_planes, planes, stride, nonlinearity=nonlinearity,
                                            double_shortcut=double_shortcut, **quant))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)                      # (B, width, H', W')
        x = self.stages(x)                    # (B, width * 2**(S-1), H'/2**(S-1), ...)
        return self.fc(self.pool(x).flatten(1))  # (B, num_classes)


@register_model
def resnet18(**options) -> ResNet:
    """ResNet-18: layout [2, 2, 2, 2], width 64, ImageNet stem unless ``stem='cifar'``."""
    options.setdefault("layers", [2, 2, 2, 2])
    options.setdefault("width", 64)
    options.setdefault("stem", "imagenet")
    return ResNet(**options)


@register_model
def resnet_small(**options) -> ResNet:
    """Small CPU ResNet: CIFAR stem, 3 stages of one block each, width 16 (28x28 -> 7x7)."""
    options.setdefault("layers", [1, 1, 1])
    options.setdefault("width", 16)
    options.setdefault("stem", "cifar")
    return ResNet(**options)
