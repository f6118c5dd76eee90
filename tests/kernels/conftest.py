"""Shared fixtures of the kernel tests: the compiled back ends available on this machine, thread counts, random
sign planes and BatchNorm statistics."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lsqbq.kernels import available_backends

COMPILED = ["portable", "avx2", "avx512", "neon"]


@pytest.fixture(params=COMPILED)
def backend(request) -> str:
    """Each compiled back end; skipped where it is not available (no compiler, no AVX2 or AVX-512 VPOPCNTDQ, not aarch64 for NEON)."""
    if request.param not in available_backends():
        pytest.skip(f"kernel backend {request.param!r} not available on this machine")
    return request.param


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request) -> int:
    """1 and 2 torch threads for the test, the count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def pm1(*shape, gen: torch.Generator) -> torch.Tensor:
    """Random ±1 planes of ``shape`` (float32) from ``gen``."""
    return torch.where(torch.randn(*shape, generator=gen) >= 0, 1.0, -1.0)


@pytest.fixture(name="pm1", scope="session")
def pm1_fixture():
    """:func:`pm1`, for the test modules."""
    return pm1


def randomise_bns(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with BatchNorm running statistics drawn from ``seed`` (fresh ones are the identity): the converted
    layers' folded prologues then do real arithmetic."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model


@pytest.fixture(name="randomise_bns", scope="session")
def randomise_bns_fixture():
    """:func:`randomise_bns`, for the test modules."""
    return randomise_bns
