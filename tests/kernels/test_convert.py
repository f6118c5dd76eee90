"""``to_bitwise``: converted models equal the simulated ones (logits within float rounding, integer dots exactly)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lsqbq
from lsqbq.kernels import BitwiseConv2d, BitwiseLinear, to_bitwise
from lsqbq.quantizers import foldable_bits

PAIRS = [("ls-1", "ls-1"), ("ls-2", "ls-1"), ("ls-2", "ls-2"), ("ls-T", "ls-1"), ("ls-T", "ls-T"), ("gf-2", "gf-2"),
         ("gf-3", "ls-1")]


def _cnn(xq: str, wq: str, act_stats: str = "off") -> nn.Module:
    q = dict(x_quant=xq, w_quant=wq, act_stats=act_stats)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16),  # full-precision stem stays as it is
        lsqbq.QuantConv2d(16, 70, 3, stride=2, padding=1, clamp=2.0, **q), nn.BatchNorm2d(70), nn.ReLU(),
        lsqbq.QuantConv2d(70, 40, 3, padding=1, bias=False, **q), nn.BatchNorm2d(40), nn.PReLU(),
        lsqbq.QuantConv2d(40, 33, 1, **q), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        lsqbq.QuantLinear(33, 10, **q), lsqbq.QuantLinear(10, 10, x_quant="fp", w_quant=wq))


def _randomise_bn(model: nn.Module, gen) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))


@pytest.mark.parametrize("xq,wq", PAIRS)
def test_logits_match_simulated(backend, xq, wq):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = _cnn(xq, wq).eval()
    _randomise_bn(net, gen)
    fast = to_bitwise(net, backend=backend)
    kinds = [type(m).__name__ for m in fast.modules()]
    assert kinds.count("BitwiseConv2d") == 3 and kinds.count("BitwiseLinear") == 1
    assert isinstance(fast[-1], lsqbq.QuantLinear)  # fp activations: left as it is
    for batch in (1, 3):
        x = torch.randn(batch, 3, 13, 11, generator=gen)
        with torch.no_grad():
            want, got = net(x), fast(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, (BitwiseConv2d, BitwiseLinear)) for m in net.modules())  # input not modified


@pytest.mark.parametrize("xq,wq", PAIRS)
def test_integer_dot_products_exact(backend, xq, wq):
    torch.manual_seed(1)
    layer = lsqbq.QuantConv2d(70, 9, 3, stride=2, padding=1, x_quant=xq, w_quant=wq, clamp=2.0).eval()
    bit = BitwiseConv2d(layer, backend=backend)
    x = 2 * torch.randn(2, 70, 7, 8)
    d = bit.dot_products(x)  # (P_a', P_w, B, OH, OW, N)
    _, sx = layer.quantize_input(x)
    _, sw = layer.quantized_weight()
    xc = x.clamp(-2, 2)
    xb = foldable_bits(xc.reshape(2, -1), sx).reshape(-1, *x.shape)
    if layer.x_scheme.ternary:
        xb = (xb[0:1] + xb[1:2]) / 2  # {-1, 0, 1}
    wb = foldable_bits(layer.weight.detach().reshape(9, -1), sw).reshape(-1, *layer.weight.shape)
    want = torch.stack([torch.stack([F.conv2d(xi.double(), wj.double(), stride=2, padding=1) for wj in wb])
                        for xi in xb]).permute(0, 1, 2, 4, 5, 3)
    assert torch.equal(d.double(), want)


def test_moving_average_scales(backend):
    torch.manual_seed(2)
    net = _cnn("ls-2", "ls-1", act_stats="eval_only")
    net.train()
    for _ in range(3):
        net(torch.randn(4, 3, 13, 11))
    net.eval()
    x = torch.randn(2, 3, 13, 11)
    with torch.no_grad():
        torch.testing.assert_close(to_bitwise(net, backend=backend)(x), net(x), rtol=1e-4, atol=1e-5)


def test_unconvertible_layers_stay():
    net = nn.Sequential(lsqbq.QuantConv2d(8, 8, 3, groups=2, x_quant="ls-1", w_quant="ls-1"),
                        lsqbq.QuantConv2d(8, 8, 3, x_quant="ls-1", w_quant="fp"), nn.ReLU())
    fast = to_bitwise(net)
    assert [type(m) for m in fast] == [type(m) for m in net]
    single = to_bitwise(lsqbq.QuantLinear(5, 3, x_quant="ls-1", w_quant="ls-2"))
    assert isinstance(single, BitwiseLinear)


# ---------------------------------------------------------------- bad input and scale modes
from lsqbq.errors import InputError, InputTypeError  # noqa: E402


def _conv(padding=1, act_stats="off"):
    torch.manual_seed(0)
    return lsqbq.QuantConv2d(8, 16, 3, padding=padding, x_quant="ls-2", w_quant="ls-1", act_stats=act_stats).eval()


@pytest.mark.parametrize("shape,needle", [((2, 7, 6, 6), "expected 8 input channels, got 7"),
                                          ((8, 6, 6), "(B, C, H, W)"),
                                          ((2, 8, 6, 6, 1), "(B, C, H, W)")])
def test_bitwise_conv_rejects_wrong_shapes_naming_sizes(shape, needle):
    with pytest.raises(InputError) as e:
        to_bitwise(_conv(), backend="reference")(torch.randn(*shape))
    assert needle in str(e.value) and str(tuple(shape)) in str(e.value)


def test_bitwise_conv_rejects_inputs_smaller_than_the_kernel():
    with pytest.raises(InputError, match=r"input \(2, 2\) is smaller than the kernel \(3, 3\)"):
        to_bitwise(_conv(padding=0), backend="reference")(torch.randn(1, 8, 2, 2))


def test_bitwise_linear_rejects_a_wrong_feature_count_and_integer_input():
    lin = lsqbq.QuantLinear(12, 5, x_quant="ls-1", w_quant="ls-1").eval()
    b = to_bitwise(lin, backend="reference")
    with pytest.raises(InputError, match="expected 12 input features, got 11"):
        b(torch.randn(3, 11))
    with pytest.raises(InputTypeError, match="floating-point"):
        b(torch.ones(3, 12, dtype=torch.int64))


def test_bitwise_layers_give_the_correct_result_for_batch0_float64_and_strided_input():
    layer = _conv()
    b = to_bitwise(layer, backend="reference")
    assert b(torch.randn(0, 8, 6, 6)).shape == (0, 16, 6, 6)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(b(x.double()), layer(x), rtol=1e-5, atol=1e-5)
        xt = x.transpose(2, 3)  # non-contiguous
        torch.testing.assert_close(b(xt), layer(xt), rtol=1e-5, atol=1e-5)
    lin = lsqbq.QuantLinear(12, 5, x_quant="ls-1", w_quant="ls-1").eval()
    assert to_bitwise(lin, backend="reference")(torch.randn(0, 12)).shape == (0, 5)


def test_scale_modes_fitted_and_stored():
    layer = _conv(act_stats="eval_only")
    with pytest.raises(ValueError, match="no moving averages"):
        to_bitwise(layer, backend="reference")  # auto follows act_stats: stored, but none recorded
    layer.train()
    with torch.no_grad():
        for _ in range(3):
            layer(torch.randn(4, 8, 6, 6))
    layer.eval()
    x = torch.randn(2, 8, 6, 6)
    stored = to_bitwise(layer, backend="reference")
    fitted = to_bitwise(layer, backend="reference", scales="fitted")
    assert (stored.scale_mode, fitted.scale_mode) == ("stored", "fitted")
    with torch.no_grad():
        torch.testing.assert_close(stored(x), layer(x), rtol=1e-5, atol=1e-5)  # eval uses the moving average
        layer.act_stats = "off"  # the simulated layer fitting per sample
        torch.testing.assert_close(fitted(x), layer(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="scales must be one of"):
        to_bitwise(layer, scales="ema")


# ------------------------------------------------------------------ report of simulated layers, inference mode
import warnings  # noqa: E402

from lsqbq.errors import InputError as _InputError  # noqa: E402
from lsqbq.kernels import ConversionReport, SimulatedLayersWarning, available_backends  # noqa: E402


def _reflect(layer: nn.Module) -> nn.Module:
    layer.padding_mode = "reflect"  # as nn.Conv2d(padding_mode="reflect"); the layer's constructor offers zeros only
    return layer


def _mixed() -> nn.Module:
    q = dict(x_quant="ls-1", w_quant="ls-1")
    return nn.Sequential(
        lsqbq.QuantConv2d(8, 8, 3, padding=1, **q),                       # 0 converts
        lsqbq.QuantConv2d(8, 8, 3, padding="same", **q),                  # 1 string padding
        lsqbq.QuantConv2d(8, 8, 9, padding=4, **q),                       # 2 81 taps
        lsqbq.QuantConv2d(8, 8, 3, padding=1, groups=2, **q),             # 3 grouped
        _reflect(lsqbq.QuantConv2d(8, 8, 3, padding=1, **q)),           # 4 reflect padding
        lsqbq.QuantConv2d(8, 8, 3, padding=1, x_quant="fp", w_quant="ls-1"),  # 5 fp activations
        lsqbq.QuantConv2d(8, 8, 1, dtype=torch.float64, **q),              # 6 float64
        lsqbq.QuantConv2d(8, 8, 1),                                        # 7 a float layer: not reported
    ).eval()


def test_report_says_which_layers_stay_simulated_and_why():
    net = _mixed()
    with pytest.warns(SimulatedLayersWarning) as caught:
        fast, report = to_bitwise(net, backend="reference", return_report=True)
    assert isinstance(report, ConversionReport) and fast.bitwise_report is report
    assert report.converted == ["0"]
    assert report.simulated == {
        "1": "padding='same' (the kernels take numeric padding)",
        "2": "9x9 kernel has 81 taps (the kernels take at most 64)",
        "3": "grouped convolution (groups=2)",
        "4": "padding_mode='reflect' (the kernels zero-pad)",
        "5": "activations are full precision (x_quant=fp, w_quant=ls-1)",
        "6": "weights are torch.float64 (the kernels take float32 weights)",
    }
    assert len(caught) == 1  # one warning listing them all
    msg = str(caught[0].message)
    assert msg.startswith("to_bitwise: 6 quantized layer(s) stay simulated (float): '1': padding='same'")
    assert all(f"{name!r}: {why}" in msg for name, why in report.simulated.items())
    assert [type(m) for m in fast] == [BitwiseConv2d] + [type(m) for m in net][1:]  # the others are unchanged
    assert str(report).splitlines()[0] == "1 layer(s) bitwise, 6 simulated"


def test_no_warning_when_every_quantized_layer_converts():
    net = _cnn("ls-2", "ls-1")[:-1]  # without the fp-activation classifier
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = to_bitwise(net, backend="reference")
    assert fast.bitwise_report.simulated == {} and fast.bitwise_report.converted == ["2", "5", "8", "11"]
    lone = to_bitwise(lsqbq.QuantLinear(5, 3, x_quant="ls-1", w_quant="ls-1"), backend="reference")
    assert lone.bitwise_report.converted == [""]


def test_to_bitwise_under_inference_mode():
    """Converting inside ``torch.inference_mode()`` (deep copy of inference tensors, cached weight scales
    without a version counter) works, and the result equals the simulated model in and out of the mode."""
    from lsqbq.models import build

    torch.manual_seed(0)
    net = build("resnet_small", x_quant="ls-2", w_quant="ls-1", stem_stride=2, in_chans=1, num_classes=10).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        want = net(x)
    with torch.inference_mode():
        fast = to_bitwise(net, backend="reference")
        inside = fast(x)
        simulated = net(x)
    torch.testing.assert_close(inside, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(simulated, want, rtol=0, atol=0)
    with torch.no_grad():  # it holds inference tensors: outside the mode, without autograd
        torch.testing.assert_close(fast(x), want, rtol=1e-4, atol=1e-4)


def test_wrong_channel_count_is_the_same_input_error_on_every_back_end():
    net = nn.Sequential(nn.Identity(), lsqbq.QuantConv2d(256, 8, 3, padding=1, x_quant="ls-1", w_quant="ls-1")).eval()
    for b in available_backends():
        with pytest.raises(_InputError) as e:
            to_bitwise(net, backend=b)(torch.randn(1, 64, 6, 6))
        assert str(e.value) == ("BitwiseConv2d(256->8) '1': expected 256 input channels, got 64 "
                                "(input shape (1, 64, 6, 6))"), b


def test_old_import_paths_still_work():
    from lsqbq.kernels import bitwise, convertibility, fused
    from lsqbq.kernels.convert import (BitwiseConv2d as C, BitwiseLinear as L, FusedRegularBlock as R,
                                       FusedXnorBlock as X, _fit_code, bn_affine, convertible as conv)

    assert (C, L, R, X) == (bitwise.BitwiseConv2d, bitwise.BitwiseLinear, fused.FusedRegularBlock,
                            fused.FusedXnorBlock)
    assert conv is convertibility.convertible and bn_affine is bitwise.bn_affine and callable(_fit_code)
