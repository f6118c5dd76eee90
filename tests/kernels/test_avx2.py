"""The AVX2 back end equals the portable one bit for bit: the same integer dot products (vector nibble-lookup
popcount against scalar popcount) and the same float32 bits of every scaled and fused output (the same float
operations in the same order), on sign planes, k-bit planes and ternary masks, padding corrections, channel tails,
reductions long enough to flush the byte accumulators several times, GEMM and conv, batch 1 and > 1, 1 and 2
threads. (The AVX-512 path fuses multiply-adds and is compared with the reference to float rounding instead.)"""
from __future__ import annotations

import pytest
import torch

from lsqbq.kernels import (available_backends, bitwise_conv2d, encode, encode_fit, pack_weight, popcount_peak,
                           xnor_conv2d, xnor_conv2d_scaled, xnor_gemm, xnor_gemm_scaled)
from lsqbq.kernels.reference import FIT_GIVEN, FIT_GREEDY, FIT_LS2, FIT_TERNARY

pytestmark = pytest.mark.skipif("avx2" not in available_backends(),
                                reason="the AVX2 back end is not available on this machine")

MODES = [(1, 1, False), (2, 1, False), (2, 2, False), (3, 2, False), (1, 3, False), (2, 1, True), (2, 2, True)]
IDS = ["1x1", "2x1", "2x2", "3x2", "1x3", "Tx1", "Tx2"]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float32 tensor (NaN payloads, -0.0 and all)."""
    return t.contiguous().view(torch.int32)


def _same(fn):
    """fn(backend) on portable and avx2: equal integers, or equal float32 bits."""
    want, got = fn("portable"), fn("avx2")
    for w, g in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
        assert w.dtype == g.dtype and w.shape == g.shape
        if w.dtype == torch.float32:
            assert torch.equal(_bits(w), _bits(g))
        else:
            assert torch.equal(w, g)


@pytest.mark.parametrize("k", [1, 63, 64, 65, 577, 64 * 31, 64 * 31 + 1, 5000])
@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_gemm_equals_portable(k, mode, threads, pm1):
    pa, pw, mask = mode
    gen = torch.Generator().manual_seed(k + 7 * pa + pw)
    for m, n in [(1, 1), (7, 33), (13, 64), (40, 31)]:
        x = torch.randn(m, k, generator=gen)
        s = torch.rand(m, 2 if mask else pa, generator=gen)
        if mask:
            s[:, 1] = s[:, 0]
        a = encode(x, s, mask=mask, backend="reference")
        w = pack_weight(pm1(pw, n, k, gen=gen), torch.rand(n, pw, generator=gen))
        sa, bias = torch.rand(m, 1 if mask else pa, generator=gen), torch.randn(n, generator=gen)
        _same(lambda b: xnor_gemm(a, w, mask=mask, backend=b))
        _same(lambda b: xnor_gemm_scaled(a, w, sa, bias, mask=mask, backend=b))
        _same(lambda b: xnor_gemm_scaled(a, w, sa, None, mask=mask, backend=b))


CONVS = [  # (B, C, H, W, N, kernel, stride, padding, dilation)
    (1, 64, 9, 8, 32, 3, 1, 1, 1),
    (1, 3, 5, 5, 7, 3, 1, 1, 1),
    (2, 65, 7, 6, 33, 3, 2, 1, 1),
    (1, 130, 6, 5, 40, 3, 2, 2, 1),
    (3, 63, 5, 7, 64, 1, 1, 0, 1),
    (2, 70, 9, 9, 9, 3, 1, 2, 2),
    (1, 300, 4, 4, 65, 3, 1, 1, 1),  # 45 k words: two byte-accumulator rounds
]


@pytest.mark.parametrize("shape", CONVS, ids=[f"b{s[0]}c{s[1]}k{s[5]}s{s[6]}p{s[7]}d{s[8]}" for s in CONVS])
@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_conv_equals_portable(shape, mode, threads, pm1):
    B, C, H, W, N, k, s, p, d = shape
    pa, pw, mask = mode
    gen = torch.Generator().manual_seed(C + k + pa)
    x = torch.randn(B, C, H, W, generator=gen)
    v = torch.rand(B, 2 if mask else pa, generator=gen)
    if mask:
        v[:, 1] = v[:, 0]
    _same(lambda b: encode(x, v, mask=mask, padding=(p, p), backend=b))
    a = encode(x, v, mask=mask, padding=(p, p), backend="reference")
    w = pack_weight(pm1(pw, N, C, k, k, gen=gen), torch.rand(N, pw, generator=gen))
    sa, bias = torch.rand(B, 1 if mask else pa, generator=gen), torch.randn(N, generator=gen)
    _same(lambda b: xnor_conv2d(a, w, (H, W), s, p, d, mask=mask, backend=b))
    _same(lambda b: xnor_conv2d_scaled(a, w, sa, bias, (H, W), s, p, d, mask=mask, backend=b))


FITS = [(1, FIT_GREEDY, False), (3, FIT_GREEDY, False), (2, FIT_LS2, False), (2, FIT_TERNARY, True),
        (2, FIT_GIVEN, False)]


@pytest.mark.parametrize("planes,fit,mask", FITS, ids=["ls-1", "gf-3", "ls-2", "ls-T", "given"])
@pytest.mark.parametrize("act,residual_first", [(0, True), (1, True), (1, False), (2, True), (2, False)])
def test_fused_layer_equals_portable(planes, fit, mask, act, residual_first, threads, pm1):
    """The whole layer op: encode with a BatchNorm prologue and a clamp, fitted or given scales, the convolution and
    the fused epilogue (bias, ReLU / PReLU, residual before or after), including NaN and -0.0 in the residual."""
    gen = torch.Generator().manual_seed(planes + 10 * fit + act)
    B, C, H, W, N = 2, 70, 6, 5, 37
    x = torch.randn(B, C, H, W, generator=gen).contiguous(memory_format=torch.channels_last)
    prologue = (torch.rand(C, generator=gen) + 0.5, 0.1 * torch.randn(C, generator=gen))
    w = pack_weight(pm1(2, N, C, 3, 3, gen=gen), torch.rand(N, 2, generator=gen))
    res = torch.randn(B, N, H, W, generator=gen)
    res[0, 0, 0, :2] = torch.tensor([float("nan"), -0.0])
    slope = torch.rand(N, generator=gen) if act == 2 else None
    scales = torch.rand(B, planes, generator=gen) if fit == FIT_GIVEN else None
    _same(lambda b: bitwise_conv2d(x, w, torch.randn(N, generator=torch.Generator().manual_seed(1)), 1, 1,
                                   planes=planes, fit=fit, scales=scales, clamp=2.0, mask=mask, prologue=prologue,
                                   residual=res, act=act, slope=slope, residual_first=residual_first, backend=b))
    _same(lambda b: encode_fit(x, planes, fit, scales=scales, clamp=2.0, mask=mask, padding=(1, 1),
                               prologue=prologue, backend=b))


@pytest.mark.parametrize("shape", [(1, 1, 5, 4), (2, 63, 5, 3), (3, 65, 4, 7), (1, 200, 3, 3)],
                         ids=["c1", "c63", "c65", "c200"])
def test_encode_fits_equal_portable_on_channel_tails(shape):
    gen = torch.Generator().manual_seed(shape[1])
    x = 2 * torch.randn(*shape, generator=gen)
    x.view(-1)[:3] = torch.tensor([0.0, -0.0, 2.0])
    for planes, fit, mask in FITS[:-1]:
        _same(lambda b: encode_fit(x, planes, fit, clamp=1.5, mask=mask, padding=(2, 1), backend=b))
        _same(lambda b: encode_fit(x, planes, fit, mask=mask, backend=b))


def test_peak_counts_the_binary_macs():
    assert popcount_peak(1000, backend="avx2") == 1000 * 4 * 256
