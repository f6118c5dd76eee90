"""The angle figure of ``lsqbq analyze angles``, drawn from its CSV alone, and the figure basics every figure of
the project shares (Agg backend, saving without timestamps, one fixed colour per scheme).

``plot_angles``   angles.csv   angle between activations and their quantization per layer and scheme, with the
                               difference from ls-2 (95 % intervals over images, or over teachers when the CSVs
                               hold several), one row of panels per model and input (teacher / student).
``plot_sweep``    sweep.csv    angle per scheme on synthetic rows from Gaussian to sparse, the ls-2 / gf-4
                               crossing marked.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..schemes import get_scheme
from .report import read_csv

__all__ = ["DPI", "ANGLE_REFERENCE", "pyplot", "save", "scheme_colors", "plot_angles", "draw_angles", "plot_sweep",
           "draw_sweep"]

#: The scheme the angle differences are taken from (the paper's proposal).
ANGLE_REFERENCE = "ls-2"
DPI = 120


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path) -> Path:
    """Save ``fig`` as ``path`` (PNG without a software stamp, so reruns are byte-identical) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.15, metadata={"Software": None})
    pyplot().close(fig)
    return path


def scheme_colors(schemes: Sequence[str]) -> dict[str, str]:
    """One fixed colour per scheme, in display order (the same scheme has the same colour in every panel)."""
    palette = [f"C{i}" for i in range(10)]
    return {s: palette[i % 10] for i, s in enumerate(sorted(set(schemes), key=lambda n: get_scheme(n).sort_key))}


# ------------------------------------------------------------------------------------------------ angles


def _read_angles(csvs: Sequence[str | Path]) -> pd.DataFrame:
    """The angle CSVs, one row per (model, input, layer, scheme): with several teachers (seeds) the mean over
    teachers of each teacher's mean angle and the t half-width across teachers, else the interval over images.
    ``model`` is the panel row's label (model and input)."""
    frames = []
    for f in csvs:
        df = read_csv(f)
        if "model" not in df:
            df.insert(0, "model", "")
        if "seed" not in df:
            df["seed"] = f
        if "input" not in df:
            df["input"], df["input_run"] = "teacher", ""
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    keys = ["model", "input", "input_run", "layer_index", "layer", "scheme"]
    g = df.groupby(keys, sort=False)
    out = g.agg(angle_deg=("angle_deg", "mean"), sd=("angle_deg", "std"), teachers=("seed", "nunique"),
                angle_ci95=("angle_ci95", "first"), images=("images", "first")).reset_index()
    many = out["teachers"] > 1
    if many.any():  # scipy.stats takes a second to import: only where a t quantile is needed
        from scipy.stats import t

        half = out["sd"] / out["teachers"].clip(lower=1) ** 0.5 * t.ppf(0.975, (out["teachers"] - 1).clip(lower=1))
        out.loc[many, "angle_ci95"] = half[many]
    label = (out["input"] + " " + out["input_run"]).str.strip()
    several = out.groupby("model")["input"].transform("nunique") > 1
    out["model"] = [(f"{m}, {lab}" if m else lab) if sev else m
                    for m, lab, sev in zip(out["model"], label, several)]
    return out


def plot_angles(csvs: Sequence[str | Path], path: str | Path) -> Path:
    """:func:`draw_angles` of ``csvs`` saved as ``path``."""
    return save(draw_angles(csvs), path)


def draw_angles(csvs: Sequence[str | Path]):
    """Per model (one row of panels): the angle between each image's activations and their quantization, mean
    and 95 % interval over images per layer and scheme (left), and each scheme's angle minus ls-2's (right; the
    two schemes' intervals combined as independent). A model with a single quantized layer is drawn as a dot plot
    over schemes instead of a line over layers."""
    plt = pyplot()
    df = _read_angles(csvs)
    models = list(dict.fromkeys(df["model"]))
    schemes = sorted(dict.fromkeys(df["scheme"]), key=lambda n: get_scheme(n).sort_key)
    colors = scheme_colors(schemes)
    ref = ANGLE_REFERENCE if ANGLE_REFERENCE in schemes else schemes[0]
    ref_name = get_scheme(ref).display
    heights = [3.9 if df[df["model"] == m]["layer_index"].nunique() > 1 else 2.9 for m in models]
    fig, axes = plt.subplots(len(models), 2, figsize=(12.5, sum(heights) + 0.8), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for (ax_a, ax_d), model in zip(axes, models):
        g = df[df["model"] == model]
        base = g[g["scheme"] == ref].set_index("layer_index")
        layers = sorted(set(g["layer_index"]))
        names = [g[g["layer_index"] == i]["layer"].iloc[0] for i in layers]
        title = f"{model}: " if model else ""
        unit = "teachers" if g["teachers"].max() > 1 else "images"
        if len(layers) == 1:
            ys = list(range(len(schemes)))[::-1]
            for y, s in zip(ys, schemes):
                r = g[g["scheme"] == s].iloc[0]
                ax_a.errorbar(r["angle_deg"], y, xerr=r["angle_ci95"], fmt="o", color=colors[s], capsize=4)
                d = r["angle_deg"] - base["angle_deg"].iloc[0]
                ci = math.hypot(r["angle_ci95"], base["angle_ci95"].iloc[0]) if s != ref else 0.0
                ax_d.errorbar(d, y, xerr=ci, fmt="o", color=colors[s], capsize=4)
            for ax in (ax_a, ax_d):
                ax.set_yticks(ys, [get_scheme(s).display for s in schemes])
                ax.set_ylim(-0.7, len(schemes) - 0.3)
                ax.grid(alpha=0.3, axis="x")
            ax_d.axvline(0, color="0.5", lw=0.8)
            ax_a.set_xlabel("angle between x and x_q (degrees)")
            ax_d.set_xlabel(f"angle minus {ref_name}'s (degrees)")
            ax_a.set_title(f"{title}its only quantized layer ({names[0]}): mean, 95 % CI over {unit} "
                           f"(±{g['angle_ci95'].max():.2f}° at most)", fontsize=10)
            ax_d.set_title(f"{title}difference from {ref_name} (< 0: closer than {ref_name})", fontsize=10)
            continue
        for s in schemes:
            r = g[g["scheme"] == s].set_index("layer_index").loc[layers]
            m, ci = r["angle_deg"].to_numpy(), r["angle_ci95"].to_numpy()
            ax_a.fill_between(layers, m - ci, m + ci, color=colors[s], alpha=0.3, lw=0)
            ax_a.errorbar(layers, m, yerr=ci, marker="o", ms=4, capsize=3, color=colors[s],
                          label=get_scheme(s).display)
            d = m - base.loc[layers, "angle_deg"].to_numpy()
            if s == ref:
                ax_d.plot(layers, d, marker="o", ms=4, color=colors[s])
                continue
            dci = (ci**2 + base.loc[layers, "angle_ci95"].to_numpy() ** 2) ** 0.5
            ax_d.fill_between(layers, d - dci, d + dci, color=colors[s], alpha=0.3, lw=0)
            ax_d.errorbar(layers, d, yerr=dci, marker="o", ms=4, capsize=3, color=colors[s])
        for ax in (ax_a, ax_d):
            ax.set_xticks(layers, names, rotation=25, ha="right", fontsize=8)
            ax.set_xlabel("quantized layer, forward order (teacher: its BN output; student: its clamped input)")
            ax.grid(alpha=0.3)
        ax_d.axhline(0, color="0.5", lw=0.8)
        ax_a.set_ylabel("angle between x and x_q (degrees)")
        ax_d.set_ylabel(f"angle minus {ref_name}'s (degrees)")
        ax_a.set_title(f"{title}mean, 95 % CI over {unit} (bands; ±{g['angle_ci95'].max():.2f}° at most)",
                       fontsize=10)
        ax_d.set_title(f"{title}difference from {ref_name} (< 0: closer than {ref_name})", fontsize=10)
    handles = [plt.Line2D([], [], marker="o", color=colors[s], label=get_scheme(s).display) for s in schemes]
    fig.legend(handles=handles, title="activation scheme", loc="upper left", bbox_to_anchor=(1.0, 0.95))
    images = int(df["images"].iloc[0]) if "images" in df else 0
    teachers = int(df["teachers"].max())
    over = f"{teachers} teachers, 95 % CI over teachers" if teachers > 1 else "one teacher, 95 % CI over images"
    fig.suptitle(f"Activations vs their quantization ({images} test images; {over})")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------- sweep


def plot_sweep(csv: str | Path, path: str | Path) -> Path:
    """:func:`draw_sweep` of ``csv`` saved as ``path``."""
    return save(draw_sweep(csv), path)


def draw_sweep(csv: str | Path):
    """Mean angle (95 % interval over rows) of each scheme against the spike weight p of spike-and-slab rows, the
    rows' excess kurtosis on the top axis and the point where ls-2 falls below gf-4 marked."""
    from .sweep import crossing

    plt = pyplot()
    df = read_csv(csv)
    schemes = sorted(dict.fromkeys(df["scheme"]), key=lambda n: get_scheme(n).sort_key)
    colors = scheme_colors(schemes)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for s in schemes:
        g = df[df["scheme"] == s].sort_values("p")
        ax.fill_between(g["p"], g["angle_deg"] - g["angle_ci95"], g["angle_deg"] + g["angle_ci95"],
                        color=colors[s], alpha=0.3, lw=0)
        ax.plot(g["p"], g["angle_deg"], marker="o", ms=3, color=colors[s], label=get_scheme(s).display)
    p = crossing(df)
    if p == p:
        ax.axvline(p, color="0.4", ls="--", lw=0.9)
        ax.annotate(f"ls-2 < gf-4 from p = {p:.2f}", (p, ax.get_ylim()[1]), xytext=(-4, -14),
                    textcoords="offset points", ha="right", fontsize=8)
    tails = df.groupby("p", sort=True)["excess_kurtosis"].first()
    top = ax.secondary_xaxis("top")
    top.set_xticks(list(tails.index)[::2], [f"{k:.1f}" for k in tails.to_numpy()[::2]], fontsize=8)
    top.set_xlabel("excess kurtosis of the rows")
    ax.set_xlabel("spike weight p (0: Gaussian)")
    ax.set_ylabel("angle between x and x_q (degrees)")
    ax.grid(alpha=0.3)
    ax.legend(title="scheme", fontsize=8, loc="upper left")
    rows, n = int(df["rows"].iloc[0]), int(df["n"].iloc[0])
    fig.suptitle(f"Spike-and-slab rows of unit variance ({rows} rows of {n} values per point)", fontsize=10)
    fig.tight_layout()
    return fig
