"""Lazy build of the XNOR/popcount kernels (``csrc/xnor.cpp``), registering ``torch.ops.lsqbq.*``.

Built on first use and cached by :mod:`lsqbq._cpp` (about 20 s, once). The AVX-512 micro-kernels carry their
own function target attributes and are chosen at run time, so one build runs on any x86-64 CPU.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import _cpp

__all__ = ["load_library", "build_error"]

_SOURCE = Path(__file__).parent / "csrc" / "xnor.cpp"
_NAME = "lsqbq_xnor"


def load_library() -> bool:
    """Build (if needed) and load the C++ ops. True on success; on failure warns once and returns False."""
    if hasattr(torch.ops, "lsqbq") and hasattr(torch.ops.lsqbq, "xnor_gemm"):
        return True  # already registered
    return _cpp.load_library(_NAME, [_SOURCE])


def build_error() -> BaseException | None:
    """The exception of a failed build, or None."""
    return _cpp.build_error(_NAME)
