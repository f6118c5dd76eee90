"""The engine's direct float32 convolution of few taps (``torch.ops.lsqbq.f32_direct_conv2d``, the fp32 float parts'
stems and narrow 1x1 shortcuts): each output the sum of its in-image taps in the stated order, one rounding per
fused multiply-add, then the bias and the ReLU (``lsqbq/csrc/direct_conv_f32.h``), checked against a step-by-step
float64 emulation of that sum and against a float64 convolution within the rounding bound; the AVX-512 and portable
paths and 1 and 2 threads bit for bit; NaN kept; a fused max-pool equal to the pool after the op;
``FoldedConv2d`` takes it only where it applies; clear errors."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lsqbq import _ops
from lsqbq.kernels import ops
from lsqbq.kernels.float_parts import (DIRECT_F32_POOLED_CHANNELS, DIRECT_F32_TAPS, FoldedConv2d, fused_pool,
                                       packed_f32_direct_weight)

pytestmark = pytest.mark.skipif(not _ops.active(), reason="the C++ library could not be built")

ISAS = {"portable": 0, "avx512": 1, "avx2": 2}
# (B, C, H, W, N, (KH, KW), (sh, sw), (ph, pw)): borders clipped on every side, channel tails, strides up to 3
CASES = [(2, 1, 28, 28, 16, (3, 3), (2, 2), (1, 1)), (3, 1, 12, 13, 20, (5, 5), (1, 1), (0, 0)),
         (2, 3, 9, 11, 64, (3, 3), (1, 1), (1, 1)), (2, 16, 6, 7, 32, (1, 1), (2, 2), (0, 0)),
         (1, 32, 5, 5, 70, (1, 1), (2, 2), (0, 0)), (2, 2, 7, 17, 5, (3, 1), (3, 2), (1, 0)),
         (1, 4, 6, 9, 100, (2, 3), (1, 3), (0, 1)), (1, 1, 3, 40, 33, (3, 5), (1, 1), (1, 2))]


def _isas() -> list[int]:
    """The instruction paths of the op here: portable, and AVX-512 / AVX2 where the CPU has them."""
    return [0] + [ops._ISA[b] for b in ("avx512", "avx2") if b in ops.available_backends()]


def _case(case, seed: int, bias: bool = True):
    b, c, h, w, n, k, s, p = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    wt = torch.randn(n, c, *k, generator=gen)
    return x, wt, (torch.randn(n, generator=gen) if bias else None), k, s, p


def _run(x, wt, bias, k, s, p, relu: bool, isa: int, pool=()) -> torch.Tensor:
    return torch.ops.lsqbq.f32_direct_conv2d(x, packed_f32_direct_weight(wt), bias, wt.shape[0], list(k), list(s),
                                             list(p), relu, list(pool), isa)


def _emulated(x, wt, bias, k, s, p, relu: bool) -> torch.Tensor:
    """The stated sum, step by step: ``acc <- round32(acc + x w)`` over (kh, kw, c), the taps inside the image only
    (zero padding adds ``x w = 0``, which leaves ``acc`` as it is), then ``+ bias`` and the ReLU. ``acc + x w`` is
    formed in float64, where the float32 product is exact, and rounded once to float32: a fused multiply-add
    (the float64 sum itself may round, but not on these inputs: the test would fail)."""
    b, c, h, w = x.shape
    n = wt.shape[0]
    xp = F.pad(x.double(), (p[1], p[1], p[0], p[0]))
    oh, ow = (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1
    acc = torch.zeros(b, n, oh, ow, dtype=torch.float32)
    for kh in range(k[0]):
        for kw in range(k[1]):
            patch = xp[:, :, kh: kh + s[0] * (oh - 1) + 1: s[0], kw: kw + s[1] * (ow - 1) + 1: s[1]]
            for ci in range(c):
                term = patch[:, ci: ci + 1] * wt[:, ci, kh, kw].double().view(1, n, 1, 1)
                acc = (acc.double() + term).float()
    y = acc if bias is None else acc + bias.view(1, n, 1, 1)
    return y.relu() if relu else y


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("relu", [False, True])
def test_sum_is_the_stated_order_on_every_path(case, relu):
    x, wt, bias, k, s, p = _case(case, seed=CASES.index(case))
    want = _emulated(x, wt, bias, k, s, p, relu)
    for isa in _isas():
        got = _run(x, wt, bias, k, s, p, relu, isa)
        assert got.is_contiguous(memory_format=torch.channels_last) and got.shape == want.shape
        assert torch.equal(got, want), f"isa {isa}: max diff {(got - want).abs().max().item():.3g}"


@pytest.mark.parametrize("case", CASES)
def test_within_the_rounding_bound_of_the_exact_convolution(case):
    """``|y - y_exact| <= (T + 1) u (sum |x w| + |b|)`` with ``T`` taps, ``u = 2^-24`` (each step rounds once)."""
    x, wt, bias, k, s, p = _case(case, seed=100 + CASES.index(case))
    exact = F.conv2d(x.double(), wt.double(), bias.double(), s, p)
    magnitude = F.conv2d(x.double().abs(), wt.double().abs(), bias.double().abs(), s, p)
    taps = wt.shape[1] * k[0] * k[1]
    for isa in _isas():
        got = _run(x, wt, bias, k, s, p, False, isa).double()
        assert ((got - exact).abs() <= (taps + 1) * 2.0**-24 * magnitude).all()
        torch.testing.assert_close(got.float(), F.conv2d(x, wt, bias, s, p), rtol=1e-5, atol=1e-5)


def test_threads_and_no_bias_give_the_same_bits():
    x, wt, _, k, s, p = _case((5, 3, 30, 31, 48, (3, 3), (1, 1), (1, 1)), seed=7, bias=False)
    before = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            outs += [_run(x, wt, None, k, s, p, True, isa) for isa in _isas()]
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(o, outs[0]) for o in outs[1:])
    assert torch.equal(outs[0], _emulated(x, wt, None, k, s, p, True))


def test_nan_input_stays_nan_through_the_relu():
    x, wt, bias, k, s, p = _case((1, 1, 8, 8, 16, (3, 3), (1, 1), (1, 1)), seed=3)
    x[0, 0, 4, 4] = float("nan")
    for isa in _isas():
        y = _run(x, wt, bias, k, s, p, True, isa)
        assert y[0, :, 3:6, 3:6].isnan().all() and y.isnan().sum() == 9 * 16


def test_bad_arguments_are_clear_errors():
    x, wt, bias, k, s, p = _case((1, 2, 6, 6, 16, (3, 3), (1, 1), (1, 1)), seed=4)
    with pytest.raises(RuntimeError, match="weights do not match 16 outputs of 3"):
        _run(x[:, :1].repeat(1, 3, 1, 1).contiguous(memory_format=torch.channels_last), wt, bias, k, s, p, False, 0)
    with pytest.raises(RuntimeError, match="needs channels_last input"):
        _run(x.contiguous(), wt, bias, k, s, p, False, 0)
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        _run(x[:, :, :2, :2].contiguous(memory_format=torch.channels_last), wt, bias, (5, 5), s, (1, 1), False, 0)
    with pytest.raises(RuntimeError, match="float32 bias of 16"):
        _run(x, wt, bias[:3], k, s, p, False, 0)
    for pool in ((7, 1, 0), (3, 0, 1)):
        with pytest.raises(RuntimeError, match=re.escape(f"pool {list(pool)} does not fit the output 6x6")):
            _run(x, wt, bias, k, s, p, False, 0, pool=pool)
    with pytest.raises(RuntimeError, match="a pool of 0 or 3"):
        _run(x, wt, bias, k, s, p, False, 0, pool=(3, 2))


# (conv case, (pool kernel, stride, padding)): the ImageNet stem's 7x7/2 + 3x3/2 pool on a small image, pools with
# 2 p = k, stride 1, windows past the last row, and bands that split one image on two threads
POOLED = [((2, 3, 29, 34, 64, (7, 7), (2, 2), (3, 3)), (3, 2, 1)), ((1, 1, 12, 13, 20, (3, 3), (1, 1), (1, 1)),
                                                                     (2, 2, 1)),
          ((3, 2, 9, 10, 40, (3, 3), (1, 1), (0, 0)), (3, 1, 1)), ((1, 3, 40, 9, 16, (3, 3), (1, 1), (1, 1)),
                                                                    (4, 3, 0))]


@pytest.mark.parametrize("case, pool", POOLED)
def test_fused_pool_equals_the_pool_after_the_convolution(case, pool):
    """``relu(maxpool(conv + b))`` with the pool fused (conv rows in a ring, never in memory) equals torch's pool of
    the unfused op's output bit for bit, on every path and 1 or 2 threads; a NaN input pools to NaN."""
    x, wt, bias, k, s, p = _case(case, seed=POOLED.index((case, pool)))
    x[0, 0, 5, 6] = float("nan")
    before = torch.get_num_threads()
    try:
        for isa in _isas():
            want = torch.max_pool2d(_run(x, wt, bias, k, s, p, False, isa), pool[0], pool[1], pool[2]).relu()
            for t in (1, 2):
                torch.set_num_threads(t)
                got = _run(x, wt, bias, k, s, p, True, isa, pool)
                assert got.is_contiguous(memory_format=torch.channels_last) and got.shape == want.shape
                assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
                assert torch.equal(got.nan_to_num(), want.nan_to_num()), (isa, t)
    finally:
        torch.set_num_threads(before)


# (layer, on the direct op with AVX-512, with AVX2)
@pytest.mark.parametrize("conv, direct, direct_avx2", [
    (nn.Conv2d(1, 16, 3, 2, 1), True, False), (nn.Conv2d(3, 64, 3, 1, 1), True, False),
    (nn.Conv2d(32, 64, 1, 2), True, True), (nn.Conv2d(1, 20, 5), True, False),
    (nn.Conv2d(3, 64, 7, 2, 3), False, False),
    (nn.Conv2d(64, 128, 1, 2), True, True),
    ((nn.Conv2d(3, 64, 7, 2, 3), nn.MaxPool2d(3, 2, 1)), True, True),
    ((nn.Conv2d(5, 16, 7, 2, 3), nn.MaxPool2d(3, 2, 1)), False, False),
    ((nn.Conv2d(3, 16, 7, 2, 3), nn.MaxPool2d(3, 2, 1, ceil_mode=True)), False, False),
    ((nn.Conv2d(3, 16, 3, 1, 1), nn.MaxPool2d((3, 2), 2)), True, False),
    (nn.Conv2d(8, 16, 3, 1, 1), False, False),
    (nn.Conv2d(4, 8, 3, 1, 1, groups=2), False, False), (nn.Conv2d(1, 8, 3, 1, 1, dilation=2), False, False),
    (nn.Conv2d(1, 8, 3, 1, 2), False, False)])
@pytest.mark.parametrize("backend", [None, "avx2"])
def test_folded_conv_takes_the_direct_path_where_it_applies(monkeypatch, conv, direct, direct_avx2, backend):
    """Few taps, a 1x1 kernel, or few input channels and a pool that fuses; no groups or dilation and ``2 p < k``:
    the direct op on the AVX-512 back end (NCHW input too), on AVX2 the 1x1 and pooled ones only, within float
    rounding of torch (the pool fused where it can be, else after the op); any other layer, back end or input goes
    to torch's convolution."""
    if backend is not None and backend not in ops.available_backends():
        pytest.skip(f"no {backend} back end here")
    conv, pool = conv if isinstance(conv, tuple) else (conv, None)
    taps = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    fusable = pool is not None and fused_pool(vars(pool)) is not None
    assert (taps <= DIRECT_F32_TAPS or conv.kernel_size == (1, 1)
            or (fusable and conv.in_channels <= DIRECT_F32_POOLED_CHANNELS) or not direct)
    torch.manual_seed(0)
    folded = FoldedConv2d(conv.eval(), relu=True, pool=pool)
    folded.backend = backend
    assert folded.direct == direct
    calls = []
    real = torch.ops.lsqbq.f32_direct_conv2d
    monkeypatch.setattr(torch.ops.lsqbq, "f32_direct_conv2d", lambda *a: calls.append(a[-2:]) or real(*a))
    x = torch.randn(2, conv.in_channels, 11, 12)
    with torch.inference_mode():
        ref = F.conv2d(x, folded.weight, folded.bias, conv.stride, conv.padding, conv.dilation, conv.groups).relu()
        ref = ref if pool is None else pool(ref)
        for xx in (x, x.contiguous(memory_format=torch.channels_last)):
            torch.testing.assert_close(folded(xx), ref, rtol=1e-5, atol=1e-5)
        isa = ops.cached_isa(backend, "cpu")
        takes = (isa == ops.AVX512_ISA and direct) or (isa == ops.AVX2_ISA and direct_avx2)
        fused = fused_pool(vars(pool)) if pool is not None else None
        assert calls == ([(fused or [], isa)] * 2 if takes else [])
        with pytest.raises(RuntimeError):  # wrong channel count: torch's own error, not the op's
            folded(torch.randn(2, conv.in_channels + 1, 11, 12))


@pytest.mark.parametrize("n", [5, 16, 40, 64])
def test_every_row_width_splits_into_blocks_and_borders_alike(n):
    """Widths 1 to 40 (interior runs of every length modulo the pixel blocks of 6, 8 and 12): the vector paths'
    blocks and per-pixel borders equal the portable code, which clips every pixel's taps on its own."""
    if len(_isas()) == 1:
        pytest.skip("no vector back end here")
    gen = torch.Generator().manual_seed(n)
    for w in range(1, 41):
        for k, s, p in (((3, 3), (1, 1), (1, 1)), ((1, 5), (1, 2), (0, 2))):
            if w + 2 * p[1] < k[1]:
                continue
            x = torch.randn(1, 2, 3, w, generator=gen).contiguous(memory_format=torch.channels_last)
            wt, bias = torch.randn(n, 2, *k, generator=gen), torch.randn(n, generator=gen)
            want = _run(x, wt, bias, k, s, p, False, 0)
            for isa in _isas()[1:]:
                assert torch.equal(_run(x, wt, bias, k, s, p, False, isa), want), (w, k, isa)


@pytest.mark.parametrize("backend", ["portable", "avx512", "avx2", None])
def test_converted_float_parts_follow_the_conversion_backend(monkeypatch, backend):
    """``to_bitwise(backend=...)`` runs the stem and shortcuts on the engine's direct convolution where that back
    end is AVX-512, the shortcuts alone where it is AVX2 (a model converted for the portable kernels keeps torch's
    convolution), whatever the switch ``LSQBQ_BACKEND`` says; None follows the switch."""
    from lsqbq.kernels import available_backends, to_bitwise
    from lsqbq.models import build

    if backend in ("avx512", "avx2") and backend not in available_backends():
        pytest.skip(f"no {backend} back end here")
    calls = []
    real = torch.ops.lsqbq.f32_direct_conv2d
    monkeypatch.setattr(torch.ops.lsqbq, "f32_direct_conv2d", lambda *a: calls.append(a[-1]) or real(*a))
    torch.manual_seed(0)
    sim = build("resnet_small", num_classes=10, x_quant="ls-1", w_quant="ls-1", in_chans=1, stem_stride=2).eval()
    with torch.inference_mode():
        fast = to_bitwise(sim, backend=backend)
        assert {m.backend for m in fast.modules() if isinstance(m, FoldedConv2d)} == {backend}
        fast(torch.randn(2, 1, 28, 28))
    isa = ops.cached_isa(backend, "cpu")
    assert calls == {ops.AVX512_ISA: [isa] * 3, ops.AVX2_ISA: [isa] * 2}.get(isa, [])
