"""lsqbq: least-squares binary quantization of neural networks.

Exact least-squares quantizers (``ls-1``, ``ls-2``, ``ls-T``) and the greedy foldable family (``gf-k``),
quantized layers trained with a straight-through estimator, and XNOR/popcount inference kernels.

    >>> import torch, lsqbq
    >>> x = torch.randn(4, 1000)
    >>> v = lsqbq.fit(x, "ls-2")            # (4, 2): v_1 >= v_2 >= 0 per row
    >>> xq = lsqbq.quantize(x, "ls-2", v)   # values in {±(v_1 - v_2), ±(v_1 + v_2)}
"""
from .quantizers import fit, quantize
from .schemes import Scheme, get_scheme, list_schemes, register_scheme
from .layers import QuantConv2d, QuantLinear

__version__ = "0.1.0"

__all__ = ["fit", "quantize", "QuantConv2d", "QuantLinear", "Scheme", "get_scheme", "list_schemes", "register_scheme", "__version__"]
