"""Every compiled back end against the reference, bit for bit (integers) on awkward shapes."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lsqbq import _native
from lsqbq.kernels import (available_backends, encode, pack_signs, pack_weight, popcount_peak, reference as ref,
                           resolve_backend, xnor_conv2d, xnor_conv2d_scaled, xnor_gemm, xnor_gemm_scaled)

MODES = [(1, 1, False), (2, 1, False), (2, 2, False), (3, 2, False), (1, 2, False), (2, 1, True), (2, 2, True)]
IDS = ["1x1", "2x1", "2x2", "3x2", "1x2", "Tx1", "Tx2"]


def _acts(pa: int, mask: bool, m: int, k: int, gen) -> torch.Tensor:
    a = ref.pack_signs(torch.randn(2 if mask else pa, m, k, generator=gen))
    return a


@pytest.mark.parametrize("k", [1, 63, 64, 65, 130, 577])
@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_gemm_bit_exact(backend, k, mode, pm1):
    pa, pw, mask = mode
    gen = torch.Generator().manual_seed(k)
    for m, n in [(1, 1), (7, 33), (13, 64), (6, 31)]:
        a = _acts(pa, mask, m, k, gen)
        w = pack_weight(pm1(pw, n, k, gen=gen), torch.rand(n, pw, generator=gen))
        want = xnor_gemm(a, w, mask=mask, backend="reference")
        assert torch.equal(xnor_gemm(a, w, mask=mask, backend=backend), want)
        sa = torch.rand(m, 1 if mask else pa, generator=gen)
        bias = torch.randn(n, generator=gen)
        got = xnor_gemm_scaled(a, w, sa, bias, mask=mask, backend=backend)
        torch.testing.assert_close(got, xnor_gemm_scaled(a, w, sa, bias, mask=mask, backend="reference"),
                                   rtol=1e-5, atol=1e-4)


CONVS = [  # (B, C, H, W, N, kernel, stride, padding)
    (1, 64, 9, 8, 32, 3, 1, 1),
    (1, 3, 5, 5, 7, 3, 1, 1),
    (2, 65, 7, 6, 33, 3, 2, 1),
    (1, 130, 6, 5, 40, 3, 2, 2),
    (2, 63, 5, 7, 64, 1, 1, 0),
    (1, 64, 8, 8, 31, 1, 2, 0),
    (2, 1024, 5, 5, 128, 3, 1, 1),  # weight panels over 128 KB: the driver runs panels outer on tabulated rows
]


@pytest.mark.parametrize("shape", CONVS, ids=[f"c{s[1]}k{s[5]}s{s[6]}p{s[7]}b{s[0]}" for s in CONVS])
@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_conv_bit_exact(backend, shape, mode, pm1):
    B, C, H, W, N, k, s, p = shape
    pa, pw, mask = mode
    gen = torch.Generator().manual_seed(C + k)
    x = torch.randn(B, C, H, W, generator=gen)
    scales = torch.rand(B, 2 if mask else pa, generator=gen)
    if mask:
        scales[:, 1] = scales[:, 0]
    a = encode(x, scales, mask=mask, padding=(p, p), backend="reference")
    assert torch.equal(encode(x, scales, mask=mask, padding=(p, p), backend=backend), a)
    w = pack_weight(pm1(pw, N, C, k, k, gen=gen), torch.rand(N, pw, generator=gen))
    want = xnor_conv2d(a, w, (H, W), s, p, mask=mask, backend="reference")
    assert torch.equal(xnor_conv2d(a, w, (H, W), s, p, mask=mask, backend=backend), want)
    sa, bias = torch.rand(B, 1 if mask else pa, generator=gen), torch.randn(N, generator=gen)
    got = xnor_conv2d_scaled(a, w, sa, bias, (H, W), s, p, mask=mask, backend=backend)
    torch.testing.assert_close(got, xnor_conv2d_scaled(a, w, sa, bias, (H, W), s, p, mask=mask, backend="reference"),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", [(1, 1, False), (2, 1, True)], ids=["1x1", "Tx1"])
def test_conv_panels_outer_on_threads(backend, mode, threads, pm1):
    """Weight panels over the driver's 128 KB (1024 -> 128 channels, 3x3) run panels outer on row tiles tabulated
    first; at 512 output rows the ternary table is work enough to be split over threads."""
    pa, pw, mask = mode
    gen = torch.Generator().manual_seed(7)
    B, C, H, W, N = 2, 1024, 16, 16, 128
    a = encode(torch.randn(B, C, H, W, generator=gen), torch.rand(B, 2 if mask else pa, generator=gen), mask=mask,
               padding=(1, 1), backend="reference")
    w = pack_weight(pm1(pw, N, C, 3, 3, gen=gen), torch.rand(N, pw, generator=gen))
    assert torch.equal(xnor_conv2d(a, w, (H, W), 1, 1, mask=mask, backend=backend),
                       xnor_conv2d(a, w, (H, W), 1, 1, mask=mask, backend="reference"))


@pytest.mark.parametrize("planes,mask", [(1, False), (2, False), (3, False), (2, True)])
def test_encode_layouts_and_clamp(backend, planes, mask):
    gen = torch.Generator().manual_seed(planes)
    x = 3 * torch.randn(2, 70, 5, 3, generator=gen)
    x[0, 0, 0, 0], x[0, 1, 0, 0] = 0.0, -0.0
    v = torch.rand(2, planes, generator=gen)
    if mask:
        v[:, 1] = v[:, 0]
    want = encode(x, v, clamp=2.0, mask=mask, padding=(1, 2), backend="reference")
    for xx in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
        assert torch.equal(encode(xx, v, clamp=2.0, mask=mask, padding=(1, 2), backend=backend), want)
    rows = torch.randn(5, 130, generator=gen)
    v = torch.rand(5, planes, generator=gen)
    if mask:
        v[:, 1] = v[:, 0]
    assert torch.equal(encode(rows, v, mask=mask, backend=backend), encode(rows, v, mask=mask, backend="reference"))


def test_pack_signs(backend):
    x = torch.randn(4, 3, 131)
    x[0, 0, :5] = torch.tensor([0.0, -0.0, 1.0, -1.0, 0.0])
    assert torch.equal(pack_signs(x, backend=backend), ref.pack_signs(x))


def test_peak_runs(backend):
    assert popcount_peak(1000, backend=backend) > 0


def test_backend_names():
    assert resolve_backend() == resolve_backend("auto") == available_backends()[-1]
    assert resolve_backend("reference") == "reference"
    with pytest.raises(ValueError, match="unknown kernel backend"):
        resolve_backend("nonsense")
    assert resolve_backend(device="meta") == "reference"  # non-CPU tensors use the reference


def test_disabled_means_reference(backend):
    with _native.disabled():
        assert available_backends() == ["reference"]
        assert resolve_backend() == "reference"
        with pytest.raises(ValueError, match="not available"):
            resolve_backend(backend)


_FALLBACK = """
import warnings, torch
from pathlib import Path
from lsqbq import _native
_native.SOURCES = [Path(_native.SOURCES[0]).with_name("missing.cpp")]     # the build cannot succeed
from lsqbq.kernels import available_backends, resolve_backend, to_bitwise
import lsqbq
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert available_backends() == ["reference"], available_backends()
    assert resolve_backend() == "reference"
    available_backends()
    v = lsqbq.fit(torch.randn(3, 10), "ls-2")                  # the quantizers run their torch code
assert sum("falling back" in str(w.message) for w in caught) == 1, [str(w.message) for w in caught]
assert _native.build_error() is not None
net = torch.nn.Sequential(lsqbq.QuantConv2d(8, 4, 3, padding=1, x_quant="ls-1", w_quant="ls-1")).eval()
x = torch.randn(1, 8, 5, 5)
torch.testing.assert_close(to_bitwise(net)(x), net(x), rtol=1e-5, atol=1e-5)
print("fallback-ok")
"""


def test_build_failure_falls_back_to_reference(tmp_path):
    env = {**os.environ, "LSQBQ_BUILD_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _FALLBACK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "fallback-ok" in out.stdout, out.stderr[-2000:]


_GENERIC_POPCOUNT = """
import torch
from lsqbq.kernels import available_backends, encode, pack_weight, xnor_conv2d, xnor_gemm, reference as ref
assert "portable" in available_backends()
gen = torch.Generator().manual_seed(0)
pm1 = lambda *s: torch.where(torch.randn(*s, generator=gen) >= 0, 1.0, -1.0)
for pa, pw, mask in [(1, 1, False), (2, 2, False), (2, 1, True)]:
    for k in (1, 63, 65, 577):
        a = ref.pack_signs(torch.randn(2 if mask else pa, 7, k, generator=gen))
        w = pack_weight(pm1(pw, 33, k), torch.rand(33, pw, generator=gen))
        assert torch.equal(xnor_gemm(a, w, mask=mask, backend="portable"), xnor_gemm(a, w, mask=mask, backend="reference"))
    x, s = torch.randn(2, 65, 7, 6, generator=gen), torch.rand(2, 2 if mask else pa, generator=gen)
    if mask:
        s[:, 1] = s[:, 0]
    a = encode(x, s, mask=mask, padding=(1, 1), backend="reference")
    w = pack_weight(pm1(pw, 33, 65, 3, 3), torch.rand(33, pw, generator=gen))
    got = xnor_conv2d(a, w, (7, 6), 2, 1, mask=mask, backend="portable")
    assert torch.equal(got, xnor_conv2d(a, w, (7, 6), 2, 1, mask=mask, backend="reference"))
print("generic-ok")
"""


def test_generic_popcount_build_of_the_portable_path():
    """LSQBQ_BACKEND=generic runs the portable kernels' generic x86-64 build (software popcount) that CPUs without the
    POPCNT instruction get: the same integers as the reference."""
    if "portable" not in available_backends():
        pytest.skip("no compiled back end")
    env = {**os.environ, "LSQBQ_BACKEND": "generic"}
    out = subprocess.run([sys.executable, "-c", _GENERIC_POPCOUNT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "generic-ok" in out.stdout, out.stderr[-2000:]
