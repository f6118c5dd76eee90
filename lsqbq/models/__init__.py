"""Models by name: ``build('resnet18', stem='cifar', x_quant='ls-2', w_quant='ls-1', num_classes=10)``.

Registered builders (:func:`list_models`): ``resnet18``, ``resnet_small`` (the CPU default for 28x28
inputs) and ``lenet5``. :func:`summary` counts parameters and multiply-accumulates by precision, like
larq's model summary.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..layers import QuantConv2d, QuantLinear
from ..schemes import get_scheme
from . import lenet, resnet  # noqa: F401  (registers the builders)
from ._registry import create_model, list_models, register_model

__all__ = ["build", "list_models", "register_model", "summary", "ModelSummary"]


def build(name: str, **options) -> nn.Module:
    """Build model ``name`` with builder ``options`` (None values mean "builder default")."""
    return create_model(name, **{k: v for k, v in options.items() if v is not None})


@dataclass
class ModelSummary:
    """Per-layer and total counts.

    ``params``: ``fp32`` (stored in float) and ``binary`` (quantized weights, stored in ``k_w`` sign planes).
    ``macs`` per image: ``fp32`` (fp activations x fp weights), ``fp_x_binary`` (fp activations x quantized
    weights: additions only) and ``binary`` (both quantized); ``binary_ops`` = sum of ``k_x * k_w`` x MACs of
    the binary layers, i.e. the number of XNOR-popcount MACs of the bitwise implementation (paper eq. 7).
    ``memory_bytes``: fp32 parameters at 4 bytes plus binary weights at ``k_w`` bits each.
    """

    rows: list[dict] = field(default_factory=list)
    params: dict[str, int] = field(default_factory=lambda: {"fp32": 0, "binary": 0})
    macs: dict[str, int] = field(default_factory=lambda: {"fp32": 0, "fp_x_binary": 0, "binary": 0})
    binary_ops: int = 0
    memory_bytes: float = 0.0

    def __str__(self) -> str:
        head = f"{'layer':<28}{'type':<13}{'x/w':<12}{'params':>10}{'MACs':>13}  precision"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r['name'][:27]:<28}{r['type']:<13}{r['x_quant'] + '/' + r['w_quant']:<12}"
                         f"{r['params']:>10,}{r['macs']:>13,}  {r['kind']}")
        lines.append("-" * len(head))
        total_p = self.params["fp32"] + self.params["binary"]
        lines.append(f"params: {total_p:,} (fp32 {self.params['fp32']:,}, binary {self.params['binary']:,}); "
                     f"memory {self.memory_bytes / 1024:.1f} KiB")
        lines.append(f"MACs/image: fp32 {self.macs['fp32']:,}, fp x binary {self.macs['fp_x_binary']:,}, "
                     f"binary {self.macs['binary']:,} ({self.binary_ops:,} XNOR-popcount MACs)")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"params": dict(self.params), "macs": dict(self.macs), "binary_ops": self.binary_ops,
                "memory_bytes": self.memory_bytes}


@torch.no_grad()
def summary(model: nn.Module, input_shape: tuple[int, ...]) -> ModelSummary:
    """Count parameters and MACs of ``model`` on one input of ``input_shape`` = (C, H, W) (or (1, C, H, W))."""
    if len(input_shape) == 3:
        input_shape = (1, *input_shape)
    out = ModelSummary()
    macs_of: dict[str, int] = {}
    hooks = []
    leaves = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}

    def hook(name):
        def fn(mod, inp, outp):
            if isinstance(mod, nn.Conv2d):
                per_out = (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
            else:
                per_out = mod.in_features
            macs_of[name] = macs_of.get(name, 0) + outp[0].numel() * per_out  # one sample
        return fn

    for name, m in leaves.items():
        hooks.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(input_shape, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    counted = set()
    for name, m in leaves.items():
        quantized = isinstance(m, (QuantConv2d, QuantLinear))
        xq = m.x_scheme if quantized else get_scheme("fp")
        wq = m.w_scheme if quantized else get_scheme("fp")
        x_bits, w_bits = xq.planes, wq.planes
        n_w = m.weight.numel()
        n_b = m.bias.numel() if m.bias is not None else 0
        macs = macs_of.get(name, 0)
        if w_bits and x_bits:
            kind = "binary"
            out.binary_ops += macs * x_bits * w_bits
        elif w_bits:
            kind = "fp_x_binary"
        else:
            kind = "fp32"
        out.macs[kind] += macs
        if w_bits:
            out.params["binary"] += n_w
            out.params["fp32"] += n_b + m.weight.shape[0] * w_bits  # bias and per-channel scales
            out.memory_bytes += n_w * w_bits / 8 + (n_b + m.weight.shape[0] * w_bits) * 4
        else:
            out.params["fp32"] += n_w + n_b
            out.memory_bytes += (n_w + n_b) * 4
        counted.update({id(m.weight)} | ({id(m.bias)} if m.bias is not None else set()))
        out.rows.append({"name": name, "type": type(m).__name__, "x_quant": xq.name,
                         "w_quant": wq.name, "params": n_w + n_b, "macs": macs, "kind": kind})
    rest = sum(p.numel() for p in model.parameters() if id(p) not in counted)  # BN, PReLU
    out.params["fp32"] += rest
    out.memory_bytes += rest * 4
    return out
