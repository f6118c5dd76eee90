"""XNOR/popcount inference kernels for foldable binary quantization.

The paper's identity ``<x_q, w_q> = sum_i sum_j v_i u_j <b_i, c_j>`` turns a k_a-bit x k_w-bit dot product into
k_a * k_w binary ones, each ``K - 2 popcount(a XOR c)`` on sign bits packed 64 to a word. This package holds

* :mod:`~lsqbq.kernels.reference`  pure-torch kernels (exact; the test oracle; used on GPU),
* :mod:`~lsqbq.kernels.ops`        typed wrappers over the C++ ops ``torch.ops.lsqbq.*`` and the back-end choice
                                   (``backend=`` auto | reference | portable | neon | avx2 | avx512; switch ``LSQBQ_BACKEND``),
* :mod:`~lsqbq.kernels.shapes`     the shape rules of the ops, stated once (the C++ ops enforce the same),
* :mod:`~lsqbq.kernels.convert`    ``to_bitwise(model)``: quantized layers -> bitwise inference modules
                                   (:mod:`~lsqbq.kernels.bitwise`), with the neighbouring BatchNorm / ReLU / PReLU /
                                   residual add fused into their ops (:mod:`~lsqbq.kernels.fused`), and a report of
                                   the layers that stay simulated (:mod:`~lsqbq.kernels.convertibility` says why),
* :mod:`~lsqbq.kernels.evaluation` trained checkpoints evaluated bitwise beside the simulated model.

    >>> import torch, lsqbq
    >>> from lsqbq.kernels import to_bitwise
    >>> net = torch.nn.Sequential(lsqbq.QuantConv2d(64, 64, 3, padding=1, x_quant="ls-1", w_quant="ls-1"))
    >>> fast = to_bitwise(net)            # weights packed once, eval mode
    >>> y = fast(torch.randn(1, 64, 8, 8))  # equals net.eval()(x) within float rounding
"""
from .convert import (
    BitwiseConv2d,
    BitwiseLinear,
    ConversionReport,
    FusedRegularBlock,
    FusedXnorBlock,
    SimulatedLayersWarning,
    convertible,
    to_bitwise,
    unconvertible_reason,
)
from .frozen import Frozen, freeze
from .ops import (
    BACKENDS,
    PackedWeight,
    available_backends,
    bitwise_conv2d,
    encode,
    encode_fit,
    isa_path,
    pack_signs,
    pack_weight,
    popcount_peak,
    resolve_backend,
    xnor_conv2d,
    xnor_conv2d_scaled,
    xnor_gemm,
    xnor_gemm_scaled,
)

__all__ = [
    "BACKENDS",
    "BitwiseConv2d",
    "BitwiseLinear",
    "ConversionReport",
    "FusedRegularBlock",
    "Frozen",
    "FusedXnorBlock",
    "PackedWeight",
    "available_backends",
    "bitwise_conv2d",
    "freeze",
    "convertible",
    "encode",
    "encode_fit",
    "isa_path",
    "pack_signs",
    "pack_weight",
    "popcount_peak",
    "resolve_backend",
    "SimulatedLayersWarning",
    "to_bitwise",
    "unconvertible_reason",
    "xnor_conv2d",
    "xnor_conv2d_scaled",
    "xnor_gemm",
    "xnor_gemm_scaled",
]
