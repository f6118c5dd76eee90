"""Bitwise evaluation of a whole model: the simulated side runs in the bitwise model's activation-scale mode."""
import pytest
import torch

from lsqbq.kernels.evaluation import evaluate_bitwise
from lsqbq.models import build


def _trained(x_quant: str, act_stats: str):
    """A narrow small ResNet whose quantized layers recorded moving-average scales (a few training forwards)."""
    torch.manual_seed(0)
    model = build("resnet_small", num_classes=10, in_chans=1, width=8, layers=[1, 1], x_quant=x_quant,
                  w_quant="ls-1", act_stats=act_stats)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28))
    return model.eval()


@pytest.mark.parametrize("x_quant", ["ls-1", "ls-2"])
@pytest.mark.parametrize("trained", ["off", "eval_only"])
@pytest.mark.parametrize("scales", ["fitted", "stored"])
def test_bitwise_agrees_with_the_simulated_model_in_either_scale_mode(x_quant, trained, scales):
    model = _trained(x_quant, trained)
    g = torch.Generator().manual_seed(1)
    loader = [(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(3)]
    out = evaluate_bitwise(model, loader, scales=scales)
    assert out["scale_mode"] == scales and out["n"] == 24
    assert out["top1_agreement"] == 100.0 and out["top1"] == out["simulated_top1"]
    assert out["max_logit_rel_diff"] < 1e-3
    assert [m.act_stats for m in model.modules() if hasattr(m, "act_stats")][0] == trained  # restored


def test_int8_float_parts_are_measured_against_the_simulated_model():
    """``float_parts="int8"``: the stem and classifier run in int8, so the logits move (within the int8 error) where
    the fp32 conversion stays at float rounding."""
    from lsqbq.errors import ConfigError

    model = _trained("ls-1", "off")
    g = torch.Generator().manual_seed(1)
    loader = [(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(3)]
    fp32 = evaluate_bitwise(model, loader, scales="fitted")
    try:
        int8 = evaluate_bitwise(model, loader, scales="fitted", float_parts="int8")
    except ConfigError as exc:  # a torch build without oneDNN's int8 ops
        pytest.skip(str(exc))
    assert int8["n"] == 24 and int8["simulated_top1"] == fp32["simulated_top1"]
    assert fp32["max_logit_rel_diff"] < int8["max_logit_rel_diff"] < 0.2
