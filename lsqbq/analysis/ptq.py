"""Post-training weight quantization of a trained model, measured in one pass over the test set.

For every weight scheme (:func:`~lsqbq.analysis.measures.quantize_weights`: each output channel quantized, the
activations full precision) and every test image with label ``y``, from the logits ``z_fp`` of the trained
model and ``z_q`` of the quantized one, ``p = softmax(z)``:

    top-1 / top-5   100 * (images whose label is among the k largest logits of z_q) / N
                    (:func:`lsqbq.evaluate.accuracy_counts`, the numbers ``lsqbq evaluate`` gives);
    kl              mean over images of KL(p_fp || p_q) = sum_c p_fp,c (log p_fp,c - log p_q,c), nats;
                    0 exactly when the two models' logits agree, > 0 otherwise;
    nll             mean over images of -log p_q,y (test cross-entropy), nats.

Log-softmaxes are taken in float64 from the float32 logits. Both models see the same batches, so each batch is
loaded once and the trained model runs once per batch.

BatchNorm re-estimation (a separate, optional measurement): after the weights are quantized, the running mean and
variance of every BatchNorm layer are recomputed on a fixed set of training images (:func:`calibration_loader`:
the first ``images`` of a permutation drawn with :data:`CALIBRATION_SEED`, augmentation off) and the model is
measured again (columns ``*_bn``; ``kl_bn`` still against the trained model's unchanged outputs).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import InputError
from ..passes import run_in_passes
from ..schemes import get_scheme
from .measures import quantize_weights

__all__ = ["BN_IMAGES", "CALIBRATION_SEED", "MEASURES", "BN_COLUMNS", "batchnorm_layers", "reestimate_bn",
           "calibration_loader", "ptq_measures", "ptq_rows"]

#: Training images whose BatchNorm statistics are recomputed after weight quantization (``--bn-images``).
BN_IMAGES = 2000
#: Seed of the permutation of the training set whose first images form the calibration set.
CALIBRATION_SEED = 0
#: What :func:`ptq_measures` returns per model.
MEASURES = ("top1", "top5", "kl", "nll")
#: The columns of the BatchNorm re-estimation in :func:`ptq_rows` (NaN when it did not run).
BN_COLUMNS = tuple(f"{m}_bn" for m in MEASURES) + ("bn_images",)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics, in module order."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable) -> nn.Module:
    """Recompute the running statistics of every BatchNorm layer of ``model`` in place from ``batches`` of
    ``(x, y)``; returns ``model``.

    Math: each BatchNorm layer forgets its statistics and, with every other module in eval mode, normalises each
    batch b by that batch's own statistics (as in training) while it accumulates the cumulative averages
    (``momentum=None``) over the B batches
        running_mean = (1/B) sum_b mean_b(x),   running_var = (1/B) sum_b var_b(x)   (unbiased per batch),
    per channel, with ``x`` the layer's input. Equal-size batches make ``running_mean`` the mean over all the
    images. The modules' modes and momenta are restored afterwards. Deterministic for fixed batches.

    Raises:
        InputError: ``batches`` yields nothing.
    """
    bns = batchnorm_layers(model)
    if not bns:
        return model
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bns}
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for x, _ in batches:
            model(x)
            seen += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.train(mode)
    if not seen:
        raise InputError("BatchNorm re-estimation: the calibration loader yielded no batch; give at least one "
                         "training image (--bn-images)")
    return model


def calibration_loader(dataset: Dataset, images: int, batch_size: int, collate_fn=None,
                       seed: int = CALIBRATION_SEED) -> DataLoader:
    """The fixed calibration set of :func:`reestimate_bn`: the first ``min(images, len(dataset))`` indices of the
    permutation of ``dataset`` drawn from ``torch.Generator().manual_seed(seed)``, in that order, in batches of
    ``batch_size`` (``collate_fn``: the training loader's). Pass a dataset without augmentation.

    Raises:
        InputError: ``images`` or ``batch_size`` below 1, or an empty ``dataset``.
    """
    if images < 1 or batch_size < 1:
        raise InputError(f"calibration set: images ({images}) and batch size ({batch_size}) must be at least 1")
    if len(dataset) == 0:
        raise InputError("calibration set: the training split is empty")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:images]
    return DataLoader(Subset(dataset, order.tolist()), batch_size=batch_size, shuffle=False, collate_fn=collate_fn,
                      num_workers=0)


@torch.no_grad()
def ptq_measures(reference: nn.Module, models: Mapping[str, nn.Module], loader) -> dict[str, dict[str, float]]:
    """``{name: {"top1", "top5", "kl", "nll", "n"}}`` of every model in ``models`` against ``reference`` (the
    trained model) on ``loader`` (module docstring: top-k in %, KL(p_ref || p_model) and NLL in nats per image).

    Every model runs in eval mode (switched to it) on each batch as it is loaded; ``reference`` once per batch, and
    an entry of ``models`` that *is* ``reference`` (the fp row) reuses its logits instead of running again.

    Shapes: logits ``(B, C)``, labels ``(B,)``.
    """
    from ..evaluate import accuracy_counts

    reference.eval()
    for m in models.values():
        m.eval()
    sums = {name: torch.zeros(5, dtype=torch.float64) for name in models}  # top1, top5, nll, kl, images
    for x, y in loader:
        ref = run_in_passes(reference, x).float()  # (B, C)
        log_ref = F.log_softmax(ref.double(), dim=1)
        for name, m in models.items():
            out = ref if m is reference else run_in_passes(m, x).float()  # (B, C)
            t1, t5 = accuracy_counts(out, y)
            log_q = F.log_softmax(out.double(), dim=1)
            nll = F.nll_loss(log_q, y, reduction="sum").item()
            kl = F.kl_div(log_q, log_ref, reduction="sum", log_target=True).item()
            sums[name] += torch.tensor([t1, t5, nll, kl, len(y)], dtype=torch.float64)
    out = {}
    for name, s in sums.items():
        n = max(s[4].item(), 1.0)
        out[name] = {"top1": 100.0 * s[0].item() / n, "top5": 100.0 * s[1].item() / n, "kl": s[3].item() / n,
                     "nll": s[2].item() / n, "n": int(s[4].item())}
    return out


def ptq_rows(model: nn.Module, schemes: Sequence[str], loader, calibration: DataLoader | None = None
             ) -> list[dict]:
    """One row per weight scheme: ``w_quant``, ``k_w``, ``x_quant``, ``k_a`` (fp), ``top1``, ``top5``, ``kl``,
    ``nll`` of the weight-quantized ``model`` against ``model`` on ``loader``; with ``calibration`` (a
    :func:`calibration_loader`) and BatchNorm layers in ``model``, the same measures after :func:`reestimate_bn`
    as ``top1_bn``, ``top5_bn``, ``kl_bn``, ``nll_bn`` and the number of calibration images ``bn_images`` (NaN and
    0 otherwise). All models are measured in one pass over ``loader``."""
    fp = get_scheme(None)
    # the fp row's weights are the trained ones: the model itself (its logits are the reference's, computed once)
    models = {name: model if get_scheme(name).is_fp else quantize_weights(model, name) for name in schemes}
    bn = calibration is not None and bool(batchnorm_layers(model))
    if bn:
        for name in schemes:
            models[f"{name} bn"] = reestimate_bn(quantize_weights(model, name), calibration)
    measured = ptq_measures(model, models, loader)
    images = len(calibration.dataset) if bn else 0
    rows = []
    for name in schemes:
        m = measured[name]
        row = {"w_quant": name, "k_w": get_scheme(name).label, "x_quant": fp.name, "k_a": fp.label,
               **{k: float(m[k]) for k in MEASURES}}
        after = measured.get(f"{name} bn", {})
        row.update({f"{k}_bn": float(after.get(k, float("nan"))) for k in MEASURES})
        row["bn_images"] = images
        rows.append(row)
    return rows
