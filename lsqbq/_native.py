"""Dispatch to the fused C++ quantizers (``csrc/quant.cpp``) where they apply.

They apply to contiguous-or-not CPU float32 tensors; everything else (float64, fp16 computed in float32 is
float32 again, CUDA) uses the pure-torch code, which computes the same values. ``LSQBQ_NATIVE=0`` turns the
C++ path off; :func:`disabled` does so temporarily (the tests compare both paths).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from ._cpp import load_library

_SOURCE = Path(__file__).parent / "csrc" / "quant.cpp"
_state = {"forced_off": False}


def usable(x: torch.Tensor) -> bool:
    """True when ``x`` should go through the C++ quantizers (and the library is, or can be, built)."""
    if _state["forced_off"] or x.dtype != torch.float32 or x.device.type != "cpu":
        return False
    if os.environ.get("LSQBQ_NATIVE", "1") == "0":
        return False
    return load_library("lsqbq_quant", [_SOURCE], ("-ffp-contract=off", "-fno-trapping-math"))


def ops():
    return torch.ops.lsqbq_quant


@contextlib.contextmanager
def disabled():
    """Use the pure-torch quantizers inside the block."""
    old = _state["forced_off"]
    _state["forced_off"] = True
    try:
        yield
    finally:
        _state["forced_off"] = old
