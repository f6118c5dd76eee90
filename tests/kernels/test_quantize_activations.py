"""The engine's two-pass uint8 activation quantizer of the int8 float parts
(:func:`lsqbq.kernels.ops.quantize_uint8_nhwc`) against the torch expression it replaces
(:func:`lsqbq.kernels.float_parts.quantize_uint8` of the grid's copy): the same scale, zero point and bytes on
every compiled back end, for strided grids, both level counts, constant and one-signed tensors, 1 and 2 threads;
NaN and inf are refused with an error naming the shape, on both paths."""
from __future__ import annotations

import pytest
import torch

from lsqbq.errors import InputError
from lsqbq.kernels import ops
from lsqbq.kernels.float_parts import quantize_activations, quantize_uint8


def _reference(x: torch.Tensor, step, levels):
    return quantize_uint8(x[:, :, :: step[0], :: step[1]].contiguous(memory_format=torch.channels_last), levels)


def _cases(gen):
    for shape in ((1, 3, 9, 7), (2, 17, 6, 6), (1, 64, 14, 14), (3, 1, 5, 4)):
        x = torch.randn(*shape, generator=gen) * 3
        yield x
        yield x.abs()  # zero point 0
        yield -x.abs() - 0.1  # zero point = levels
    yield torch.zeros(1, 5, 4, 4)  # constant: scale 1
    yield torch.full((1, 5, 4, 4), 2.5)
    # values on the rounding boundaries of a grid of step 1/255 around 0
    yield (torch.arange(-510, 510, dtype=torch.float32) / 510).reshape(1, 4, 15, 17)


@pytest.mark.parametrize("step", [(1, 1), (2, 2), (3, 2)])
@pytest.mark.parametrize("levels", [255, 127])
def test_native_quantizer_equals_torch(backend, step, levels):
    gen = torch.Generator().manual_seed(17 * levels + 3 * step[0] + step[1])
    for x in _cases(gen):
        x = x.contiguous(memory_format=torch.channels_last)
        q, scale, zero, lo, hi = ops.quantize_uint8_nhwc(x, step, levels, backend=backend)
        rq, rscale, rzero = _reference(x, step, levels)
        grid = x[:, :, :: step[0], :: step[1]]
        assert (lo, hi) == (grid.min().item(), grid.max().item())
        assert (scale, zero) == (rscale, rzero)
        assert q.dtype == torch.uint8 and q.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(q, rq)


def test_native_quantizer_two_threads_same_bytes(backend):
    before = torch.get_num_threads()
    try:
        x = torch.randn(4, 64, 56, 56, generator=torch.Generator().manual_seed(9))
        x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(ops.quantize_uint8_nhwc(x, (1, 1), 255, backend=backend)[0])
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], _reference(x, (1, 1), 255)[0])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_activations_refused(bad):
    x = torch.randn(1, 8, 6, 6)
    x[0, 3, 2, 4] = bad
    for xx in (x, x.contiguous(memory_format=torch.channels_last)):  # torch path, engine path
        with pytest.raises(InputError, match=r"\(1, 8, 6, 6\) are not finite"):
            quantize_activations(xx, (1, 1), 255)
    # a strided grid that misses the bad pixel quantizes normally
    q, _, _ = quantize_activations(x.contiguous(memory_format=torch.channels_last), (3, 3), 255)
    assert q.shape == (1, 8, 2, 2)
