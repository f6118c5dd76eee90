"""The native op library ``torch.ops.lsqbq``: the C++ quantizers and XNOR/popcount kernels, built on first use.

Every source of the one C++ source folder ``csrc/`` (the quantizers ``quant.cpp``; the XNOR engine split by idea:
``isa``, ``pool``, ``job`` / ``driver``, ``tile_portable`` / ``tile_avx512`` / ``tile_avx2`` / ``tile_neon``,
``encode*``, ``fit`` / ``sorted_fit`` (the exact fits), ``maxpool`` (the stem's pool + ReLU), ``quantize`` (int8 float
parts' inputs), ``direct_conv*`` (their stem, 1x1 and small linear layers on AVX-512 VNNI; ``direct_conv_f32``,
the fp32 float parts' convolutions of few taps), ``memprobe`` (the
benchmarks' memory probe), and ``ops_xnor.cpp``, its torch ops) is compiled with ``torch.utils.cpp_extension`` into one
library, once per source/header/flags/torch version, in a cache directory: ``LSQBQ_BUILD_DIR``, else
``TORCH_EXTENSIONS_DIR/lsqbq``, else ``$XDG_CACHE_HOME/lsqbq`` (``~/.cache/lsqbq``), one sub-directory per torch
version. No ``-march`` flag is used: the AVX-512 and AVX2 kernels carry function target attributes and are chosen at run
time, so one build runs on any x86-64 CPU; on aarch64 the same sources build the NEON kernels instead (the x86 files
compile to stubs there, the NEON files to stubs on x86-64). The Python side of the ops (portable kernels, autograd, fake
kernels) and the calls themselves live in :mod:`lsqbq._ops`.

The switch, one environment variable ``LSQBQ_BACKEND`` (:func:`requested_backend`):

=============  ====================================================================================================
``auto``       (default) build and load the library; the kernels take the fastest back end this CPU has
               (``avx512``, else ``avx2``, else ``portable`` on x86-64; ``neon`` on aarch64)
``reference``  the pure-torch path: the library is neither built nor loaded, the quantizers run their torch code
               and the kernels the ``reference`` back end (same results, slower)
``portable``   the C++ kernels' portable path (scalar popcount: the POPCNT instruction where the CPU has it)
``generic``    the portable path in its generic x86-64 build (software popcount), as CPUs without POPCNT run it
               (the C++ code reads this choice once, at the first kernel call of the process)
``avx512``     the AVX-512 VPOPCNTDQ micro-kernels (an error naming the switch where the CPU lacks them)
``avx2``       the AVX2 micro-kernels (nibble-lookup popcount on 256-bit registers; CPUs with AVX2, FMA and
               POPCNT, an error naming the switch elsewhere), the same results as ``portable`` bit for bit
``neon``       the aarch64 NEON micro-kernels (``vcntq_u8`` byte popcount, pairwise widening adds; every aarch64
               CPU has them, an error naming the switch elsewhere), the same results as ``portable`` bit for bit
=============  ====================================================================================================

A ``backend=`` argument of a kernel call wins over the switch. A failed build falls back to the pure-torch path
after one warning; :func:`disabled` does the same inside a block, for the calling thread. The names of earlier
releases still work for this one, with a ``DeprecationWarning``: ``LSQBQ_NATIVE=0`` (now ``reference``),
``LSQBQ_KERNELS=<name>`` (now ``LSQBQ_BACKEND=<name>``), ``LSQBQ_POPCNT=0`` (now ``generic``).
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from pathlib import Path

import torch

from .errors import ConfigError

__all__ = ["BACKEND_ENV", "BACKEND_CHOICES", "HEADERS", "SOURCES", "active", "build_error", "cache_dir", "disabled",
           "enabled", "load", "requested_backend", "switch_state"]

BACKEND_ENV = "LSQBQ_BACKEND"
BACKEND_CHOICES = ("auto", "reference", "portable", "generic", "avx512", "avx2", "neon")
_LEGACY_KERNELS = "LSQBQ_KERNELS"  # an earlier release's name of the switch (read when LSQBQ_BACKEND is unset)
# the C++ portable kernels read this variable (once, on their first call) to force their generic build
_CPP_POPCNT_ENV = "LSQBQ_POPCNT"

_ROOT = Path(__file__).parent
SOURCES = sorted(_ROOT.glob("csrc/*.cpp"))  # one library of all
HEADERS = sorted(_ROOT.glob("csrc/*.h"))  # included by the sources: part of the build key, copied beside them
_NAME = "lsqbq_native"
# -ffp-contract=off keeps every float operation as written (no fused multiply-add), so the C++ quantizers round
# exactly like the torch code; -fno-trapping-math only lets compares vectorise.
# -fopenmp: at::parallel_for (the quantizer ops; the engine's loops, csrc/pool.h set_runner) is an OpenMP region
# compiled into this library; linked by soname libgomp.so.1, it is the runtime torch already loaded, one pool.
_CFLAGS = ("-ffp-contract=off", "-fno-trapping-math", "-fopenmp")
_LDFLAGS = ("-fopenmp",)

_lock = threading.Lock()
_state: dict = {"loaded": None, "error": None}  # loaded: None (not tried), True, False
_thread = threading.local()
_warned: set[str] = set()  # deprecated switches already warned about
_set_here: set[str] = set()  # variables this module set for the C++ code


def requested_backend() -> str:
    """The back end the environment asks for: ``$LSQBQ_BACKEND`` (one of :data:`BACKEND_CHOICES`, any case,
    default ``auto``), else a deprecated switch of an earlier release (with a ``DeprecationWarning``).

    ``generic`` also tells the C++ portable kernels to use their generic build (they read it on first call).

    Raises:
        ConfigError: a value that is not a back end; the message names the variable and lists the choices.
    """
    raw = os.environ.get(BACKEND_ENV)
    name = BACKEND_ENV if raw is not None else _LEGACY_KERNELS
    value = (raw.strip().lower() or "auto") if raw is not None else _legacy_backend()
    if value not in BACKEND_CHOICES:
        raise ConfigError(f"{name}={os.environ.get(name)!r} is not a kernel back end; set {BACKEND_ENV} to one of "
                          f"{', '.join(BACKEND_CHOICES)} (or unset it for auto)")
    if value == "generic" and os.environ.get(_CPP_POPCNT_ENV) != "0":
        os.environ[_CPP_POPCNT_ENV] = "0"  # child processes inherit it beside LSQBQ_BACKEND=generic
        _set_here.add(_CPP_POPCNT_ENV)  # set here, not by the user: not a deprecated switch
    return value


def _legacy_backend() -> str:
    """The back end the switches of earlier releases ask for (``auto`` when none is set), with a warning."""
    if os.environ.get("LSQBQ_NATIVE", "").strip() == "0":
        return _deprecated("LSQBQ_NATIVE", "0", "reference")
    kernels = os.environ.get(_LEGACY_KERNELS)
    if kernels is not None:
        return _deprecated(_LEGACY_KERNELS, kernels, kernels.strip().lower() or "auto")
    if os.environ.get(_CPP_POPCNT_ENV, "").strip() == "0" and _CPP_POPCNT_ENV not in _set_here:
        return _deprecated(_CPP_POPCNT_ENV, "0", "generic")
    return "auto"


def _deprecated(name: str, raw: str, value: str) -> str:
    """``value``, after one ``DeprecationWarning`` per process naming ``name`` and its replacement."""
    if name not in _warned:  # once: the switch is read on every kernel call
        _warned.add(name)
        warnings.warn(f"{name}={raw} is deprecated and will be removed in the next release; set "
                      f"{BACKEND_ENV}={value} instead", DeprecationWarning, stacklevel=4)
    return value


def enabled() -> bool:
    """False when the switch asks for the pure-torch path (``LSQBQ_BACKEND=reference``): pure-torch quantizers,
    reference kernels, and the library neither built nor loaded."""
    return requested_backend() != "reference"


def cache_dir() -> Path:
    """Directory holding the compiled library (created on demand)."""
    if os.environ.get("LSQBQ_BUILD_DIR"):
        root = Path(os.environ["LSQBQ_BUILD_DIR"])
    elif os.environ.get("TORCH_EXTENSIONS_DIR"):
        root = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "lsqbq"
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lsqbq"
    return root / ("torch" + torch.__version__.split("+")[0].replace(".", "_"))


def load() -> bool:
    """Build (if needed) and load the library; True when ``torch.ops.lsqbq`` is ready.

    False without building when ``LSQBQ_BACKEND=reference``; False after one ``RuntimeWarning`` when the build fails.
    """
    if _state["loaded"] is not None:
        return _state["loaded"]
    if not enabled():
        return False
    with _lock:
        if _state["loaded"] is None:
            _state["loaded"] = _build_and_register()
    return _state["loaded"]


def _build_and_register() -> bool:
    try:
        import logging

        # torch's build helper logs "No CUDA runtime is found" on every CPU-only machine, when it is first imported;
        # we never build CUDA.
        logging.getLogger("torch.utils.cpp_extension").addFilter(
            lambda r: not str(r.msg).startswith("No CUDA runtime is found"))
        from torch.utils import cpp_extension

        debug = os.environ.get("DEBUG", "0") == "1"
        cflags = (["-O0", "-g"] if debug else ["-O3"]) + list(_CFLAGS)
        build, sources = _build_tree(cflags)
        with _own_ninja_first():
            cpp_extension.load(
                name=_NAME,
                sources=[str(s) for s in sources],
                extra_cflags=cflags,
                extra_ldflags=list(_LDFLAGS),
                build_directory=str(build),
                is_python_module=False,
                with_cuda=False,
                verbose=os.environ.get("LSQBQ_BUILD_VERBOSE", "0") == "1",
            )
    except Exception as exc:  # noqa: BLE001 - any build or load failure means "use the pure-torch code"
        _state["error"] = exc
        warnings.warn(f"lsqbq: could not build the C++ library {_NAME} ({type(exc).__name__}: {exc}); "
                      "falling back to the pure-torch implementation (LSQBQ_BACKEND=reference skips the build)",
                      RuntimeWarning, stacklevel=4)
        return False
    return True


@contextlib.contextmanager
def _own_ninja_first():
    """PATH with the directory of this Python environment's ``ninja`` (the ``ninja`` package, a dependency) first,
    for the build; restored after.

    torch's loader runs whichever ``ninja`` PATH finds, and ninja versions do not share their logs: a process run
    from an activated environment (a workflow job) and one run without it (``.venv/bin/lsqbq`` from a plain shell,
    with a system ninja on PATH) would each find the other's build log foreign and recompile every source (13 s
    on 2 cores, measured), one after the other. Pinned to the package's binary, every process of the environment
    agrees. Without the package, PATH is left as it is."""
    try:
        import ninja

        own = ninja.BIN_DIR
    except (ImportError, AttributeError):
        own = None
    before = os.environ.get("PATH")
    if own and Path(own, "ninja").is_file():
        os.environ["PATH"] = os.pathsep.join([own, before]) if before else own
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = before


def _build_tree(cflags: list[str]) -> tuple[Path, list[Path]]:
    """The build directory for these sources and flags, and the copies of the sources inside it.

    Content-addressed: ``cache_dir()/lsqbq_native-<sha256 of the sources' and headers' names and bytes and the
    flags>``, with the sources and headers copied into it, so every checkout of the same code (clones, worktrees,
    cluster jobs) shares one build and a changed header gets a new one; torch's extension loader keys its rebuilds
    on source paths, and would recompile per checkout. Returns the build directory and the copied sources.
    """
    import hashlib

    digest = hashlib.sha256(" ".join(cflags).encode())
    blobs = [(s.name, s.read_bytes()) for s in [*SOURCES, *HEADERS]]
    for name, data in blobs:
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    build = cache_dir() / f"{_NAME}-{digest.hexdigest()[:16]}"
    src = build / "src"
    src.mkdir(parents=True, exist_ok=True)
    copies = []
    for name, data in blobs:
        dst = src / name
        if not dst.is_file() or dst.read_bytes() != data:
            tmp = dst.with_name(f".{name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dst)  # atomic: a concurrent build sees the old or the new file, never half of one
        if dst.suffix == ".cpp":
            copies.append(dst)
    return build, copies


def build_error() -> BaseException | None:
    """The exception of a failed build, or None."""
    return _state["error"]


def active() -> bool:
    """True when calls should go to ``torch.ops.lsqbq``: the switch does not ask for the pure-torch path (read on
    every call, so ``LSQBQ_BACKEND=reference`` takes effect at once), the library is loaded (or loads now) and the
    calling thread is not inside :func:`disabled`."""
    return not getattr(_thread, "off", 0) and enabled() and load()


_SWITCHES = (BACKEND_ENV, "LSQBQ_NATIVE", _LEGACY_KERNELS, _CPP_POPCNT_ENV)
# CPython's os.environ keeps the environment in ``_data``, keyed by ``encodekey(name)`` and updated by every
# assignment or deletion through os.environ: reading it there skips the key encoding and value decoding of
# ``os.environ.get`` (0.05 against 0.75 us a variable; switch_state runs on every layer call). Elsewhere: get().
_ENV_DATA = getattr(os.environ, "_data", None)
_ENCODE = getattr(os.environ, "encodekey", None)
_SWITCH_KEYS = tuple(_ENCODE(k) for k in _SWITCHES) if _ENV_DATA is not None and _ENCODE is not None else None


def switch_state() -> tuple:
    """Everything the back-end choice reads besides a call's arguments: the switch, the earlier releases' names of
    it (their raw values: only equality matters), and whether the calling thread is inside :func:`disabled`. Equal
    states choose the same back end, so callers may cache a choice per state (a few dictionary reads instead of
    the full resolution)."""
    if _SWITCH_KEYS is not None:
        get = _ENV_DATA.get
        return (*(get(k) for k in _SWITCH_KEYS), getattr(_thread, "off", 0))
    get = os.environ.get
    return (*(get(k) for k in _SWITCHES), getattr(_thread, "off", 0))


@contextlib.contextmanager
def disabled():
    """Run the pure-torch code inside the block (this thread only); the portable kernels of the ops use it."""
    _thread.off = getattr(_thread, "off", 0) + 1
    try:
        yield
    finally:
        _thread.off -= 1
