"""Scheme registry: the only code that parses scheme names and owns every fact about a scheme.

A :class:`Scheme` is a frozen description — number of scales ``k`` (= sign planes), table label, levels,
kernel encoding, family, display order — bound to the name-free fit function in :mod:`lsqbq.quantizers`.
Everything downstream (config validation, workflow schema, tables, benchmarks, analyses, model builders,
the bitwise converter) asks this module instead of comparing strings. Adding a scheme is one call to
:func:`register_scheme`; the greedy family ``gf-<k>`` is parametric and resolved on demand.

Importing this module does not import torch (the workflow validates names with :data:`SCHEME_PATTERN`);
:func:`fit` and :func:`quantize` load :mod:`lsqbq.quantizers` when first called.

    >>> from lsqbq.schemes import get_scheme
    >>> s = get_scheme("ls-2"); (s.k, s.label, s.levels, s.encoding)
    (2, '2', 4, 'sign')
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .errors import InputError, SchemeError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

__all__ = [
    "Scheme", "get_scheme", "list_schemes", "register_scheme", "is_scheme_name", "scheme_pattern",
    "SCHEME_PATTERN", "kernel_name", "fit", "quantize", "display_key",
]

FAMILIES = ("fp", "ls", "gf", "official")
ENCODINGS = ("none", "sign", "sign+mask")
SCALE_RULES = ("any", "nonincreasing", "equal")


def _quantizer(fn_name: str, module: str = "lsqbq._ops", **kwargs) -> Callable:
    """A fit function, resolved at call time (keeps this module torch-free): by default the op-backed one of
    :mod:`lsqbq._ops` (C++ where it applies, else the pure-torch maths of :mod:`lsqbq.quantizers`)."""

    def fit_fn(x):
        return getattr(importlib.import_module(module), fn_name)(x, **kwargs)

    fit_fn.__name__ = fn_name
    fit_fn.__qualname__ = fn_name
    return fit_fn


@dataclass(frozen=True)
class Scheme:
    """A quantization scheme ``x_q = sum_{i<=k} v_i b_i`` (foldable signs; ``fp``: identity).

    Attributes:
        name: canonical name (``ls-2``), as written in configs, paths and MLflow params.
        k: number of scales = number of sign planes (``fp``: 0; ``ls-T``: 2 equal scales).
        label: bit width as printed in the paper's tables (``"32"``, ``"1"``, ``"2"``, ``"T"``).
        family: ``fp`` | ``ls`` (exact least squares) | ``gf`` (greedy foldable) | ``official`` (reference
            re-implementation of the official code's search, used by the analyses).
        fit_fn: ``(R, n) -> (R, k)`` scales; None for ``fp``.
        ternary: levels ``{-2v, 0, 2v}``; the kernels encode it as sign + non-zero mask.
        scale_rule: constraint given scales must satisfy besides ``v >= 0``: ``any``, ``nonincreasing``
            (``v_1 >= v_2 >= ...``: levels ``v_1 - v_2 >= 0``) or ``equal`` (ternary).
        display: name shown in tables (defaults to ``name``).
        rank: tie-break of the display order among schemes of one label (smaller first).
    """

    name: str
    k: int
    label: str
    family: str
    fit_fn: Callable | None = field(default=None, compare=False, repr=False)
    ternary: bool = False
    scale_rule: str = "any"
    display: str = ""
    rank: int = 0

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise SchemeError(f"scheme {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        if self.scale_rule not in SCALE_RULES:
            raise SchemeError(f"scheme {self.name!r}: scale_rule must be one of {SCALE_RULES}")
        if (self.k == 0) != (self.fit_fn is None):
            raise SchemeError(f"scheme {self.name!r}: k = 0 exactly when there is no fit function")
        if not self.display:
            object.__setattr__(self, "display", self.name)

    # ------------------------------------------------------------------ derived facts
    @property
    def is_fp(self) -> bool:
        return self.k == 0

    @property
    def levels(self) -> int:
        """Distinct representable values: 2^k, 3 for ternary, 0 (continuous) for fp."""
        return 0 if self.is_fp else (3 if self.ternary else 2**self.k)

    @property
    def planes(self) -> int:
        """Bit planes the bitwise kernels store: k sign planes, or sign + mask for ternary."""
        return self.k

    @property
    def encoding(self) -> str:
        """Kernel encoding: ``none`` (fp), ``sign`` (k sign planes) or ``sign+mask`` (ternary)."""
        return "none" if self.is_fp else ("sign+mask" if self.ternary else "sign")

    @property
    def bits(self) -> float:
        """Bit width for ordering: k, 1.5 for ternary, 32 for fp."""
        return 32.0 if self.is_fp else (1.5 if self.ternary else float(self.k))

    @property
    def sort_key(self) -> tuple:
        """Display order: by bit width, then greedy before least squares, then rank and name."""
        return (self.bits, 0 if self.family == "gf" else 1, self.rank, self.name)

    @property
    def trainable(self) -> bool:
        """Usable in configs and the workflow (reference schemes are for the analyses only)."""
        return self.family != "official"

    # ------------------------------------------------------------------ maths
    def fit(self, x: Tensor) -> Tensor:
        return fit(x, self)

    def quantize(self, x: Tensor, scales: Tensor | None = None) -> Tensor:
        return quantize(x, self, scales)

    def check_scales(self, v: Tensor) -> None:
        """Raise :class:`InputError` naming the first row of ``v`` (R, k) that breaks ``v >= 0`` or the rule."""
        import torch

        bad = ~torch.isfinite(v).all(dim=1)
        why = "holds NaN or Inf"
        neg = (v < 0).any(dim=1)
        if not bool(bad.any()) and bool(neg.any()):
            bad, why = neg, "holds a negative scale (it would flip signs)"
        if not bool(bad.any()) and self.k > 1 and self.scale_rule == "nonincreasing":
            bad = (v[:, 1:] > v[:, :-1]).any(dim=1)
            why = "is not non-increasing (v_1 >= v_2 is needed for foldable levels)"
        if not bool(bad.any()) and self.k > 1 and self.scale_rule == "equal":
            bad = (v != v[:, :1]).any(dim=1)
            why = "has unequal scales (ternary needs v_1 = v_2)"
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise InputError(f"{self.name}: given scales row {row} {why}: {v[row].tolist()}; "
                             "pass scales fitted with this scheme")

    def __str__(self) -> str:
        return self.name

    # ------------------------------------------------------------------ copies
    def __reduce__(self):
        """Pickled by name: the registry owns a scheme's properties (and its fit function is a closure pickle cannot
        hold), so a pickled model loads the registry's scheme of that name (:func:`get_scheme`; a custom scheme
        must be registered in the loading process too, else a :class:`SchemeError` names it)."""
        return get_scheme, (self.name,)

    def __copy__(self) -> "Scheme":
        return self  # immutable: copies share it (also an unregistered scheme)

    def __deepcopy__(self, memo) -> "Scheme":
        return self


_REGISTRY: dict[str, Scheme] = {}
_GREEDY = re.compile(r"gf-([1-9][0-9]*)")
_GREEDY_PATTERN = "gf-[1-9][0-9]*"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def register_scheme(scheme: Scheme) -> Scheme:
    """Add ``scheme`` to the registry (its name must be new and must not clash with ``gf-<k>``)."""
    if not _NAME.fullmatch(scheme.name):
        raise SchemeError(f"scheme name {scheme.name!r} must match {_NAME.pattern} (it becomes a path and a regex)")
    if scheme.name in _REGISTRY or _GREEDY.fullmatch(scheme.name):
        raise SchemeError(f"scheme {scheme.name!r} is already registered")
    _REGISTRY[scheme.name] = scheme
    _refresh_pattern()
    return scheme


def scheme_pattern(trainable_only: bool = True, anchored: bool = True) -> str:
    """Regex accepting exactly the names :func:`get_scheme` resolves (trainable ones by default); anchored
    ``^(...)$`` for validators, bare alternation for Snakemake wildcard constraints."""
    names = [n for n, s in _REGISTRY.items() if s.trainable or not trainable_only]
    alternation = "|".join([*names, _GREEDY_PATTERN])
    return f"^({alternation})$" if anchored else alternation


def _refresh_pattern() -> None:
    global SCHEME_PATTERN
    SCHEME_PATTERN = scheme_pattern()


SCHEME_PATTERN = ""  # set by register_scheme: the names configs and the workflow accept

register_scheme(Scheme("fp", 0, "32", "fp"))
register_scheme(Scheme("ls-1", 1, "1", "ls", _quantizer("fit_ls1")))
register_scheme(Scheme("ls-2", 2, "2", "ls", _quantizer("fit_ls2"), scale_rule="nonincreasing"))
register_scheme(Scheme("ls-T", 2, "T", "ls", _quantizer("fit_ternary"), ternary=True, scale_rule="equal"))
register_scheme(Scheme("ls-2-official", 2, "2", "official", _quantizer("fit_official_skip3", "lsqbq.quantizers"),
                       display="ls-2 (official skip-3)", rank=1))
register_scheme(Scheme("ls-T-official", 2, "T", "official", _quantizer("fit_official_skip3", "lsqbq.quantizers", ternary=True),
                       ternary=True, scale_rule="equal", display="ls-T (official skip-3)", rank=1))


def is_scheme_name(name: object, trainable_only: bool = True) -> bool:
    """True when ``name`` is a string :func:`get_scheme` accepts."""
    return isinstance(name, str) and re.match(scheme_pattern(trainable_only), name) is not None


def list_schemes(examples: bool = False, trainable_only: bool = False) -> list[str]:
    """Registered names plus the greedy family: ``gf-<k>`` (placeholder) or, with ``examples``, gf-1..gf-4."""
    names = [n for n, s in _REGISTRY.items() if s.trainable or not trainable_only]
    return names + ([f"gf-{k}" for k in range(1, 5)] if examples else ["gf-<k>"])


def get_scheme(spec) -> Scheme:
    """Resolve a name (``"ls-2"``, ``"gf-3"``), a :class:`Scheme` or ``None`` (= ``fp``) to a :class:`Scheme`.

    Raises:
        SchemeError (a ValueError): unknown name, listing the valid ones.
    """
    if isinstance(spec, Scheme):
        return spec
    if spec is None:
        return _REGISTRY["fp"]
    if not isinstance(spec, str):
        raise SchemeError(f"scheme must be a name or a Scheme, got {type(spec).__name__}: {spec!r}")
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    m = _GREEDY.fullmatch(spec)
    if m:
        k = int(m.group(1))
        return Scheme(spec, k, str(k), "gf", _quantizer("fit_greedy", k=k))
    raise SchemeError(f"unknown quantization scheme {spec!r}; valid schemes: {', '.join(list_schemes())}")


def display_key(name: str) -> tuple:
    """Sort key of a scheme name for tables (see :attr:`Scheme.sort_key`)."""
    return get_scheme(name).sort_key


def kernel_name(x_scheme, w_scheme) -> str | None:
    """Name of the bitwise kernel computing a layer: ``"<a>x<w>"`` from the labels (``1x1``, ``2x1``, ``Tx1``),
    ``"fp32"`` when either side is full precision. Weights must be sign planes (no ternary weights)."""
    xs, ws = get_scheme(x_scheme), get_scheme(w_scheme)
    if xs.is_fp or ws.is_fp:
        return "fp32"
    if ws.ternary:
        return None
    return f"{xs.label}x{ws.label}"


# --------------------------------------------------------------------------------------- name-based API


def fit(x: Tensor, scheme) -> Tensor:
    """Scales of ``scheme`` for every row of the 2-D tensor ``x``.

    Shapes: ``x: (R, n) -> (R, k)`` with k = 1 (ls-1), 2 (ls-2: v_1, v_2; ls-T: v, v), k (gf-k).
    fp16/bf16 are computed in float32 and returned in the input dtype; float64 stays float64.

    Raises:
        SchemeError: unknown scheme or ``fp`` (it has no scales).
        InputError: input not 2-D, empty rows, NaN/Inf (naming the row) or scales that overflow the dtype.
    """
    from . import quantizers as Q

    s = get_scheme(scheme)
    if s.is_fp:
        raise SchemeError("fp: full precision has no scales to fit; choose one of the quantized schemes")
    Q.check_2d(x, s.name)
    if x.shape[1] == 0:
        raise InputError(f"{s.name}: cannot fit scales to empty rows (shape {tuple(x.shape)})")
    return _fit_checked(x, s)


def _fit_checked(x: Tensor, s: Scheme, out_dtype=None) -> Tensor:
    """``s.fit_fn`` in the working dtype, then an O(R) check in ``out_dtype`` (default ``x.dtype``): the largest
    level ``sum_i v_i`` must be finite there. Non-finite scales mean the input held NaN/Inf (reported with its
    row) or that a row's levels overflow the dtype the caller gets back."""
    import torch

    from . import quantizers as Q

    out_dtype = out_dtype or x.dtype
    v = s.fit_fn(x.to(Q.work_dtype(x)))
    finite = torch.isfinite(v.sum(dim=1, dtype=torch.float64).to(out_dtype)) & torch.isfinite(v).all(dim=1)
    if not bool(finite.all()):
        Q.check_finite(x, s.name)
        row = int((~finite).nonzero()[0, 0])
        raise InputError(f"{s.name}: the levels of row {row} overflow {out_dtype}; rescale the input")
    return v.to(x.dtype)


def quantize(x: Tensor, scheme, scales: Tensor | None = None) -> Tensor:
    """Quantize every row of ``x`` with ``scheme``: ``x_q = sum_i v_i b_i`` (foldable signs, ``sign(0) = +1``).

    With ``scales`` given (``(R, k)`` or ``(k,)``, e.g. moving averages at inference) they are checked against
    the scheme's constraints (``v >= 0``; ls-2 ``v_1 >= v_2``; ls-T ``v_1 = v_2``) and used as they are;
    otherwise they are fitted with :func:`fit`. ``fp`` returns ``x`` unchanged.
    Shapes: ``x: (R, n) -> (R, n)``, same dtype (fp16/bf16 computed in float32).

    Gradient, for every scheme and back end: the straight-through estimator of the quantized layers
    (:mod:`lsqbq.ste`), ``d x_q / d x = 1 - prod_i (1 - v_i 1{|r_i| <= 1})`` with the residuals
    ``r_i = x - sum_{j<i} v_j b_j``; the scales, fitted or given, are constants (no gradient flows to or through
    them); ``fp`` is the identity.
    """
    from . import quantizers as Q

    s = get_scheme(scheme)
    if s.is_fp:
        return x
    Q.check_2d(x, s.name)
    if x.numel() == 0:
        return x.clone()
    work = x.to(Q.work_dtype(x))
    if scales is None:
        v = _fit_checked(work.detach(), s, out_dtype=x.dtype)  # constants for the gradient: no fit graph
    else:
        Q.check_finite(x, s.name)
        v = Q.as_row_scales(scales, work, s.k, s.name)
        s.check_scales(v)
    from . import _ops

    return _ops.foldable_quantize(work, v).to(x.dtype)
