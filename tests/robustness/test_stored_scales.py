"""Stored activation scales and relabelled checkpoints: a moving average that is NaN, Inf, non-positive or breaks
the scheme's rule (the rule ``lsqbq.quantize`` applies to given scales), and quantizer buffers of another scheme
under a checkpoint's label, are refused naming the layer: at load (CheckpointError), at inference and at
bitwise conversion (InputError)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lsqbq
from lsqbq import checkpoint as ckpt_io
from lsqbq.errors import CheckpointError, InputError
from lsqbq.layers import QuantConv2d, QuantLinear, scale_mode, scheme_change


def _model(x_quant="ls-2", w_quant="ls-1", act_stats="eval_only", seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(QuantConv2d(3, 8, 3, padding=1, x_quant=x_quant, w_quant=w_quant, act_stats=act_stats),
                         nn.ReLU(), nn.Flatten(),
                         QuantLinear(8 * 4 * 4, 5, x_quant=x_quant, w_quant=w_quant, act_stats=act_stats))


def _trained(**kw):
    model = _model(**kw).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 4, 4))
    return model.eval()


def _given_scales_error(scheme, v):
    """What ``lsqbq.quantize`` says about these scales given for ``scheme`` (the rule the layers reuse)."""
    with pytest.raises(InputError) as e:
        lsqbq.quantize(torch.randn(1, 8), scheme, torch.tensor(v))
    return str(e.value).split(" row 0 ")[1].split(":")[0]


BAD = [  # (x scheme, stored moving average, words of the reason)
    ("ls-1", [float("nan")], "holds NaN or Inf"),
    ("ls-1", [float("inf")], "holds NaN or Inf"),
    ("ls-1", [0.0], "holds a non-positive scale"),
    ("ls-1", [-0.5], "holds a non-positive scale"),
    ("ls-2", [0.1, 0.5], None),  # not foldable: v_1 < v_2
    ("ls-T", [0.3, 0.2], None),  # ternary needs equal scales
    ("gf-2", [0.4, float("nan")], "holds NaN or Inf"),
]


def _why(scheme, v, words):
    return words or _given_scales_error(scheme, v)


@pytest.mark.parametrize("scheme,v,words", BAD, ids=[f"{s}-{v}" for s, v, _ in BAD])
def test_bad_stored_scales_are_refused_at_load_naming_the_layer(scheme, v, words):
    state = _trained(x_quant=scheme).state_dict()
    state["3.x_scales_ema"] = torch.tensor(v)
    fresh = _model(x_quant=scheme)
    with pytest.raises(CheckpointError) as e:
        fresh.load_state_dict(state)
    msg = str(e.value)
    assert msg.startswith(f"QuantLinear(128->5) '3': the stored activation scales (3.x_scales_ema, {scheme}) "), msg
    assert _why(scheme, v, words) in msg and "restore it or retrain" in msg


@pytest.mark.parametrize("scheme,v,words", BAD, ids=[f"{s}-{v}" for s, v, _ in BAD])
def test_bad_stored_scales_are_refused_at_inference_naming_the_layer(scheme, v, words):
    model = _trained(x_quant=scheme)
    model[0].x_scales_ema.copy_(torch.tensor(v))  # changed after loading: the cached check sees the new version
    with pytest.raises(InputError) as e:
        model(torch.randn(2, 3, 4, 4))
    msg = str(e.value)
    assert msg.startswith(f"QuantConv2d(3->8): stored activation scales (x_scales_ema, {scheme}) "), msg
    assert _why(scheme, v, words) in msg


@pytest.mark.parametrize("scheme,v,words", BAD[:1] + BAD[4:6], ids=["ls-1-nan", "ls-2", "ls-T"])
def test_bad_stored_scales_are_refused_by_the_bitwise_conversion(scheme, v, words):
    from lsqbq.kernels import to_bitwise

    model = _trained(x_quant=scheme)
    lsqbq.layers.name_layers(model)
    model[3].x_scales_ema.copy_(torch.tensor(v))
    with pytest.raises(InputError) as e:
        to_bitwise(model, backend="reference", scales="stored")
    assert str(e.value).startswith(f"QuantLinear(128->5) '3': stored activation scales (x_scales_ema, {scheme}) ")
    assert _why(scheme, v, words) in str(e.value)


def test_bitwise_stored_scales_changed_after_conversion_are_refused():
    from lsqbq.kernels import to_bitwise

    fast = to_bitwise(_trained(x_quant="ls-T"), backend="reference", scales="stored")
    x = torch.randn(2, 3, 4, 4)
    fast(x)
    fast[0].x_scales_ema.copy_(torch.tensor([0.5, 0.25]))
    with pytest.raises(InputError, match=r"^BitwiseConv2d\(3->8\) '0': stored activation scales \(x_scales_ema, "
                                         r"ls-T\) has unequal scales"):
        fast(x)


def test_bitwise_stored_scales_changed_under_inference_mode_are_refused():
    """Converted inside ``torch.inference_mode()`` the scales are inference tensors (no version counter): a change
    is found by comparing with the values last checked, and a change back to valid values runs again."""
    from lsqbq.kernels import to_bitwise

    x = torch.randn(2, 3, 4, 4)
    with torch.inference_mode():
        fast = to_bitwise(_trained(x_quant="ls-T"), backend="reference", scales="stored")
        assert fast[0].x_scales_ema.is_inference()
        good = fast[0].x_scales_ema.clone()
        want = fast(x)
        fast[0].x_scales_ema.copy_(torch.tensor([0.5, 0.25]))
        with pytest.raises(InputError, match=r"^BitwiseConv2d\(3->8\) '0': stored activation scales "
                                             r"\(x_scales_ema, ls-T\) has unequal scales"):
            fast(x)
        fast[0].x_scales_ema.copy_(good)
        assert torch.equal(fast(x), want)


def test_an_unused_moving_average_is_checked_when_a_scale_mode_uses_it():
    model = _trained(act_stats="off")
    state = model.state_dict()
    state["0.x_scales_ema"] = torch.tensor([0.1, 0.5])
    fresh = _model(act_stats="off")
    fresh.load_state_dict(state)  # fitted per sample: the average is never read
    x = torch.randn(2, 3, 4, 4)
    fresh.eval()(x)
    with scale_mode(fresh, "stored"), pytest.raises(InputError, match=r"^QuantConv2d\(3->8\) '0': stored activation "
                                                                      r"scales \(x_scales_ema, ls-2\) is not "
                                                                      r"non-increasing"):
        fresh(x)


def test_valid_stored_scales_are_checked_once_per_change(monkeypatch):
    model = _trained()
    calls = []
    original = QuantConv2d._stored_scales_problem
    monkeypatch.setattr(QuantConv2d, "_stored_scales_problem", lambda self, v: calls.append(1) or original(self, v))
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        first = model(x)
        for _ in range(4):
            torch.testing.assert_close(model(x), first)
    assert len(calls) == 1  # once, then cached on the buffer's version
    model[0].x_scales_ema.mul_(1.0)  # a new version: checked again
    model(x)
    assert len(calls) == 2


# ------------------------------------------------------------------------------------ relabelled checkpoints


def test_ls1_weights_relabelled_as_ls2_are_refused_naming_the_layer():
    state = _trained(x_quant="ls-2", w_quant="ls-1").state_dict()
    relabelled = _model(x_quant="ls-2", w_quant="ls-2")
    with pytest.raises(CheckpointError) as e:
        relabelled.load_state_dict(state)
    assert str(e.value).startswith("QuantConv2d(3->8) '0': the stored weight scales hold 1 scale(s) per row but the "
                                   "layer's scheme ls-2 has 2: the checkpoint was trained with another weight scheme")
    with pytest.raises(CheckpointError, match=r"^ls1\.pt: QuantConv2d\(3->8\) '0': the stored weight scales hold 1 "):
        ckpt_io.load_weights(_model(x_quant="ls-2", w_quant="ls-2"), state, "ls1.pt")


def test_activations_relabelled_are_refused_where_the_average_is_used():
    state = _trained(x_quant="ls-1", w_quant="ls-1").state_dict()
    with pytest.raises(CheckpointError, match=r"^QuantConv2d\(3->8\) '0': the stored activation scales hold 1 "
                                              r"scale\(s\) per row but the layer's scheme ls-2 has 2"):
        _model(x_quant="ls-2", w_quant="ls-1").load_state_dict(state)
    fitted = _model(x_quant="ls-2", w_quant="ls-1", act_stats="off")
    fitted.load_state_dict(state)  # fitted per sample: the ls-1 average is dropped, never used
    assert int(fitted[0].x_ema_updates) == 0 and fitted[0].x_scales_ema.shape == (2,)


def test_scheme_change_requantizes_on_purpose():
    """Inside ``scheme_change()`` the same state dict loads: weights re-quantized with ls-2 (scales refitted),
    exactly as a fresh ls-2 layer holding the same weights."""
    trained = _trained(x_quant="ls-2", w_quant="ls-1", act_stats="off")
    requantized = _model(x_quant="ls-2", w_quant="ls-2", act_stats="off", seed=1)
    with scheme_change():
        requantized.load_state_dict(trained.state_dict())
    reference = _model(x_quant="ls-2", w_quant="ls-2", act_stats="off", seed=2)
    with torch.no_grad():
        for dst, src in zip(reference.parameters(), trained.parameters()):
            dst.copy_(src)
    x = torch.randn(3, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(requantized.eval()(x), reference.eval()(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError):  # the permission ends with the block
        _model(x_quant="ls-2", w_quant="ls-2").load_state_dict(trained.state_dict())


def test_full_precision_checkpoints_still_load_into_quantized_layers():
    fp = _trained(x_quant="fp", w_quant="fp")
    quantized = _model(x_quant="ls-2", w_quant="ls-2")
    quantized.load_state_dict(fp.state_dict())
    assert torch.equal(quantized[0].weight, fp[0].weight) and int(quantized[0].x_ema_updates) == 0


def test_unchanged_follows_versions_storage_and_the_values_of_inference_tensors():
    from lsqbq.layers import seen_state, unchanged

    t = torch.tensor([0.5, 0.25])
    seen = seen_state(t)
    assert unchanged(t, seen) and not unchanged(t, None)
    t.mul_(1.0)  # same values, new version: checked again
    assert not unchanged(t, seen)
    assert not unchanged(t.clone(), seen_state(t))  # other storage
    with torch.inference_mode():
        u = torch.tensor([0.5, 0.25])
        seen = seen_state(u)
        assert unchanged(u, seen)
        u[1] = 0.125  # no version counter: the values tell
        assert not unchanged(u, seen)


def test_simulated_stored_scales_changed_under_inference_mode_are_refused():
    """A model built under ``torch.inference_mode()`` holds inference tensors: its stored scales are still checked
    again after a change."""
    x = torch.randn(2, 3, 4, 4)
    with torch.inference_mode():
        model = _trained(x_quant="ls-T")
        assert model[0].x_scales_ema.is_inference()
        with scale_mode(model, "stored"):
            model(x)
            model[0].x_scales_ema.copy_(torch.tensor([0.5, 0.25]))
            with pytest.raises(InputError, match=r"^QuantConv2d\(3->8\): stored activation scales \(x_scales_ema, "
                                                 r"ls-T\) has unequal scales"):
                model(x)
