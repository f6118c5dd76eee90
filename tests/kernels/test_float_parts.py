"""The full-precision parts of a bitwise model (:mod:`lsqbq.kernels.float_parts`): folded stems and shortcuts equal
the eager ``conv -> BN -> ReLU -> max-pool`` and whole converted models equal the simulated ones within float
rounding; the int8 layers stay within the error bound derived in the module docstring; unknown modes are refused."""
from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lsqbq import _native
from lsqbq.errors import ConfigError, InputError
from lsqbq.kernels import to_bitwise
from lsqbq.kernels import float_parts
from lsqbq.kernels.float_parts import (Float32Linear, FoldedConv2d, Int8Conv2d, Int8Linear, conv_threads, max_pool2d,
                                      onednn_folds_scales, packed_direct_weight, quantize_uint8, weight_int8)
from lsqbq.models import build


def _randomise_bns(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics and affine parameters in every BatchNorm (fresh ones are the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.5 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.2 + 2 * torch.rand(c, generator=gen))
                m.weight.copy_(1 + 0.5 * torch.randn(c, generator=gen))
                m.bias.copy_(0.3 * torch.randn(c, generator=gen))
    return model.eval()


def _close_to(y: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """``max |y - ref| <= rtol * max |ref| + atol`` (logits: float rounding relative to their scale)."""
    err, scale = (y - ref).abs().max().item(), ref.abs().max().item()
    assert err <= rtol * scale + atol, f"max error {err:.3g} at logit scale {scale:.3g}"


# ------------------------------------------------------------------------------------------- fp32 folding


@pytest.mark.parametrize("conv_bias", [False, True])
@pytest.mark.parametrize("tail", ["bn", "bn_relu", "bn_relu_pool", "relu_pool"])
def test_folded_conv_equals_the_eager_sequence(conv_bias, tail):
    """``FoldedConv2d`` equals ``conv -> BN -> ReLU -> max-pool`` run eagerly (ReLU after the pool, BN folded)."""
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 16, 7, stride=2, padding=3, bias=conv_bias)
    bn = _randomise_bns(nn.BatchNorm2d(16), 2) if "bn" in tail else None
    relu = "relu" in tail
    pool = nn.MaxPool2d(3, stride=2, padding=1) if "pool" in tail else None
    eager = nn.Sequential(*[m for m in (conv, bn, nn.ReLU() if relu else None, pool) if m is not None]).eval()
    folded = FoldedConv2d(conv, bn, relu, pool)
    x = 2 * torch.randn(2, 3, 40, 36) + 0.5
    with torch.inference_mode():
        ref = eager(x)
        for xx in (x, x.contiguous(memory_format=torch.channels_last)):
            torch.testing.assert_close(folded(xx), ref, rtol=1e-4, atol=1e-5)


POOLS = [(k, s, p) for k in (1, 2, 3, 4, 5) for s in (1, 2, 3) for p in range(k // 2 + 1)]


@pytest.mark.parametrize("x_shape, conv, serial", [
    ((1, 1, 28, 28), dict(in_channels=1, out_channels=16, kernel_size=3, padding=1), True),  # 12,544 out, 0.1M MACs
    ((1, 20, 12, 12), dict(in_channels=20, out_channels=50, kernel_size=5), True),  # 3,200 out, 1.6M MACs
    ((1, 3, 32, 32), dict(in_channels=3, out_channels=64, kernel_size=3, padding=1), False),  # 65,536 out
    ((1, 256, 14, 14), dict(in_channels=256, out_channels=512, kernel_size=1, stride=2), False),  # 25,088; 6.4M MACs
    ((4, 3, 32, 32), dict(in_channels=3, out_channels=8, kernel_size=3, stride=2, padding=1, groups=1), True),
])
@pytest.mark.parametrize("int8", [False, True])
def test_small_float_convs_run_on_one_thread(monkeypatch, x_shape, conv, serial, int8):
    """A folded conv's thread count while it runs: 1 below both thresholds (outputs and MACs counted by hand in
    the cases), torch's count above either; the count is restored after the call, also when it fails."""
    if int8 and not hasattr(torch.ops, "onednn"):
        pytest.skip("no oneDNN int8 ops in this torch build")
    torch.manual_seed(0)
    layer = FoldedConv2d(nn.Conv2d(**conv).eval())
    layer = Int8Conv2d(layer) if int8 else layer
    seen = []  # the thread count inside each conv call the layer makes through run_with_threads
    real = float_parts.run_with_threads
    monkeypatch.setattr(float_parts, "run_with_threads", lambda threads, fn, *a: real(
        threads, lambda *b: (seen.append(torch.get_num_threads()), fn(*b))[1], *a))
    x = torch.randn(*x_shape).contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert (conv_threads(x.shape, layer.weight_q if int8 else layer.weight, layer.stride if not int8
                             else layer._conv_stride, layer.padding, layer.dilation, layer.groups) == 1) == (
            serial and not (int8 and layer.subsample))
        with torch.inference_mode():
            y = layer(x)
        assert seen == [1 if serial else 2] and torch.get_num_threads() == 2
        torch.set_num_threads(1)
        with torch.inference_mode():
            one = layer(x)
        if serial:  # one thread either way: the same computation
            assert torch.equal(y, one)
        else:
            torch.testing.assert_close(y, one, rtol=1e-5, atol=1e-5)
        torch.set_num_threads(2)
        wrong = (x_shape[0], x_shape[1] + 1, *x_shape[2:])
        with pytest.raises(InputError if int8 else RuntimeError,
                           match=re.escape(f"expected input (B, {x_shape[1]}, H, W), got {wrong}") if int8 else None), \
                torch.inference_mode():
            layer(torch.randn(*wrong))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("k,s,p", POOLS)
def test_separable_max_pool_equals_torch(k, s, p):
    """``max_pool2d`` (rows then columns) gives torch's pool, element for element (``torch.equal``: values; NaN and
    -inf where torch has them), on odd and even sizes, NCHW and channels_last, the layout kept; what it does not
    take (``2 p >= k``, ceil_mode, dilation, inputs needing a gradient) goes to torch."""
    gen = torch.Generator().manual_seed(100 * k + 10 * s + p)
    for h, w in ((7, 8), (9, 9), (max(k, 2), k + 1)):
        x = torch.randn(2, 5, h, w, generator=gen)
        x[0, 1, 0, 0], x[1, 2, h - 1, w - 1] = float("nan"), float("-inf")
        for xx in (x, x.contiguous(memory_format=torch.channels_last)):
            want = torch.max_pool2d(xx, k, s, p)
            got = max_pool2d(xx, k, s, p)
            assert got.shape == want.shape
            assert torch.equal(got.nan_to_num(0.5), want.nan_to_num(0.5))
            assert torch.equal(got.isnan(), want.isnan())
            assert got.is_contiguous(memory_format=torch.channels_last) == \
                want.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, 2, 9, 9, generator=gen)
    assert torch.equal(max_pool2d(x, k, s, p, ceil_mode=True), torch.max_pool2d(x, k, s, p, ceil_mode=True))
    xg = x.clone().requires_grad_()
    max_pool2d(xg, k, s, p).sum().backward()  # a gradient is taken by torch's pool (the passes write in place)
    assert xg.grad is not None


RESNETS = {
    "xnor-double": dict(block="xnor"),
    "xnor-single": dict(block="xnor", double_shortcut=False),
    "regular": dict(block="regular"),
}


@pytest.mark.parametrize("variant", list(RESNETS))
def test_resnet18_bitwise_with_folded_float_parts_equals_the_simulated_model(variant):
    """ResNet-18 topology (ImageNet stem, projection shortcuts; width 16, 64x64 input to keep it quick) with random
    BatchNorm statistics everywhere: the conversion folds the stem and the three shortcuts and equals the simulated
    model within float rounding, with the same top-1, inside ``torch.inference_mode``."""
    torch.manual_seed(3)
    sim = _randomise_bns(build("resnet18", width=16, num_classes=10, x_quant="ls-1", w_quant="ls-1",
                               **RESNETS[variant]), 4)
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        ref = sim(x)
        fast, report = to_bitwise(sim, return_report=True)
        assert set(report.float_parts) == {"stem.0", "stages.1.0.shortcut.0", "stages.2.0.shortcut.0",
                                           "stages.3.0.shortcut.0", "fc"}
        assert report.float_parts["stem.0"] == "fp32: conv + BatchNorm2d + ReLU + MaxPool2d"
        assert report.float_parts["fc"] == "fp32: linear"
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
        for xx in (x, x.contiguous(memory_format=torch.channels_last)):
            y = fast(xx)
            _close_to(y, ref)
            assert torch.equal(y.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("name", ["lenet5", "resnet_small"])
def test_small_models_bitwise_with_folded_float_parts_equal_the_simulated_model(name):
    """The project's Fashion-MNIST models (28x28, one channel) with random BatchNorm statistics: LeNet-5's conv1
    takes its ReLU, resnet_small's stem and shortcuts their BatchNorms; logits as the simulated model's."""
    torch.manual_seed(5)
    opts = dict(in_chans=1, stem_stride=2) if name == "resnet_small" else {}
    sim = _randomise_bns(build(name, num_classes=10, x_quant="ls-1", w_quant="ls-1", **opts), 6)
    x = torch.randn(4, 1, 28, 28)
    with torch.inference_mode():
        ref = sim(x)
        fast, report = to_bitwise(sim, return_report=True)
        want = {"conv1": "fp32: conv + ReLU", "fc1": "fp32: linear", "fc2": "fp32: linear"} if name == "lenet5" else {
            "stem.0": "fp32: conv + BatchNorm2d + ReLU", "stages.1.0.shortcut.0": "fp32: conv + BatchNorm2d",
            "stages.2.0.shortcut.0": "fp32: conv + BatchNorm2d", "fc": "fp32: linear"}
        assert report.float_parts == want
        y = fast(x)
    _close_to(y, ref)
    assert torch.equal(y.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("bias", [True, False])
def test_float32_linear_equals_the_linear_layer_within_rounding(bias):
    """One row (on the transposed copy) and several rows, batch dimensions kept: each output within the float32
    rounding bound ``K u sum_k |x_k w_k|`` (``K`` products and the bias, ``u = 2^-24``) of a float64 product;
    several rows as ``nn.Linear`` bit for bit; a wrong width is a clear error."""
    torch.manual_seed(11)
    lin = nn.Linear(300, 70, bias=bias)
    fast = Float32Linear(lin)
    x = torch.randn(2, 5, 300)
    with torch.inference_mode():
        for rows in (x[0, :1], x[0], x, x.reshape(10, 300)[3]):
            y = fast(rows)
            exact = F.linear(rows.double(), lin.weight.double(), None if lin.bias is None else lin.bias.double())
            bound = F.linear(rows.double().abs(), lin.weight.double().abs(),
                             None if lin.bias is None else lin.bias.double().abs()) * 301 * 2.0**-24
            assert y.shape == exact.shape and y.dtype == torch.float32
            assert ((y.double() - exact).abs() <= bound).all()
        assert torch.equal(fast(x), lin(x))  # several rows: nn.Linear's own product
        with pytest.raises(InputError, match=r"expected input \(\.\.\., 300\), got \(4, 299\)"):
            fast(torch.randn(4, 299))


def test_conversion_outside_inference_mode_folds_too():
    """Converted and run with autograd on (no_grad), the folded model gives the same logits."""
    torch.manual_seed(7)
    sim = _randomise_bns(build("resnet_small", in_chans=1, stem_stride=2, x_quant="ls-1", w_quant="ls-1"), 8)
    x = torch.randn(2, 1, 28, 28)
    fast = to_bitwise(sim)
    with torch.no_grad():
        _close_to(fast(x), sim(x))


# ------------------------------------------------------------------------------------------- int8


def _int8_conv_bound(x: torch.Tensor, folded: FoldedConv2d, scale_x: float) -> torch.Tensor:
    """The module docstring's bound per output, before ReLU / pool:
    ``(s_j / 2) sum_{R(p)} (|x| + s_x / 2) + (s_x / 2) ||w_j||_1``, plus float32 slack."""
    w = folded.weight
    _, s = weight_int8(w)
    ones = torch.ones(1, w.shape[1], *w.shape[2:])
    field = F.conv2d(x.abs() + scale_x / 2, ones, None, folded.stride, folded.padding, folded.dilation)
    l1 = w.abs().sum((1, 2, 3)).reshape(1, -1, 1, 1)
    bound = (s.reshape(1, -1, 1, 1) / 2) * field + (scale_x / 2) * l1
    return bound * (1 + 1e-4) + 1e-4


def _activation_scale(x: torch.Tensor, levels: int) -> float:
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    return (hi - lo) / levels


CONVS = {  # (in, out, kernel, stride, padding), input (C, H, W), pool / relu
    "imagenet-stem": ((3, 32, 7, 2, 3), (3, 48, 40), True),
    "lenet-conv1": ((1, 20, 5, 1, 0), (1, 28, 28), False),
    "shortcut-1x1/2": ((16, 32, 1, 2, 0), (16, 14, 15), False),
    "cifar-stem": ((1, 16, 3, 2, 1), (1, 28, 28), False),
}


@pytest.mark.parametrize("case", list(CONVS))
def test_int8_conv_is_within_the_derived_bound(case):
    """``Int8Conv2d`` (folded BN, fused ReLU, pool) against the float32 folded conv: every output within the bound
    of the module docstring (pooled through the 1-Lipschitz ReLU and max-pool), for inputs with an offset (a
    non-zero zero point), channels_last or not, a second input size, and after a deep copy."""
    (cin, cout, k, s, p), (c, h, w), pooled = CONVS[case]
    torch.manual_seed(9)
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=True)
    bn = _randomise_bns(nn.BatchNorm2d(cout), 10)
    pool = nn.MaxPool2d(3, stride=2, padding=1) if pooled else None
    folded = FoldedConv2d(conv, bn, relu=True, pool=pool)
    q = Int8Conv2d(folded)
    for i, x in enumerate([torch.randn(2, c, h, w) + 0.7, 3 * torch.rand(1, c, h + 3, w + 1)]):
        if i:
            q = copy.deepcopy(q)
        xx = x.contiguous(memory_format=torch.channels_last) if i == 0 else x
        with torch.inference_mode():
            got, ref = q(xx), folded(x)
            pre = F.conv2d(x, folded.weight, folded.bias, folded.stride, folded.padding)
        bound = _int8_conv_bound(x, folded, _activation_scale(x, q.levels))
        if pool is not None:
            bound = F.max_pool2d(bound, 3, 2, 1)
        assert got.shape == ref.shape
        err = (got - ref).abs()
        assert (err <= bound).all(), f"{case}: worst excess {(err - bound).max().item():.3g}"
        assert err.max() > 0  # really quantized
        assert (err.max() / pre.abs().max()).item() < 0.05  # and the bound is not vacuous here


@pytest.mark.skipif(not _native.active(), reason="the C++ library could not be built")
@pytest.mark.parametrize("case", list(CONVS))
def test_int8_layers_as_one_op_equal_their_torch_calls(case):
    """With a compiled back end an int8 layer is one op (``torch.ops.lsqbq.int8_conv2d`` / ``int8_linear``:
    quantization, then oneDNN); its outputs equal those of the pure-torch calls (``quantize_uint8``, then oneDNN's
    op) bit for bit: channels_last or not, a strided view, the stem's padded 4th channel, the shortcut's grid."""
    (cin, cout, k, s, p), (c, h, w), pooled = CONVS[case]
    torch.manual_seed(14)
    pool = nn.MaxPool2d(3, stride=2, padding=1) if pooled else None
    q = Int8Conv2d(FoldedConv2d(nn.Conv2d(cin, cout, k, stride=s, padding=p), relu=pooled, pool=pool))
    lin = Int8Linear(nn.Linear(c * 7, 9), relu=pooled)
    base = torch.randn(2, c, h, w + 4) + 0.3
    with torch.inference_mode():
        for x in (base, base.contiguous(memory_format=torch.channels_last), base[..., 1::2]):
            got = q(x)
            with _native.disabled():
                ref = q(x)
            assert torch.equal(got, ref) and got.stride() == ref.stride()
        rows = base[:, :, 0, :7].reshape(2, -1)
        got = lin(rows)
        with _native.disabled():
            assert torch.equal(got, lin(rows))


DIRECT = {  # (in, out, kernel, stride, padding, bias), input (H, W), pool (kernel, stride, padding) or None, relu
    "stem, pool fused": ((3, 64, 7, 2, 3, True), (45, 38), (3, 2, 1), True),
    "24 outputs, no relu": ((3, 24, 7, 2, 3, True), (29, 31), (3, 2, 1), False),
    "1 channel 5x5": ((1, 20, 5, 1, 0, True), (17, 14), None, True),
    "4 channels, 2 panels, pool 2/2": ((4, 80, 3, 1, 1, False), (12, 15), (2, 2, 0), True),
    "2 channels 3x3/2": ((2, 16, 3, 2, 1, False), (9, 10), None, False),
    "shortcut 1x1/2": ((64, 128, 1, 2, 0, True), (15, 14), None, False),
    "1x1, 40 channels": ((40, 48, 1, 1, 0, True), (5, 6), None, True),
}


def _direct_supported() -> bool:
    from lsqbq.kernels import ops
    return _native.active() and ops.direct_conv_supported(ops.cached_isa(None, "cpu"))


@pytest.mark.skipif(not _direct_supported(), reason="the direct int8 convolution needs AVX-512 VNNI")
@pytest.mark.parametrize("case", list(DIRECT))
def test_direct_int8_conv_equals_onednn_and_the_formula(case):
    """A conv of few input channels or a 1x1 conv runs on the engine's direct convolution (pool fused); it equals,
    bit for bit, oneDNN's convolution then the pool (the torch calls) and the formula of ``direct_conv.h`` computed
    here from an exact float64 convolution of ``q - z``: ``((float) acc * s_x) * s_w + bias`` (``(float) acc * (s_x
    s_w) + bias`` where oneDNN's convolution rounds so here, :func:`onednn_folds_scales`), ReLU, max-pool; on 1 and
    2 threads, batch 1 and 2."""
    (cin, cout, k, s, p, bias), (h, w), pool, relu = DIRECT[case]
    torch.manual_seed(21)
    folded = FoldedConv2d(nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=bias), relu=relu,
                          pool=nn.MaxPool2d(pool[0], pool[1], pool[2]) if pool else None)
    layer = Int8Conv2d(folded)
    x = (torch.randn(2, cin, h, w) + 0.3).contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    try:
        with torch.inference_mode():
            outs = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                outs += [layer(x), layer(x[:1])]
            assert layer._direct_w is not None  # the direct path ran
            with _native.disabled():
                refs = [layer(x), layer(x[:1])] * 2  # a batch's own range: batch 1 is quantized on its own
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(y, ref) and y.stride() == ref.stride() for y, ref in zip(outs, refs))
    q, sx, z = quantize_uint8(x, layer.levels)
    acc = F.conv2d(q.double() - z, layer.weight_q[:, :cin].double(), stride=s, padding=p)  # exact int32 sums
    if layer.subsample:  # the quantized grid is the strided 1x1 conv's (the range over that grid only)
        q, sx, z = quantize_uint8(x[:, :, ::s, ::s], layer.levels)
        acc = F.conv2d(q.double() - z, layer.weight_q.double())
    sx32, sw = torch.tensor(sx, dtype=torch.float32), layer.weight_scale.view(-1, 1, 1)
    y = acc.float() * (sx32 * sw) if onednn_folds_scales("conv") else (acc.float() * sx32) * sw
    if bias:
        y = y + layer.bias.view(-1, 1, 1)
    y = y.relu() if relu else y
    y = F.max_pool2d(y, pool[0], pool[1], pool[2]) if pool else y
    assert torch.equal(outs[0], y)


@pytest.mark.skipif(not _direct_supported(), reason="the direct int8 convolution needs AVX-512 VNNI")
def test_direct_int8_conv_rounds_in_either_order_and_the_probe_names_onednns():
    """``fold_scales`` picks the epilogue's rounding: ``((float) acc * s_x) * s_w + b`` or ``(float) acc * (s_x s_w)
    + b`` (both checked against exact integer sums, and shown to differ); :func:`onednn_folds_scales` names the one
    oneDNN's convolution follows on this CPU, checked here on another shape (the ImageNet stem's 7x7/2 filters over
    3 channels, 64 outputs) than the one it is probed on."""
    from lsqbq.kernels import ops

    torch.manual_seed(8)
    x = (torch.randn(1, 3, 23, 19) + 0.3).contiguous(memory_format=torch.channels_last)
    wq, ws = weight_int8(torch.randn(64, 3, 7, 7))
    bias = torch.randn(64)
    w, w_sum = packed_direct_weight(wq)
    q, sx, z = quantize_uint8(x, 255)
    acc = F.conv2d(q.double() - z, wq.double(), stride=2, padding=3).float()
    sx32, sw, b = torch.tensor(sx, dtype=torch.float32), ws.view(-1, 1, 1), bias.view(-1, 1, 1)
    formulas = {False: (acc * sx32) * sw + b, True: acc * (sx32 * sw) + b}
    assert not torch.equal(formulas[False], formulas[True])  # the two orders round differently on this input
    with torch.inference_mode():
        for fold, want in formulas.items():
            got = torch.ops.lsqbq.int8_direct_conv2d(x, w, w_sum, ws, bias, 255, [1, 1], [7, 7], [2, 2], [3, 3],
                                                     False, [], ops.cached_isa(None, "cpu"), fold)
            assert torch.equal(got, want)
        packed = torch.ops.onednn.qconv_prepack(wq.contiguous(memory_format=torch.channels_last), ws, 1.0, 0,
                                                [2, 2], [3, 3], [1, 1], 1, list(q.shape))
        onednn = torch.ops.onednn.qconv2d_pointwise(q, sx, z, packed, ws, torch.zeros(64, dtype=torch.int32), bias,
                                                    [2, 2], [3, 3], [1, 1], 1, 1.0, 0, torch.float32, "none", [], "")
    assert torch.equal(onednn, formulas[onednn_folds_scales("conv")])


@pytest.mark.skipif(not _direct_supported(), reason="the direct int8 convolution needs AVX-512 VNNI")
@pytest.mark.parametrize("pool", [[3, 0, 1], [9, 1, 0], [3, 2, 2]])
def test_direct_int8_conv_names_a_pool_that_does_not_fit(pool):
    """A zero stride, a window wider than the padded output, or padding over half the window: an error naming the
    pool and the output (a zero stride once divided before the check)."""
    from lsqbq.kernels import ops

    x = torch.randn(1, 3, 9, 9).contiguous(memory_format=torch.channels_last)
    w, w_sum = packed_direct_weight(torch.randint(-127, 128, (16, 3, 3, 3), dtype=torch.int8))
    with pytest.raises(RuntimeError, match=re.escape(f"int8_direct_conv2d pool {pool} does not fit the output 7x7")):
        torch.ops.lsqbq.int8_direct_conv2d(x, w, w_sum, torch.ones(16), None, 255, [1, 1], [3, 3], [1, 1], [0, 0],
                                           False, pool, ops.cached_isa(None, "cpu"))


@pytest.mark.skipif(not _direct_supported(), reason="the direct int8 convolution needs AVX-512 VNNI")
@pytest.mark.parametrize("relu", [False, True])
def test_int8_linear_of_few_rows_runs_direct_and_equals_onednn(relu):
    """Up to ``DIRECT_LINEAR_ROWS`` rows an int8 linear layer runs on the direct convolution (rows as 1x1 pixels),
    more on oneDNN's inner product; both give the torch calls' outputs bit for bit, extra leading dims too."""
    torch.manual_seed(23)
    lin, many = Int8Linear(nn.Linear(70, 40), relu=relu), Int8Linear(nn.Linear(70, 40), relu=relu)
    x = torch.randn(9, 70) - 0.2
    with torch.inference_mode():
        many(x)  # more rows than DIRECT_LINEAR_ROWS: oneDNN's weights only
        assert many._direct_w is None and many._packed is not None
        lin(x[:1])
        assert lin._direct_w is not None and lin._packed is None  # the direct convolution's weights only
        for n in (1, float_parts.DIRECT_LINEAR_ROWS, float_parts.DIRECT_LINEAR_ROWS + 1, 9):
            got = lin(x[:n])
            with _native.disabled():
                assert torch.equal(got, lin(x[:n]))
        got = lin(x[:4].view(2, 2, 70))
        with _native.disabled():
            assert torch.equal(got, lin(x[:4].view(2, 2, 70))) and got.shape == (2, 2, 40)


def test_int8_layers_pack_again_after_a_state_dict_load():
    """Loading a state dict into an int8 layer that already ran replaces its packed weight copies (oneDNN's and
    the direct convolution's): it then gives what a layer built on the loaded weights gives."""
    torch.manual_seed(22)
    convs = [nn.Conv2d(3, 16, 7, stride=2, padding=3), nn.Conv2d(3, 16, 7, stride=2, padding=3)]
    pool = nn.MaxPool2d(3, 2, 1)
    a, b = (Int8Conv2d(FoldedConv2d(c, relu=True, pool=pool)) for c in convs)
    la, lb = Int8Linear(nn.Linear(20, 5)), Int8Linear(nn.Linear(20, 5))
    x, rows = torch.randn(1, 3, 30, 30), torch.randn(4, 20)
    with torch.inference_mode():
        a(x), la(rows)  # packs a's own weights
        a.load_state_dict(b.state_dict())
        la.load_state_dict(lb.state_dict())
        assert torch.equal(a(x), b(x)) and torch.equal(la(rows), lb(rows))


EMPTY_POOLS = {"ceil": dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
               "ceil, last window dropped": dict(kernel_size=3, stride=3, padding=1, ceil_mode=True)}


@pytest.mark.parametrize("case", list(CONVS) + list(EMPTY_POOLS))
def test_int8_layers_give_an_empty_batch_an_empty_output(case):
    """An empty batch has no range to quantize over: the int8 conv returns the empty output the float32 conv (and
    its pool) gives, shape for shape, channels_last (ceil-mode pools too, where torch drops a last window that
    would start in the padding: 5 -> 2, 8 -> 3); the int8 linear layer an empty (0, N); a wrong feature count
    is an InputError naming both sizes."""
    if case in EMPTY_POOLS:
        (cin, cout, k, s, p), (c, h, w), pool = (1, 4, 3, 1, 1), (1, 5, 8), nn.MaxPool2d(**EMPTY_POOLS[case])
    else:
        (cin, cout, k, s, p), (c, h, w), pooled = CONVS[case]
        pool = nn.MaxPool2d(3, stride=2, padding=1) if pooled else None
    folded = FoldedConv2d(nn.Conv2d(cin, cout, k, stride=s, padding=p), relu=True, pool=pool)
    q = Int8Conv2d(folded)
    for hh, ww in ((h, w), (h + 1, w + 2)):
        x = torch.zeros(0, c, hh, ww)
        with torch.inference_mode():
            got, ref = q(x), folded(x)
        assert got.shape == ref.shape and got.is_contiguous(memory_format=torch.channels_last)
    lin = Int8Linear(nn.Linear(12, 5))
    with torch.inference_mode():
        assert lin(torch.zeros(0, 3, 12)).shape == (0, 3, 5)
        with pytest.raises(InputError, match=re.escape("expected input (..., 12), got (2, 7)")):
            lin(torch.zeros(2, 7))


@pytest.mark.parametrize("relu", [False, True])
def test_int8_linear_is_within_the_derived_bound(relu):
    """``Int8Linear`` against ``nn.Linear``: ``(s_j / 2) sum_k (|x_k| + s_x / 2) + (s_x / 2) ||w_j||_1``."""
    torch.manual_seed(11)
    lin = nn.Linear(200, 30)
    q = Int8Linear(lin, relu=relu)
    x = torch.randn(5, 200) - 0.4
    with torch.inference_mode():
        got = q(x)
        ref = lin(x).relu() if relu else lin(x)
    _, s = weight_int8(lin.weight)
    sx = _activation_scale(x, q.levels)
    bound = (s / 2) * (x.abs() + sx / 2).sum(1, keepdim=True) + (sx / 2) * lin.weight.abs().sum(1)
    assert ((got - ref).abs() <= bound * (1 + 1e-4) + 1e-4).all()


def test_quantize_uint8_rounds_within_half_a_step():
    """``|s (q - z) - x| <= s / 2`` over the range, channels_last kept, 0 exact."""
    x = torch.cat([torch.randn(1, 4, 5, 6) * 3 + 1, torch.zeros(1, 4, 5, 6)]).contiguous(
        memory_format=torch.channels_last)
    for levels in (255, 127):
        q, s, z = quantize_uint8(x, levels)
        assert q.dtype == torch.uint8 and q.is_contiguous(memory_format=torch.channels_last)
        back = s * (q.float() - z)
        assert ((back - x).abs() <= s / 2 * (1 + 1e-5)).all()
        assert (back[1] == 0).all()


@pytest.mark.parametrize("name", ["lenet5", "resnet_small"])
def test_int8_float_parts_model_converts_every_float_layer(name):
    """With ``float_parts="int8"`` the stem / conv1, the shortcuts and the classifier are int8 (the report says so),
    no plain float conv or linear layer is left, and the logits are finite and close to the fp32 conversion's."""
    torch.manual_seed(12)
    opts = dict(in_chans=1, stem_stride=2) if name == "resnet_small" else {}
    sim = _randomise_bns(build(name, num_classes=10, x_quant="ls-1", w_quant="ls-1", **opts), 13)
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        fp32 = to_bitwise(sim)(x)
        fast, report = to_bitwise(sim, float_parts="int8", return_report=True)
        y = fast(x)
    assert report.float_parts and all(v.startswith("int8") for v in report.float_parts.values())
    assert ("fc" if name == "resnet_small" else "fc2") in report.float_parts
    assert not any(type(m) in (nn.Linear, nn.Conv2d) for m in fast.modules())
    assert isinstance(fast.conv1 if name == "lenet5" else fast.stem[0], Int8Conv2d)
    assert torch.isfinite(y).all()
    _close_to(y, fp32, rtol=0.3)  # loose: binary layers after an int8 stem may flip a few signs


def test_int8_float_parts_keep_the_top1_of_lenet5():
    """LeNet-5 (int8 conv1, fc1, fc2 around the binary conv2): a small batch gets the fp32 conversion's top-1.
    (No elementwise bound holds through a binary layer, whose signs may flip; the trained checkpoints' accuracy
    with and without the option is measured in the benchmark report.)"""
    torch.manual_seed(12)
    sim = _randomise_bns(build("lenet5", num_classes=10, x_quant="ls-1", w_quant="ls-1"), 13)
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        want = to_bitwise(sim)(x).argmax(1)
        got = to_bitwise(sim, float_parts="int8")(x).argmax(1)
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------------------- errors


def test_unknown_float_parts_is_a_config_error_naming_the_choices():
    sim = build("lenet5", x_quant="ls-1", w_quant="ls-1")
    with pytest.raises(ConfigError, match=r"float_parts must be one of 'fp32', 'int8', got 'int4'"):
        to_bitwise(sim, float_parts="int4")
    with pytest.raises(ConfigError, match=r"float_parts='int8' needs fuse=True"):
        to_bitwise(sim, float_parts="int8", fuse=False)
