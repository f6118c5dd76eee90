"""Checkpoint files: atomic writes, safe (``weights_only``) loads, and rebuilding a model from a checkpoint.

A checkpoint is a plain dict of tensors and Python primitives so that
``torch.load(path, weights_only=True)`` can read it without unpickling arbitrary objects::

    {"format": 2, "config": {...}, "model_options": {...}, "epoch": int (epochs completed), "model": state_dict,
     "history": [...], "run_id": str, "data_hash": str, "train_time_s": float}

That is the published ``checkpoint.pt`` (weights, weight scales and activation moving averages are in the state
dict). The working ``resume.pt`` adds ``"optimizer"``, ``"schedule": {"step": int}`` and ``"rng"``
(:data:`RESUME_KEYS`), which only continuing the training needs.

The published checkpoint is written compact (``save_atomic(..., compact=True)``, format 2): its float32 weights are
split into a sign-and-exponent byte plane and the three low bytes (:func:`split_state`) and the zip entries are
deflated, which stores the same bits in ~16 % fewer bytes. :func:`load` reads formats 1 and 2 and always returns
plain tensors.

Every problem with a file (missing, empty, truncated, random bytes, a damaged or repeated zip entry, pickled code,
a foreign dict, weights that do not fit the model) raises :class:`~lsqbq.errors.CheckpointError` naming the file
and what to do. Files are written atomically (:mod:`lsqbq.atomic`), with the permissions the umask gives.
"""
from __future__ import annotations

import collections
import contextlib
import io
import math
import pickle
import random
import re
import struct
import sys
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write, remove_stale_tmp, write_text_atomic
from .errors import CheckpointError, CheckpointNotFoundError, ConfigError

__all__ = ["save_atomic", "write_text_atomic", "load", "rng_state", "set_rng_state", "FORMAT", "build_model",
           "load_weights", "load_model", "LoadedModel", "remove_stale_tmp", "MODEL_KEYS", "RESUME_KEYS"]

FORMAT = 2       # format 1: plain float32 state dicts (earlier releases); 2: may hold split entries (split_state)
_READS = (1, 2)
MODEL_KEYS = ("config", "model_options", "model")                       # enough to rebuild the model
RESUME_KEYS = MODEL_KEYS + ("epoch", "optimizer", "schedule", "rng", "history")  # enough to continue training
_ADAPTIVE = ("w_scales", "x_scales_ema", "x_ema_updates")  # quantizer buffers that adapt (lsqbq.layers)
_RETRAIN = "restore it from a backup or `dvc pull`, or retrain"


def save_atomic(obj: dict[str, Any], path: str | Path, compact: bool = False) -> Path:
    """Write ``obj`` to ``path`` atomically (:func:`lsqbq.atomic.atomic_write`: a temporary file beside it, fsync,
    ``os.replace``; mode ``0o666`` less the umask, e.g. ``0644`` under ``022``).

    A reader (or a run killed mid-write) sees either the previous complete file or the new one, never a
    truncated file. The temporary file is removed on any exception; one left by ``kill -9`` is removed by the
    next save of the same path. ``compact`` stores ``obj["model"]`` split (:func:`split_state`) in a deflated
    archive with fixed timestamps (format 2; the same bits, ~16 % fewer bytes, ~0.1 s per MB to write).
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not compact:
        return atomic_write(path, "wb", lambda f: torch.save(obj, f))
    obj = {**obj, "format": FORMAT}
    if isinstance(obj.get("model"), dict):
        obj["model"] = split_state(obj["model"])
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write(path, "wb", lambda f: f.write(_deflated(buf.getvalue())))


_write_atomic = atomic_write  # the former private name, still imported by callers of this module


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:160]}" if lines else type(e).__name__


def _damaged_zip(path: Path) -> str | None:
    """What is wrong with a zip checkpoint whose entry names repeat or whose stored CRC-32 checksums do not match
    its bytes, else None.

    ``torch.load`` checks neither: of two entries with one name it reads one copy without a word, and a flipped
    bit in the weights would load silently; this reads the file once more (~1 ms per MB). Files that are not zip
    archives are left to ``torch.load``'s own errors.
    """
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            names = collections.Counter(z.namelist())
            twice = next((n for n, count in names.items() if count > 1), None)
            if twice is not None:
                return (f"the zip archive holds the entry {twice!r} {names[twice]} times (which copy would be "
                        "read is undefined)")
            bad = z.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as e:
        return f"unreadable zip archive ({_first_line(e)})"
    return f"the checksum of {bad!r} does not match its bytes" if bad else None


def load(path: str | Path, map_location: str | torch.device = "cpu", require: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load an lsqbq checkpoint with ``weights_only=True``; ``require`` lists keys it must hold.

    Raises:
        CheckpointNotFoundError: no such file.
        CheckpointError: a directory, an empty / truncated / random file, a zip archive with a damaged or repeated
            entry, pickled code (refused, never run), something other than an lsqbq checkpoint dict, or a missing
            key of ``require``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}; check the path (a checkpoint.pt written by "
                                      "lsqbq train)")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; pass the checkpoint file inside it ({path / 'checkpoint.pt'})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); {_RETRAIN}")
    damaged = _damaged_zip(path)
    if damaged:
        raise CheckpointError(f"{path}: damaged: {damaged}; {_RETRAIN}")
    try:
        with warnings.catch_warnings():  # random bytes can look like an unusual pickle protocol: say it once, below
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if refused:
            raise CheckpointError(f"{path}: refused to load: it holds Python code ({refused.group(1)}) and "
                                  "checkpoints are read with torch.load(weights_only=True), which never runs code; "
                                  "use a checkpoint written by lsqbq train from a source you trust") from None
        raise CheckpointError(f"{path}: not a torch checkpoint (unreadable pickle data); {_RETRAIN}") from None
    except Exception as e:  # noqa: BLE001  arbitrary bytes reach any branch of the unpickler (IndexError, struct.error, ...)
        raise CheckpointError(f"{path}: truncated or not a torch checkpoint ({_first_line(e)}); {_RETRAIN}") from None
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT:
        raise CheckpointError(f"{path}: written by a newer lsqbq (checkpoint format {fmt}; this version reads formats "
                              f"1 to {FORMAT}); upgrade lsqbq")
    if fmt not in _READS or isinstance(fmt, bool):
        what = f"a {type(obj).__name__}" if not isinstance(obj, dict) else "a dict without 'format': 1 or 2"
        raise CheckpointError(f"{path}: not an lsqbq checkpoint (it holds {what}); pass a checkpoint.pt written by "
                              "lsqbq train")
    if isinstance(obj.get("model"), dict):
        obj["model"] = join_state(obj["model"], path)
    missing = [k for k in require if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: incomplete lsqbq checkpoint, missing {', '.join(missing)}; "
                              f"{_RETRAIN} with this version of lsqbq")
    if "model_options" in require and not (isinstance(obj["model_options"], dict) and obj["model_options"]):
        raise CheckpointError(f"{path}: the checkpoint holds no model options; {_RETRAIN} with this version of lsqbq")
    bad = [k for k in require if k in ("config", "model", "optimizer") and not isinstance(obj[k], dict)]
    if bad:
        raise CheckpointError(f"{path}: malformed lsqbq checkpoint ({bad[0]} is a {type(obj[bad[0]]).__name__}, "
                              f"not a mapping); {_RETRAIN}")
    return obj


# ------------------------------------------------------------------------------------------ compact weights

_SPLIT = "f32_split"   # marker key of a split float32 entry (format 2)
_SPLIT_MIN = 256       # smaller tensors are stored as they are


def _le_bytes(t: torch.Tensor) -> torch.Tensor:
    """``(n, 4)`` uint8 view of a float32 tensor, bytes in little-endian order on any host."""
    b = t.detach().contiguous().view(-1).view(torch.uint8).view(-1, 4)
    return b.flip(1) if sys.byteorder == "big" else b


def split_state(state: dict[str, Any]) -> dict[str, Any]:
    """Lossless compact form of a state dict: each float32 tensor of at least 256 values becomes
    ``{"f32_split": shape, "hi": uint8[n], "lo": uint8[n, 3]}``, its most significant byte (sign and seven exponent
    bits) apart from the three low bytes.

    Trained weights span a few octaves, so ``hi`` carries ~3 bits of information per value while ``lo`` is
    near-random; the Huffman-coded zip of :func:`save_atomic` then shrinks ``hi`` ~2.9x and a checkpoint ~16 %.
    """
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.dtype == torch.float32 and v.numel() >= _SPLIT_MIN:
            b = _le_bytes(v.cpu())
            out[k] = {_SPLIT: list(v.shape), "hi": b[:, 3].clone(), "lo": b[:, :3].clone()}
        else:
            out[k] = v
    return out


def join_state(state: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Inverse of :func:`split_state` (bit for bit); a malformed entry raises CheckpointError naming it."""
    out = {}
    for k, v in state.items():
        if isinstance(v, dict) and _SPLIT in v:
            shape, hi, lo = v[_SPLIT], v.get("hi"), v.get("lo")
            if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
                raise CheckpointError(f"{path}: model entry {k} is malformed (shape {shape!r} is not a list of sizes); "
                                      f"{_RETRAIN}")
            n = math.prod(shape)
            if not (isinstance(hi, torch.Tensor) and isinstance(lo, torch.Tensor) and hi.dtype == lo.dtype == torch.uint8
                    and hi.shape == (n,) and lo.shape == (n, 3)):
                raise CheckpointError(f"{path}: model entry {k} is malformed (a float32 tensor of shape {shape} is "
                                      f"stored as hi uint8[{n}] and lo uint8[{n}, 3]); {_RETRAIN}")
            b = torch.cat([lo, hi[:, None]], 1)
            b = b.flip(1) if sys.byteorder == "big" else b
            out[k] = b.contiguous().view(torch.float32).view(shape)
        else:
            out[k] = v
    return out


def _deflated(raw: bytes) -> bytes:
    """The zip archive ``raw`` (as torch.save writes it) rewritten with every entry deflated by Huffman coding
    alone (zlib ``Z_HUFFMAN_ONLY``) and fixed timestamps, so equal checkpoints are equal files.

    The byte planes hold no repeats for LZ77 to find; its short matches cost the sign-and-exponent plane ~0.5 bit
    per value (3.2 instead of 2.7). ``torch.load`` reads deflated entries; an archive of 2 GiB or more (which
    would need ZIP64 records) is returned unchanged.
    """
    if len(raw) >= 2**31:
        return raw
    with zipfile.ZipFile(io.BytesIO(raw)) as src:
        entries = [(info.filename.encode(), src.read(info)) for info in src.infolist()]
    out, central = io.BytesIO(), []
    for name, data in entries:
        z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_HUFFMAN_ONLY)
        packed = z.compress(data) + z.flush()
        # version 2.0, no flags, method 8 (deflate), 1980-01-01 00:00, CRC-32, sizes, name, no extra field
        fields = (8, 0, 0x21, zlib.crc32(data), len(packed), len(data), len(name))
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, *fields, 0, 0, 0, 0, 0o644 << 16,
                                   out.tell()) + name)
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, *fields, 0) + name + packed)
    directory = b"".join(central)
    offset = out.tell()
    out.write(directory + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), len(directory),
                                      offset, 0))
    return out.getvalue()


# ------------------------------------------------------------------------------------------ RNG state


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ------------------------------------------------------------------------------------------ models


def build_model(name: str, options: dict[str, Any]) -> nn.Module:
    """``lsqbq.models.build(name, **options)``; an unknown name raises ConfigError listing the registered ones."""
    from .models import build, list_models

    if name not in list_models():
        raise ConfigError(f"model.name: unknown model {name!r}; choose one of {', '.join(list_models())}")
    return build(name, **options)


def load_weights(model: nn.Module, state_dict: dict[str, Any], path: str | Path) -> nn.Module:
    """``model.load_state_dict(state_dict)`` (strict); a key or shape mismatch raises CheckpointError naming
    ``path`` and the first differing entries (e.g. another ``model.width``); a layer's own refusal (scales of
    another scheme, invalid stored scales: :mod:`lsqbq.layers`) is prefixed with ``path``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith(_ADAPTIVE)]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} in the file, {tuple(v.shape)} in the model" for k, v in own.items()
              if k in state_dict and isinstance(state_dict[k], torch.Tensor) and state_dict[k].shape != v.shape
              and not k.endswith(_ADAPTIVE)]
    problems = ([f"shape of {shapes[0]}"] if shapes else []) + \
               ([f"missing {missing[0]}"] if missing else []) + ([f"unexpected {unexpected[0]}"] if unexpected else [])
    if not problems:
        try:
            model.load_state_dict(state_dict)
            return model
        except CheckpointError as e:
            raise (e if str(e).startswith(f"{path}: ") else CheckpointError(f"{path}: {e}")) from None
        except RuntimeError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = next((ln for ln in lines[1:] if ln), lines[0] if lines else type(e).__name__)
            problems = [detail[:200]]
    raise CheckpointError(f"{path}: the weights do not fit the model ({'; '.join(problems)}); the model options "
                          "(model.name, width, layers, block, ...) must be those the checkpoint was trained with")


class LoadedModel(NamedTuple):
    """A model rebuilt from a checkpoint: ``model`` (eval mode), its validated ``config``, the raw ``state``."""

    model: nn.Module
    config: Any
    state: dict[str, Any]


def load_model(path: str | Path, map_location: str | torch.device = "cpu",
               options: dict[str, Any] | None = None, state: dict[str, Any] | None = None) -> LoadedModel:
    """Rebuild the model stored in checkpoint ``path`` and load its weights (weights_only load).

    ``options`` override entries of the stored builder options (e.g. ``{"w_quant": "ls-2"}`` for post-training
    quantization with another scheme: the weights then load inside :func:`lsqbq.layers.scheme_change`, which
    refits their scales; with the stored schemes, stored scales that do not fit them are refused, naming the
    layer); ``state`` reuses an already loaded checkpoint dict.
    """
    from .config import from_dict
    from .layers import scheme_change

    state = load(path, map_location, require=MODEL_KEYS) if state is None else state
    try:
        cfg = from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its stored config is not valid ({e}); {_RETRAIN}") from None
    opts = {**state["model_options"], **(options or {})}
    try:
        model = build_model(cfg.model.name, opts)
    except ConfigError:
        raise                                         # an unknown model or scheme name: says which
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model from its options ({_first_line(e)})") from None
    stored = state["model_options"]
    requantized = any(opts.get(k) != stored.get(k) for k in ("x_quant", "w_quant"))
    with scheme_change() if requantized else contextlib.nullcontext():  # a relabelled checkpoint is refused
        load_weights(model, state["model"], path)
    return LoadedModel(model.eval(), cfg, state)
