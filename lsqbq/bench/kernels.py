"""Latency of the XNOR/popcount kernels against fp32 and int8 on this CPU: ``lsqbq bench kernels``.

Usage::

    lsqbq bench kernels [--quick] [--out results/bench] [--repeats 7]

Everything is timed side by side in one process (median of >= 5 repeats after warm-up, each repeat long
enough to average out timer noise):

* ``peak``     register-only XOR + popcount + add loop (512-bit VPOPCNTDQ, or 64-bit scalar), in binary MAC/s;
* ``gemm``     the ResNet-18 3x3 convs as im2col GEMMs ``(M = B*OH*OW, N = C_out, K = 9*C_in)``:
               fp32 ``torch.mm``, int8 ``torch._int_mm``, and the binary GEMM with the scale epilogue for
               1x1, 2x1, 2x2 bit planes and ternary (sign + mask) activations with 1-bit weights;
* ``conv``     the same layers end to end from a float activation: fp32 ``F.conv2d`` (best of NCHW and
               channels_last), int8 quantized conv (fbgemm / oneDNN engines, on an already quantized input),
               and the bitwise layer (scales + pack + conv + epilogue; the input is the channels_last tensor a
               previous bitwise layer produces);
* ``network``  ResNet-18 (ImageNet shape, batch 1; fp32 stem, shortcuts and classifier) converted with
               :func:`lsqbq.kernels.to_bitwise`, against the same network in fp32.

Shapes: ImageNet (64@56, 128@28, 256@14, 512@7) and CIFAR (64@32, 128@16, 256@8, 512@4) resolution, batch 1 and
16, 1 thread (headline) and all threads. ``--quick``: ImageNet shapes, batch 1, 1 thread, plus the network.
Outputs in ``--out``: ``kernels.csv``, ``kernels.md`` and ``kernels.png``; an MLflow run when tracking is available.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from ..kernels import BitwiseConv2d, available_backends, encode, pack_weight, popcount_peak, to_bitwise
from ..kernels import xnor_gemm_scaled
from ..layers import QuantConv2d
from .timing import machine_info

IMAGENET = [(64, 56), (128, 28), (256, 14), (512, 7)]
CIFAR = [(64, 32), (128, 16), (256, 8), (512, 4)]
# scheme label -> (x_quant, w_quant, activation planes, ternary mask, weight planes)
SCHEMES = {"1x1": ("ls-1", "ls-1", 1, False, 1), "2x1": ("gf-2", "ls-1", 2, False, 1),
           "2x2": ("gf-2", "gf-2", 2, False, 2), "Tx1": ("ls-T", "ls-1", 2, True, 1)}
TARGETS = {"gemm_1x1_vs_mm": 12.0, "gemm_1x1_peak_fraction": 0.80, "gemm_2x1_vs_mm": 6.0, "gemm_Tx1_vs_mm": 11.0,
           "conv_1x1_vs_fp32": 8.0, "conv_1x1_vs_int8": 1.0, "resnet18_vs_fp32": 4.0}


def time_group(fns: dict[str, Callable[[], object]], repeats: int, min_time: float) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin: every repeat runs each candidate once (for at
    least ``min_time`` seconds), so candidates share the machine's state and ratios are side by side even when
    the load changes. Two warm-up calls each first."""
    inner = {}
    for name, fn in fns.items():
        fn()
        fn()
        start = time.perf_counter()
        fn()
        inner[name] = max(1, int(min_time / max(time.perf_counter() - start, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            times[name].append((time.perf_counter() - start) / inner[name])
    return {name: statistics.median(t) for name, t in times.items()}


def median_time(fn: Callable[[], object], repeats: int, min_time: float) -> float:
    """Median seconds per call of one function (see :func:`time_group`)."""
    return time_group({"fn": fn}, repeats, min_time)["fn"]


def measure_peak(backend: str, repeats: int) -> float:
    """Binary MAC/s of the register-only inner loop."""
    iters = 2_000_000 if backend == "avx512" else 200_000
    macs = popcount_peak(iters, backend=backend)
    return macs / median_time(lambda: popcount_peak(iters, backend=backend), repeats, 0.02)


def _pm1(*shape) -> torch.Tensor:
    return torch.where(torch.randn(*shape) >= 0, 1.0, -1.0)


def bench_gemm(c: int, hw: int, batch: int, threads: int, backend: str, repeats: int, min_time: float) -> list[dict]:
    """One ResNet-18 3x3 layer as an im2col GEMM: fp32, int8 and the binary schemes, with the register-only peak
    timed in the same round-robin (``peak_gmacs`` of every row)."""
    M, N, K = batch * hw * hw, c, 9 * c
    base = dict(kind="gemm", layer=f"{c}@{hw}x{hw}", batch=batch, threads=threads, M=M, N=N, K=K, macs=M * N * K)
    a, w = torch.randn(M, K), torch.randn(K, N)
    fns = {"fp32 torch.mm": lambda: torch.mm(a, w)}
    a8, w8 = torch.randint(-128, 128, (M, K), dtype=torch.int8), torch.randint(-128, 128, (K, N), dtype=torch.int8)
    try:
        torch._int_mm(a8, w8)
        fns["int8 torch._int_mm"] = lambda: torch._int_mm(a8, w8)
    except (RuntimeError, NotImplementedError) as exc:  # not every build has a CPU _int_mm
        warnings.warn(f"torch._int_mm unavailable: {exc}")
    binary_macs = {}
    for label, (_, _, pa, mask, pw) in SCHEMES.items():
        words = torch.randint(-(2**62), 2**62, (pa, M, (K + 63) // 64), dtype=torch.int64)
        packed = pack_weight(_pm1(pw, N, K), torch.rand(N, pw))
        sa = torch.rand(M, 1 if mask else pa)
        fns[label] = (lambda words=words, packed=packed, sa=sa, mask=mask:
                      xnor_gemm_scaled(words, packed, sa, mask=mask, backend=backend))
        binary_macs[label] = M * N * K * (1 if mask else pa) * pw
    iters = 200_000
    if backend != "reference":
        fns["peak"] = lambda: popcount_peak(iters, backend=backend)
    t = time_group(fns, repeats, min_time)
    peak = popcount_peak(iters, backend=backend) / t.pop("peak") * threads if backend != "reference" else float("nan")
    rows = []
    for name, seconds in t.items():
        if name in SCHEMES:
            rows.append({**base, "impl": f"binary {backend}", "scheme": name, "seconds": seconds,
                         "binary_macs": binary_macs[name], "peak_gmacs": peak / 1e9})
        else:
            rows.append({**base, "impl": name, "scheme": name.split()[0], "seconds": seconds, "peak_gmacs": peak / 1e9})
    return rows


def _bitwise_conv(c: int, label: str, backend: str) -> BitwiseConv2d:
    xq, wq, pa, mask, _ = SCHEMES[label]
    act_stats = "off" if xq == "ls-1" else "eval_only"  # ls-1: per-sample mean|x|; others: stored scales
    layer = QuantConv2d(c, c, 3, padding=1, x_quant=xq, w_quant=wq, act_stats=act_stats).eval()
    if act_stats != "off":
        with torch.no_grad():
            layer.x_scales_ema.copy_(torch.tensor([0.8, 0.3] if not mask else [0.5, 0.5])[: layer.x_scheme.k])
            layer.x_ema_updates.fill_(1)
    return BitwiseConv2d(layer, backend=backend)


def bench_conv(c: int, hw: int, batch: int, threads: int, backend: str, repeats: int, min_time: float) -> list[dict]:
    """One ResNet-18 3x3 layer end to end from a float activation."""
    M, N, K = batch * hw * hw, c, 9 * c
    base = dict(kind="conv", layer=f"{c}@{hw}x{hw}", batch=batch, threads=threads, M=M, N=N, K=K, macs=M * N * K)
    x = torch.randn(batch, c, hw, hw)
    w = torch.randn(c, c, 3, 3)
    x_cl, w_cl = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    fns = {"fp32 F.conv2d NCHW": lambda: F.conv2d(x, w, padding=1),
           "fp32 F.conv2d channels_last": lambda: F.conv2d(x_cl, w_cl, padding=1)}
    for engine in ("fbgemm", "onednn"):
        if engine not in torch.backends.quantized.supported_engines:
            continue
        try:
            torch.backends.quantized.engine = engine
            qconv = torch.ao.nn.quantized.Conv2d(c, c, 3, padding=1)
            qconv.set_weight_bias(torch.quantize_per_tensor(w, 0.05, 0, torch.qint8), None)
            qconv.scale, qconv.zero_point = 0.1, 0
            qx = torch.quantize_per_tensor(x_cl, 0.05, 64, torch.quint8)
            with torch.inference_mode():
                qconv(qx)

            def run_int8(qconv=qconv, qx=qx, engine=engine):
                torch.backends.quantized.engine = engine
                return qconv(qx)

            fns[f"int8 quantized conv ({engine})"] = run_int8
        except (RuntimeError, NotImplementedError, AssertionError) as exc:
            warnings.warn(f"int8 conv with engine {engine} failed: {exc}")
    binary_macs = {}
    for label in SCHEMES:
        layer = _bitwise_conv(c, label, backend)
        _, _, pa, mask, pw = SCHEMES[label]
        fns[label] = lambda layer=layer: layer(x_cl)
        binary_macs[label] = M * N * K * (1 if mask else pa) * pw
    with torch.inference_mode():
        t = time_group(fns, repeats, min_time)
    rows = []
    for name, seconds in t.items():
        if name in SCHEMES:
            rows.append({**base, "impl": f"binary {backend}", "scheme": name, "seconds": seconds,
                         "binary_macs": binary_macs[name]})
        else:
            rows.append({**base, "impl": name, "scheme": name.split()[0], "seconds": seconds})
    return rows


def bench_network(threads: int, backend: str, repeats: int, schemes: list[str]) -> list[dict]:
    """ResNet-18 at ImageNet shape, batch 1: the bitwise network against the same network in fp32."""
    from ..models import build

    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    base = dict(kind="network", layer="resnet18 224x224", batch=1, threads=threads)
    fp = build("resnet18", block="xnor").eval()  # same topology, fp32 3x3 convs
    fp_cl = copy.deepcopy(fp).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    fns = {"fp32 NCHW": lambda: fp(x), "fp32 channels_last": lambda: fp_cl(x_cl)}
    for label in schemes:
        xq, wq, _, _, _ = SCHEMES[label]
        act_stats = "off" if xq == "ls-1" else "eval_only"
        net = build("resnet18", x_quant=xq, w_quant=wq, act_stats=act_stats).eval()
        if act_stats != "off":
            for m in net.modules():
                if isinstance(m, QuantConv2d):
                    m.x_scales_ema.fill_(0.5)
                    m.x_ema_updates.fill_(1)
        fast = to_bitwise(net, backend=backend).to(memory_format=torch.channels_last)
        fns[label] = lambda fast=fast: fast(x_cl)
    with torch.inference_mode():
        t = time_group(fns, repeats, 0.2)
    rows = []
    for name, seconds in t.items():
        impl = f"binary {backend}" if name in SCHEMES else name
        rows.append({**base, "impl": impl, "scheme": name if name in SCHEMES else "fp32", "seconds": seconds})
    return rows


def summarise(df: pd.DataFrame, peak: float) -> dict[str, float]:
    """Headline ratios: medians over the ImageNet ResNet-18 layers, batch 1, 1 thread."""
    out = {}
    names = [f"{c}@{hw}x{hw}" for c, hw in IMAGENET]
    sel = df[(df.threads == 1) & (df.batch == 1) & df.layer.isin(names)]

    def ratio(kind: str, base_scheme: str, scheme: str) -> float:
        g = sel[sel.kind == kind]
        base = g[g.scheme == base_scheme].groupby("layer").seconds.min()
        binr = g[g.scheme == scheme].set_index("layer").seconds
        return float((base / binr).median())

    out["gemm_1x1_vs_mm"] = ratio("gemm", "fp32", "1x1")
    out["gemm_2x1_vs_mm"] = ratio("gemm", "fp32", "2x1")
    out["gemm_2x2_vs_mm"] = ratio("gemm", "fp32", "2x2")
    out["gemm_Tx1_vs_mm"] = ratio("gemm", "fp32", "Tx1")
    g = sel[(sel.kind == "gemm") & (sel.scheme == "1x1")]
    out["gemm_1x1_peak_fraction"] = float((g.binary_macs / g.seconds / (g.peak_gmacs * 1e9)).median())
    out["conv_1x1_vs_fp32"] = ratio("conv", "fp32", "1x1")
    out["conv_1x1_vs_int8"] = ratio("conv", "int8", "1x1")
    out["conv_Tx1_vs_fp32"] = ratio("conv", "fp32", "Tx1")
    net = df[(df.kind == "network") & (df.threads == 1)]
    if len(net):
        fp = float(net[net.scheme == "fp32"].seconds.min())
        out["resnet18_vs_fp32"] = fp / float(net[net.scheme == "1x1"].seconds.min())
    return out


LABELS = {
    "gemm_1x1_vs_mm": "1-bit x 1-bit GEMM vs fp32 torch.mm",
    "gemm_2x1_vs_mm": "2-bit x 1-bit GEMM vs fp32 torch.mm",
    "gemm_2x2_vs_mm": "2-bit x 2-bit GEMM vs fp32 torch.mm",
    "gemm_Tx1_vs_mm": "ternary x 1-bit GEMM (sign + mask) vs fp32 torch.mm",
    "gemm_1x1_peak_fraction": "1-bit GEMM, fraction of the measured binary peak",
    "conv_1x1_vs_fp32": "1-bit 3x3 conv end to end vs fp32 F.conv2d",
    "conv_1x1_vs_int8": "1-bit 3x3 conv end to end vs int8 quantized conv",
    "conv_Tx1_vs_fp32": "ternary 3x3 conv end to end vs fp32 F.conv2d",
    "resnet18_vs_fp32": "binary ResNet-18 end to end vs fp32",
}


def headline_markdown(summary: dict[str, float]) -> str:
    """The headline ratios with their targets, as a markdown table."""
    lines = ["| metric | measured | target | met |", "|---|---|---|---|"]
    for key, value in summary.items():
        target = TARGETS.get(key)
        shown = f"{100 * value:.0f} %" if "fraction" in key else f"{value:.1f}x"
        tshown = "" if target is None else (f">= {100 * target:.0f} %" if "fraction" in key else f">= {target:g}x")
        met = "" if target is None else ("yes" if value >= target else "no")
        lines.append(f"| {LABELS.get(key, key)} | {shown} | {tshown} | {met} |")
    return "\n".join(lines) + "\n"


def to_markdown(df: pd.DataFrame, info: dict, peak: float, summary: dict[str, float], backend: str) -> str:
    lines = [
        "# XNOR/popcount kernel latency",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores; flags: {info['flags']}; torch {info['torch']}; "
        f"kernels: `{backend}`. Median of repeats after warm-up; all ratios measured side by side in one run.",
        f"Measured register-only binary peak (XOR + popcount + add, 1 thread): {peak / 1e9:.0f} GMAC/s.",
        "",
        "## Headline (median over the ImageNet ResNet-18 3x3 layers, batch 1, 1 thread)",
        "",
        headline_markdown(summary).rstrip("\n"),
    ]
    for kind in ("gemm", "conv"):
        g = df[df.kind == kind]
        if not len(g):
            continue
        lines += ["", f"## {kind}: milliseconds (speed-up vs fp32)", ""]
        schemes = ["fp32", "int8", *SCHEMES]
        lines.append("| layer | batch | threads | " + " | ".join(schemes) + " |")
        lines.append("|---" * (len(schemes) + 3) + "|")
        for (layer, batch, threads), grp in g.groupby(["layer", "batch", "threads"], sort=False):
            fp = grp[grp.scheme == "fp32"].seconds.min()
            cells = []
            for s in schemes:
                t = grp[grp.scheme == s].seconds.min() if (grp.scheme == s).any() else float("nan")
                cells.append("-" if t != t else f"{1e3 * t:.3f} ({fp / t:.1f}x)")
            lines.append(f"| {layer} | {batch} | {threads} | " + " | ".join(cells) + " |")
    net = df[df.kind == "network"]
    if len(net):
        lines += ["", "## ResNet-18, 224x224, batch 1", "", "| impl | scheme | threads | ms | speed-up |",
                  "|---|---|---|---|---|"]
        for threads, grp in net.groupby("threads"):
            fp = grp[grp.scheme == "fp32"].seconds.min()
            for _, r in grp.iterrows():
                lines.append(f"| {r.impl} | {r.scheme} | {threads} | {1e3 * r.seconds:.2f} | {fp / r.seconds:.1f}x |")
    return "\n".join(lines) + "\n"


def plot(df: pd.DataFrame, path: Path) -> None:
    """Latency vs scheme per layer (end-to-end conv, batch 1, 1 thread), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = df[(df.kind == "conv") & (df.batch == 1) & (df.threads == 1)]
    layers = list(dict.fromkeys(g.layer))
    schemes = ["fp32", "int8", *SCHEMES]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(schemes)
    for i, s in enumerate(schemes):
        ys = [g[(g.layer == layer) & (g.scheme == s)].seconds.min() * 1e3 for layer in layers]
        ax.bar([j + i * width for j in range(len(layers))], ys, width, label=s)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))], layers)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title("3x3 conv end to end, batch 1, 1 thread")
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_mlflow(df: pd.DataFrame, info: dict, summary: dict[str, float], out: Path, quick: bool) -> None:
    """One MLflow run per invocation (skipped when the tracking module is unavailable)."""
    try:
        from .. import tracking
    except ImportError:
        return
    try:
        run = tracking.start_run("bench", "bench_kernels", tags={"quick": quick})
        run.log_params({**info, "quick": quick})
        run.log_metrics(summary, step=0)
        for name in ("kernels.csv", "kernels.md", "kernels.png"):
            if (out / name).exists():
                run.log_artifact(out / name)
        run.end()
    except Exception as exc:  # noqa: BLE001 - tracking must never fail a benchmark
        warnings.warn(f"MLflow logging failed: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lsqbq bench kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="ImageNet shapes, batch 1, 1 thread (about a minute)")
    parser.add_argument("--backend", default=None, help="kernel back end (default: fastest available)")
    parser.add_argument("--no-network", action="store_true", help="skip the ResNet-18 end-to-end timing")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")  # int8 baseline: deprecation notice
    backend = args.backend or available_backends()[-1]
    repeats = max(5, args.repeats)
    min_time = 0.005 if args.quick else 0.02
    all_threads = torch.get_num_threads()
    threads_list = [1] if args.quick or all_threads == 1 else [1, all_threads]
    shapes = IMAGENET if args.quick else IMAGENET + CIFAR
    batches = [1] if args.quick else [1, 16]
    info = machine_info()
    info["default_threads"] = info.pop("threads")
    info.update(quantized_engines=",".join(torch.backends.quantized.supported_engines),
                cpu_capability=torch.backends.cpu.get_cpu_capability(), kernels=backend)
    rows: list[dict] = []
    peaks = {}
    try:
        for threads in threads_list:
            torch.set_num_threads(threads)
            if backend != "reference":
                peaks[threads] = measure_peak(backend, repeats) if threads == 1 else peaks[1] * threads
            for c, hw in shapes:
                for batch in batches:
                    if batch > 1 and (c, hw) in CIFAR and threads > 1:
                        continue  # keep the full run short: CIFAR batch 16 only at 1 thread
                    rows += bench_gemm(c, hw, batch, threads, backend, repeats, min_time)
                    rows += bench_conv(c, hw, batch, threads, backend, repeats, min_time)
                    print(f"  {c}@{hw}x{hw} batch {batch} threads {threads} done", flush=True)
            if not args.no_network:
                rows += bench_network(threads, backend, repeats, ["1x1"] if args.quick else ["1x1", "2x1"])
    finally:
        torch.set_num_threads(all_threads)
    df = pd.DataFrame(rows)
    peak = peaks.get(1, float("nan"))
    if "peak_gmacs" in df:  # the peak timed beside the GEMMs (1 thread) is the better estimate under load
        g1 = df[(df.kind == "gemm") & (df.threads == 1)]
        peak = float(g1.peak_gmacs.median()) * 1e9 if len(g1) else peak
    df["gmacs"] = df.get("macs", pd.Series(dtype=float)) / df.seconds / 1e9
    df["binary_gmacs"] = df.get("binary_macs", pd.Series(dtype=float)) / df.seconds / 1e9
    if "peak_gmacs" in df:
        df["peak_fraction"] = df.binary_gmacs / df.peak_gmacs
    df["ms"] = 1e3 * df.seconds
    for key, value in info.items():
        df[key] = value
    summary = summarise(df, peak)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "kernels.csv", index=False, float_format="%.6g")
    md = to_markdown(df, info, peak, summary, backend)
    (args.out / "kernels.md").write_text(md)
    (args.out / "kernels_headline.md").write_text(headline_markdown(summary))
    plot(df, args.out / "kernels.png")
    log_mlflow(df, info, summary, args.out, args.quick)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
