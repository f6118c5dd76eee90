"""Typed entry points of the XNOR/popcount kernels, weight packing and back-end choice.

Back ends (one API, chosen per call):
    ``reference``  pure torch (:mod:`lsqbq.kernels.reference`), always present, used on non-CPU devices;
    ``portable``   compiled C++ (``torch.ops.lsqbq.*``, see :mod:`lsqbq._native`), scalar popcount (the POPCNT
                   instruction where the CPU has it, chosen at run time), any CPU;
    ``avx2``       the same library, AVX2 micro-kernels (nibble-lookup popcount on 256-bit registers) for CPUs
                   with AVX2, FMA and POPCNT but no AVX-512; the same results as ``portable`` bit for bit;
    ``avx512``     the same library, AVX-512 VPOPCNTDQ micro-kernels (chosen at run time when the CPU has them);
    ``neon``       the same library built on aarch64, NEON micro-kernels (``vcntq_u8`` byte popcount, pairwise
                   widening adds); the same results as ``portable`` bit for bit.
``backend=`` on every function picks one; ``None`` or ``auto`` (default) takes the one the switch
``LSQBQ_BACKEND`` names (:func:`lsqbq._native.requested_backend`; e.g. ``LSQBQ_BACKEND=portable`` runs the
portable C++ path on an AVX-512 machine, so CI covers it on any CPU), and the fastest available when it says
``auto`` (its default): ``avx512``, else ``avx2``, else ``portable`` on x86-64; ``neon`` on aarch64. Without the
C++ library (``LSQBQ_BACKEND=reference``, a failed build, or inside :func:`lsqbq._native.disabled`) only
``reference`` is available, so ``auto`` means ``reference``. Every error about a back end names the switch.
:func:`isa_path` names the instruction path a back end runs (recorded by the benchmarks).

Layouts (bit = 1 <=> -1, bit ``c mod 64`` of word ``c // 64``, tail bits 0):
    activations  ``(P_a, B, H + 2 ph, W + 2 pw, Cw)`` int64, NHWC packed along channels, zero words at the
                 padding (from :func:`encode`); for GEMMs ``(P_a, M, Kw)``. Ternary: ``P_a = 2`` = (sign, mask).
    weights      :class:`PackedWeight` (from :func:`pack_weight`), k index = tap * Cw + word.
Integer results are ``(P_a', P_w, ...)`` int32 dot products of the ±1 planes (``P_a' = 1`` for ternary, where the
value is ``<t, c>`` with ``t = x_q / (2v)`` in {-1, 0, 1}); scaled results are float32
``bias[n] + sum_ij sa[., i] sw[n, j] d_ij``.
"""
from __future__ import annotations

import functools
import platform
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _native, _ops
from ..errors import ConfigError, InputError
from . import reference as ref
from . import shapes
from .reference import FIT_GIVEN, FIT_GREEDY, FIT_LS2, FIT_TERNARY

__all__ = [
    "BACKENDS",
    "PackedWeight",
    "available_backends",
    "isa_path",
    "resolve_backend",
    "pack_signs",
    "pack_weight",
    "encode",
    "encode_fit",
    "bitwise_conv2d",
    "FIT_GIVEN",
    "FIT_GREEDY",
    "FIT_LS2",
    "FIT_TERNARY",
    "xnor_gemm",
    "xnor_gemm_scaled",
    "xnor_conv2d",
    "xnor_conv2d_scaled",
    "popcount_peak",
    "max_pool2d_nhwc",
    "quantize_uint8_nhwc",
]

BACKENDS = ("reference", "portable", "neon", "avx2", "avx512")  # slowest to fastest (x86 and aarch64 exclusive)
_ISA = {"portable": 0, "avx512": 1, "avx2": 2, "neon": 3}  # the ``isa`` argument of the C++ ops (lsqbq/csrc/isa.h)
AVX512_ISA = _ISA["avx512"]
AVX2_ISA = _ISA["avx2"]
NB = 32  # output channels per weight panel (fixed by the C++ micro-kernel)


def available_backends() -> list[str]:
    """Back ends usable here and now, slowest to fastest (``reference`` always; the C++ ones when the native
    library is active and the CPU has their instructions)."""
    out = ["reference"]
    if _ops.active():
        out += [b for b in BACKENDS[1:] if _isa_supported(b)]
    return out


def direct_conv_supported(isa: int | None) -> bool:
    """Whether the int8 direct convolution (``torch.ops.lsqbq.int8_direct_conv2d``, AVX-512 VNNI) runs for the
    compiled isa ``isa`` (:func:`cached_isa`): the AVX-512 back end on a CPU with VNNI."""
    return isa == _ISA["avx512"] and _ops.direct_conv_recorded()


@functools.lru_cache(maxsize=None)
def _isa_supported(name: str) -> bool:
    return bool(torch.ops.lsqbq.isa_supported(_ISA[name]))


def resolve_backend(backend: str | None = None, device: torch.device | str = "cpu") -> str:
    """The back end a call with ``backend`` will use on ``device``: ``backend`` when given, else the switch
    ``LSQBQ_BACKEND`` (``generic`` is the ``portable`` back end), and for ``auto`` the fastest available.

    Raises:
        ConfigError (a ``ValueError``): unknown name, or a compiled back end that is not available here; the
            message names ``LSQBQ_BACKEND`` and what to set it to.
    """
    env = _native.BACKEND_ENV
    name = backend or "auto"
    if name == "auto":
        name = _native.requested_backend()
        if name == "generic":
            name = "portable"
    elif name not in BACKENDS:
        raise ConfigError(f"unknown kernel backend {name!r}; choose one of auto, {', '.join(BACKENDS)} "
                          f"(backend= argument, --backend option or {env})")
    if (device.type if isinstance(device, torch.device) else torch.device(device).type) != "cpu" or name == "reference":
        return "reference"
    avail = available_backends()
    if name == "auto":
        return avail[-1]
    if name not in avail:
        raise ConfigError(f"kernel backend {name!r} is not available on this machine ({_why_not(name)}; "
                          f"available: {', '.join(avail)}); set {env}=auto, or {env}={avail[-1]}")
    return name


def compiled_isa(backend: str | None, device: torch.device | str = "cpu") -> int | None:
    """The ``isa`` argument of the C++ ops for :func:`resolve_backend`'s choice, or None for ``reference``."""
    return _ISA.get(resolve_backend(backend, device))


# Resolving the back end costs several environment reads and checks (5-10 us), so a call resolves again only when
# :func:`lsqbq._native.switch_state` changed; the choice still follows the switch on every call.
_isa_by_state: dict[tuple, int | None] = {}


def cached_isa(backend: str | None, device: torch.device | str = "cpu") -> int | None:
    """:func:`compiled_isa`, cached per back end, device type and switch state (a few dictionary reads per call
    instead of the full resolution; the per-layer ops and the float parts' ops call it on every forward)."""
    key = (backend, device.type if isinstance(device, torch.device) else str(device), *_native.switch_state())
    if key in _isa_by_state:
        return _isa_by_state[key]
    isa = compiled_isa(backend, device)  # raises ConfigError for a bad switch: nothing is cached then
    if len(_isa_by_state) >= 64:
        _isa_by_state.clear()
    _isa_by_state[key] = isa
    return isa


def _why_not(name: str) -> str:
    """Why the compiled back end ``name`` is missing: the switch, a failed build, or the CPU."""
    if _native.requested_backend() == "reference":
        return f"{_native.BACKEND_ENV}=reference keeps the C++ library unloaded"
    if not _ops.active():
        err = _native.build_error()
        return "the C++ library is not loaded" + (f": {type(err).__name__}" if err is not None else "")
    return {"avx512": "this CPU lacks AVX-512 VPOPCNTDQ",
            "avx2": "this CPU lacks AVX2 (with FMA and POPCNT)",
            "neon": f"NEON kernels exist only on aarch64, this CPU is {platform.machine() or 'unknown'}"}.get(
        name, "this CPU lacks it")


def isa_path(backend: str | None = None, device: torch.device | str = "cpu") -> str:
    """The instruction path a call with ``backend`` runs: ``reference`` (pure torch), ``avx512-vpopcntdq``,
    ``avx2``, ``neon``, ``portable-popcnt`` (x86-64 with the POPCNT instruction), ``portable-generic`` (software
    popcount: x86-64 CPUs without POPCNT, or ``LSQBQ_BACKEND=generic``) or ``portable-<arch>`` on other
    architectures."""
    name = resolve_backend(backend, device)
    if name == "avx512":
        return "avx512-vpopcntdq"
    if name in ("avx2", "neon"):
        return name
    if name == "portable":
        arch = platform.machine().lower()
        if arch not in ("x86_64", "amd64"):
            return f"portable-{arch}"
        generic = _native.requested_backend() == "generic" or not _cpu_has_popcnt()
        return "portable-generic" if generic else "portable-popcnt"
    return name


@functools.lru_cache(maxsize=None)
def _cpu_has_popcnt() -> bool:
    """Whether this x86-64 CPU has the POPCNT instruction (``/proc/cpuinfo``; False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "popcnt" in line.split() for line in f)
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ weights


@dataclass(frozen=True)
class PackedWeight:
    """Sign planes of a quantized weight, packed once.

    Attributes:
        rows: ``(P_w, N, T, Cw)`` int64 sign words per output channel and tap (reference layout).
        panels: ``(P_w, ceil(N/32), Kw, 32)`` int64: 32 output channels side by side per k word (C++ layout):
            ``Kw = T * Cw``, one or more words per tap, or with at most 32 input channels, where fewer, packed taps
            (:func:`tap_group`): ``Kw = KH * ceil(KW / G)``, word ``(kh, g)`` holding taps ``(kh, g G + i)`` side by
            side, channel ``c`` at bit ``i C + c`` (3 words instead of 9 for a 3x3 kernel on 16 channels).
        tapsum: ``(P_w, T, ceil(N/32) * 32)`` int32 ``sum_c c_j[n, c, t] = C - 2 popcount``: what a tap holding
            +1 everywhere adds, subtracted where the tap is padding.
        scales: ``(P_w, ceil(N/32) * 32)`` float32 weight scales (zero past ``n_out``).
        n_out, c_in, kernel: output channels, input channels (per tap), ``(KH, KW)``.
    """

    rows: Tensor
    panels: Tensor
    tapsum: Tensor
    scales: Tensor
    n_out: int
    c_in: int
    kernel: tuple[int, int]

    @property
    def planes(self) -> int:
        return self.rows.shape[0]

    def scales_nk(self) -> Tensor:
        """Weight scales as ``(N, P_w)``."""
        return self.scales[:, : self.n_out].t()


def tap_group(c_in: int, kernel_w: int) -> int:
    """Taps per k word of the packed-tap layout (:class:`PackedWeight`): ``min(64 // C, KW)`` for ``C < 64``,
    else 1 (a word or more per tap)."""
    return min(64 // c_in, kernel_w) if c_in < 64 else 1


def pack_weight(planes: Tensor, scales: Tensor | None = None) -> PackedWeight:
    """Pack ±1 weight planes.

    Shapes: ``planes: (P_w, N, C, KH, KW)`` (conv) or ``(P_w, N, K)`` (linear), ``scales: (N, P_w)`` or None
    (ones) -> :class:`PackedWeight`. Cost: O(P_w N K), once per layer.
    """
    if planes.dim() == 3:
        planes = planes[..., None, None]
    if planes.dim() != 5:
        raise ValueError(f"weight planes must be (P_w, N, C, KH, KW) or (P_w, N, K), got {tuple(planes.shape)}")
    P, N, C, KH, KW = planes.shape
    T = KH * KW
    planes = planes.float()
    nhwc = planes.permute(0, 1, 3, 4, 2).reshape(P, N, T, C)  # (P_w, N, T, C)
    rows = ref.pack_signs(nhwc)  # (P_w, N, T, Cw)
    cw = rows.shape[-1]
    n_pad = -(-N // NB) * NB
    g = tap_group(C, KW)
    if g >= 2:  # packed taps (C <= 32, KW >= 2: always fewer words): g taps of a kernel row per word, zero padded
        groups = -(-KW // g)
        per_row = planes.permute(0, 1, 3, 4, 2)  # (P_w, N, KH, KW, C)
        per_row = torch.nn.functional.pad(per_row, (0, 0, 0, groups * g - KW))  # (P_w, N, KH, groups * g, C)
        flat = ref.pack_signs(per_row.reshape(P, N, KH * groups, g * C)).reshape(P, N, KH * groups)
    else:
        flat = rows.reshape(P, N, T * cw)  # (P_w, N, Kw)
    words = flat.shape[-1]
    flat = torch.nn.functional.pad(flat, (0, 0, 0, n_pad - N))  # (P_w, Npad, Kw)
    panels = flat.reshape(P, n_pad // NB, NB, words).transpose(2, 3).contiguous()  # (P_w, NP, Kw, 32)
    tapsum = nhwc.sum(-1).round().to(torch.int32)  # (P_w, N, T)
    tapsum = torch.nn.functional.pad(tapsum.transpose(1, 2), (0, n_pad - N)).contiguous()  # (P_w, T, Npad)
    s = torch.ones(N, P) if scales is None else scales.detach().float().reshape(N, P)
    s = torch.nn.functional.pad(s.t(), (0, n_pad - N)).contiguous()  # (P_w, Npad)
    return PackedWeight(rows.contiguous(), panels, tapsum, s, N, C, (KH, KW))


# ------------------------------------------------------------------------------------------- ops


def pack_signs(x: Tensor, *, backend: str | None = None) -> Tensor:
    """``(..., K)`` float -> ``(..., ceil(K/64))`` int64 sign bits (bit = 1 iff not ``x >= 0``)."""
    b = resolve_backend(backend, x.device)
    if b == "reference":
        return ref.pack_signs(x)
    return torch.ops.lsqbq.pack_signs(x)


def encode(x: Tensor, scales: Tensor, *, clamp: float | None = None, mask: bool = False,
           padding: tuple[int, int] = (0, 0), backend: str | None = None) -> Tensor:
    """Foldable sign planes of activations, packed (op ``lsqbq::pack_activations``; the math is in
    :func:`lsqbq.kernels.reference.encode`).

    Shapes: ``x: (B, C, H, W)`` (channels_last is read without a copy) or ``(B, n)``; ``scales: (B, k)`` ->
    ``(k, B, H + 2 ph, W + 2 pw, Cw)`` or ``(k, B, Cw)`` int64; with ``mask`` (ternary) the 2 planes are
    (sign, non-zero mask).
    """
    b = resolve_backend(backend, x.device)
    scales = scales.float()
    if scales.dim() == 1:
        scales = scales.expand(x.shape[0], -1)
    if b == "reference":
        return ref.encode(x, scales, clamp, mask, tuple(padding))
    return torch.ops.lsqbq.pack_activations(x.float(), scales.contiguous(), float(clamp or 0.0), scales.shape[1],
                                            mask, int(padding[0]), int(padding[1]), _ISA[b])


def encode_fit(x: Tensor, planes: int, fit: int, *, scales: Tensor | None = None, clamp: float | None = None,
               mask: bool = False, padding: tuple[int, int] = (0, 0), prologue: tuple[Tensor, Tensor] | None = None,
               backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Fused activation encode (op ``lsqbq::encode_fused``): per-channel prologue ``y = fma(x, a, b)`` (a
    BatchNorm in front of the layer), clamp, per-sample scales and the packed planes in one pass per plane.

    ``fit``: ``FIT_GIVEN`` (``scales (B | 1, planes)``), ``FIT_GREEDY`` (ls-1 / gf-k: ``v_i = mean|r_i|``, float64
    sums in a fixed order, fused with the encode), ``FIT_LS2`` / ``FIT_TERNARY`` (the exact fits on the NHWC
    activation). Shapes: ``x: (B, C, H, W)`` (channels_last read in place) or ``(B, n)`` -> ``(words, scales)``
    with ``words`` as :func:`encode` and ``scales (B, planes)`` float32.
    """
    b = resolve_backend(backend, x.device)
    if b == "reference":
        return ref.encode_fit(x, planes, fit, scales, clamp, mask, tuple(padding), prologue)
    a, sh = (None, None) if prologue is None else prologue
    with _shape_errors(lambda: shapes.check_encode(x, planes, fit, scales, mask, padding)):
        return torch.ops.lsqbq.encode_fused(x.float(), a, sh, scales, float(clamp or 0.0), int(planes), int(fit),
                                            mask, int(padding[0]), int(padding[1]), _ISA[b])


def bitwise_conv2d(x: Tensor, w: PackedWeight, bias: Tensor | None = None, stride=1, padding=0, dilation=1, *,
                   planes: int, fit: int, scales: Tensor | None = None, clamp: float | None = None,
                   mask: bool = False, prologue: tuple[Tensor, Tensor] | None = None, residual: Tensor | None = None,
                   act: int = 0, slope: Tensor | None = None, residual_first: bool = True,
                   backend: str | None = None) -> Tensor:
    """A whole bitwise convolution layer in one op (``lsqbq::bitwise_conv2d``): :func:`encode_fit`, the binary
    convolution and the float epilogue ``y = bias + sum_ij sa_i sw_j d_ij``, ``(+ residual if residual_first)``,
    ``act`` (0 none, 1 ReLU, 2 PReLU with ``slope (N,)`` or ``(1,)``), ``(+ residual otherwise)``.

    Shapes: ``x: (B, C, H, W)``, ``residual: (B, N, OH, OW)`` -> ``(B, OH, OW, N)`` float32 (NHWC memory).
    Cost: ``planes`` passes over ``x`` for the encode, ``P_a P_w B OH OW N T Cw`` word ops for the convolution.
    """
    b = resolve_backend(backend, x.device)
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    if b == "reference":
        return ref.bitwise_conv2d(x, w.rows, w.scales_nk(), bias, w.kernel, s, p, d, planes, fit, scales, clamp, mask,
                                  prologue, residual, act, slope, residual_first)
    a, sh = (None, None) if prologue is None else prologue

    def check():
        shapes.check_conv_input(x, w.c_in, act)
        shapes.check_encode(x, planes, fit, scales, mask, p)

    with _shape_errors(check):
        return torch.ops.lsqbq.bitwise_conv2d(x.float(), w.panels, w.tapsum, w.scales, bias, a, sh, scales, residual,
                                              slope, float(clamp or 0.0), int(planes), int(fit), mask, int(act),
                                              residual_first, w.n_out, w.c_in, list(w.kernel), s, p, d, _ISA[b])


def _check_gemm(a: Tensor, w: PackedWeight, mask: bool) -> None:
    if w.kernel != (1, 1):
        raise InputError(f"xnor_gemm needs a (1, 1) packed weight, got kernel {w.kernel}")
    shapes.check_gemm_words(a, w.rows[:, :, 0, :], w.c_in, mask)


@contextmanager
def _shape_errors(check):
    """Run a C++ op; when its TORCH_CHECKs refuse the input (RuntimeError), ``check()`` -- the same rules in
    :mod:`lsqbq.kernels.shapes`, which the reference back end runs first -- raises the :class:`InputError` naming
    the sizes, so every back end raises the same class. Nothing is checked twice on the success path."""
    try:
        yield
    except RuntimeError:
        check()
        raise


def xnor_gemm(a: Tensor, w: PackedWeight, *, mask: bool = False, backend: str | None = None) -> Tensor:
    """Integer binary GEMM ``d[i, j, m, n] = <a_i[m], c_j[n]> = K - 2 popcount(a XOR c)``.

    Shapes: ``a: (P_a, M, Kw)`` -> ``(P_a', P_w, M, N)`` int32. Cost: ``P_a P_w M N Kw`` word ops.
    """
    _check_gemm(a, w, mask)
    b = resolve_backend(backend, a.device)
    if b == "reference":
        return ref.xnor_gemm(a, w.rows[:, :, 0, :], w.c_in, mask)
    return torch.ops.lsqbq.xnor_gemm(a.contiguous(), w.panels, w.n_out, w.c_in, mask, _ISA[b])


def xnor_gemm_scaled(a: Tensor, w: PackedWeight, sa: Tensor, bias: Tensor | None = None, *, mask: bool = False,
                     backend: str | None = None) -> Tensor:
    """``out[m, n] = bias[n] + sum_ij sa[m, i] sw[n, j] d[i, j, m, n]`` with the weight scales of ``w``.

    Shapes: ``a: (P_a, M, Kw)``, ``sa: (M, P_a')`` -> ``(M, N)`` float32.
    """
    _check_gemm(a, w, mask)
    b = resolve_backend(backend, a.device)
    if b == "reference":
        return ref.xnor_gemm_scaled(a, w.rows[:, :, 0, :], w.c_in, sa, w.scales_nk(), bias, mask)
    bias = None if bias is None else bias.detach().float().contiguous()
    return torch.ops.lsqbq.xnor_gemm_scaled(a.contiguous(), w.panels, sa.float().contiguous(), w.scales, bias,
                                            w.n_out, w.c_in, mask, _ISA[b])


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(t) for t in v]


def xnor_conv2d(a: Tensor, w: PackedWeight, hw: tuple[int, int], stride=1, padding=0, dilation=1, *,
                mask: bool = False, backend: str | None = None) -> Tensor:
    """Integer binary convolution with exact zero padding of the quantized activations.

    Shapes: ``a: (P_a, B, H + 2 ph, W + 2 pw, Cw)`` (from :func:`encode` with the same ``padding``) ->
    ``(P_a', P_w, B, OH, OW, N)`` int32. Sign planes: padding words are +1 and each padded tap's
    ``sum_c c_j`` (``w.tapsum``) is subtracted; ternary: padding has mask 0.
    """
    b = resolve_backend(backend, a.device)
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    if b == "reference":
        return ref.xnor_conv2d(a, w.rows, w.c_in, tuple(hw), w.kernel, s, p, d, mask)
    with _shape_errors(lambda: shapes.check_conv_words(a, w.rows, w.c_in, hw, w.kernel, s, p, d, mask)):
        return torch.ops.lsqbq.xnor_conv2d(a.contiguous(), w.panels, w.tapsum, w.n_out, w.c_in, list(hw),
                                           list(w.kernel), s, p, d, mask, _ISA[b])


def xnor_conv2d_scaled(a: Tensor, w: PackedWeight, sa: Tensor, bias: Tensor | None, hw: tuple[int, int], stride=1,
                       padding=0, dilation=1, *, mask: bool = False, backend: str | None = None) -> Tensor:
    """Scaled binary convolution ``bias[n] + sum_ij sa[b, i] sw[n, j] d_ij``; ``sa: (B, P_a')`` ->
    ``(B, OH, OW, N)`` float32 (NHWC memory)."""
    b = resolve_backend(backend, a.device)
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    if b == "reference":
        return ref.xnor_conv2d_scaled(a, w.rows, w.c_in, tuple(hw), w.kernel, sa, w.scales_nk(), bias, s, p, d, mask)
    bias = None if bias is None else bias.detach().float().contiguous()
    with _shape_errors(lambda: shapes.check_conv_words(a, w.rows, w.c_in, hw, w.kernel, s, p, d, mask)):
        return torch.ops.lsqbq.xnor_conv2d_scaled(a.contiguous(), w.panels, w.tapsum, sa.float().contiguous(),
                                                  w.scales, bias, w.n_out, w.c_in, list(hw), list(w.kernel), s, p, d,
                                                  mask, _ISA[b])


def popcount_peak(iters: int, *, backend: str | None = None) -> int:
    """Run the register-only XOR/popcount/add loop; returns the binary MACs done (time it to get the peak)."""
    b = resolve_backend(backend)
    if b == "reference":
        raise ConfigError(f"the popcount peak needs a compiled back end; set {_native.BACKEND_ENV}=auto (or portable, "
                          "neon, avx2, avx512) and make sure the C++ library builds")
    return int(torch.ops.lsqbq.popcount_peak(int(iters), _ISA[b]))


def max_pool2d_nhwc(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                    relu: bool = False, *, backend: str | None = None) -> Tensor | None:
    """``relu?(torch.max_pool2d(x, kernel, stride, padding))`` in one pass over a channels_last float32 CPU tensor
    (``lsqbq/csrc/maxpool.h``): ``y[b, c, i, j] = max`` over the window's pixels inside the image, NaN where the
    window holds one, exact (only the sign of a zero may differ from torch's). The caller keeps ``2 p < k`` and no
    ceil mode, so no window is empty. None when ``backend`` resolves to ``reference`` (no compiled library): the
    caller then pools with torch."""
    isa = cached_isa(backend, x.device)
    if isa is None:
        return None
    return torch.ops.lsqbq.max_pool2d_nhwc(x, list(kernel), list(stride), list(padding), bool(relu), isa)


def quantize_uint8_nhwc(x: Tensor, step: tuple[int, int] = (1, 1), levels: int = 255, channels: int = 0, *,
                        backend: str | None = None) -> tuple[Tensor, float, int, float, float] | None:
    """uint8 activations of a channels_last float32 CPU tensor over the pixel grid ``x[:, :, ::sh, ::sw]`` in two
    passes (``lsqbq/csrc/quantize.h``): ``(q, s_x, z, lo, hi)`` with ``q`` channels_last uint8 equal element for
    element to :func:`lsqbq.kernels.float_parts.quantize_uint8` of the grid, ``s_x`` and ``z`` its scale and zero
    point, ``(lo, hi)`` the grid's range. ``channels`` (0: ``x``'s): ``q``'s channel count; those past ``x``'s
    hold the quantized 0, as if zero channels were appended to ``x`` (they do not change the range, which
    includes 0). ``q`` is empty when the range is not finite (NaN or inf in the grid).
    None when ``backend`` resolves to ``reference``: the caller then quantizes with torch."""
    isa = cached_isa(backend, x.device)
    if isa is None:
        return None
    q, params = torch.ops.lsqbq.quantize_uint8(x, list(step), int(levels), int(channels), isa)
    scale, zero, lo, hi = params.tolist()
    return q, scale, 0 if zero != zero else int(zero), lo, hi
