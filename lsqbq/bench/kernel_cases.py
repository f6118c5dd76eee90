"""What ``lsqbq bench kernels`` times: the ResNet-18 3x3 layers as GEMMs and as whole bitwise layers, against
fp32 and int8, on one kernel back end.

* :func:`bench_gemm`  one layer as an im2col GEMM ``(M = OH*OW, N = C_out, K = 9*C_in)``, batch 1, 1 thread: fp32
  ``torch.mm``, int8 ``torch._int_mm`` and the binary GEMM with its scale epilogue per kernel of :data:`SCHEMES`,
  with the register-only popcount peak in the same round-robin;
* :func:`bench_conv`  the layer end to end from an fp32 activation: fp32 ``F.conv2d`` (NCHW and channels_last),
  int8 quantized conv (oneDNN and fbgemm) and :class:`~lsqbq.kernels.BitwiseConv2d` (fitted and stored scales),
  every candidate at every thread count side by side;
* :func:`breakdown`  where the 1-bit layer's time goes (encode, binary conv, the rest of the call);
* :func:`onednn_kernels`  which oneDNN implementation ran the int8 baseline (``ONEDNN_VERBOSE``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from ..kernels import BitwiseConv2d, encode_fit, pack_weight, popcount_peak, xnor_conv2d_scaled, xnor_gemm_scaled
from ..layers import QuantConv2d
from ..schemes import get_scheme, kernel_name
from .timing import load, time_group, time_stats, time_threads

IMAGENET = [(64, 56), (128, 28), (256, 14), (512, 7)]
CIFAR = [(64, 32), (128, 16), (256, 8), (512, 4)]
SMOKE = [(64, 4)]  # --smoke: one tiny layer (a check that everything runs, not a measurement)
# (activation, weight) scheme pairs timed; kernel names, bit planes and the ternary mask come from the registry
PAIRS = (("ls-1", "ls-1"), ("gf-2", "ls-1"), ("gf-2", "gf-2"), ("ls-T", "ls-1"), ("gf-3", "ls-1"))
SCHEMES = {kernel_name(x, w): (get_scheme(x), get_scheme(w)) for x, w in PAIRS}
ONE_BIT = kernel_name("ls-1", "ls-1")


def layer_name(c: int, hw: int) -> str:
    """``"64@56x56"``: channels @ height x width, the ``layer`` column of ``kernels.csv``."""
    return f"{c}@{hw}x{hw}"


def _pm1(*shape) -> torch.Tensor:
    return torch.where(torch.randn(*shape) >= 0, 1.0, -1.0)



def bench_gemm(c: int, hw: int, backend: str, repeats: int, min_time: float) -> list[dict]:
    """One ResNet-18 3x3 layer as an im2col GEMM at batch 1, 1 thread: fp32, int8 and the binary kernels, with
    the register-only peak timed in the same round-robin (``peak_gmacs`` of every row)."""
    torch.set_num_threads(1)
    M, N, K = hw * hw, c, 9 * c
    base = dict(kind="gemm", layer=layer_name(c, hw), batch=1, threads=1, M=M, N=N, K=K, macs=M * N * K)
    a, w = torch.randn(M, K), torch.randn(K, N)
    fns = {"fp32 torch.mm": lambda: torch.mm(a, w)}
    a8, w8 = torch.randint(-128, 128, (M, K), dtype=torch.int8), torch.randint(-128, 128, (K, N), dtype=torch.int8)
    try:
        torch._int_mm(a8, w8)
        fns["int8 torch._int_mm"] = lambda: torch._int_mm(a8, w8)
    except (RuntimeError, NotImplementedError) as exc:  # not every build has a CPU _int_mm
        warnings.warn(f"torch._int_mm unavailable: {exc}")
    binary_macs = {}
    for label, (xs, ws) in SCHEMES.items():
        pa, mask, pw = xs.planes, xs.ternary, ws.planes
        words = torch.randint(-(2**62), 2**62, (pa, M, (K + 63) // 64), dtype=torch.int64)
        packed = pack_weight(_pm1(pw, N, K), torch.rand(N, pw))
        sa = torch.rand(M, 1 if mask else pa)
        fns[label] = (lambda words=words, packed=packed, sa=sa, mask=mask:
                      xnor_gemm_scaled(words, packed, sa, mask=mask, backend=backend))
        binary_macs[label] = M * N * K * (1 if mask else pa) * pw
    iters = 200_000
    if backend != "reference":
        fns["peak"] = lambda: popcount_peak(iters, backend=backend)
    l0 = load()
    t = time_stats(fns, repeats, min_time)
    l1 = load()
    peak = popcount_peak(iters, backend=backend) / t.pop("peak")[0] if backend != "reference" else float("nan")
    rows = []
    for name, (med, mn) in t.items():
        row = {**base, "seconds": med, "seconds_min": mn, "peak_gmacs": peak / 1e9, "load_start": l0, "load_end": l1}
        if name in SCHEMES:
            rows.append({**row, "impl": f"binary {backend}", "scheme": name, "binary_macs": binary_macs[name]})
        else:
            rows.append({**row, "impl": name, "scheme": name.split()[0]})
    return rows


def _bitwise_conv(c: int, label: str, backend: str, mode: str) -> BitwiseConv2d:
    """A 3x3 ``c -> c`` bitwise layer of kernel ``label``; ``mode`` ``fitted`` (per-sample scales at run time)
    or ``stored`` (moving averages: the layer is given recorded ones)."""
    xs, ws = SCHEMES[label]
    layer = QuantConv2d(c, c, 3, padding=1, x_quant=xs, w_quant=ws, act_stats="eval_only" if mode == "stored" else "off")
    if mode == "stored":
        with torch.no_grad():
            layer.x_scales_ema.copy_(torch.tensor([0.5, 0.5] if xs.ternary else [0.8, 0.3, 0.1][: xs.k])[: xs.k])
            layer.x_ema_updates.fill_(1)
    return BitwiseConv2d(layer.eval(), backend=backend, scales=mode)


def _int8_conv(c: int, w: torch.Tensor, x_cl: torch.Tensor, engine: str):
    torch.backends.quantized.engine = engine
    qconv = torch.ao.nn.quantized.Conv2d(c, c, 3, padding=1)
    qconv.set_weight_bias(torch.quantize_per_tensor(w, 0.05, 0, torch.qint8), None)
    qconv.scale, qconv.zero_point = 0.1, 0
    qx = torch.quantize_per_tensor(x_cl, 0.05, 64, torch.quint8)
    with torch.inference_mode():
        qconv(qx)

    def run():
        torch.backends.quantized.engine = engine
        return qconv(qx)
    return run


def bench_conv(c: int, hw: int, batch: int, threads_list: list[int], backend: str, repeats: int,
               min_time: float, stored: bool = True) -> list[dict]:
    """One ResNet-18 3x3 layer end to end from a float activation, every candidate at every thread count."""
    M, N, K = batch * hw * hw, c, 9 * c
    base = dict(kind="conv", layer=layer_name(c, hw), batch=batch, M=M, N=N, K=K, macs=M * N * K)
    x = torch.randn(batch, c, hw, hw)
    w = torch.randn(c, c, 3, 3)
    x_cl, w_cl = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    cands: dict[str, tuple[Callable, dict]] = {
        "fp32 F.conv2d NCHW": (lambda: F.conv2d(x, w, padding=1), {"scheme": "fp32"}),
        "fp32 F.conv2d channels_last": (lambda: F.conv2d(x_cl, w_cl, padding=1), {"scheme": "fp32"}),
    }
    for engine in ("onednn", "fbgemm"):
        if engine in torch.backends.quantized.supported_engines:
            try:
                cands[f"int8 quantized conv ({engine})"] = (_int8_conv(c, w, x_cl, engine),
                                                            {"scheme": "int8", "engine": engine})
            except (RuntimeError, NotImplementedError, AssertionError) as exc:
                warnings.warn(f"int8 conv with engine {engine} failed: {exc}")
    for label, (xs, ws) in SCHEMES.items():
        modes = ["fitted"] + (["stored"] if stored and xs.k > 1 else [])
        for mode in modes:
            layer = _bitwise_conv(c, label, backend, mode)
            cands[f"binary {backend} {label} {mode}"] = (
                lambda layer=layer: layer(x_cl),
                {"scheme": label, "scale_mode": mode, "binary_macs": M * N * K * (1 if xs.ternary else xs.planes) * ws.planes})
    timed, l0, l1 = time_threads({n: fn for n, (fn, _) in cands.items()}, threads_list, repeats, min_time)
    rows = []
    for (name, t), (med, mn) in timed.items():
        impl = name if not name.startswith("binary") else f"binary {backend}"
        rows.append({**base, "impl": impl, "threads": t, "seconds": med, "seconds_min": mn, "load_start": l0,
                     "load_end": l1, **cands[name][1]})
    return rows


def breakdown(c: int, hw: int, backend: str, repeats: int, min_time: float) -> dict:
    """Where the time of the 1-bit layer goes (batch 1, 1 thread): the fused encode (clamp, per-sample scale,
    planes, padding), the binary convolution with its epilogue, and the rest of the module call (checks, Python,
    dispatch, allocation)."""
    torch.set_num_threads(1)
    x = torch.randn(1, c, hw, hw).contiguous(memory_format=torch.channels_last)
    layer = _bitwise_conv(c, ONE_BIT, backend, "fitted")
    a, v = encode_fit(x, layer.planes, layer.fit, padding=layer.padding, backend=backend)
    fns = {"layer": lambda: layer(x),
           "encode": lambda: encode_fit(x, layer.planes, layer.fit, padding=layer.padding, backend=backend),
           "conv": lambda: xnor_conv2d_scaled(a, layer.packed, v, None, (hw, hw), 1, 1, backend=backend)}
    with torch.inference_mode():
        t = time_group(fns, repeats, min_time)
    return {"layer": layer_name(c, hw), "layer_ms": 1e3 * t["layer"], "encode_ms": 1e3 * t["encode"],
            "conv_ms": 1e3 * t["conv"], "other_ms": 1e3 * (t["layer"] - t["encode"] - t["conv"]),
            "encode_share_of_conv": t["encode"] / t["conv"]}


_ONEDNN_PROBE = """
import torch, warnings
warnings.filterwarnings("ignore")
torch.backends.quantized.engine = "onednn"
for c, hw in {shapes}:
    w = torch.randn(c, c, 3, 3)
    q = torch.ao.nn.quantized.Conv2d(c, c, 3, padding=1)
    q.set_weight_bias(torch.quantize_per_tensor(w, 0.05, 0, torch.qint8), None)
    q.scale, q.zero_point = 0.1, 0
    x = torch.quantize_per_tensor(torch.randn(1, c, hw, hw).contiguous(memory_format=torch.channels_last),
                                  0.05, 64, torch.quint8)
    print("LAYER", c, hw, flush=True)
    with torch.inference_mode():
        for _ in range(2):
            q(x)
"""


def onednn_kernels(shapes: list[tuple[int, int]]) -> dict[str, str]:
    """The oneDNN convolution implementation that ran the int8 baseline per layer (from ``ONEDNN_VERBOSE=1`` in a
    child process), e.g. ``brg_conv_fwd:avx512_core_vnni``; empty where oneDNN says nothing."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1", "OMP_NUM_THREADS": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", _ONEDNN_PROBE.format(shapes=shapes)], env=env,
                             capture_output=True, text=True, timeout=300).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found, layer = {}, None
    for line in out.splitlines():
        if line.startswith("LAYER"):
            _, c, hw = line.split()
            layer = layer_name(c, hw)
        elif layer and ",exec," in line and "convolution" in line:
            parts = line.split(",")
            i = parts.index("convolution") if "convolution" in parts else -1
            if i >= 0 and i + 1 < len(parts):
                found[layer] = parts[i + 1]
    return found
