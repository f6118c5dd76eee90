"""Scheme registry: the one place where scheme names (``fp``, ``ls-1``, ``ls-2``, ``ls-T``, ``gf-<k>``) are parsed.

A :class:`Scheme` is a frozen description (name, number of scales ``k``, table label) bound to its fit function;
layers keep the object, not the string. New schemes are one fit function plus :func:`register_scheme`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from torch import Tensor

from . import quantizers as Q

__all__ = ["Scheme", "get_scheme", "list_schemes", "register_scheme", "SCHEME_PATTERN"]

SCHEME_PATTERN = r"^(fp|ls-1|ls-2|ls-T|gf-[1-9][0-9]*)$"
_GREEDY = re.compile(r"^gf-([1-9][0-9]*)$")


@dataclass(frozen=True)
class Scheme:
    """A quantization scheme.

    Attributes:
        name: canonical name as in the paper (``ls-2``).
        k: number of scales = number of sign planes (``fp``: 0; ``ls-T``: 2 equal scales).
        label: bit width as printed in the paper's tables (``"32"``, ``"1"``, ``"2"``, ``"T"``).
        fit_fn: ``(R, n) -> (R, k)`` scales; None for ``fp``.
    """

    name: str
    k: int
    label: str
    fit_fn: Callable[[Tensor], Tensor] | None = field(default=None, compare=False, repr=False)

    @property
    def is_fp(self) -> bool:
        return self.k == 0

    @property
    def ternary(self) -> bool:
        return self.name == "ls-T"

    @property
    def levels(self) -> int:
        """Number of distinct representable values: 2^k, 3 for ternary, 0 (continuous) for fp."""
        return 0 if self.is_fp else (3 if self.ternary else 2**self.k)

    def fit(self, x: Tensor) -> Tensor:
        return Q.fit(x, self)

    def quantize(self, x: Tensor, scales: Tensor | None = None) -> Tensor:
        return Q.quantize(x, self, scales)

    def __str__(self) -> str:
        return self.name


_REGISTRY: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme) -> Scheme:
    """Add ``scheme`` to the registry (its name must be new)."""
    if scheme.name in _REGISTRY:
        raise ValueError(f"scheme {scheme.name!r} is already registered")
    _REGISTRY[scheme.name] = scheme
    return scheme


register_scheme(Scheme("fp", 0, "32"))
register_scheme(Scheme("ls-1", 1, "1", Q.fit_ls1))
register_scheme(Scheme("ls-2", 2, "2", Q.fit_ls2))
register_scheme(Scheme("ls-T", 2, "T", Q.fit_ternary))


def list_schemes() -> list[str]:
    """Registered names plus the greedy family written ``gf-<k>`` (any k >= 1)."""
    return [*_REGISTRY, "gf-<k>"]


def get_scheme(spec) -> Scheme:
    """Resolve a name (``"ls-2"``, ``"gf-3"``), a :class:`Scheme` or ``None`` (= ``fp``) to a :class:`Scheme`.

    Raises:
        ValueError: unknown name, listing the valid ones.
    """
    if isinstance(spec, Scheme):
        return spec
    if spec is None:
        return _REGISTRY["fp"]
    if not isinstance(spec, str):
        raise ValueError(f"scheme must be a name or a Scheme, got {type(spec).__name__}: {spec!r}")
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    m = _GREEDY.match(spec)
    if m:
        k = int(m.group(1))
        return Scheme(spec, k, str(k), partial(Q.fit_greedy, k=k))
    raise ValueError(f"unknown quantization scheme {spec!r}; valid schemes: {', '.join(list_schemes())}")
