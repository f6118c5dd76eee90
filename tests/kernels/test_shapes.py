"""The shape rules of the kernels, stated once (:mod:`lsqbq.kernels.shapes`): the same bad inputs are refused by
every back end (the pure-torch reference through the shared check, the C++ ones by their ``TORCH_CHECK``s) with
the same words, and the reference back end raises :class:`InputError` naming the sizes."""
from __future__ import annotations

import pytest
import torch

from lsqbq.errors import InputError
from lsqbq.kernels import available_backends, encode, ops, pack_weight, shapes, xnor_conv2d
from lsqbq.kernels import reference as ref

BACKENDS = list(ops.BACKENDS)  # every back end the kernels know (the unavailable ones skip)


@pytest.fixture(params=BACKENDS)
def any_backend(request) -> str:
    if request.param not in available_backends():
        pytest.skip(f"kernel backend {request.param!r} not available on this machine")
    return request.param


def _weight(c_in: int, n: int = 8, kernel=(3, 3), planes: int = 1):
    g = torch.Generator().manual_seed(c_in)
    signs = torch.where(torch.rand(planes, n, c_in, *kernel, generator=g) < 0.5, -1.0, 1.0)
    return pack_weight(signs, torch.rand(n, planes, generator=g) + 0.1)


def _words(c_in: int, padding=(1, 1), planes: int = 1, hw=(6, 6), mask: bool = False):
    x = torch.randn(2, c_in, *hw, generator=torch.Generator().manual_seed(1))
    scales = torch.full((2, planes), 0.5)
    return encode(x, scales, mask=mask, padding=padding, backend="reference")


def _conv_64_words_256_weights(b):  # the case of the report: 64-channel words against 256-channel weights
    return xnor_conv2d(_words(64), _weight(256), (6, 6), padding=1, backend=b)


def _conv_words_of_another_padding(b):
    return xnor_conv2d(_words(64, padding=(0, 0)), _weight(64), (6, 6), padding=1, backend=b)


def _conv_mask_with_one_plane(b):
    return xnor_conv2d(_words(64), _weight(64), (6, 6), padding=1, mask=True, backend=b)


def _conv_with_81_taps(b):
    return xnor_conv2d(_words(64, padding=(4, 4), hw=(9, 9)), _weight(64, kernel=(9, 9)), (9, 9), padding=4, backend=b)


def _conv_empty_output(b):
    return xnor_conv2d(_words(64, padding=(0, 0), hw=(2, 2)), _weight(64), (2, 2), padding=0, backend=b)


def _layer_64_channels_256_weights(b):
    return ops.bitwise_conv2d(torch.randn(2, 64, 6, 6), _weight(256), None, 1, 1, 1, planes=1, fit=ops.FIT_GREEDY,
                              backend=b)


# (call, words every back end's message holds, the sizes the reference's message names)
CASES = {
    "conv-64-vs-256": (_conv_64_words_256_weights, "do not match the geometry (B, H + 2 ph, W + 2 pw, Cw) = (2, 8, 8, 4)",
                       "(1, 2, 8, 8, 1)"),
    "conv-padding": (_conv_words_of_another_padding, "do not match the geometry (B, H + 2 ph, W + 2 pw, Cw) = "
                     "(2, 8, 8, 1)", "(1, 2, 6, 6, 1)"),
    "conv-mask": (_conv_mask_with_one_plane, "ternary mask encoding needs 2 planes (sign, mask), got 1", "got 1"),
    "conv-81-taps": (_conv_with_81_taps, "more than 64 taps", "(9, 9) = 81"),
    "conv-empty": (_conv_empty_output, "empty output", "input (2, 2) is smaller than the kernel (3, 3)"),
    "layer-64-vs-256": (_layer_64_channels_256_weights, "bitwise_conv2d expects ", "got 64"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_back_end_refuses_the_same_inputs(any_backend, case):
    call, words, sizes = CASES[case]
    with pytest.raises(Exception) as e:  # noqa: PT011 (the class is the next test's subject)
        call(any_backend)
    assert words in str(e.value), str(e.value)
    if any_backend == "reference":
        assert isinstance(e.value, InputError) and sizes in str(e.value), str(e.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_back_end_raises_the_same_error_class(backend):
    if backend not in available_backends():
        pytest.skip(f"kernel backend {backend!r} not available on this machine")
    classes = set()
    for call, _, _ in CASES.values():
        try:
            call(backend)
        except Exception as e:  # noqa: BLE001 (collecting the class)
            classes.add(type(e))
    assert classes == {InputError}, classes


def test_reference_gemm_refuses_words_of_another_width():
    a = _words(64, padding=(0, 0), hw=(1, 1)).reshape(1, 2, 1)
    w = _weight(256, kernel=(1, 1))
    with pytest.raises(InputError, match=r"activation words \(1, 2, 1\) and weight words \(1, 8, 4\) must both hold "
                                         r"4 words per row for 256 values"):
        ref.xnor_gemm(a, w.rows[:, :, 0, :], 256)
    with pytest.raises(InputError, match="ternary mask encoding needs 2 planes"):
        ref.xnor_gemm(a, _weight(64, kernel=(1, 1)).rows[:, :, 0, :], 64, mask=True)


def test_output_size_and_words_per_row():
    for n, k, s, p, d in [(6, 3, 1, 1, 1), (7, 3, 2, 0, 1), (9, 5, 1, 2, 2), (224, 7, 2, 3, 1)]:
        expected = torch.nn.functional.conv2d(torch.zeros(1, 1, n, n), torch.zeros(1, 1, k, k), stride=s, padding=p,
                                              dilation=d).shape[-1]
        assert shapes.conv_output_size((n, n), (k, k), (s, s), (p, p), (d, d)) == (expected, expected)
    assert [shapes.words_per_row(c) for c in (1, 63, 64, 65, 256)] == [1, 1, 1, 2, 4]
