"""lsqbq: least-squares binary quantization of neural networks.

Exact least-squares quantizers (``ls-1``, ``ls-2``, ``ls-T``) and the greedy foldable family (``gf-k``),
quantized layers trained with a straight-through estimator, and XNOR/popcount inference kernels.

    >>> import torch, lsqbq
    >>> x = torch.randn(4, 1000)
    >>> v = lsqbq.fit(x, "ls-2")            # (4, 2): v_1 >= v_2 >= 0 per row
    >>> xq = lsqbq.quantize(x, "ls-2", v)   # values in {±(v_1 - v_2), ±(v_1 + v_2)}
"""
import os as _os

# MLflow 3 sends usage telemetry unless told not to; lsqbq makes no network calls, so switch it off before any
# module imports mlflow (a user's explicit setting wins).
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_os.environ.setdefault("DO_NOT_TRACK", "true")

from .schemes import Scheme, fit, get_scheme, list_schemes, quantize, register_scheme  # noqa: E402

_LAZY = {"QuantConv2d": "lsqbq.layers", "QuantLinear": "lsqbq.layers"}


def __getattr__(name: str):
    """Load the torch-backed layers on first use, so ``import lsqbq.schemes`` (the workflow) stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lsqbq' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = ["fit", "quantize", "QuantConv2d", "QuantLinear", "Scheme", "get_scheme", "list_schemes", "register_scheme", "__version__"]
