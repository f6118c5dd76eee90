"""Training losses: KD against a per-sample reference, the teacher correction, plain cross-entropy."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lsqbq.config import from_dict
from lsqbq.losses import kd_loss, training_loss


def _kd_reference(s, t, y, T, ce_weight, correction):
    """Per-sample loops over classes (independent of the vectorised implementation)."""
    total = 0.0
    for i in range(len(y)):
        ps = [math.exp(v / T) for v in s[i].tolist()]
        pt = [math.exp(v / T) for v in t[i].tolist()]
        zs, zt = sum(ps), sum(pt)
        kl = sum((b / zt) * (math.log(b / zt) - math.log(a / zs)) for a, b in zip(ps, pt)) * T * T
        e = [math.exp(v) for v in s[i].tolist()]
        ce = -math.log(e[y[i]] / sum(e))
        term = ce if (correction and int(t[i].argmax()) != int(y[i])) else kl
        total += (1 - ce_weight) * term + ce_weight * ce
    return total / len(y)


@pytest.mark.parametrize("T, ce_weight, correction", [(1.0, 0.0, False), (4.0, 0.0, False), (2.0, 0.3, False),
                                                      (5.0, 0.0, True), (3.0, 0.5, True)])
def test_kd_loss_matches_reference(T, ce_weight, correction):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randn(12, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (12,), generator=g)
    got = kd_loss(s, t, y, T, ce_weight, correction).item()
    assert got == pytest.approx(_kd_reference(s, t, y, T, ce_weight, correction), rel=1e-9)


def test_teacher_correction_really_switches_to_ce():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.2, 0.1]])
    t = torch.tensor([[0.0, 3.0, 0.0], [3.0, 0.0, 0.0]])     # teacher wrong on sample 0, right on sample 1
    y = torch.tensor([0, 0])
    mixed = kd_loss(s, t, y, 2.0, 0.0, teacher_correction=True)
    ce0 = F.cross_entropy(s[:1], y[:1])
    kd1 = kd_loss(s[1:], t[1:], y[1:], 2.0)
    assert mixed.item() == pytest.approx((ce0.item() + kd1.item()) / 2, rel=1e-6)
    assert mixed.item() != pytest.approx(kd_loss(s, t, y, 2.0).item(), rel=1e-3)


def test_kd_with_teacher_equal_student_is_zero():
    s = torch.randn(4, 6)
    assert kd_loss(s, s.clone(), torch.zeros(4, dtype=torch.long), 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_training_loss_dispatches_on_the_teacher():
    s, t = torch.randn(6, 4, dtype=torch.bfloat16), torch.randn(6, 4)
    y = torch.randint(0, 4, (6,))
    assert torch.equal(training_loss(s, y), F.cross_entropy(s.float(), y))   # logits taken in float32
    kd = from_dict({"kd": {"teacher": "t.pt", "temperature": 2.0, "ce_weight": 0.25, "teacher_correction": True}}).kd
    assert torch.equal(training_loss(s, y, t, kd), kd_loss(s.float(), t, y, 2.0, 0.25, True))
