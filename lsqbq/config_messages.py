"""One line per pydantic validation error, naming the dotted key: what ``ConfigError`` says about a bad config.

``describe(err)`` turns one entry of ``ValidationError.errors()`` into e.g. ``optim.lr: must be > 0, got -0.1``,
``unknown key 'model.widht'; allowed: [...]`` or ``optim.lr: expected float, got str 'abc'``.
"""
from __future__ import annotations

import typing
from typing import Any

from .config_schema import Config

__all__ = ["describe"]

_TYPE_NAMES = {"int": "int", "float": "float", "bool": "bool", "string": "str", "list": "a list",
               "dict": "a mapping", "model": "a mapping", "literal": None}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}
_HINTS = {"data.batch_size": "batch normalisation needs at least two samples per batch",
          "seed": "seeds are non-negative integers"}
_FLOAT_HINT = " (write a number, e.g. 0.001, 1e-3 or 1.0e-3)"


def _dotted(loc: tuple) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _allowed(loc: tuple) -> list[str]:
    """Field names of the section at ``loc`` (for "unknown key" messages)."""
    cls: Any = Config
    for part in loc:
        cls = typing.get_type_hints(cls)[part]
    return sorted(cls.model_fields)


def describe(err: dict) -> str:
    """One pydantic error -> today's one-line message naming the dotted key."""
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    key = _dotted(loc)
    if kind == "lsqbq":
        return err["msg"]
    if kind == "extra_forbidden":
        return f"unknown key {key!r}; allowed: {_allowed(loc[:-1])}"
    if kind == "literal_error":
        return f"{key}: {value!r} is not one of {err['ctx']['expected']}"
    if kind == "finite_number":
        return f"{key}: must be a finite number, got {value!r}"
    if kind in _BOUNDS:
        name, op = _BOUNDS[kind]
        msg = f"{key}: must be {op} {err['ctx'][name]}, got {value!r}"
        return msg + (f" ({_HINTS[key]})" if key in _HINTS else "")
    if kind.endswith("too_short"):
        return f"{key}: must not be empty, got {value!r}"
    base = kind.split("_")[0]
    if base in _TYPE_NAMES and _TYPE_NAMES[base]:
        hint = _FLOAT_HINT if base == "float" and isinstance(value, str) else ""
        return f"{key or 'config'}: expected {_TYPE_NAMES[base]}, got {type(value).__name__} {value!r}{hint}"
    return f"{key or 'config'}: {err['msg']}, got {value!r}"
