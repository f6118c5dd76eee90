"""Latency of the XNOR/popcount kernels against fp32 and int8 on this CPU: ``lsqbq bench kernels``.

Usage::

    lsqbq bench kernels [--quick] [--out results/bench] [--repeats 7] [--threads 1,2]

Everything is timed side by side in one process, round-robin (median of >= 7 repeats after warm-up, each repeat
long enough to average out timer noise; the minimum is recorded too), with the load average before and after:

* ``peak``  register-only XOR + popcount + add loop (512-bit VPOPCNTDQ, or 64-bit scalar), in binary MAC/s;
* ``gemm``  the ResNet-18 3x3 convs as im2col GEMMs ``(M = OH*OW, N = C_out, K = 9*C_in)``, batch 1: fp32
            ``torch.mm``, int8 ``torch._int_mm`` and the binary GEMM with its scale epilogue, per kernel
            (``1x1``, ``2x1``, ``2x2``, ``Tx1``, ``3x1``: activation x weight bits from the scheme registry);
* ``conv``  the same layers end to end from an fp32 activation: fp32 ``F.conv2d`` (NCHW and channels_last),
            int8 quantized conv (oneDNN and fbgemm, on an already quantized input; oneDNN's verbose log names
            the kernel that ran) and the bitwise layer (:class:`~lsqbq.kernels.BitwiseConv2d`: fused encode with
            the activation scales, binary convolution, epilogue), each at every thread count, so the thread
            speed-ups are side by side too. Scale modes: ``fitted`` per sample (what the trained models run) for
            every kernel, and ``stored`` moving averages for the multi-bit ones.

Shapes: ImageNet (64@56, 128@28, 256@14, 512@7) and CIFAR (64@32, 128@16, 256@8, 512@4) resolution, batch 1
and 16. ``--quick``: ImageNet shapes, batch 1, 1 thread. Outputs in ``--out``: ``kernels.csv``, ``kernels.md``
(machine, load, headline with the targets, tables, the time split of the 1-bit layer), ``kernels_headline.md``,
``kernels.png``; an MLflow run when tracking is available. Whole networks and checkpoints:
:mod:`lsqbq.bench.models`.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from ..kernels import BitwiseConv2d, available_backends, encode_fit, pack_weight, popcount_peak, xnor_conv2d_scaled
from ..kernels import xnor_gemm_scaled
from ..layers import QuantConv2d
from ..schemes import get_scheme, kernel_name
from . import int_list
from .timing import load, machine_info, time_group, time_stats, time_threads

IMAGENET = [(64, 56), (128, 28), (256, 14), (512, 7)]
CIFAR = [(64, 32), (128, 16), (256, 8), (512, 4)]
# (activation, weight) scheme pairs timed; kernel names, bit planes and the ternary mask come from the registry
PAIRS = (("ls-1", "ls-1"), ("gf-2", "ls-1"), ("gf-2", "gf-2"), ("ls-T", "ls-1"), ("gf-3", "ls-1"))
SCHEMES = {kernel_name(x, w): (get_scheme(x), get_scheme(w)) for x, w in PAIRS}
ONE_BIT = kernel_name("ls-1", "ls-1")
# Targets of the issue (median over the ImageNet layers, batch 1, 1 thread; conv end to end from fp32, fitted
# scales, against the faster fp32 layout): key -> (label, target, higher is better)
TARGETS = {
    f"conv_{ONE_BIT}_vs_fp32": (f"{ONE_BIT} conv vs fp32", 12.0),
    f"conv_{ONE_BIT}_vs_int8": (f"{ONE_BIT} conv vs oneDNN int8", 3.0),
    f"conv_{kernel_name('gf-2', 'ls-1')}_vs_fp32": (f"{kernel_name('gf-2', 'ls-1')} conv vs fp32", 8.0),
    f"conv_{kernel_name('ls-T', 'ls-1')}_vs_fp32": (f"{kernel_name('ls-T', 'ls-1')} conv vs fp32", 10.0),
    f"conv_{kernel_name('gf-2', 'gf-2')}_vs_fp32": (f"{kernel_name('gf-2', 'gf-2')} conv vs fp32", 5.0),
    f"gemm_{ONE_BIT}_peak_fraction": (f"{ONE_BIT} GEMM, fraction of the measured binary peak", 0.85),
    "threads2_batch16_min": ("2 threads vs 1, batch 16, slowest layer (1-bit conv)", 1.7),
    "threads2_batch1_64@56": ("2 threads vs 1, batch 1, 64@56 (1-bit conv)", 1.2),
}


def _pm1(*shape) -> torch.Tensor:
    return torch.where(torch.randn(*shape) >= 0, 1.0, -1.0)


def measure_peak(backend: str, repeats: int) -> float:
    """Binary MAC/s of the register-only inner loop (1 thread)."""
    iters = 2_000_000 if backend == "avx512" else 200_000
    macs = popcount_peak(iters, backend=backend)
    return macs / time_stats({"p": lambda: popcount_peak(iters, backend=backend)}, repeats, 0.02)["p"][0]


def bench_gemm(c: int, hw: int, backend: str, repeats: int, min_time: float) -> list[dict]:
    """One ResNet-18 3x3 layer as an im2col GEMM at batch 1, 1 thread: fp32, int8 and the binary kernels, with
    the register-only peak timed in the same round-robin (``peak_gmacs`` of every row)."""
    torch.set_num_threads(1)
    M, N, K = hw * hw, c, 9 * c
    base = dict(kind="gemm", layer=f"{c}@{hw}x{hw}", batch=1, threads=1, M=M, N=N, K=K, macs=M * N * K)
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
    base = dict(kind="conv", layer=f"{c}@{hw}x{hw}", batch=batch, M=M, N=N, K=K, macs=M * N * K)
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
    return {"layer": f"{c}@{hw}x{hw}", "layer_ms": 1e3 * t["layer"], "encode_ms": 1e3 * t["encode"],
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
            layer = f"{c}@{hw}x{hw}"
        elif layer and ",exec," in line and "convolution" in line:
            parts = line.split(",")
            i = parts.index("convolution") if "convolution" in parts else -1
            if i >= 0 and i + 1 < len(parts):
                found[layer] = parts[i + 1]
    return found


# ---------------------------------------------------------------------------------------------- reports


def _sel(df: pd.DataFrame, kind: str, batch: int = 1, threads: int = 1) -> pd.DataFrame:
    names = [f"{c}@{hw}x{hw}" for c, hw in IMAGENET]
    return df[(df.kind == kind) & (df.batch == batch) & (df.threads == threads) & df.layer.isin(names)]


def summarise(df: pd.DataFrame) -> dict[str, float]:
    """Headline ratios: medians over the ImageNet ResNet-18 layers (batch 1, 1 thread unless named)."""
    out = {}
    conv = _sel(df, "conv")
    fp = conv[conv.scheme == "fp32"].groupby("layer").seconds.min()
    int8 = conv[(conv.scheme == "int8") & (conv.get("engine", "") == "onednn")].groupby("layer").seconds.min()

    def binary(label: str, mode: str = "fitted") -> pd.Series:
        g = conv[(conv.scheme == label) & (conv.scale_mode == mode)]
        return g.set_index("layer").seconds

    for label in SCHEMES:
        for mode in ("fitted", "stored"):
            b = binary(label, mode)
            if len(b):
                key = f"conv_{label}_vs_fp32" + ("" if mode == "fitted" else "_stored")
                out[key] = float((fp / b).median())
    b1 = binary(ONE_BIT)
    if len(int8) and len(b1):
        out[f"conv_{ONE_BIT}_vs_int8"] = float((int8 / b1).median())
    gemm = _sel(df, "gemm")
    fpm = gemm[gemm.scheme == "fp32"].set_index("layer").seconds
    for label in SCHEMES:
        g = gemm[gemm.scheme == label]
        if len(g):
            out[f"gemm_{label}_vs_mm"] = float((fpm / g.set_index("layer").seconds).median())
    g = gemm[gemm.scheme == ONE_BIT]
    if len(g):
        out[f"gemm_{ONE_BIT}_peak_fraction"] = float((g.binary_macs / g.seconds / (g.peak_gmacs * 1e9)).median())
    # thread speed-ups of the 1-bit layer, measured side by side
    c = df[(df.kind == "conv") & (df.scheme == ONE_BIT) & (df.scale_mode == "fitted")]
    if (c.threads == 2).any():
        s = c.pivot_table(index=["layer", "batch"], columns="threads", values="seconds")
        ratio = (s[1] / s[2]).dropna()
        b16 = ratio[[i for i in ratio.index if i[1] == 16]]
        if len(b16):
            out["threads2_batch16_min"] = float(b16.min())
        if ("64@56x56", 1) in ratio.index:
            out["threads2_batch1_64@56"] = float(ratio[("64@56x56", 1)])
    return out


LABELS = {
    **{k: v[0] for k, v in TARGETS.items()},
    **{f"conv_{label}_vs_fp32": f"{label} conv vs fp32 (fitted scales)" for label in SCHEMES},
    **{f"conv_{label}_vs_fp32_stored": f"{label} conv vs fp32 (stored scales)" for label in SCHEMES},
    **{f"gemm_{label}_vs_mm": f"{label} GEMM vs fp32 torch.mm" for label in SCHEMES},
}


def headline_markdown(summary: dict[str, float]) -> str:
    """The headline ratios with their targets, as a markdown table."""
    rows = []
    for key, value in summary.items():
        target = TARGETS.get(key.removesuffix("_stored"), (None, None))[1]  # one target for both scale modes
        frac = "fraction" in key
        rows.append({
            "metric": LABELS.get(key, key),
            "measured": f"{100 * value:.0f} %" if frac else f"{value:.2f}x",
            "target": "" if target is None else (f">= {100 * target:.0f} %" if frac else f">= {target:g}x"),
            "met": "" if target is None else ("yes" if value >= target else f"no ({value / target:.0%} of it)"),
        })
    return pd.DataFrame(rows).to_markdown(index=False) + "\n"


def _speedup_table(g: pd.DataFrame) -> pd.DataFrame:
    """Milliseconds (median) with the speed-up over the faster fp32 layout per (layer, batch, threads) row, one
    column per implementation (binary kernels: fitted scales; ``/s``: stored scales)."""
    cols = ["fp32", "int8", *SCHEMES]
    rows = []
    for (layer, batch, threads), grp in g.groupby(["layer", "batch", "threads"], sort=False):
        fp = grp[grp.scheme == "fp32"].seconds.min()
        row = {"layer": layer, "batch": batch, "threads": threads}
        for col in cols:
            sel = grp[grp.scheme == col]
            if "scale_mode" in grp and col in SCHEMES and sel.scale_mode.notna().any():
                stored = sel[sel.scale_mode == "stored"]
                sel = sel[sel.scale_mode == "fitted"]
            else:
                stored = sel.iloc[0:0]
            t = sel.seconds.min() if len(sel) else float("nan")
            row[col] = "-" if t != t else f"{1e3 * t:.3f} ({fp / t:.1f}x)"
            if len(stored):
                ts = stored.seconds.min()
                row[col] += f" /s {1e3 * ts:.3f} ({fp / ts:.1f}x)"
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame, info: dict, peak: float, summary: dict[str, float], backend: str,
                split: list[dict], int8_kernels: dict[str, str]) -> str:
    """The whole report: machine and load, headline with targets, per-layer tables, the 1-bit layer's time split."""
    loads = pd.concat([df.load_start, df.load_end])
    parts = [
        "# XNOR/popcount kernel latency\n\n"
        f"Machine: {info['cpu']}, {info['cores']} cores; flags: {info['flags']}; torch {info['torch']}; "
        f"kernels: `{backend}`; int8 engines: {info.get('quantized_engines', '')}. Median of repeats after warm-up "
        "(the CSV has the minimum too); all ratios, thread counts included, measured side by side in one run. "
        f"Load average (1 min) during the run: {loads.min():.1f} to {loads.max():.1f} on {info['cores']} cores"
        + (" -- the machine was shared, so absolute times and especially the 2-thread rows are pessimistic."
           if loads.max() > 0.5 * (info["cores"] or 1) else ".") + "\n"
        f"Measured register-only binary peak (XOR + popcount + add, 1 thread): {peak / 1e9:.0f} GMAC/s.\n"
        "Binary conv times include the encode from the fp32 activation; scale mode `fitted` (per-sample scales at "
        "run time, what the trained models do) unless marked `/s` (stored moving averages).",
        "## Headline (median over the ImageNet ResNet-18 3x3 layers, batch 1, 1 thread unless named; "
        "against the faster fp32 layout)",
        headline_markdown(summary).rstrip("\n"),
    ]
    if int8_kernels:
        parts += ["oneDNN int8 kernels that ran (ONEDNN_VERBOSE): "
                  + ", ".join(f"{k}: `{v}`" for k, v in int8_kernels.items())]
    for kind in ("gemm", "conv"):
        g = df[df.kind == kind]
        if len(g):
            parts += [f"## {kind}: milliseconds (speed-up vs fp32)", _speedup_table(g).to_markdown(index=False)]
    if split:
        t = pd.DataFrame(split)
        parts += [f"## Where the {ONE_BIT} layer's time goes (batch 1, 1 thread, fitted scales; ms)",
                  t.to_markdown(index=False, floatfmt=".3f"),
                  "`encode`: clamp, per-sample mean|x| (float64 lanes) and sign planes with the padding, one pass; "
                  "`conv`: binary convolution and float epilogue; `other`: module checks, dispatch, allocation."]
    return "\n\n".join(parts) + "\n"


def render(df: pd.DataFrame, out: Path, split: list[dict] | None = None,
           int8_kernels: dict[str, str] | None = None) -> str:
    """Write ``kernels.md``, ``kernels_headline.md`` and ``kernels.png`` from a ``kernels.csv`` frame."""
    first = df.iloc[0]
    info = {k: first[k] for k in ("cpu", "cores", "flags", "torch") if k in df}
    info["quantized_engines"] = first.get("quantized_engines", "")
    backend = str(first["kernels"])
    g1 = df[(df.kind == "gemm") & (df.threads == 1)]
    peak = float(g1.peak_gmacs.median()) * 1e9 if "peak_gmacs" in df and len(g1) else float("nan")
    if split is None and (out / "kernels_split.csv").exists():
        split = pd.read_csv(out / "kernels_split.csv").to_dict("records")
    if int8_kernels is None and "int8_kernel" in df:
        k = df.dropna(subset=["int8_kernel"]).drop_duplicates("layer")
        int8_kernels = dict(zip(k.layer, k.int8_kernel))
    summary = summarise(df)
    md = to_markdown(df, info, peak, summary, backend, split or [], int8_kernels or {})
    (out / "kernels.md").write_text(md)
    (out / "kernels_headline.md").write_text(headline_markdown(summary))
    plot(df, out / "kernels.png")
    return md


def plot(df: pd.DataFrame, path: Path) -> None:
    """Latency per implementation and layer (end-to-end conv, batch 1, 1 thread, fitted scales), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = df[(df.kind == "conv") & (df.batch == 1) & (df.threads == 1)]
    g = g[(g.scheme.isin(["fp32", "int8"])) | (g.scale_mode == "fitted")]
    layers = list(dict.fromkeys(g.layer))
    schemes = ["fp32", "int8", *SCHEMES]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(schemes)
    for i, s in enumerate(schemes):
        ys = [g[(g.layer == layer) & (g.scheme == s)].seconds.min() * 1e3 for layer in layers]
        ax.bar([j + i * width for j in range(len(layers))], ys, width, label=s)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))], layers, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_xlabel("ResNet-18 3x3 layer (channels @ height x width)")
    ax.set_ylabel("latency per call (ms, log scale)")
    ax.set_title("3x3 conv end to end from fp32 input, batch 1, 1 thread (binary: fitted scales)")
    ax.legend(title="kernel (activation x weight bits)", loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lsqbq bench kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"), help="output directory")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per candidate (at least 7)")
    parser.add_argument("--quick", action="store_true", help="ImageNet shapes, batch 1, 1 thread (about a minute)")
    parser.add_argument("--threads", type=int_list(1), default=None,
                        help="thread counts to time, e.g. 1,2 (default: 1 and all)")
    parser.add_argument("--backend", default=None, help="kernel back end (default: fastest available)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite kernels.md / kernels.png from an existing kernels.csv in --out (no timing)")
    args = parser.parse_args(argv)
    if args.render_only:
        print(render(pd.read_csv(args.out / "kernels.csv"), args.out))
        return 0
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")  # int8 baseline: deprecation notice
    backend = args.backend or available_backends()[-1]
    repeats = max(7, args.repeats)
    min_time = 0.005 if args.quick else 0.02
    all_threads = torch.get_num_threads()
    if args.threads:
        threads_list = args.threads
    else:
        threads_list = [1] if args.quick or all_threads == 1 else sorted({1, 2, all_threads})
    shapes = IMAGENET if args.quick else IMAGENET + CIFAR
    batches = [1] if args.quick else [1, 16]
    info = machine_info()
    info["default_threads"] = info.pop("threads")
    info.update(quantized_engines=",".join(torch.backends.quantized.supported_engines),
                cpu_capability=torch.backends.cpu.get_cpu_capability(), kernels=backend)
    int8_kernels = onednn_kernels(shapes) if "onednn" in torch.backends.quantized.supported_engines else {}
    rows: list[dict] = []
    split: list[dict] = []
    try:
        for c, hw in shapes:
            rows += bench_gemm(c, hw, backend, repeats, min_time)
            for batch in batches:
                ts = threads_list if not (batch > 1 and (c, hw) in CIFAR) else [1]  # CIFAR batch 16: 1 thread
                rows += bench_conv(c, hw, batch, ts, backend, repeats, min_time)
                print(f"  {c}@{hw}x{hw} batch {batch} threads {ts} done (load {load():.1f})", flush=True)
            if (c, hw) in IMAGENET and backend != "reference":
                split.append(breakdown(c, hw, backend, repeats, min_time))
    finally:
        torch.set_num_threads(all_threads)
    df = pd.DataFrame(rows)
    df["gmacs"] = df.macs / df.seconds / 1e9
    df["binary_gmacs"] = df.get("binary_macs", pd.Series(dtype=float)) / df.seconds / 1e9
    df["peak_fraction"] = df.binary_gmacs / df.peak_gmacs if "peak_gmacs" in df else float("nan")
    df["ms"] = 1e3 * df.seconds
    df["int8_kernel"] = df.layer.map(int8_kernels).where(df.scheme == "int8")
    for key, value in info.items():
        df[key] = value
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "kernels.csv", index=False, float_format="%.6g")
    pd.DataFrame(split).to_csv(args.out / "kernels_split.csv", index=False, float_format="%.6g")
    md = render(pd.read_csv(args.out / "kernels.csv"), args.out, split, int8_kernels)
    summary = summarise(df)
    from .. import tracking

    tracking.record_run("bench", "bench_kernels",
                        params={**{k: v for k, v in info.items() if isinstance(v, (str, int, float))},
                                "quick": args.quick},
                        metrics=summary, tags={"quick": args.quick}, strict=False,
                        artifacts=[args.out / n for n in ("kernels.csv", "kernels.md", "kernels.png",
                                                          "kernels_split.csv")])
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
