import pytest
import torch
from torch import nn

import lsqbq
from lsqbq import QuantConv2d, QuantLinear

PAIRS = [("fp", "ls-1"), ("ls-1", "ls-1"), ("ls-2", "ls-1"), ("ls-T", "ls-1"), ("gf-2", "ls-2"), ("gf-3", "ls-T"),
         ("ls-2", "fp")]


def test_fp_conv_equals_nn_conv2d_exactly():
    ref = nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=1, groups=1)
    q = QuantConv2d(3, 8, 3, stride=2, padding=1)
    q.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 11, 9, requires_grad=True)
    y_ref, y = ref(x), q(x)
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    assert torch.equal(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_ref, x, g)[0])


def test_fp_linear_equals_nn_linear_exactly():
    ref = nn.Linear(10, 4)
    q = QuantLinear(10, 4)
    q.load_state_dict(ref.state_dict())
    x = torch.randn(5, 10)
    assert torch.equal(q(x), ref(x))


@pytest.mark.parametrize("xq,wq", PAIRS)
def test_conv_matches_functional_definition(xq, wq):
    layer = QuantConv2d(4, 6, 3, padding=1, x_quant=xq, w_quant=wq, clamp=1.5)
    x = torch.randn(3, 4, 7, 7) * 2
    xc = x.clamp(-1.5, 1.5)
    xr = lsqbq.quantize(xc.reshape(3, -1), xq).reshape(x.shape)
    wr = lsqbq.quantize(layer.weight.detach().reshape(6, -1), wq).reshape(layer.weight.shape)
    want = nn.functional.conv2d(xr, wr, layer.bias, padding=1)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    layer.eval()
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("xq,wq", PAIRS)
def test_linear_matches_functional_definition_and_trains(xq, wq):
    layer = QuantLinear(12, 5, x_quant=xq, w_quant=wq)
    x = torch.randn(4, 12)
    want = nn.functional.linear(lsqbq.quantize(x, xq), lsqbq.quantize(layer.weight.detach(), wq), layer.bias)
    y = layer(x)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_clamp_blocks_gradient_outside():
    layer = QuantConv2d(1, 1, 1, x_quant="fp", w_quant="fp", clamp=1.0, bias=False)
    x = torch.tensor([-2.0, -0.5, 0.5, 2.0]).reshape(1, 1, 2, 2).requires_grad_()
    layer(x).sum().backward()
    w = layer.weight.item()
    assert x.grad.flatten().tolist() == pytest.approx([0.0, w, w, 0.0])


@pytest.mark.parametrize("mode", ["off", "eval_only", "train_and_eval"])
def test_activation_moving_average_modes(mode):
    layer = QuantLinear(8, 3, x_quant="ls-2", w_quant="ls-1", act_stats=mode, momentum=0.5)
    batches = [torch.randn(4, 8) * (i + 1) for i in range(3)]
    means = [lsqbq.fit(b, "ls-2").mean(0) for b in batches]
    for b in batches:
        layer(b)
    ema = means[0]  # recorded in every mode, so a model trained with `off` can be evaluated with stored scales
    for m in means[1:]:
        ema = 0.5 * ema + 0.5 * m
    torch.testing.assert_close(layer.x_scales_ema, ema)
    assert int(layer.x_ema_updates) == 3
    x = torch.randn(5, 8)
    layer.eval()
    _, scales = layer.quantize_input(x)
    if mode == "off":
        torch.testing.assert_close(scales, lsqbq.fit(x, "ls-2"))
    else:
        torch.testing.assert_close(scales, layer.x_scales_ema.expand(5, -1))
    # in training, train_and_eval quantizes with the (just updated) average, the others with the batch's own scales
    layer.train()
    _, scales = layer.quantize_input(x)
    if mode == "train_and_eval":
        torch.testing.assert_close(scales, layer.x_scales_ema.expand(5, -1))
    else:
        torch.testing.assert_close(scales, lsqbq.fit(x, "ls-2"))


@pytest.mark.parametrize("trained", ["off", "eval_only"])
def test_scale_mode_switches_and_restores(trained):
    from lsqbq.layers import scale_mode

    model = torch.nn.Sequential(QuantLinear(8, 6, x_quant="ls-2", w_quant="ls-1", act_stats=trained),
                                torch.nn.ReLU(), QuantLinear(6, 3, x_quant="ls-T", w_quant="ls-1", act_stats=trained))
    for _ in range(4):
        model(torch.randn(16, 8))
    model.eval()
    x = torch.randn(5, 8)
    h = torch.relu(model[0](x))
    with scale_mode(model, "stored"):
        _, s0 = model[0].quantize_input(x)
        _, s2 = model[2].quantize_input(h)
        torch.testing.assert_close(s0, model[0].x_scales_ema.expand(5, -1))
        torch.testing.assert_close(s2, model[2].x_scales_ema.expand(5, -1))
    with scale_mode(model, "fitted"):
        _, s0 = model[0].quantize_input(x)
        torch.testing.assert_close(s0, lsqbq.fit(x, "ls-2"))
    assert [m.act_stats for m in (model[0], model[2])] == [trained, trained]
    with pytest.raises(ValueError, match="scale mode"):
        with scale_mode(model, "ema"):
            pass


def test_stored_scale_mode_without_averages_names_the_layer():
    from lsqbq.layers import scale_mode

    model = torch.nn.Sequential(QuantLinear(4, 2, x_quant="ls-1", w_quant="ls-1"))
    with pytest.raises(ValueError, match="recorded no moving average .*'0'"):
        with scale_mode(model, "stored"):
            pass


def test_missing_moving_average_is_a_clear_error():
    layer = QuantLinear(4, 2, x_quant="ls-1", act_stats="eval_only").eval()
    with pytest.raises(RuntimeError, match="no moving-average activation scales"):
        layer(torch.randn(2, 4))


@pytest.mark.parametrize("cls,args,shape", [(QuantConv2d, (3, 4, 3), (2, 3, 6, 6)), (QuantLinear, (7, 3), (2, 7))])
def test_state_dict_round_trip(cls, args, shape):
    a = cls(*args, x_quant="ls-2", w_quant="ls-T", act_stats="eval_only", clamp=2.0)
    for _ in range(3):
        a(torch.randn(shape))
    b = cls(*args, x_quant="ls-2", w_quant="ls-T", act_stats="eval_only", clamp=2.0)
    b.load_state_dict(a.state_dict())
    for key in ("w_scales", "x_scales_ema", "x_ema_updates"):
        assert key in a.state_dict()
    a.eval(), b.eval()
    x = torch.randn(shape)
    assert torch.equal(a(x), b(x))
    torch.testing.assert_close(b.w_scales, lsqbq.fit(b.weight.detach().reshape(b.weight.shape[0], -1), "ls-T"))


def test_weight_scales_are_cached_and_invalidated_by_updates():
    layer = QuantConv2d(2, 3, 3, w_quant="ls-2").eval()
    x = torch.randn(1, 2, 5, 5)
    y1 = layer(x)
    cached = layer.w_scales.clone()
    assert torch.equal(layer(x), y1)
    with torch.no_grad():
        layer.weight.mul_(2.0)  # in-place update: the cache must notice
    torch.testing.assert_close(layer.w_scales * 0 + layer.quantized_weight()[1], cached * 2)
    torch.testing.assert_close(layer(x) - layer.bias.view(1, -1, 1, 1), 2 * (y1 - layer.bias.view(1, -1, 1, 1)))


def test_fp_checkpoint_loads_into_quantized_layer():
    ref = nn.Conv2d(3, 4, 3)
    q = QuantConv2d(3, 4, 3, x_quant="ls-1", w_quant="ls-2")
    q.load_state_dict(ref.state_dict())  # no quantizer buffers in the checkpoint
    q.eval()
    assert torch.equal(q.weight, ref.weight)
    torch.testing.assert_close(q.quantized_weight()[1], lsqbq.fit(ref.weight.detach().reshape(4, -1), "ls-2"))


@pytest.mark.parametrize("kwargs,match", [({"clamp": -1}, "clamp"), ({"clamp": float("nan")}, "clamp"),
                                          ({"act_stats": "always"}, "act_stats"), ({"momentum": 1.0}, "momentum"),
                                          ({"x_quant": "ls-9"}, "unknown quantization scheme")])
def test_bad_options_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConv2d(3, 4, 3, **kwargs)


def test_wrong_input_rank():
    from lsqbq.errors import InputError

    with pytest.raises(InputError, match=r"^QuantConv2d\(3->4\): expected input of shape \(B, C, H, W\), got \(3, 8, 8\)$"):
        QuantConv2d(3, 4, 3)(torch.randn(3, 8, 8))


def test_weights_made_under_inference_mode_are_refitted_not_cached():
    """Inference tensors have no version counter: their weight scales are refitted at every forward, so an
    in-place change is never served stale scales."""
    x = torch.randn(2, 2, 5, 5)
    with torch.inference_mode():
        layer = QuantConv2d(2, 3, 3, x_quant="ls-1", w_quant="ls-2").eval()
        assert layer.weight.is_inference()
        y1 = layer(x)
        layer.weight.mul_(-3.0)
        y2 = layer(x)
    reference = QuantConv2d(2, 3, 3, x_quant="ls-1", w_quant="ls-2").eval()
    with torch.no_grad():
        reference.weight.copy_(layer.weight.clone())
        reference.bias.copy_(layer.bias.clone())
        torch.testing.assert_close(y2, reference(x))
    assert not torch.allclose(y1, y2)


def test_scheme_change_is_scoped_to_its_block():
    from lsqbq.errors import CheckpointError
    from lsqbq.layers import scheme_change

    ls1 = QuantLinear(6, 3, x_quant="ls-1", w_quant="ls-1").eval()
    ls1(torch.randn(2, 6))  # caches the ls-1 weight scales (3, 1)
    with scheme_change():
        QuantLinear(6, 3, x_quant="ls-1", w_quant="gf-3").load_state_dict(ls1.state_dict())
    with pytest.raises(CheckpointError, match="stored weight scales hold 1 scale"):
        QuantLinear(6, 3, x_quant="ls-1", w_quant="gf-3").load_state_dict(ls1.state_dict())


def test_repr_names_schemes():
    r = repr(QuantConv2d(3, 4, 3, x_quant="ls-T", w_quant="ls-1", clamp=2))
    assert "x_quant=ls-T" in r and "w_quant=ls-1" in r and "clamp=2" in r
