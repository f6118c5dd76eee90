"""The pure-torch reference against independent arithmetic: Python bit counts, float matmul / conv of the signs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lsqbq.kernels import pack_weight, reference as ref
from lsqbq.quantizers import foldable_bits, sign


def test_popcount64_matches_python():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-(2**63), 2**63 - 1, (500,), dtype=torch.int64, generator=gen)
    x = torch.cat([x, torch.tensor([0, -1, 1, -(2**63), 2**63 - 1])])
    want = [bin(v & (2**64 - 1)).count("1") for v in x.tolist()]
    assert ref.popcount64(x).tolist() == want


@pytest.mark.parametrize("k", [1, 63, 64, 65, 130])
def test_pack_roundtrip_and_sign_of_zero(k):
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(3, k, generator=gen)
    x[0, 0], x[1, -1] = 0.0, -0.0
    words = ref.pack_signs(x)
    assert words.shape == (3, (k + 63) // 64)
    assert torch.equal(ref.unpack_signs(words, k), sign(x))  # sign(0) = sign(-0.0) = +1
    tail = ref.unpack_signs(words, words.shape[-1] * 64)[:, k:]
    assert bool((tail == 1).all())  # tail bits are 0 (+1)
    assert int(ref.pack_signs(torch.tensor([[-0.0] * 64]))[0, 0]) == 0


@pytest.mark.parametrize("k", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("pa,pw", [(1, 1), (2, 1), (2, 2)])
def test_gemm_equals_float_matmul_of_signs(k, pa, pw, pm1):
    gen = torch.Generator().manual_seed(7 * k + pa)
    a, w = pm1(pa, 5, k, gen=gen), pm1(pw, 9, k, gen=gen)
    d = ref.xnor_gemm(ref.pack_signs(a), ref.pack_signs(w), k)
    assert d.dtype == torch.int32 and d.shape == (pa, pw, 5, 9)
    assert torch.equal(d.double(), torch.einsum("imk,jnk->ijmn", a.double(), w.double()))


def test_ternary_mask_gemm_equals_float_matmul(pm1):
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(-1, 2, (6, 70), generator=gen).float()  # {-1, 0, 1}
    w = pm1(2, 11, 70, gen=gen)
    a = torch.stack([ref.pack_signs(torch.where(t < 0, -1.0, 1.0)), ref.pack_signs(torch.where(t != 0, -1.0, 1.0))])
    d = ref.xnor_gemm(a, ref.pack_signs(w), 70, mask=True)
    assert torch.equal(d[0].double(), torch.einsum("mk,jnk->jmn", t.double(), w.double()))


@pytest.mark.parametrize("stride,padding,dilation,kernel", [(1, 1, 1, 3), (2, 1, 1, 3), (2, 2, 1, 3), (1, 0, 1, 1),
                                                            (2, 0, 1, 1), (1, 2, 2, 3)])
def test_conv_equals_float_conv_of_planes(stride, padding, dilation, kernel, pm1):
    gen = torch.Generator().manual_seed(stride * 10 + padding)
    B, C, H, W, N = 2, 67, 7, 6, 5
    x = torch.randn(B, C, H, W, generator=gen)
    scales = torch.rand(B, 2, generator=gen)
    planes = foldable_bits(x.reshape(B, -1), scales).reshape(2, B, C, H, W)
    wpl = pm1(2, N, C, kernel, kernel, gen=gen)
    a = ref.encode(x, scales, padding=(padding, padding))
    d = ref.xnor_conv2d(a, pack_weight(wpl).rows, C, (H, W), (kernel, kernel), (stride,) * 2, (padding,) * 2,
                        (dilation,) * 2)
    want = torch.stack([torch.stack([F.conv2d(planes[i].double(), wpl[j].double(), stride=stride, padding=padding,
                                              dilation=dilation) for j in range(2)]) for i in range(2)])
    assert torch.equal(d.double(), want.permute(0, 1, 2, 4, 5, 3))  # zero padding of the quantized values


def test_encode_matches_foldable_bits_with_clamp_and_ternary():
    gen = torch.Generator().manual_seed(5)
    x = 3 * torch.randn(2, 70, 3, 4, generator=gen)
    v = torch.rand(2, 1, generator=gen).expand(2, 2).contiguous()
    a = ref.encode(x, v, clamp=2.0, mask=True)
    planes = foldable_bits(x.clamp(-2, 2).reshape(2, -1), v).reshape(2, 2, 70, 3, 4)
    t = (planes[0] + planes[1]) / 2  # {-1, 0, 1}
    s = ref.unpack_signs(a[0], 70).permute(0, 3, 1, 2)
    m = ref.unpack_signs(a[1], 70).permute(0, 3, 1, 2)
    assert torch.equal(torch.where(m < 0, s, 0.0), t)


def test_conv_refuses_activation_words_narrower_than_the_weights(pm1):
    """64-channel words against 256-channel weights (the shared rule of :mod:`lsqbq.kernels.shapes`, as the C++
    ops): an InputError naming both widths, not a broadcast result."""
    from lsqbq.errors import InputError

    gen = torch.Generator().manual_seed(3)
    w = pack_weight(pm1(1, 4, 256, 3, 3, gen=gen))
    a = ref.encode(torch.randn(2, 64, 5, 5, generator=gen), torch.full((2, 1), 0.5), padding=(1, 1))
    with pytest.raises(InputError, match=r"activation words \(1, 2, 7, 7, 1\) do not match the geometry "
                                         r"\(B, H \+ 2 ph, W \+ 2 pw, Cw\) = \(2, 7, 7, 4\) for 256 input channels"):
        ref.xnor_conv2d(a, w.rows, 256, (5, 5), (3, 3), padding=(1, 1))
    with pytest.raises(InputError, match=r"weight words \(1, 4, 9, 4\) expected \(P_w, N, 9, 1\) for 64 input"):
        ref.xnor_conv2d(a, w.rows, 64, (5, 5), (3, 3), padding=(1, 1))
    with pytest.raises(InputError, match=r"bitwise_conv2d expects 193 to 256 input channels .* got 64"):
        ref.bitwise_conv2d(torch.randn(2, 64, 5, 5), w.rows, w.scales_nk(), None, (3, 3), (1, 1), (1, 1), (1, 1),
                           planes=1, fit=ref.FIT_GREEDY)
