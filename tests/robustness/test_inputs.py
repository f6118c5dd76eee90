"""Tensors given to quantizers and layers: NaN/Inf, empty, constant, wrong shape or dtype, invalid scales,
values near the dtype's maximum. Each is a result that holds or an InputError naming the row or size."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import lsqbq
from lsqbq.errors import InputError, InputTypeError, LsqbqError, SchemeError
from lsqbq.layers import QuantConv2d, QuantLinear

SCHEMES = ["ls-1", "ls-2", "ls-T", "gf-2", "gf-4"]
K = {"ls-1": 1, "ls-2": 2, "ls-T": 2, "gf-2": 2, "gf-3": 3, "gf-4": 4, "gf-8": 8}


# ------------------------------------------------------------------------------------------ quantizers


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_non_finite_input_names_the_row(scheme, value):
    x = torch.randn(4, 16)
    x[2, 5] = value
    with pytest.raises(InputError) as e:
        lsqbq.fit(x, scheme)
    msg = str(e.value)
    assert "row 2" in msg and ("NaN" if value != value else "Inf") in msg and scheme in msg


def test_non_finite_input_with_given_scales_names_the_row():
    x = torch.randn(3, 8)
    x[1, 0] = float("nan")
    with pytest.raises(InputError, match="row 1"):
        lsqbq.quantize(x, "ls-2", torch.tensor([1.0, 0.5]))


@pytest.mark.parametrize("shape", [(16,), (2, 3, 4), ()], ids=["1-D", "3-D", "0-D"])
def test_input_that_is_not_2d_names_the_shape(shape):
    with pytest.raises(InputError) as e:
        lsqbq.quantize(torch.zeros(shape), "ls-2")
    assert str(tuple(shape)) in str(e.value)


def test_empty_rows_name_the_shape():
    with pytest.raises(InputError, match=r"\(2, 0\)"):
        lsqbq.fit(torch.zeros(2, 0), "ls-1")


def test_zero_rows_are_an_empty_result():
    assert lsqbq.fit(torch.zeros(0, 5), "ls-2").shape == (0, 2)
    assert lsqbq.quantize(torch.zeros(0, 5), "ls-2").shape == (0, 5)


@pytest.mark.parametrize("x,name", [
    (torch.zeros(2, 5, dtype=torch.int32), "torch.int32"),
    (torch.zeros(2, 5, dtype=torch.int64), "torch.int64"),
    (torch.zeros(2, 5, dtype=torch.bool), "torch.bool"),
    (torch.zeros(2, 5, dtype=torch.complex64), "torch.complex64"),
    ([[1.0, 2.0]], "list"),
    (np.zeros((2, 5), np.float32), "ndarray"),
], ids=["int32", "int64", "bool", "complex64", "list", "ndarray"])
def test_wrong_type_or_dtype_is_an_input_type_error(x, name):
    with pytest.raises(InputTypeError) as e:
        lsqbq.fit(x, "ls-1")
    assert isinstance(e.value, TypeError) and name in str(e.value)


@pytest.mark.parametrize("fill", [0.0, -2.5], ids=["zeros", "constant"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_constant_and_zero_rows_are_reproduced_exactly(scheme, fill):
    x = torch.full((3, 10), fill)
    xq = lsqbq.quantize(x, scheme)
    assert torch.isfinite(xq).all()
    torch.testing.assert_close(xq, x)


# invalid given scales: (scheme, scales of rows 0..2, what the message says); row 1 is the offending one
BAD_SCALES = {
    "ls-1-negative": ("ls-1", [[1.0], [-0.5], [1.0]], "negative"),
    "ls-2-negative-v2": ("ls-2", [[1.0, 0.5], [1.0, -0.5], [1.0, 0.0]], "negative"),
    "ls-2-v2-above-v1": ("ls-2", [[1.0, 0.5], [0.5, 1.0], [1.0, 0.0]], "non-increasing"),
    "ls-T-unequal": ("ls-T", [[1.0, 1.0], [1.0, 0.5], [2.0, 2.0]], "unequal"),
    "gf-2-negative": ("gf-2", [[1.0, 0.5], [-1.0, 0.5], [1.0, 0.0]], "negative"),
    "ls-2-nan": ("ls-2", [[1.0, 0.5], [float("nan"), 0.5], [1.0, 0.0]], "NaN"),
    "ls-1-inf": ("ls-1", [[1.0], [float("inf")], [1.0]], "Inf"),
}


@pytest.mark.parametrize("case", list(BAD_SCALES))
def test_invalid_given_scales_name_the_row(case):
    scheme, scales, why = BAD_SCALES[case]
    with pytest.raises(InputError) as e:
        lsqbq.quantize(torch.randn(3, 8), scheme, torch.tensor(scales))
    msg = str(e.value)
    assert "row 1" in msg and why in msg and scheme in msg, msg


@pytest.mark.parametrize("shape", [(3, 3), (2, 2), (3, 2, 1)], ids=["wrong-k", "wrong-rows", "3-D"])
def test_given_scales_of_the_wrong_shape_name_both_shapes(shape):
    with pytest.raises(InputError) as e:
        lsqbq.quantize(torch.randn(3, 8), "ls-2", torch.ones(shape))
    msg = str(e.value)
    assert str(tuple(shape)) in msg and "(3, 2)" in msg


def test_fitted_and_broadcast_scales_are_accepted():
    x = torch.randn(3, 8)
    v = lsqbq.fit(x, "ls-2")
    torch.testing.assert_close(lsqbq.quantize(x, "ls-2", v), lsqbq.quantize(x, "ls-2"))
    assert lsqbq.quantize(x, "ls-2", torch.tensor([1.0, 0.25])).shape == (3, 8)


F32_MAX = torch.finfo(torch.float32).max
HUGE_ROWS = {
    "all-max": [F32_MAX] * 8,
    "alternating-max": [F32_MAX, -F32_MAX] * 4,
    "max-and-small": [F32_MAX, 1.0, -F32_MAX, 2.0, F32_MAX, -3.0, 0.5, -F32_MAX],
    "mixed-magnitudes": [F32_MAX, F32_MAX / 2, F32_MAX / 4, -F32_MAX / 8, F32_MAX, -F32_MAX, 1e30, -1e-30],
}


@pytest.mark.parametrize("row", list(HUGE_ROWS))
@pytest.mark.parametrize("scheme", ["ls-1", "ls-2", "ls-T", "gf-2", "gf-3", "gf-8"])
def test_values_near_float32_max_never_give_inf(scheme, row):
    """Finite scales and output, or an InputError naming the row: never a silent inf/NaN."""
    x = torch.stack([torch.randn(8), torch.tensor(HUGE_ROWS[row])])
    try:
        v, xq = lsqbq.fit(x, scheme), lsqbq.quantize(x, scheme)
    except InputError as e:
        assert "row 1" in str(e) and "float32" in str(e)
        return
    assert v.shape == (2, K[scheme]) and torch.isfinite(v).all() and torch.isfinite(xq).all()


@pytest.mark.parametrize("scheme,dtype", [
    ("ls-2", torch.float16), ("gf-2", torch.float16), ("gf-4", torch.float16),
    ("ls-2", torch.bfloat16), ("gf-2", torch.bfloat16), ("gf-4", torch.bfloat16),
])
def test_values_near_half_precision_max_never_give_inf(scheme, dtype):
    big = torch.finfo(dtype).max
    x = torch.tensor([[big, -big, big, big / 3, -big, 1.0, big, -big], [1.0] * 8], dtype=dtype)
    try:
        xq = lsqbq.quantize(x, scheme)
    except InputError as e:
        assert "row 0" in str(e)
        return
    assert xq.dtype == dtype and torch.isfinite(xq).all()


@pytest.mark.parametrize("name", ["ls-3", "gf-0", "GF-2", "", "ls 2", 3])
def test_unknown_scheme_lists_the_valid_ones(name):
    with pytest.raises(SchemeError) as e:
        lsqbq.fit(torch.randn(2, 4), name)
    assert isinstance(e.value, ValueError) and repr(name) in str(e.value)
    assert e.value.exit_code == 2


# --------------------------------------------------------------------------------------------- layers


def _conv(**kw):
    return QuantConv2d(3, 4, 3, padding=1, **{"x_quant": "ls-2", "w_quant": "ls-2", **kw})


def test_conv_batch_of_zero_is_an_empty_output():
    y = _conv()(torch.zeros(0, 3, 8, 8))
    assert y.shape == (0, 4, 8, 8)


def test_linear_batch_of_zero_is_an_empty_output():
    y = QuantLinear(16, 4, x_quant="ls-1", w_quant="ls-1")(torch.zeros(0, 16))
    assert y.shape == (0, 4)


def test_conv_wrong_channel_count_names_the_layer_and_both_sizes():
    with pytest.raises(InputError) as e:
        _conv()(torch.zeros(2, 5, 8, 8))
    assert str(e.value) == "QuantConv2d(3->4): expected 3 input channels, got 5 (input shape (2, 5, 8, 8))"


def test_linear_wrong_feature_count_names_the_layer_and_both_sizes():
    with pytest.raises(InputError) as e:
        QuantLinear(16, 4, x_quant="ls-1", w_quant="ls-1")(torch.zeros(2, 20))
    assert str(e.value) == "QuantLinear(16->4): expected 16 input features, got 20 (input shape (2, 20))"


def test_fp_layers_speak_the_same_errors():
    """Full-precision layers (the fp stem, the classifier) check their input the same way."""
    with pytest.raises(InputError, match=r"^QuantConv2d\(3->4\): expected 3 input channels, got 1 "):
        QuantConv2d(3, 4, 3)(torch.zeros(2, 1, 8, 8))
    with pytest.raises(InputError, match=r"^QuantLinear\(16->4\): expected 16 input features, got 8 "):
        QuantLinear(16, 4)(torch.zeros(2, 3, 8))


def test_layer_errors_name_the_layer_in_its_model():
    from lsqbq.layers import name_layers
    from lsqbq.models import build

    model = build("resnet_small", x_quant="ls-2", w_quant="ls-1", num_classes=10).eval()
    name_layers(model)
    with pytest.raises(InputError) as e:
        model.stages[1][0].conv2(torch.zeros(1, 16, 8, 8))
    assert str(e.value) == ("QuantConv2d(32->32) 'stages.1.0.conv2': expected 32 input channels, got 16 "
                            "(input shape (1, 16, 8, 8))")
    fresh = build("resnet_small", x_quant="ls-2", w_quant="ls-1", num_classes=10)
    fresh.load_state_dict(model.state_dict())  # loading names the layers too
    with pytest.raises(InputError, match=r"^QuantConv2d\(64->64\) 'stages.2.0.conv2': expected 64 input channels, "
                                         r"got 63 "):
        fresh.stages[2][0].conv2(torch.zeros(2, 63, 4, 4))


def test_conv_input_smaller_than_the_kernel_names_the_layer():
    layer = QuantConv2d(3, 4, 5, padding=1, x_quant="ls-1", w_quant="ls-1")
    with pytest.raises(InputError, match=r"^QuantConv2d\(3->4\): input \(2, 9\) is smaller than the kernel \(5, 5\) "
                                         r"with padding \(1, 1\) and dilation \(1, 1\)"):
        layer(torch.zeros(1, 3, 2, 9))


@pytest.mark.parametrize("layer,shape", [("conv", (3, 8, 8)), ("conv", (1, 1, 3, 8, 8)), ("linear", (16,))])
def test_layer_input_of_the_wrong_rank_names_the_shape(layer, shape):
    mod = _conv() if layer == "conv" else QuantLinear(16, 4, x_quant="ls-1", w_quant="ls-1")
    with pytest.raises(InputError) as e:
        mod(torch.zeros(shape))
    dims = "(B, C, H, W)" if layer == "conv" else "(B, ..., F)"
    assert str(e.value).endswith(f"expected input of shape {dims}, got {tuple(shape)}")


def test_conv_integer_input_is_an_input_type_error():
    with pytest.raises(InputTypeError, match="int64"):
        _conv()(torch.zeros(1, 3, 8, 8, dtype=torch.int64))


def test_conv_nan_input_names_the_sample():
    x = torch.randn(3, 3, 8, 8)
    x[2, 1, 4, 4] = float("nan")
    with pytest.raises(InputError, match="row 2"):
        _conv()(x)


@pytest.mark.parametrize("kwargs,needle", [
    ({"clamp": -1.0}, "-1.0"), ({"clamp": float("inf")}, "inf"), ({"clamp": float("nan")}, "nan"),
    ({"momentum": 1.5}, "1.5"), ({"act_stats": "always"}, "always"), ({"x_quant": "ls-9"}, "ls-9"),
])
def test_invalid_layer_options_name_the_value(kwargs, needle):
    with pytest.raises(ValueError) as e:
        _conv(**kwargs)
    assert needle in str(e.value)


def test_eval_with_unrecorded_moving_average_names_the_mode():
    layer = _conv(act_stats="eval_only").eval()
    with pytest.raises((LsqbqError, RuntimeError)) as e:
        layer(torch.randn(1, 3, 8, 8))
    assert "eval_only" in str(e.value)


# ---------------------------------------------------------------------------------- bitwise inference


def _bitwise(layer):
    from lsqbq.kernels import to_bitwise

    return to_bitwise(layer, backend="reference")


def test_bitwise_conv_wrong_channel_count_names_the_layer_and_both_sizes():
    with pytest.raises(InputError) as e:
        _bitwise(_conv())(torch.randn(2, 5, 8, 8))
    assert str(e.value) == "BitwiseConv2d(3->4): expected 3 input channels, got 5 (input shape (2, 5, 8, 8))"


def test_bitwise_linear_wrong_feature_count_names_the_layer_and_both_sizes():
    with pytest.raises(InputError) as e:
        _bitwise(QuantLinear(16, 4, x_quant="ls-1", w_quant="ls-1"))(torch.randn(2, 20))
    assert str(e.value) == "BitwiseLinear(16->4): expected 16 input features, got 20 (input shape (2, 20))"


def test_bitwise_layer_errors_name_the_layer_in_its_model():
    model = torch.nn.Sequential(torch.nn.Identity(), _conv())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every quantized layer converts: no warning
        fast = _bitwise(model)
    with pytest.raises(InputError, match=r"^BitwiseConv2d\(3->4\) '1': expected 3 input channels, got 2 "):
        fast(torch.randn(1, 2, 8, 8))


def test_bitwise_conv_batch_of_zero_is_an_empty_output():
    assert _bitwise(_conv())(torch.randn(0, 3, 8, 8)).shape == (0, 4, 8, 8)


def test_bitwise_conv_wrong_rank_names_the_shape():
    with pytest.raises(InputError, match=r"\(3, 8, 8\)"):
        _bitwise(_conv())(torch.randn(3, 8, 8))


def test_bitwise_conv_integer_input_is_an_input_type_error():
    with pytest.raises(InputTypeError, match="int64"):
        _bitwise(_conv())(torch.zeros(1, 3, 8, 8, dtype=torch.int64))
