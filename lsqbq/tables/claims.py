"""The paper's claims, each checked against our results: measurement, paired difference with its interval and
a verdict (:mod:`~lsqbq.tables.verdicts`).

1. Lloyd-Max optimum   ls-2 / ls-T against the exact Lloyd-Max quantizer of the normal, Laplace and uniform
                       densities (:mod:`lsqbq.analysis.exact`), at the numerical tolerance ``EXACT_RTOL``;
2. post-training and 3. quantization-aware training: the accuracy claims, one family under Holm's correction
                       (:mod:`~lsqbq.tables.accuracy`);
4. angles              at equal bits optimal below greedy (ls-2 / gf-2, ls-T / ls-1), mean and spread over images,
                       every quantized layer; ls-2 against gf-4 in the later layers (distribution-dependent); on the
                       teachers' BN outputs and on the students' clamped quantizer inputs; t over teachers;
5. training cost       ls-2 against gf-2 from the side-by-side step benchmark, wall time beside as context.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..analysis.exact import EXACT_RTOL, GRID_POINTS, excess_over_lloyd_max
from ..analysis.lloyd_max import DISTRIBUTIONS
from ..schemes import get_scheme
from .accuracy import QAT_ORDER, QAT_WEIGHTS, adjust_family, ptq_claims, qat_claims
from .aggregate import by_unit, mean_std, paper_value, t_interval
from .render import fmt_percent, fmt_value
from .verdicts import COLUMNS, CONTRADICTED, EQUIVALENT, NOT_SEPARABLE, REPRODUCED, row, verdict

__all__ = ["REPRODUCED", "NOT_SEPARABLE", "CONTRADICTED", "EQUIVALENT", "KINDS", "COLUMNS", "EQUAL_BITS", "VS_GF4",
           "BENCH_TOLERANCE", "verdict", "lloyd_max_claims", "ptq_claims", "qat_claims", "angle_claims",
           "cost_claims", "qat_paper_gaps", "build_claims"]

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


# ------------------------------------------------------------------------------------------ 4. angles

#: The paper's angle finding at equal bits: the optimal scheme (first) against the greedy one (second).
EQUAL_BITS = (("ls-2", "gf-2"), ("ls-T", "ls-1"))
#: ls-2 (4 levels) against greedy gf-4 (16 levels): which is closer depends on the activations' distribution.
VS_GF4 = ("ls-2", "gf-4")
ANGLE_PAPER = "V1 Sec. 5.1, Fig. 4 (ResNet-18, ImageNet; no values)"
#: Whose activations an angle row measures (the ``input`` column of the angle CSVs).
ANGLE_INPUTS = {"teacher": "the fp teachers' BN outputs (unclamped)",
                "student": "the inputs of the {run} students' activation quantizers (clamped)"}
#: The same, short, as the claims name it.
ANGLE_ON = {"teacher": "on the teachers' BN outputs", "student": "on the {run} students' quantizer inputs"}


def _angle_se(g: pd.DataFrame, value: str) -> pd.Series:
    """Standard error over one teacher's images of ``value`` per row: the mean angle's from its 95 % half-width,
    the angle's standard deviation's by the normal approximation ``sd / sqrt(2 (images - 1))``."""
    if value == "angle_deg":
        return g["angle_ci95"] / Z95
    return g["angle_std"] / np.sqrt(2 * (g["images"] - 1).clip(lower=1))


def _angle_difference(g: pd.DataFrame, a: str, b: str, value: str, layers: list[int]) -> dict:
    """``value`` of scheme ``a`` minus ``b``, averaged over ``layers``: per teacher (seed; each teacher's images
    already averaged), then a t interval across teachers; with one teacher, the normal approximation over its
    images (per-layer intervals combined as independent). Also per layer: the mean difference and whether its
    interval lies below zero."""
    sel = g[g["layer_index"].isin(layers) & g["scheme"].isin((a, b))]
    wide = sel.pivot_table(index=["seed", "layer_index"], columns="scheme", values=value, aggfunc="first")
    if a not in wide or b not in wide:
        return {}
    d = (wide[a] - wide[b]).dropna()
    per_teacher = d.groupby(level="seed").mean()
    teachers = len(per_teacher)
    per_layer = d.groupby(level="layer_index")
    if teachers > 1:
        mean, lo, hi, _ = t_interval(list(per_teacher))
        below = sum(1 for _, v in per_layer if t_interval(list(v))[2] < 0)
        method = "paired t over teachers"
        pairing = "over teachers (each teacher's images averaged; schemes on the same images)"
    else:
        se = sel.assign(se=_angle_se(sel, value)).pivot_table(index="layer_index", columns="scheme", values="se",
                                                              aggfunc="first")
        layer_se = np.sqrt(se[a] ** 2 + se[b] ** 2)
        mean = float(d.mean())
        half = Z95 * math.sqrt(float((layer_se**2).sum())) / len(layer_se)
        lo, hi = mean - half, mean + half
        below = int(((d.groupby(level="layer_index").mean() + Z95 * layer_se) < 0).sum())
        method = "normal approximation over images"
        pairing = "over images (one teacher; per-scheme intervals combined as independent)"
    return {"difference": mean, "ci_low": lo, "ci_high": hi, "n": teachers, "method": method, "pairing": pairing,
            "lower": int((per_layer.mean() < 0).sum()), "resolved": below, "layers": len(per_layer),
            "a": float(wide[a].mean()), "b": float(wide[b].mean())}


def _angle_frame(angles: pd.DataFrame) -> pd.DataFrame:
    """``angles`` with ``seed``, ``input`` and ``input_run`` filled where an older CSV lacks them."""
    df = angles.copy()
    for col, default in (("seed", 0), ("input", "teacher"), ("input_run", "")):
        if col not in df:
            df[col] = default
    df["input"] = df["input"].replace("", "teacher")
    return df


def _tails(g: pd.DataFrame, layers: list[int]) -> str:
    if "excess_kurtosis" not in g or g["excess_kurtosis"].isna().all():
        return ""
    sel = g[g["layer_index"].isin(layers)]
    return (f"; rows' excess kurtosis {fmt_value(sel['excess_kurtosis'].mean())}, near-zero fraction "
            f"{fmt_value(sel['near_zero'].mean(), 3)} (N(0, 1): 0 and 0.080)")


def angle_claims(angles: pd.DataFrame) -> list[dict]:
    """Per model and input (the teachers' BN outputs; the students' clamped quantizer inputs):
    the paper's equal-bit finding over every quantized layer, mean angle and its spread over images
    (:data:`EQUAL_BITS`, optimal below greedy), then ls-2 against gf-4 in the later layers (the second half of the
    quantized layers; a model with one has only that one), which depends on the activations' distribution."""
    df = _angle_frame(angles)
    rows = []
    for (model, source), g in df.groupby(["model", "input"], sort=True):
        layers = sorted(set(g["layer_index"]))
        later = layers[len(layers) // 2:]
        images = int(g["images"].iloc[0])
        run = ", ".join(sorted(set(g["input_run"]) - {""})) or "-"
        whose = ANGLE_INPUTS.get(source, source).format(run=run)
        seeds = sorted(set(g["seed"]))
        teachers = f"{len(seeds)} teachers (seeds {seeds[0]}-{seeds[-1]})" if len(seeds) > 1 else f"seed {seeds[0]}"
        checks = [(a, b, "angle_deg", layers, "angle") for a, b in EQUAL_BITS]
        if "angle_std" in g:
            checks += [(a, b, "angle_std", layers, "spread") for a, b in EQUAL_BITS]
        checks.append((*VS_GF4, "angle_deg", later, "more levels"))
        for a, b, value, sel, what in checks:
            r = _angle_difference(g, a, b, value, sel)
            if not r:
                continue
            span = ("its only quantized layer" if len(layers) == 1 else
                    f"every quantized layer ({len(layers)})" if sel == layers else
                    f"layers {sel[0] + 1}-{sel[-1] + 1} of {len(layers)}")
            on = ANGLE_ON.get(source, f"on {source}").format(run=run)
            if what == "more levels":
                claim = (f"angle of {_disp(a)} below {_disp(b)} in later layers, {on} (depends on the "
                         "activations' distribution: holds on sparse rows, not on Gaussian ones)")
                paper = f"{ANGLE_PAPER}: {_disp(a)} beats {_disp(b)} in later layers"
            elif what == "spread":
                claim = f"spread over images of the angle: {_disp(a)} below {_disp(b)} (equal bits), {on}"
                paper = f"{ANGLE_PAPER}: the optimal schemes vary less across images"
            else:
                claim = f"angle of {_disp(a)} below {_disp(b)} (equal bits), every layer, {on}"
                paper = f"{ANGLE_PAPER}: optimal quantization has a clearly smaller angle than greedy"
            measure = "SD" if what == "spread" else "mean"
            ours = (f"{measure} {fmt_value(r['a'])}° vs {fmt_value(r['b'])}°; lower in {r['lower']} of "
                    f"{r['layers']} layers, interval below 0 in {r['resolved']}")
            if what == "more levels":
                ours += _tails(g, sel)
            rows.append(row(
                kind="angle", claim=claim, paper=paper, model=model,
                setting=f"{whose}; {teachers}, {images} test images each, {span}", ours=ours,
                difference=r["difference"], ci_low=r["ci_low"], ci_high=r["ci_high"], method=r["method"],
                t_low=r["ci_low"] if r["n"] > 1 else float("nan"), t_high=r["ci_high"] if r["n"] > 1 else float("nan"),
                n=r["n"], images=images, unit="degrees", pairing=r["pairing"],
                verdict=verdict(r["ci_low"], r["ci_high"], sign=-1)))
    return rows


# ------------------------------------------------------------------------------ 5. training cost

#: Relative step-time difference (%) within which one side-by-side benchmark does not separate two schemes.
BENCH_TOLERANCE = 5.0


def cost_claims(runs: pd.DataFrame, bench: pd.DataFrame) -> list[dict]:
    """Training cost of ls-2 against gf-2 activations (ls-1 weights) from the step benchmark (``lsqbq bench
    training``: one optimiser step of the model, every scheme timed round-robin in one process, median over rounds):
    ``100 (t_ls-2 / t_gf-2 - 1)`` %, reproduced above ``+BENCH_TOLERANCE`` %, contradicted below its negative. The
    wall time of whole training runs (jobs that shared the machine) is shown beside it as context."""
    a, b = ("ls-2", QAT_WEIGHTS), ("gf-2", QAT_WEIGHTS)
    if bench.empty or not {"model", "x_quant", "w_quant", "ms_per_step"} <= set(bench.columns):
        return []
    rows = []
    for model, g in bench.groupby("model", sort=True):
        bsel = g.set_index(["x_quant", "w_quant"])["ms_per_step"]
        if a not in bsel.index or b not in bsel.index or not bsel[b] > 0:
            continue
        rel = 100 * (float(bsel[a]) / float(bsel[b]) - 1)
        ours = f"step benchmark {fmt_value(bsel[a], 1)} vs {fmt_value(bsel[b], 1)} ms ({fmt_percent(rel / 100)})"
        if "batch" in g and "threads" in g:
            ours += f", batch {int(g['batch'].iloc[0])}, {int(g['threads'].iloc[0])} thread(s)"
        va = vb = {}
        if {"model", "x_quant", "w_quant", "train_time_s"} <= set(runs.columns):
            mr = runs[runs["model"] == model]
            va, vb = by_unit(mr, a, "train_time_s"), by_unit(mr, b, "train_time_s")
        units = [u for u in sorted(set(va) & set(vb)) if vb[u] > 0 and not math.isnan(va[u] / vb[u])]
        if units:
            wall = [100 * (va[u] / vb[u] - 1) for u in units]
            ours += (f"; context: wall time of whole training runs sharing the machine "
                     f"{fmt_value(mean_std([va[u] for u in units])[0], 0)} s vs "
                     f"{fmt_value(mean_std([vb[u] for u in units])[0], 0)} s "
                     f"({fmt_percent(np.mean(wall) / 100)}, {len(units)} seeds)")
        lo = hi = rel
        rows.append(row(
            kind="cost", claim=f"training with {_disp(a[0])} activations costs more than with {_disp(b[0])}",
            paper="V1 Sec. 3.2.2: 35 % slower than gf-2", model=model,
            setting="one training step (forward, backward, update), schemes timed side by side", ours=ours,
            difference=rel, method=f"step benchmark, median over round-robin rounds; ±{BENCH_TOLERANCE:g} % tolerance",
            n=1, unit="% slower", pairing="side by side in one process (same batch, threads, machine)",
            verdict=(REPRODUCED if lo > BENCH_TOLERANCE else CONTRADICTED if hi < -BENCH_TOLERANCE
                     else NOT_SEPARABLE)))
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
