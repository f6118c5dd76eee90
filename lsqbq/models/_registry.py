"""Model registry: ``@register_model`` marks a lowercase builder whose function name is its public name."""
from __future__ import annotations

from typing import Callable

from torch import nn

__all__ = ["register_model", "create_model", "list_models"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **options) -> nn.Module:
    """Build registered model ``name``; unknown names raise ValueError listing :func:`list_models`."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()}")
    return _MODELS[name](**options)
