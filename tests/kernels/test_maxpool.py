"""The engine's one-pass NHWC max-pool + ReLU (:func:`lsqbq.kernels.ops.max_pool2d_nhwc`) against torch's own
``max_pool2d`` followed by ``relu``: the same values element for element on every compiled back end (the maximum
is exact), NaN and infinities where torch has them, for channel counts that fill no vector, one and several
vectors, with 1 and 2 threads; clear errors on inputs it does not take."""
from __future__ import annotations

import pytest
import torch

from lsqbq.kernels import ops
from lsqbq.kernels.float_parts import max_pool2d

WINDOWS = [(1, 1, 0), (2, 2, 0), (3, 2, 1), (3, 1, 1), (3, 3, 0), (5, 2, 2), (4, 3, 1)]


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(0.5, posinf=7.0, neginf=-7.0), want.nan_to_num(0.5, posinf=7.0, neginf=-7.0))


@pytest.mark.parametrize("k,s,p", WINDOWS)
@pytest.mark.parametrize("channels", [1, 3, 17, 40, 64, 130])
def test_native_pool_equals_torch(backend, k, s, p, channels):
    gen = torch.Generator().manual_seed(1000 * k + 100 * s + 10 * p + channels)
    before = torch.get_num_threads()
    try:
        for b, h, w in ((1, 9, 11), (3, 8, 8), (2, k, k + 2)):
            x = torch.randn(b, channels, h, w, generator=gen)
            x.view(-1)[torch.randint(x.numel(), (3,), generator=gen)] = float("nan")
            x.view(-1)[torch.randint(x.numel(), (2,), generator=gen)] = float("-inf")
            x.view(-1)[torch.randint(x.numel(), (1,), generator=gen)] = float("inf")
            x = x.contiguous(memory_format=torch.channels_last)
            want = torch.max_pool2d(x, k, s, p)
            for relu in (False, True):
                expect = want.relu() if relu else want
                outs = []
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    outs.append(ops.max_pool2d_nhwc(x, (k, k), (s, s), (p, p), relu, backend=backend))
                    _same(outs[-1], expect)
                assert torch.equal(outs[0].nan_to_num(0.5), outs[1].nan_to_num(0.5))
    finally:
        torch.set_num_threads(before)


def test_native_pool_large_input_two_threads(backend):
    """The ImageNet stem's pool (64 x 112 x 112, 3x3/2, padding 1) at batch 2: large enough to be split over
    threads, and torch's value in every element."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        x = torch.randn(2, 64, 112, 112, generator=torch.Generator().manual_seed(5))
        x = x.contiguous(memory_format=torch.channels_last)
        _same(ops.max_pool2d_nhwc(x, (3, 3), (2, 2), (1, 1), True, backend=backend),
              torch.max_pool2d(x, 3, 2, 1).relu())
    finally:
        torch.set_num_threads(before)


def test_native_pool_rejects_what_it_does_not_take(backend):
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(RuntimeError, match="channels_last"):
        ops.max_pool2d_nhwc(x, (2, 2), (2, 2), (0, 0), backend=backend)
    x = x.contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="padding < kernel"):
        ops.max_pool2d_nhwc(x, (2, 2), (2, 2), (1, 1), backend=backend)
    with pytest.raises(RuntimeError, match="float32"):
        ops.max_pool2d_nhwc(x.double().contiguous(memory_format=torch.channels_last), (2, 2), (2, 2), (0, 0),
                            backend=backend)
    with pytest.raises(RuntimeError, match="smaller than the window"):
        ops.max_pool2d_nhwc(x, (7, 7), (1, 1), (0, 0), backend=backend)


def test_reference_backend_pools_with_torch():
    """Without the compiled library the op is not called (None) and ``max_pool2d`` pools separably, same values."""
    x = torch.randn(2, 5, 9, 9, generator=torch.Generator().manual_seed(3)).contiguous(
        memory_format=torch.channels_last)
    assert ops.max_pool2d_nhwc(x, (3, 3), (2, 2), (1, 1), backend="reference") is None
    _same(max_pool2d(x, 3, 2, 1, relu=True), torch.max_pool2d(x, 3, 2, 1).relu())


def test_native_pool_fake_kernel_shape():
    """The op's fake kernel (FakeTensor / torch.compile tracing) gives the real output's shape and layout."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(2, 6, 13, 10).contiguous(memory_format=torch.channels_last)
    real = ops.max_pool2d_nhwc(x, (3, 3), (2, 2), (1, 1), True)
    with FakeTensorMode() as mode:
        fake = ops.max_pool2d_nhwc(mode.from_tensor(x), (3, 3), (2, 2), (1, 1), True)
    assert fake.shape == real.shape and fake.stride() == real.stride()
