"""Figures, each drawn from the CSV it illustrates (so it can be redrawn without recomputing anything):

``plot_pareto``   pareto.csv   top-1 accuracy against the measured latency of the kernel each scheme pair runs on;
``plot_kernels``  kernels.csv  latency of every kernel per ResNet-18 3x3 layer shape (batch 1, 1 thread);
``plot_angles``   angles.csv   the angle figure, owned by :mod:`lsqbq.analysis.figures` (which ``lsqbq analyze
                               angles`` draws too) with the figure basics used here.
"""
from __future__ import annotations

from pathlib import Path

from ..analysis.figures import ANGLE_REFERENCE, draw_angles, plot_angles
from ..analysis.figures import pyplot as _pyplot
from ..analysis.figures import save as _save
from ..analysis.figures import scheme_colors as _colors
from ..schemes import get_scheme
from .render import read_csv

__all__ = ["plot_pareto", "plot_kernels", "plot_angles", "draw_pareto", "draw_kernels", "draw_angles",
           "ANGLE_REFERENCE"]


# ------------------------------------------------------------------------------------------------ labels


def _place_labels(ax, points: list[tuple[float, float, float, str]]) -> None:
    """Annotate each ``(x, y, yerr, text)`` at the first of a list of offsets where its box overlaps no other
    label, marker or error bar and stays inside the axes (farther offsets get a leader line). Greedy, top to
    bottom."""
    from matplotlib.text import Text

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    marker, cap = 5.0, 4.0  # half sizes of a marker and of an error-bar cap, pixels
    taken = []
    for x, y, err, _ in points:
        px, py = ax.transData.transform((x, y))
        _, top = ax.transData.transform((x, y + err))
        _, bottom = ax.transData.transform((x, y - err))
        taken += [(px - marker, py - marker, px + marker, py + marker), (px - cap, bottom - 1, px + cap, top + 1)]
    offsets = [(7, 0, "left", "center"), (-7, 0, "right", "center"), (0, 8, "center", "bottom"),
               (0, -8, "center", "top")]
    for dy in (12, -12, 22, -22, 32, -32, 44, -44, 58, -58):
        offsets += [(dx, dy, "left" if dx > 0 else "right", "center") for dx in (10, -10, 30, -30)]

    def overlap(b) -> float:
        area = sum(max(0.0, min(b[2], t[2]) - max(b[0], t[0])) * max(0.0, min(b[3], t[3]) - max(b[1], t[1]))
                   for t in taken)
        outside = b[0] < inside.x0 or b[2] > inside.x1 or b[1] < inside.y0 or b[3] > inside.y1
        return area + (1e9 if outside else 0.0)

    order = sorted(range(len(points)), key=lambda i: (-points[i][1], points[i][0]))
    for i in order:
        x, y, _, text = points[i]
        best = None
        for dx, dy, ha, va in offsets:
            far = abs(dy) > 8
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8,
                              arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "0.4"} if far else None)
            ann.update_positions(renderer)
            box = Text.get_window_extent(ann, renderer)  # the text alone, not its leader line
            b = (box.x0 - 2, box.y0 - 2, box.x1 + 2, box.y1 + 2)
            cost = overlap(b)
            ann.remove()
            if best is None or cost < best[0]:
                best = (cost, dx, dy, ha, va, b)
            if cost == 0:
                break
        _, dx, dy, ha, va, b = best  # the first free place, else the least crowded one
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8,
                    arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "0.4"} if abs(dy) > 8 else None,
                    bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85}, zorder=4)
        taken.append(b)


def _log_ms_axis(ax, lo: float | None = None, hi: float | None = None, axis: str = "x") -> None:
    """A log axis in ms with plain-number labels at 1-2-5 steps and no minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    getattr(ax, f"set_{axis}scale")("log")
    if lo is not None:
        getattr(ax, f"set_{axis}lim")(lo, hi)
    a = getattr(ax, f"{axis}axis")
    a.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a.set_minor_formatter(NullFormatter())


# ------------------------------------------------------------------------------------------------ pareto


def _dodge(xs: list[float], step: float = 0.045) -> list[float]:
    """Spread points with the same x apart on a log axis: the i-th of m equal values moves by
    ``(i - (m - 1) / 2) * step`` decades."""
    out, seen = [], {}
    counts = {x: xs.count(x) for x in xs}
    for x in xs:
        i = seen.get(x, 0)
        seen[x] = i + 1
        out.append(x * 10 ** ((i - (counts[x] - 1) / 2) * step))
    return out


def plot_pareto(csv: str | Path, path: str | Path) -> Path:
    """:func:`draw_pareto` of ``csv`` saved as ``path``."""
    return _save(draw_pareto(csv), path)


def draw_pareto(csv: str | Path):
    """Top-1 (mean ± std over seeds) against each model's own latency (batch 1, 1 thread), one panel per model;
    filled markers and the dashed line mark the Pareto front (no other pair is both faster and more accurate)."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    df = read_csv(csv)
    df = df[df["ms_b1"].notna()].rename(columns={"ms_b1": "latency_ms"})
    models = list(dict.fromkeys(df["model"]))
    colors = _colors(df["x_quant"])
    fig, axes = plt.subplots(1, len(models), figsize=(6.4 * len(models), 5.0), squeeze=False)
    lo, hi = df["latency_ms"].min() / 1.6, df["latency_ms"].max() * 3.0
    labels = []
    for ax, model in zip(axes[0], models):
        rs = df[df["model"] == model].copy()
        rs["x"] = _dodge(rs["latency_ms"].tolist())
        for r in rs.itertuples():
            c = colors[r.x_quant]
            ax.errorbar(r.x, r.top1_mean, yerr=r.top1_std, fmt="o", ms=6, capsize=3, color=c,
                        mfc=c if r.pareto else "white", mec=c, zorder=3)
        front = rs[rs["pareto"]].sort_values("latency_ms")
        ax.plot(front["x"], front["top1_mean"], "--", color="0.5", lw=1, zorder=1)
        _log_ms_axis(ax, lo, hi)
        span = rs["top1_mean"].max() - rs["top1_mean"].min() + 2 * rs["top1_std"].max()
        ax.set_ylim(rs["top1_mean"].min() - rs["top1_std"].max() - 0.25 * span,
                    rs["top1_mean"].max() + rs["top1_std"].max() + 0.25 * span)
        ax.set_xlabel("latency of the model, batch 1, 1 thread (ms, log scale)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(model)
        ax.grid(alpha=0.3, which="major")
        labels.append((ax, [(r.x, r.top1_mean, r.top1_std, f"{get_scheme(r.x_quant).display}/"
                             f"{get_scheme(r.w_quant).display}") for r in rs.itertuples()]))
    handles = [Line2D([], [], marker="o", ls="", color="0.3", label="on the Pareto front"),
               Line2D([], [], marker="o", ls="", color="0.3", mfc="white", label="dominated"),
               Line2D([], [], ls="--", color="0.5", label="Pareto front")]
    fig.legend(handles=handles, loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.02), frameon=False)
    fig.suptitle("Top-1 accuracy (mean ± std over seeds) vs measured latency of each model (bitwise when both sides\n"
                 "are quantized, else fp32); labels: activations/weights; equal latencies are drawn slightly apart")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    for ax, points in labels:  # after the layout: offsets are placed against the final axes
        _place_labels(ax, points)
    return fig


# ----------------------------------------------------------------------------------------------- kernels


def _layer_label(layer: str) -> str:
    """``"64@56x56"`` -> ``"64 ch\\n56×56"``."""
    ch, _, hw = layer.partition("@")
    return f"{ch} ch\n{hw.replace('x', '×')}" if hw else layer


def plot_kernels(csv: str | Path, path: str | Path) -> Path:
    """:func:`draw_kernels` of ``csv`` saved as ``path``."""
    return _save(draw_kernels(csv), path)


def draw_kernels(csv: str | Path):
    """Latency per call of every kernel on each ResNet-18 3x3 layer shape: end-to-end conv from fp32 input,
    batch 1, 1 thread (log scale), grouped by layer."""
    plt = _pyplot()
    k = read_csv(csv)
    if "ms" not in k and "seconds" in k:
        k["ms"] = 1e3 * k["seconds"]
    g = k[(k["kind"] == "conv") & (k["batch"] == 1) & (k["threads"] == 1)]
    layers = list(dict.fromkeys(g["layer"]))
    kernels = list(dict.fromkeys(g["scheme"]))
    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / max(len(kernels), 1)
    for i, s in enumerate(kernels):
        ys = [g[(g["layer"] == layer) & (g["scheme"] == s)]["ms"].min() for layer in layers]
        ax.bar([j - 0.4 + (i + 0.5) * width for j in range(len(layers))], ys, width, label=s, color=f"C{i % 10}")
    ax.set_xticks(range(len(layers)), [_layer_label(layer) for layer in layers], fontsize=9)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    _log_ms_axis(ax, axis="y")
    ax.set_xlabel("ResNet-18 3x3 conv layer: channels (in = out) and feature map (height × width, pixels)")
    ax.set_ylabel("latency per call (ms, log scale)")
    ax.set_title("3x3 conv end to end from fp32 input, batch 1, 1 thread (lower is faster)")
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(title="kernel", loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)
    ax.text(1.02, 0.02, "AxW: bitwise XNOR/popcount,\nk^a x k^w bit planes\n(T: ternary, sign + mask)\n"
            "fp32, int8: the fastest\ntorch conv measured", transform=ax.transAxes, fontsize=8, va="bottom")
    fig.tight_layout()
    return fig
