"""Where a trained model's quantizable weights and activations live, and forward hooks that collect them."""
from __future__ import annotations

import torch

__all__ = ["quantizable_layers", "activation_sites", "layer_inputs", "quantizer_inputs", "weight_rows"]


def quantizable_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The layers a quantized student quantizes: every :class:`~lsqbq.layers.QuantConv2d` / ``QuantLinear``.

    Stem, shortcut and classifier stay full precision in the paper's networks and are plain ``nn`` modules there.
    """
    from ..layers import QuantConv2d, QuantLinear

    return [(name, m) for name, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]


def weight_rows(model: torch.nn.Module) -> list[torch.Tensor]:
    """The weights of every quantizable layer as ``(out_channels, fan_in)`` rows (per-filter granularity)."""
    return [m.weight.detach().reshape(m.weight.shape[0], -1) for _, m in quantizable_layers(model)]


def activation_sites(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Where the activations that a quantized student binarizes live: BN layers beside a quantizable conv.

    In the XNOR-ordered block (BN -> Q -> conv) and in LeNet-5 the output of such a BN *is* the activation
    quantizer's input. In the full-precision ``regular`` block (conv -> BN -> ReLU) it is the pre-activation,
    the signed tensor the paper's angle analysis needs (a post-ReLU input would binarize to all +1). Stem and
    shortcut BNs (no quantizable sibling) are left out. Returns ``(name, module)`` in forward order.
    """
    from ..layers import QuantConv2d, QuantLinear

    sites = []
    for pname, parent in model.named_modules():
        children = dict(parent.named_children())
        if not any(isinstance(c, (QuantConv2d, QuantLinear)) for c in children.values()):
            continue
        for cname, child in children.items():
            if isinstance(child, torch.nn.BatchNorm2d) and "shortcut" not in cname:
                sites.append((f"{pname}.{cname}" if pname else cname, child))
    return sites


@torch.no_grad()
def _collect(model: torch.nn.Module, loader, images: int, sites, pre: bool,
             take) -> tuple[list[str], list[torch.Tensor]]:
    """``take(module, input, output)`` at every site (forward hooks; ``pre``: forward-pre hooks, output None) on the
    first ``images`` images of ``loader``, as ``(images, features)`` rows in forward order."""
    store: dict[str, list[torch.Tensor]] = {name: [] for name, _ in sites}
    order: list[str] = []

    def hook(name):
        def fn(mod, inp, out=None):
            if name not in order:
                order.append(name)
            store[name].append(take(mod, inp, out).detach().cpu())
        return fn

    hooks = [m.register_forward_pre_hook(hook(name)) if pre else m.register_forward_hook(hook(name))
             for name, m in sites]
    seen = 0
    try:
        for x, _ in loader:
            x = x[: images - seen]
            model(x)
            seen += x.shape[0]
            if seen >= images:
                break
    finally:
        for h in hooks:
            h.remove()
    return order, [torch.cat(store[n]).reshape(seen, -1) for n in order]


def layer_inputs(model: torch.nn.Module, loader, images: int) -> tuple[list[str], list[torch.Tensor]]:
    """Activations at every :func:`activation_sites` site on the first ``images`` images of ``loader``, as
    ``(images, features)`` rows (one row per image: the official per-sample granularity), in forward order."""
    return _collect(model, loader, images, activation_sites(model), False, lambda mod, inp, out: out)


def quantizer_inputs(model: torch.nn.Module, loader, images: int) -> tuple[list[str], list[torch.Tensor]]:
    """What the activation quantizer of every quantizable layer of a (student) model sees on the first ``images``
    images of ``loader``: the layer's input clamped to ``[-clamp, clamp]`` (when the layer clamps), as
    ``(images, features)`` rows in forward order."""
    def clamped(mod, inp, out):
        x = inp[0]
        return x if mod.clamp is None else x.clamp(-mod.clamp, mod.clamp)

    return _collect(model, loader, images, quantizable_layers(model), True, clamped)
