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


@pytest.mark.parametrize("c,channels,step", [(3, 4, (1, 1)), (3, 4, (2, 1)), (3, 4, (1, 2)), (2, 5, (1, 1)),
                                             (1, 4, (2, 2))])
def test_appended_channels_hold_the_quantized_zero(backend, c, channels, step):
    """``channels`` past ``x``'s hold the quantized 0, as if zero channels were appended (the RGB stem's 4th
    channel); row lengths that are not a multiple of the 4-pixel vector step included."""
    gen = torch.Generator().manual_seed(c * 10 + channels)
    for h, w in ((7, 11), (224 // 8, 226 // 8), (3, 1)):
        x = (torch.randn(2, c, h, w, generator=gen) + 0.3).contiguous(memory_format=torch.channels_last)
        q, scale, zero, _, _ = ops.quantize_uint8_nhwc(x, step, 255, channels, backend=backend)
        grid = x[:, :, :: step[0], :: step[1]]
        padded = torch.cat([grid, grid.new_zeros(grid.shape[0], channels - c, *grid.shape[2:])], 1)
        rq, rscale, rzero = quantize_uint8(padded.contiguous(memory_format=torch.channels_last), 255)
        assert (scale, zero) == (rscale, rzero) and torch.equal(q, rq)
        assert (q[:, c:] == zero).all()
        tq, _, _ = quantize_activations(x.contiguous(), step, 255, channels)  # torch path (NCHW input)
        assert torch.equal(tq, rq)


@pytest.mark.skipif(not hasattr(torch.ops, "onednn"), reason="no oneDNN int8 ops in this torch build")
def test_rgb_stem_on_four_channels_equals_three():
    """The int8 RGB stem runs on 4 channels (zero weights, quantized-0 input): exactly the output of oneDNN's int8
    convolution on the 3 channels, from the same quantized input and weights."""
    from torch import nn

    from lsqbq.kernels.float_parts import FoldedConv2d, Int8Conv2d, weight_int8

    torch.manual_seed(0)
    folded = FoldedConv2d(nn.Conv2d(3, 16, 7, 2, 3).eval(), relu=True)
    layer = Int8Conv2d(folded)
    assert layer.in_padded == 4 and layer.weight_q.shape[1] == 4
    x = torch.randn(2, 3, 40, 36).contiguous(memory_format=torch.channels_last)
    q, scale, zero = quantize_uint8(x, layer.levels)
    wq, ws = weight_int8(folded.weight)
    packed = torch.ops.onednn.qconv_prepack(wq.contiguous(memory_format=torch.channels_last), ws, 1.0, 0, [2, 2],
                                            [3, 3], [1, 1], 1, list(q.shape))
    want = torch.ops.onednn.qconv2d_pointwise(q, scale, zero, packed, ws, torch.zeros(16, dtype=torch.int32),
                                              folded.bias, [2, 2], [3, 3], [1, 1], 1, 1.0, 0, torch.float32, "relu",
                                              [], "")
    with torch.inference_mode():
        got = layer(x)
    assert torch.equal(got, want)


def test_torch_path_and_engine_path_agree():
    """Without the compiled library (:func:`lsqbq._native.disabled`) the grid is quantized in torch; with it, an
    NCHW input is copied to a channels_last grid for the engine: the same bytes, scale and zero point either way."""
    from lsqbq import _native

    x = torch.randn(2, 3, 11, 9, generator=torch.Generator().manual_seed(4))  # NCHW
    for step, channels in (((1, 1), 0), ((2, 3), 0), ((1, 1), 4), ((2, 2), 4)):
        q, scale, zero = quantize_activations(x, step, 255, channels)
        with _native.disabled():
            tq, tscale, tzero = quantize_activations(x, step, 255, channels)
        assert (scale, zero) == (tscale, tzero) and torch.equal(q, tq)
        assert q.is_contiguous(memory_format=torch.channels_last) and q.shape[1] == (channels or 3)
