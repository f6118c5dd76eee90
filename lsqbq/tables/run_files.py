"""Validation of the per-run result files the tables read: one schema per kind of file, and the run identity
checked against the folder a file sits in.

Kinds (what writes them):
    ``train``     ``metrics.json`` of ``lsqbq train``: identity ``dataset, model, x_quant, w_quant, seed``, accuracy
                  ``top1`` / ``top5``, ``epochs``, ``train_time_s``, provenance;
    ``evaluate``  ``metrics.json`` of ``lsqbq evaluate``: ``top1`` / ``top5`` over ``n`` test images of the training
                  run ``source_run_id`` evaluated as ``x_quant`` / ``w_quant`` (``top1_fitted`` / ``top1_stored``
                  with ``--scales both``);
    ``bitwise``   ``bitwise.json`` of ``python -m lsqbq.kernels.evaluation``: the same, plus ``top1_agreement``.

Rules: accuracies are finite percentages in [0, 100] with top-5 >= top-1; counts (``n``, ``n_test``, ``epochs``)
are integers >= 1; seeds integers >= 0; times finite and >= 0; schemes are names the registry
(:mod:`lsqbq.schemes`) trains; numbers are JSON numbers (not strings, not booleans), text is text; keys other
than these are kept unchecked. A file inside the workflow layout ``<dataset>/<model>/<x_quant>_<w_quant>/s<seed>/``
must name the run of that folder (files elsewhere are identified by their contents alone). A dataset name that is
one of the registered datasets (``data.name``) must be the one the run recorded; any other name is a profile's
``dataset_tag`` and labels runs of any dataset.

Every violation raises :class:`~lsqbq.errors.RunFileError` naming the file and the key.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from ..errors import RunFileError
from ..schemes import is_scheme_name, list_schemes

__all__ = ["KINDS", "read_run_file", "path_identity", "check_path_identity", "dataset_names", "names_dataset"]


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("lsqbq", "{message}", {"message": message})


def _scheme(v: str) -> str:
    if not is_scheme_name(v):
        raise _invalid(f"{v!r} is not a scheme a run is trained with; valid schemes: "
                       f"{', '.join(list_schemes(trainable_only=True))}")
    return v


Percent = Annotated[float, Field(ge=0, le=100)]
Count = Annotated[int, Field(ge=1)]
SchemeName = Annotated[str, AfterValidator(_scheme)]
Name = Annotated[str, Field(min_length=1)]


class _File(BaseModel):
    """Strict JSON types, no NaN / infinity; unknown keys are kept (the tables do not read them)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")

    top1: Percent
    top5: Percent

    @model_validator(mode="after")
    def _top5_at_least_top1(self):
        if self.top5 < self.top1:
            raise _invalid(f"'top5' ({self.top5}) is below 'top1' ({self.top1}): every top-1 hit is a top-5 hit")
        return self


class TrainFile(_File):
    dataset: Name
    model: Name
    x_quant: SchemeName
    w_quant: SchemeName
    seed: Annotated[int, Field(ge=0)]
    epochs: Count
    train_time_s: Annotated[float, Field(ge=0)]
    n_test: Optional[Count] = None
    loss: Optional[Annotated[float, Field(ge=0)]] = None
    run_id: Optional[str] = None
    teacher_run_id: Optional[str] = None
    commit: Optional[str] = None
    config_hash: Optional[str] = None
    data_hash: Optional[str] = None


class EvaluateFile(_File):
    source_run_id: Name
    x_quant: SchemeName
    w_quant: SchemeName
    n: Count
    top1_fitted: Optional[Percent] = None
    top1_stored: Optional[Percent] = None
    scale_mode: Optional[str] = None

    @model_validator(mode="after")
    def _both_modes(self):
        if (self.top1_fitted is None) != (self.top1_stored is None):
            have, lack = ("top1_fitted", "top1_stored") if self.top1_stored is None else ("top1_stored", "top1_fitted")
            raise _invalid(f"has {have!r} but no {lack!r} (`lsqbq evaluate --scales both` writes both)")
        return self


class BitwiseFile(EvaluateFile):
    top1_agreement: Percent


#: Kind of file -> (schema, the command that writes it).
KINDS = {"train": (TrainFile, "lsqbq train"), "evaluate": (EvaluateFile, "lsqbq evaluate"),
         "bitwise": (BitwiseFile, "python -m lsqbq.kernels.evaluation")}

_TYPES = {"float": "a number", "int": "an integer", "string": "a string", "dict": "a JSON object"}


def _describe(err: dict) -> str:
    """One pydantic error -> ``key 'top1': <what is wrong>, got <value>``."""
    loc, kind, value = err["loc"], err["type"], err.get("input")
    key = f"key {'.'.join(map(str, loc))!r}" if loc else "the file"
    if kind == "lsqbq":
        return f"{key}: {err['msg']}"
    if kind == "finite_number":
        return f"{key}: must be a finite number, got {value!r}"
    bounds = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}
    if kind in bounds:
        ctx = err.get("ctx", {})
        limit = next(iter(ctx.values())) if ctx else "?"
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"{key}: must be {bounds[kind]} {limit}, got {value!r}"
    if kind == "string_too_short":
        return f"{key}: must not be empty"
    base = kind.removesuffix("_type").removesuffix("_parsing")
    if base in _TYPES:
        return f"{key}: expected {_TYPES[base]}, got {type(value).__name__} {value!r}"
    return f"{key}: {err['msg']}, got {value!r}"


def _no_duplicates(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise ValueError(f"duplicate key {dup!r}")
    return dict(pairs)


def read_run_file(path: str | Path, kind: str) -> dict:
    """The validated contents of one result file of ``kind`` (a key of :data:`KINDS`), every key of the file kept.

    Raises:
        RunFileError: unreadable, not a JSON object, duplicate keys, or a key that breaks the schema (the first
            one, plus how many more), naming the file and the key.
    """
    path = Path(path)
    schema, command = KINDS[kind]
    if not path.is_file():  # a folder, a named pipe or a device would hang or mislead the read
        what = "no such file" if not path.exists() else "not a regular file"
        raise RunFileError(f"{path}: {what}; pass the {kind} results that `{command}` wrote")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunFileError(f"{path}: cannot read the run's {kind} results ({exc}); rerun `{command}`") from None
    if not isinstance(data, dict):
        raise RunFileError(f"{path}: expected a JSON object of {kind} results, got a JSON {_json_type(data)}; "
                           f"rerun `{command}`")
    try:
        schema.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        missing = [".".join(map(str, e["loc"])) for e in errors if e["type"] == "missing"]
        if missing:
            what = f"lacks the key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
            errors = [e for e in errors if e["type"] != "missing"]
        else:
            what = _describe(errors.pop(0))
        more = f" (and {len(errors)} more)" if errors else ""
        raise RunFileError(f"{path}: {what}{more}; rerun `{command}` or fix the file") from None
    return data


def _json_type(v) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(v), "null")


# ------------------------------------------------------------------------------------------ identity


_SEED_DIR = re.compile(r"s(0|[1-9][0-9]*)")


def path_identity(path: str | Path) -> dict:
    """The run a file's folders name in the layout ``<dataset>/<model>/<x_quant>_<w_quant>/s<seed>/<file>``:
    ``{"seed", "x_quant", "w_quant", "model", "dataset"}`` as far as the path reaches; ``{}`` outside the layout
    (the parent is not ``s<seed>`` or the one above is not two scheme names joined by ``_``)."""
    parts = Path(path).parts[:-1]
    if len(parts) < 2 or not _SEED_DIR.fullmatch(parts[-1]):
        return {}
    pair = parts[-2].split("_")
    if len(pair) != 2 or not all(is_scheme_name(s, trainable_only=False) for s in pair):
        return {}
    found = {"seed": int(parts[-1][1:]), "x_quant": pair[0], "w_quant": pair[1]}
    for key, i in (("model", -3), ("dataset", -4)):
        if len(parts) >= -i:
            found[key] = parts[i]
    return found


def dataset_names() -> list[str]:
    """The dataset loaders a run can record (:func:`lsqbq.data.list_datasets`, the values ``data.name`` accepts);
    imported only when a name differs from a recorded one (the readers import torch)."""
    from ..data import list_datasets

    return list_datasets()


def names_dataset(label: str, recorded: str) -> bool:
    """True when ``label`` (a folder or ``--dataset``) may name runs of the loader ``recorded``: the same name, or
    a tag that is no loader's name."""
    return label == recorded or label not in dataset_names()


def check_path_identity(path: str | Path, identity: dict, what: str = "key") -> None:
    """Raise :class:`RunFileError` when ``identity`` (``dataset, model, x_quant, w_quant, seed``; a subset is
    fine) disagrees with the run that ``path``'s folders name (:func:`path_identity`)."""
    folders = path_identity(path)
    for key, expected in folders.items():
        if key not in identity:
            continue
        value = identity[key]
        same = names_dataset(expected, value) if key == "dataset" else value == expected
        if not same:
            raise RunFileError(f"{path}: {what} {key!r} is {value!r}, but the file sits in the folder of "
                               f"{key} {expected!r}; it belongs to another run: move it to its own folder or "
                               "rerun the job that writes it")
