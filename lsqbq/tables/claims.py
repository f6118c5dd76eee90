"""The paper's claims, each checked against our results: measurement, paired difference with its interval and
a verdict (:mod:`~lsqbq.tables.verdicts`).

1. Lloyd-Max optimum   ls-2 / ls-T against the exact Lloyd-Max quantizer of the normal, Laplace and uniform
                       densities (:mod:`lsqbq.analysis.exact`), at the numerical tolerance ``EXACT_RTOL``;
2. post-training and 3. quantization-aware training: the accuracy claims, one family under Holm's correction
                       (:mod:`~lsqbq.tables.accuracy`);
4. angles              ls-2 against gf-4 in the later layers (normal approximation over images);
5. training cost       ls-2 against gf-2 wall time (t over seeds), with the step benchmark beside.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..analysis.exact import EXACT_RTOL, GRID_POINTS, excess_over_lloyd_max
from ..analysis.lloyd_max import DISTRIBUTIONS
from ..schemes import get_scheme
from .accuracy import METHOD_T, QAT_ORDER, QAT_WEIGHTS, adjust_family, ptq_claims, qat_claims
from .aggregate import by_unit, mean_std, paper_value, t_interval
from .render import fmt_percent, fmt_value
from .verdicts import COLUMNS, CONTRADICTED, EQUIVALENT, NOT_SEPARABLE, REPRODUCED, row, verdict

__all__ = ["REPRODUCED", "NOT_SEPARABLE", "CONTRADICTED", "EQUIVALENT", "KINDS", "COLUMNS", "verdict",
           "lloyd_max_claims", "ptq_claims", "qat_claims", "angle_claims", "cost_claims", "qat_paper_gaps",
           "build_claims"]

Z95 = 1.959963984540054  # standard normal 97.5 % quantile
#: Kinds of claims, in the paper's order.
KINDS = ("lloyd_max", "ptq", "qat", "angle", "cost")


def _disp(name: str) -> str:
    return get_scheme(name).display


# ------------------------------------------------------------------------------- 1. Lloyd-Max optimum


def lloyd_max_claims(error: pd.DataFrame, points: int = GRID_POINTS) -> list[dict]:
    """ls-2 / ls-T against the exact Lloyd-Max quantizer with 4 / 3 levels on each symmetric unit-variance density.

    The verdict is exact: the scheme's codebook (fitted by :func:`lsqbq.schemes.fit` to the density's
    ``points``-point quantile grid) scored on the density, against the Lloyd-Max MSE from Lloyd's iteration on the
    density, equal when ``|MSE / Lloyd-Max - 1| <= EXACT_RTOL`` (:mod:`lsqbq.analysis.exact`). The committed sample
    rows of ``error`` (finite samples, per-row fit) are shown beside as the measurement on data.
    """
    rows = []
    synth = error[error["source"].isin(DISTRIBUTIONS)].drop_duplicates(subset=["source", "scheme"])
    for name, section in (("ls-2", "3.2.2"), ("ls-T", "3.2.3")):
        sel = synth[synth["scheme"] == name]
        if sel.empty:
            continue
        s = get_scheme(name)
        exact = {d: excess_over_lloyd_max(name, d, points) for d in DISTRIBUTIONS}
        rel = {d: mse / opt - 1 for d, (mse, opt, _) in exact.items()}
        worst = max(rel.values(), key=abs)
        computed = " / ".join(f"{d} {mse:.6f} vs {opt:.6f}" for d, (mse, opt, _) in exact.items())
        sampled = " / ".join(f"{r.source} {fmt_percent(r.excess)}" for r in sel.itertuples())
        values = int(sel["n_values"].iloc[0])
        rows.append(row(
            kind="lloyd_max", claim=f"{s.display} error = Lloyd-Max optimum ({s.levels} levels) on symmetric data",
            paper=f"V1 Sec. {section}: {s.display} is the least-squares optimal foldable quantizer with {s.levels} "
                  "levels",
            model="-", setting=f"exact on the unit-variance densities; samples of {values:,} values, per-row fit",
            ours=f"MSE vs Lloyd-Max: {computed}; on samples: {sampled}", difference=100 * worst,
            method="exact (quadrature)", n=len(exact), unit="% (largest)",
            pairing=f"exact; tolerance {EXACT_RTOL:g} relative",
            verdict=REPRODUCED if max(abs(v) for v in rel.values()) <= EXACT_RTOL else CONTRADICTED))
    return rows


# ------------------------------------------------------------------------------ 4. angles, later layers


def angle_claims(angles: pd.DataFrame) -> list[dict]:
    """ls-2's angle below gf-4's in the later layers (the second half of the quantized layers; a model with one
    quantized layer has only that one). The per-scheme intervals over images are combined as independent."""
    a, b = "ls-2", "gf-4"
    rows = []
    for model, g in angles.groupby("model", sort=True):
        layers = sorted(set(g["layer_index"]))
        later = layers[len(layers) // 2:]
        ga = g[(g["scheme"] == a) & g["layer_index"].isin(later)].set_index("layer_index").sort_index()
        gb = g[(g["scheme"] == b) & g["layer_index"].isin(later)].set_index("layer_index").sort_index()
        if ga.empty or gb.empty:
            continue
        d = float((ga["angle_deg"] - gb["angle_deg"]).mean())
        se = math.sqrt(float(((ga["angle_ci95"] / Z95) ** 2 + (gb["angle_ci95"] / Z95) ** 2).sum())) / len(later)
        lo, hi = d - Z95 * se, d + Z95 * se
        names = ", ".join(ga["layer"])
        which = (f"its only quantized layer ({names})" if len(layers) == 1 else
                 f"layers {later[0] + 1}-{later[-1] + 1} of {len(layers)} ({names})")
        where = "its only layer" if len(layers) == 1 else f"layers {later[0] + 1}-{later[-1] + 1} of {len(layers)}"
        images = int(ga["images"].iloc[0])
        seeds = sorted(set(g["seed"])) if "seed" in g else []
        rows.append(row(
            kind="angle", claim=f"angle of {_disp(a)} below {_disp(b)} in later layers",
            paper="V1 Fig. 4 (ResNet-18, ImageNet; no values)", model=model,
            setting=f"fp teacher (seed {', '.join(map(str, seeds))}), {images} test images, {which}",
            ours=f"{fmt_value(ga['angle_deg'].mean())}° vs {fmt_value(gb['angle_deg'].mean())}° ({where})",
            difference=d, ci_low=lo, ci_high=hi, method="normal approximation over images", n=images,
            images=images, unit="degrees", pairing="over images (one teacher; per-scheme intervals combined)",
            verdict=verdict(lo, hi, sign=-1)))
    return rows


# ------------------------------------------------------------------------------ 5. training cost


def cost_claims(runs: pd.DataFrame, bench: pd.DataFrame) -> list[dict]:
    """Training cost of ls-2 against gf-2 activations (ls-1 weights): relative wall time of whole training runs,
    paired by seed and teacher, and the step-time benchmark when there is one."""
    a, b = ("ls-2", QAT_WEIGHTS), ("gf-2", QAT_WEIGHTS)
    rows = []
    for model, g in runs.groupby("model", sort=True):
        va, vb = by_unit(g, a, "train_time_s"), by_unit(g, b, "train_time_s")
        units = [u for u in sorted(set(va) & set(vb)) if vb[u] > 0 and not math.isnan(va[u] / vb[u])]
        if not units:
            continue
        rel = [100 * (va[u] / vb[u] - 1) for u in units]
        mean, lo, hi, n = t_interval(rel)
        ours = (f"{fmt_value(mean_std([va[u] for u in units])[0], 0)} s vs "
                f"{fmt_value(mean_std([vb[u] for u in units])[0], 0)} s per training run")
        if not bench.empty and {"model", "x_quant", "w_quant", "ms_per_step"} <= set(bench.columns):
            bsel = bench[bench["model"] == model].set_index(["x_quant", "w_quant"])["ms_per_step"]
            if a in bsel.index and b in bsel.index:
                ours += (f"; step benchmark {fmt_value(bsel[a], 1)} vs {fmt_value(bsel[b], 1)} ms "
                         f"({fmt_percent(bsel[a] / bsel[b] - 1)})")
        rows.append(row(
            kind="cost", claim=f"training with {_disp(a[0])} activations costs more than with {_disp(b[0])}",
            paper="V1 Sec. 3.2.2: 35 % slower than gf-2", model=model, setting="wall time of each whole training run",
            ours=ours, difference=mean, ci_low=lo, ci_high=hi, method=METHOD_T, t_low=lo, t_high=hi, n=n,
            unit="% slower", pairing="by seed and teacher", verdict=verdict(lo, hi)))
    return rows


def qat_paper_gaps(paper: pd.DataFrame, source: str = "V1 Table 2") -> list[float]:
    """The paper's top-1 gaps between adjacent activation schemes of :data:`QAT_ORDER` (ls-1 weights)."""
    vals = [paper_value(paper, "qat", x, QAT_WEIGHTS, source) for x in QAT_ORDER]
    return [float(a["top1"]) - float(b["top1"]) for a, b in zip(vals, vals[1:]) if a and b]


def build_claims(runs: pd.DataFrame, paper: pd.DataFrame, ptq: pd.DataFrame | None = None,
                 error: pd.DataFrame | None = None, angles: pd.DataFrame | None = None,
                 bench: pd.DataFrame | None = None, predictions: dict[str, np.ndarray] | None = None
                 ) -> pd.DataFrame:
    """Every claim that the given results can test, in the paper's order (missing inputs skip their claims);
    the accuracy claims (post-training and quantization-aware training) adjusted as one family
    (:func:`~lsqbq.tables.accuracy.adjust_family`). ``predictions``: ``{training run id: predictions}``
    (:func:`lsqbq.tables.predictions.load_predictions`), which switches the accuracy intervals of every row whose
    runs all have them to the hierarchical bootstrap over seeds and test images."""
    rows: list[dict] = []
    if error is not None and not error.empty:
        rows += lloyd_max_claims(error)
    if ptq is not None and not ptq.empty:
        rows += ptq_claims(ptq, paper)
    rows += qat_claims(runs, paper, predictions)
    adjust_family(rows)
    if angles is not None and not angles.empty:
        rows += angle_claims(angles)
    rows += cost_claims(runs, bench if bench is not None else pd.DataFrame())
    return pd.DataFrame(rows, columns=list(COLUMNS))
