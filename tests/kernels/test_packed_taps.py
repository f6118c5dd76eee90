"""Packed taps: with at most 32 input channels the weight panels hold the taps of a kernel row in groups of
``G = min(64 // C, KW)`` per k word (``KH * ceil(KW / G)`` words instead of ``KH * KW``) and the driver packs the
activation words alike. Every compiled back end must give the pure-torch reference's integers (which never see
the packed layout) and, through the same epilogue, its scaled outputs: whole and partial groups (3x3 on 32 or 24
channels: 2 + 1 taps; 5x5 on 20: 3 + 2), one channel, padding with its per-tap correction, stride, dilation,
several planes and the ternary mask, 1 and 2 threads."""
from __future__ import annotations

import pytest
import torch

from lsqbq.kernels import (available_backends, bitwise_conv2d, encode, pack_weight, xnor_conv2d,
                           xnor_conv2d_scaled)
from lsqbq.kernels.reference import FIT_GREEDY, FIT_LS2

COMPILED = [b for b in available_backends() if b != "reference"]  # all at once
MODES = [(1, 1, False), (2, 1, False), (3, 2, False), (2, 1, True)]  # (activation planes, weight planes, mask)
MODE_IDS = ["1x1", "2x1", "3x2", "Tx1"]
CONVS = [  # (B, C, H, W, N, kernel, stride, padding, dilation)
    (2, 16, 7, 6, 16, 3, 1, 1, 1),
    (1, 3, 9, 9, 8, 3, 1, 1, 1),
    (2, 6, 12, 12, 16, 5, 1, 0, 1),
    (1, 6, 9, 8, 40, 5, 2, 2, 1),
    (1, 32, 8, 8, 33, 3, 2, 1, 1),
    (1, 32, 6, 7, 32, 3, 1, 2, 2),
    (1, 24, 5, 5, 64, 3, 1, 1, 1),
    (2, 20, 9, 9, 16, 5, 1, 0, 1),  # LeNet-5's second conv, narrower: groups of 3 + 2 taps
    (1, 16, 9, 9, 8, 3, 1, 2, 2),
    (3, 1, 6, 6, 5, 3, 1, 1, 1),
]


def test_small_channel_counts_pack_taps():
    """The layout rule: ``KH * ceil(KW / G)`` k words, ``G = min(64 // C, KW)``, where that is fewer than a word
    per tap; the packed words hold the taps' sign bits side by side."""
    for c, k, want in [(16, 3, 3), (32, 3, 6), (6, 5, 5), (20, 5, 10), (33, 3, 9), (64, 3, 9), (65, 3, 18),
                       (16, 1, 1), (1, 3, 3)]:
        w = pack_weight(torch.ones(1, 4, c, k, k))
        assert w.panels.shape[2] == want, (c, k)
        assert w.rows.shape[2:] == (k * k, -(-c // 64))  # the reference layout is unchanged
    signs = torch.ones(1, 1, 20, 5, 5)
    signs[0, 0, 3, 1, 4] = -1.0  # channel 3 of tap (1, 4): group 1 of row 1, its second tap
    w = pack_weight(signs)
    assert w.panels[0, 0, :, 0].tolist() == [0, 0, 0, 1 << (20 + 3), 0, 0, 0, 0, 0, 0]


@pytest.mark.skipif(not COMPILED, reason="no compiled kernel back end on this machine")
@pytest.mark.parametrize("shape", CONVS, ids=[f"b{s[0]}c{s[1]}k{s[5]}s{s[6]}p{s[7]}d{s[8]}" for s in CONVS])
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_packed_conv_equals_reference(shape, mode, threads, pm1):
    B, C, H, W, N, k, s, p, d = shape
    pa, pw, mask = mode
    gen = torch.Generator().manual_seed(C + 10 * k + pa)
    x = torch.randn(B, C, H, W, generator=gen)
    v = torch.rand(B, 2 if mask else pa, generator=gen) + 0.1
    if mask:
        v[:, 1] = v[:, 0]
    a = encode(x, v, mask=mask, padding=(p, p), backend="reference")
    w = pack_weight(pm1(pw, N, C, k, k, gen=gen), torch.rand(N, pw, generator=gen))
    assert w.panels.shape[2] == k * -(-k // min(64 // C, k)) < k * k  # packed
    sa, bias = torch.rand(B, 1 if mask else pa, generator=gen), torch.randn(N, generator=gen)
    want = xnor_conv2d(a, w, (H, W), s, p, d, mask=mask, backend="reference")
    want_f = xnor_conv2d_scaled(a, w, sa, bias, (H, W), s, p, d, mask=mask, backend="reference")
    for b in COMPILED:
        assert torch.equal(xnor_conv2d(a, w, (H, W), s, p, d, mask=mask, backend=b), want), b
        got = xnor_conv2d_scaled(a, w, sa, bias, (H, W), s, p, d, mask=mask, backend=b)
        torch.testing.assert_close(got, want_f, rtol=1e-5, atol=1e-5, msg=b)


@pytest.mark.skipif(not COMPILED, reason="no compiled kernel back end on this machine")
@pytest.mark.parametrize("planes,fit", [(1, FIT_GREEDY), (3, FIT_GREEDY), (2, FIT_LS2)], ids=["ls-1", "gf-3", "ls-2"])
def test_packed_fused_layer_equals_reference(planes, fit, threads, pm1):
    """The whole layer op on 16 channels (the small ResNet's first stage): encode with a prologue, fit, packed
    convolution, bias, ReLU and the residual."""
    gen = torch.Generator().manual_seed(planes + fit)
    B, C, H, W, N = 3, 16, 10, 9, 16
    x = torch.randn(B, C, H, W, generator=gen).contiguous(memory_format=torch.channels_last)
    w = pack_weight(pm1(1, N, C, 3, 3, gen=gen), torch.rand(N, 1, generator=gen))
    prologue = (torch.rand(C, generator=gen) + 0.5, 0.1 * torch.randn(C, generator=gen))
    bias, res = torch.randn(N, generator=gen), torch.randn(B, N, H, W, generator=gen)

    def layer(b):
        return bitwise_conv2d(x, w, bias, 1, 1, 1, planes=planes, fit=fit, prologue=prologue, residual=res,
                              act=1, residual_first=False, backend=b)

    want = layer("reference")
    for b in COMPILED:
        torch.testing.assert_close(layer(b), want, rtol=1e-5, atol=1e-5, msg=b)
