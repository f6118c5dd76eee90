"""Training losses: cross-entropy, and knowledge distillation with the official code's teacher correction.

With ``kd.teacher`` set the student learns from a frozen teacher's logits; otherwise from the labels alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["kd_loss", "training_loss"]


def kd_loss(student: Tensor, teacher: Tensor, target: Tensor, temperature: float = 1.0, ce_weight: float = 0.0,
            teacher_correction: bool = False) -> Tensor:
    """Distillation loss, mean over the batch.

    Math (per sample, T = temperature, p = softmax):
        KD = T^2 * sum_c p(t/T)_c * (log p(t/T)_c - log p(s/T)_c)
        CE = -log p(s)_y
        term = CE if (teacher_correction and argmax t != y) else KD
        loss = (1 - ce_weight) * term + ce_weight * CE
    Shapes: ``student, teacher: (B, C)``, ``target: (B,)`` -> scalar.
    """
    T = temperature
    log_ps = F.log_softmax(student / T, dim=1)
    log_pt = F.log_softmax(teacher / T, dim=1)
    kd = (log_pt.exp() * (log_pt - log_ps)).sum(1) * (T * T)   # (B,)
    ce = F.cross_entropy(student, target, reduction="none")     # (B,)
    if teacher_correction:
        kd = torch.where(teacher.argmax(1) != target, ce, kd)
    return ((1 - ce_weight) * kd + ce_weight * ce).mean()


def training_loss(student: Tensor, target: Tensor, teacher: Tensor | None = None, kd=None) -> Tensor:
    """The loss a training step minimises: mean cross-entropy, or :func:`kd_loss` with the settings of ``kd``
    (a :class:`~lsqbq.config.KDConfig`) when teacher logits are given. Logits are taken in float32.

    Shapes: ``student, teacher: (B, C)``, ``target: (B,)`` -> scalar.
    """
    if teacher is None:
        return F.cross_entropy(student.float(), target)
    return kd_loss(student.float(), teacher.float(), target, kd.temperature, kd.ce_weight, kd.teacher_correction)
