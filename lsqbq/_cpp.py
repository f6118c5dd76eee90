"""Build-on-first-use of the project's C++ sources with ``torch.utils.cpp_extension`` (cached).

A library is compiled once per source/flags/torch version into a cache directory and then only loaded:
``LSQBQ_BUILD_DIR``, else ``TORCH_EXTENSIONS_DIR/lsqbq``, else ``$XDG_CACHE_HOME/lsqbq`` (``~/.cache/lsqbq``),
one sub-directory per torch version. No ``-march`` flag is used, so one build runs on any x86-64 CPU.
If compiling fails the caller gets ``False`` and one warning, and uses its pure-torch path.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["cache_dir", "load_library"]

_lock = threading.Lock()
_loaded: dict[str, bool] = {}
_errors: dict[str, BaseException] = {}


def cache_dir() -> Path:
    """Directory holding compiled libraries (created on demand)."""
    if os.environ.get("LSQBQ_BUILD_DIR"):
        root = Path(os.environ["LSQBQ_BUILD_DIR"])
    elif os.environ.get("TORCH_EXTENSIONS_DIR"):
        root = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "lsqbq"
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lsqbq"
    return root / ("torch" + torch.__version__.split("+")[0].replace(".", "_"))


def load_library(name: str, sources: list[Path], extra_cflags: tuple[str, ...] = ()) -> bool:
    """Compile (if needed) and load ``sources`` as the op library ``name``; True on success, else warn once."""
    with _lock:
        if name in _loaded:
            return _loaded[name]
        try:
            from torch.utils import cpp_extension

            build = cache_dir() / name
            build.mkdir(parents=True, exist_ok=True)
            debug = os.environ.get("DEBUG", "0") == "1"
            cpp_extension.load(
                name=name,
                sources=[str(s) for s in sources],
                extra_cflags=(["-O0", "-g"] if debug else ["-O3"]) + list(extra_cflags),
                build_directory=str(build),
                is_python_module=False,
                with_cuda=False,
                verbose=os.environ.get("LSQBQ_BUILD_VERBOSE", "0") == "1",
            )
            _loaded[name] = True
        except Exception as exc:  # noqa: BLE001 - any build or load failure means "use the torch path"
            _loaded[name] = False
            _errors[name] = exc
            warnings.warn(f"lsqbq: could not build the C++ library {name} ({type(exc).__name__}: {exc}); "
                          "falling back to the pure-torch implementation", RuntimeWarning, stacklevel=3)
        return _loaded[name]


def build_error(name: str) -> BaseException | None:
    """The exception of a failed build of ``name``, or None."""
    return _errors.get(name)
