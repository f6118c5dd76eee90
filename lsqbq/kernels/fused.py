"""Bitwise blocks with the float work around their binary convolutions fused into the ops.

* a BatchNorm *in front* of the layer (XNOR blocks: ``BN -> quantize -> conv``; LeNet-5's ``bn2``) becomes the
  encode's per-channel prologue ``y = fma(x, a, b)``, with ``a = rsqrt(var + eps) w`` and
  ``b = fma(-mean, a, bias)`` -- the float operations of torch's CPU BatchNorm, so the signs, scales and integer
  dot products equal the eager model's bit for bit;
* a BatchNorm *after* the layer (regular blocks) is folded into the weight scales and the bias:
  ``u_j <- a u_j``, ``bias <- a bias + b`` (float rounding only);
* the following ReLU / PReLU and the residual add of the block (before or after the nonlinearity, single or
  double shortcut) run in the epilogue on the tile still in cache.

Patterns are found in ``nn.Sequential`` containers (``[BN, conv]``, ``[conv, BN, act]``) and in the project's
blocks (:class:`~lsqbq.models.resnet.XnorBlock`, :class:`~lsqbq.models.resnet.RegularBlock`,
:class:`~lsqbq.models.lenet.LeNet5`); fused modules are replaced by ``nn.Identity`` or by a fused block.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..models.lenet import LeNet5
from ..models.resnet import RegularBlock, XnorBlock
from .bitwise import BitwiseConv2d
from .convertibility import convertible

__all__ = ["FusedXnorBlock", "FusedRegularBlock", "fuse_lenet", "fuse_sequential"]


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


def fuse_lenet(model: LeNet5) -> None:
    """LeNet-5's ``bn2`` feeds only the quantized ``conv2``: run it in the encode."""
    if isinstance(model.conv2, BitwiseConv2d) and model.conv2.fuse_input_bn(model.bn2):
        model.bn2 = nn.Identity()


def fuse_sequential(seq: nn.Sequential) -> None:
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
