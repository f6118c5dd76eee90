"""Model builders, block equations, quantized-layer placement and the summary's counts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lsqbq import QuantConv2d
from lsqbq.models import build, list_models, summary
from lsqbq.models.resnet import ShortcutConv2d, XnorBlock

SMALL = {"resnet18": dict(width=4, stem="cifar"), "resnet_small": dict(width=4), "lenet5": {}}


def _input(name, batch=2):
    return torch.randn(batch, 1, 28, 28) if name != "resnet18" else torch.randn(batch, 1, 32, 32)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("xq, wq", [("fp", "fp"), ("ls-2", "ls-1")])
def test_forward_backward_and_state_round_trip(name, xq, wq):
    torch.manual_seed(0)
    m = build(name, num_classes=7, in_chans=1, x_quant=xq, w_quant=wq, **SMALL[name])
    x = _input(name)
    out = m(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    m2 = build(name, num_classes=7, in_chans=1, x_quant=xq, w_quant=wq, **SMALL[name])
    m2.load_state_dict(m.state_dict())
    m.eval(), m2.eval()
    torch.testing.assert_close(m(x), m2(x), rtol=0, atol=0)


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="resnet18"):
        build("resnet1000")


def test_quantized_layers_are_exactly_the_block_3x3_convs():
    m = build("resnet18", x_quant="ls-2", w_quant="ls-1", width=8, num_classes=10)
    quant = [n for n, mod in m.named_modules() if isinstance(mod, QuantConv2d)]
    assert len(quant) == 16 and all(n.startswith("stages.") and n.endswith(("conv1", "conv2")) for n in quant)
    for n, mod in m.named_modules():
        if isinstance(mod, QuantConv2d):
            assert mod.x_scheme.name == "ls-2" and mod.w_scheme.name == "ls-1" and mod.kernel_size == (3, 3)
            assert mod.bias is not None  # xnor block convs carry a bias
    assert type(m.stem[0]) is nn.Conv2d and type(m.fc) is nn.Linear and m.stem[0].kernel_size == (7, 7)
    shortcuts = [mod for n, mod in m.named_modules() if n.endswith("shortcut.0")]
    assert len(shortcuts) == 3 and all(type(s) is ShortcutConv2d and s.kernel_size == (1, 1) for s in shortcuts)
    assert ShortcutConv2d.__mro__[1] is nn.Conv2d  # a full-precision conv, not a QuantConv2d


def test_block_defaults_follow_precision():
    assert build("resnet_small", width=4).block_type == "regular"
    assert build("resnet_small", width=4, x_quant="fp", w_quant="ls-1").block_type == "xnor"


@pytest.mark.parametrize("double", [True, False])
@pytest.mark.parametrize("act", ["relu", "prelu"])
def test_xnor_block_equations(double, act):
    torch.manual_seed(0)
    blk = XnorBlock(4, 8, stride=2, nonlinearity=act, double_shortcut=double, x_quant="ls-1", w_quant="ls-1",
                    clamp=2.0).train()
    x = torch.randn(3, 4, 6, 6)
    c1, c2, sc = blk.conv1, blk.conv2, blk.shortcut
    if double:  # out1 = phi(conv1(bn1 x)) + sc(x); out = phi(conv2(bn2 out1)) + out1
        out1 = blk.act1(c1(blk.bn1(x))) + sc(x)
        ref = blk.act2(c2(blk.bn2(out1))) + out1
    else:       # out = phi(conv2(bn2 phi(conv1(bn1 x))) + sc(x))
        ref = blk.act2(c2(blk.bn2(blk.act1(c1(blk.bn1(x))))) + sc(x))
    torch.testing.assert_close(blk(x), ref)
    # the quantized conv really sees sign-quantized activations: conv of (v * sign(clamp(x))) per sample
    z = blk.bn1(x).clamp(-2, 2)
    v = z.abs().mean(dim=(1, 2, 3), keepdim=True)
    xq = v * torch.where(z >= 0, 1.0, -1.0)
    w = c1.weight
    wq = w.abs().mean(dim=(1, 2, 3), keepdim=True) * torch.where(w >= 0, 1.0, -1.0)
    ref1 = torch.nn.functional.conv2d(xq, wq, c1.bias, stride=2, padding=1)
    torch.testing.assert_close(c1(blk.bn1(x)), ref1, rtol=1e-5, atol=1e-5)


def test_stems_resolution():
    assert build("resnet18", num_classes=10)(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    m = build("resnet_small", width=4, in_chans=1, stem_stride=2)
    assert m.stem(torch.randn(1, 1, 28, 28)).shape == (1, 4, 14, 14)
    m = build("resnet18", width=4, stem="imagenet")
    assert m.stem(torch.randn(1, 3, 224, 224)).shape == (1, 4, 56, 56)


def _brute_counts(model, shape):
    """Independent count: MACs from output sizes via a manual walk with hooks on every conv/linear."""
    macs = {}
    def hook(mod, inp, out):
        per = mod.weight[0].numel()
        macs[mod] = out[0].numel() * per
    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()(torch.zeros(1, *shape))
    for h in hs:
        h.remove()
    return macs


@pytest.mark.parametrize("xq, wq, kx, kw", [("fp", "fp", 0, 0), ("ls-2", "ls-1", 2, 1), ("fp", "ls-1", 0, 1),
                                             ("gf-3", "ls-2", 3, 2)])
def test_summary_counts(xq, wq, kx, kw):
    m = build("resnet_small", width=8, in_chans=1, x_quant=xq, w_quant=wq)
    s = summary(m, (1, 28, 28))
    total_params = sum(p.numel() for p in m.parameters())
    quant = [mod for mod in m.modules() if isinstance(mod, QuantConv2d)]
    n_bin_w = sum(q.weight.numel() for q in quant) if kw else 0
    assert s.params["binary"] == n_bin_w
    assert s.params["fp32"] + s.params["binary"] == total_params + (sum(q.weight.shape[0] for q in quant) * kw
                                                                    - 0)
    macs = _brute_counts(m, (1, 28, 28))
    q_macs = sum(v for mod, v in macs.items() if isinstance(mod, QuantConv2d))
    assert sum(s.macs.values()) == sum(macs.values())
    if kx and kw:
        assert s.macs["binary"] == q_macs and s.binary_ops == q_macs * kx * kw
    elif kw:
        assert s.macs["fp_x_binary"] == q_macs and s.binary_ops == 0
    else:
        assert s.macs["fp32"] == sum(macs.values())
    assert "params" in str(s)


def test_resnet18_macs_match_the_reference_figure():
    # ResNet-18 at 224x224: 1.814 GMACs (the widely quoted 1.8 G figure), 11.69 M parameters
    s = summary(build("resnet18"), (3, 224, 224))
    assert s.params["fp32"] == 11_689_512
    assert abs(sum(s.macs.values()) - 1.814e9) < 0.01e9


def test_narrow_strided_shortcut_trains_on_channels_last_batches():
    """Data loaders hand channels_last batches to the model; a width-4 ResNet's strided 1x1 shortcut (4 -> 8
    channels) must train on them (oneDNN's weight gradient for that case corrupts the heap on AVX2-only CPUs) and
    give the same output and gradients as the plain NCHW convolution."""
    torch.manual_seed(0)
    conv = ShortcutConv2d(4, 8, 1, stride=2, bias=False)
    ref = torch.nn.Conv2d(4, 8, 1, stride=2, bias=False)
    ref.load_state_dict(conv.state_dict())
    for _ in range(20):
        x = torch.randn(64, 4, 14, 14)
        xa = x.to(memory_format=torch.channels_last).requires_grad_()
        xb = x.clone().requires_grad_()
        ya, yb = conv(xa), ref(xb)
        g = torch.randn_like(yb)
        ya.backward(g)
        yb.backward(g)
        assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad)
        assert torch.equal(conv.weight.grad, ref.weight.grad)
    net = build("resnet_small", width=4, layers=[1, 1], in_chans=1, stem_stride=2, x_quant="fp", w_quant="fp")
    assert any(isinstance(m, ShortcutConv2d) for m in net.modules())
