"""The report of ``lsqbq bench kernels``: headline ratios against their targets, per-layer tables, the 1-bit
layer's time split and a figure, all computed from ``kernels.csv`` (so ``--render-only`` rebuilds them).

Headline ratios are medians over the ImageNet ResNet-18 3x3 layers at batch 1 and 1 thread unless named, the
binary conv end to end from fp32 with fitted scales, against the faster fp32 layout.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..schemes import kernel_name
from .harness import headline_cells, provenance_line, write_figure, write_text
from .kernel_cases import IMAGENET, ONE_BIT, SCHEMES, layer_name

REPORT_FILES = ("kernels.md", "kernels_headline.md", "kernels.png")
# Headline labels, in the order the summary gives them
LABELS = {
    f"conv_{ONE_BIT}_vs_fp32": f"{ONE_BIT} conv vs fp32",
    f"conv_{ONE_BIT}_vs_int8": f"{ONE_BIT} conv vs oneDNN int8",
    f"gemm_{ONE_BIT}_peak_fraction": f"{ONE_BIT} GEMM, fraction of the measured binary peak",
    "threads2_min": "2 threads vs 1, slowest of all rows timed with both",
    "threads2_batch16_min": "2 threads vs 1, batch 16, slowest binary row",
    "threads2_batch1_64@56": "2 threads vs 1, batch 1, 64@56 (1-bit conv)",
    **{f"conv_{label}_vs_fp32": f"{label} conv vs fp32 (fitted scales)" for label in SCHEMES},
    **{f"conv_{label}_vs_fp32_stored": f"{label} conv vs fp32 (stored scales)" for label in SCHEMES},
    **{f"gemm_{label}_vs_mm": f"{label} GEMM vs fp32 torch.mm" for label in SCHEMES},
}
# The engine's targets on the reference machine, per kernel back end of the run: key -> target (higher is better;
# one target for both scale modes). AVX-512: medians over the ImageNet layers, batch 1, 1 thread, conv end to end
# from fp32 with fitted scales against the faster fp32 layout. AVX2 (``--backend avx2``): the same, against oneDNN
# capped at AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``). Other back ends (portable, neon) have none.
TARGETS = {
    "avx512": {
        f"conv_{ONE_BIT}_vs_fp32": 17.0,
        f"conv_{ONE_BIT}_vs_int8": 4.0,
        f"conv_{kernel_name('gf-2', 'ls-1')}_vs_fp32": 10.0,
        f"conv_{kernel_name('ls-T', 'ls-1')}_vs_fp32": 10.0,
        f"conv_{kernel_name('gf-2', 'gf-2')}_vs_fp32": 6.0,
        f"gemm_{ONE_BIT}_peak_fraction": 0.85,
        "threads2_min": 0.95,
        "threads2_batch16_min": 1.7,
    },
    "avx2": {
        f"conv_{ONE_BIT}_vs_fp32": 4.0,
        "threads2_min": 0.95,
    },
}


def _sel(df: pd.DataFrame, kind: str, batch: int = 1, threads: int = 1) -> pd.DataFrame:
    names = [layer_name(c, hw) for c, hw in IMAGENET]
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
    both = df[df.kind.isin(("conv", "gemm"))]
    if (both.threads == 2).any():  # every configuration timed with 1 and 2 threads: the slowest ratio
        keys = [k for k in ("kind", "layer", "batch", "impl", "scheme", "engine", "scale_mode") if k in both]
        both = both.assign(**{k: both[k].fillna("") for k in keys})  # fp32 rows have no engine or scale mode
        s = both.pivot_table(index=keys, columns="threads", values="seconds", aggfunc="min")
        ratio = (s[1] / s[2]).dropna()
        if len(ratio):
            out["threads2_min"] = float(ratio.min())
    binary16 = df[(df.kind == "conv") & (df.batch == 16) & df.impl.str.startswith("binary")]
    if (binary16.threads == 2).any():  # every binary layer, scheme and scale mode at batch 16
        s = binary16.pivot_table(index=["layer", "scheme", "scale_mode"], columns="threads", values="seconds")
        ratio = (s[1] / s[2]).dropna()
        if len(ratio):
            out["threads2_batch16_min"] = float(ratio.min())
    if (c.threads == 2).any():
        s = c.pivot_table(index=["layer", "batch"], columns="threads", values="seconds")
        ratio = (s[1] / s[2]).dropna()
        if ("64@56x56", 1) in ratio.index:
            out["threads2_batch1_64@56"] = float(ratio[("64@56x56", 1)])
    return out


def headline_markdown(summary: dict[str, float], backend: str) -> str:
    """The headline ratios with the targets of the run's kernel back end (:data:`TARGETS`), as a markdown table."""
    if not summary:
        return "No headline: the ImageNet ResNet-18 layers were not timed in this run.\n"
    targets = TARGETS.get(backend, {})
    rows = []
    for key, value in summary.items():
        target = targets.get(key.removesuffix("_stored"))  # one target for both scale modes
        rows.append({"metric": LABELS.get(key, key), **headline_cells(value, target, "fraction" in key)})
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
        *filter(None, [provenance_line(df)]),
        "## Headline (median over the ImageNet ResNet-18 3x3 layers, batch 1, 1 thread unless named; "
        "against the faster fp32 layout)",
        headline_markdown(summary, backend).rstrip("\n"),
    ]
    if int8_kernels:
        parts += ["oneDNN int8 kernels that ran (ONEDNN_VERBOSE): "
                  + ", ".join(f"{k}: `{v}`" for k, v in int8_kernels.items())]
    for kind in ("gemm", "conv"):
        g = df[df.kind == kind]
        if len(g):
            parts += [f"## {kind}: milliseconds (speed-up vs fp32)", _speedup_table(g).to_markdown(index=False)]
    if split:
        parts += [f"## Where the {ONE_BIT} layer's time goes (batch 1, 1 thread, fitted scales; ms)",
                  split_table(split, df, peak).to_markdown(index=False, floatfmt=".3f"),
                  "`encode`: clamp, per-sample mean|x| (float64 lanes) and sign planes with the padding, one pass; "
                  "`conv`: binary convolution and float epilogue; `other`: module checks, dispatch, allocation. "
                  "`peak_ms`: the layer's binary MACs at the measured register-only peak, the least time its "
                  "XOR + popcount + add loop can take; `conv_of_peak`: that over `conv_ms`; `bound_vs_fp32`: "
                  "fp32 over `peak_ms + encode_ms`, the speed-up of a layer whose conv ran at the peak with this "
                  "encode; `measured_vs_fp32`: the layer as timed in the conv table."]
    return "\n\n".join(parts) + "\n"


def split_table(split: list[dict], df: pd.DataFrame, peak: float) -> pd.DataFrame:
    """The time split of the 1-bit layers (``kernels_split.csv``) beside a bound from the measured peak: per layer
    ``peak_ms = binary MACs / peak`` (MAC/s), ``conv_of_peak = peak_ms / conv_ms``, ``bound_vs_fp32 = fp32 ms /
    (peak_ms + encode_ms)`` and ``measured_vs_fp32 = fp32 ms / layer ms`` from the batch-1, 1-thread rows of
    ``df`` (the faster fp32 layout; columns left out where the run has no such row or no peak)."""
    t = pd.DataFrame(split)
    t = t[[c for c in t.columns if c == "layer" or c not in df.columns]]  # machine and commit: once, above
    conv = df[(df.kind == "conv") & (df.batch == 1) & (df.threads == 1)]
    fp = conv[conv.scheme == "fp32"].groupby("layer").seconds.min()
    one = conv[(conv.scheme == ONE_BIT) & (conv.scale_mode == "fitted")].set_index("layer")
    if not len(one) or not len(fp) or not peak > 0 or "binary_macs" not in one or "encode_ms" not in t:
        return t
    layers = t.layer
    fp_ms = 1e3 * layers.map(fp)
    peak_ms = 1e3 * layers.map(one.binary_macs) / peak
    return t.assign(peak_ms=peak_ms, conv_of_peak=peak_ms / t.conv_ms, fp32_ms=fp_ms,
                    bound_vs_fp32=fp_ms / (peak_ms + t.encode_ms),
                    measured_vs_fp32=fp_ms / (1e3 * layers.map(one.seconds)))


def render(df: pd.DataFrame, out: Path, split: list[dict] | None = None,
           int8_kernels: dict[str, str] | None = None) -> str:
    """Write :data:`REPORT_FILES` (``kernels.md``, ``kernels_headline.md``, ``kernels.png``) into ``out``
    atomically from a ``kernels.csv`` frame; returns the markdown."""
    first = df.iloc[0]
    info = {k: first[k] for k in ("cpu", "cores", "flags", "torch") if k in df}
    info["quantized_engines"] = first.get("quantized_engines", "")
    backend = str(first["kernels"])
    g1 = df[(df.kind == "gemm") & (df.threads == 1)]
    peak = float(g1.peak_gmacs.median()) * 1e9 if "peak_gmacs" in df and len(g1) else float("nan")
    if split is None and (out / "kernels_split.csv").exists():
        try:
            split = pd.read_csv(out / "kernels_split.csv").to_dict("records")
        except pd.errors.EmptyDataError:  # a run without the split (reference back end, --smoke)
            split = []
    if int8_kernels is None and "int8_kernel" in df:
        k = df.dropna(subset=["int8_kernel"]).drop_duplicates("layer")
        int8_kernels = dict(zip(k.layer, k.int8_kernel))
    summary = summarise(df)
    md = to_markdown(df, info, peak, summary, backend, split or [], int8_kernels or {})
    write_text(out / "kernels.md", md)
    write_text(out / "kernels_headline.md", headline_markdown(summary, backend))
    write_figure(out / "kernels.png", figure(df))
    return md


def figure(df: pd.DataFrame):
    """Latency per implementation and layer (end-to-end conv, batch 1, 1 thread, fitted scales), log scale, as a
    matplotlib figure."""
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
    plt.close(fig)  # drop pyplot's reference; the figure object stays usable
    return fig
