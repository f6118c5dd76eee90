"""Shared fixtures of the kernel tests: the compiled back ends available on this machine."""
from __future__ import annotations

import pytest

from lsqbq.kernels import available_backends

COMPILED = ["portable", "avx2", "avx512", "neon"]


@pytest.fixture(params=COMPILED)
def backend(request) -> str:
    """Each compiled back end; skipped where it is not available (no compiler, no AVX2 or AVX-512 VPOPCNTDQ, not aarch64 for NEON)."""
    if request.param not in available_backends():
        pytest.skip(f"kernel backend {request.param!r} not available on this machine")
    return request.param
