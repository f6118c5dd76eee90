"""Aggregation: runs -> one row per (model, scheme pair) with mean ± std over seeds, the paper's numbers beside
them, post-training and error summaries, kernel latencies and paired differences with t intervals.

Statistics:
    mean_std       mean and sample standard deviation s = sqrt(sum (x - mean)^2 / (n - 1));
    t_interval     mean ± t_{0.975, n-1} s / sqrt(n), the 95 % confidence interval of a mean of n values;
    paired         d_i = a_i - b_i over the units (seeds / teachers) both a and b were measured on.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

import pandas as pd

from ..schemes import get_scheme, kernel_name
from .runs import PROVENANCE

__all__ = ["PAPER_REFERENCES", "mean_std", "t_interval", "by_unit", "paired", "pair_key", "paper_value", "qat_table",
           "ptq_table", "error_table", "kernel_latency", "pareto_table"]

#: Columns of the paper's numbers shown beside ours: (column prefix, source, fallback source, title).
PAPER_REFERENCES = (
    ("v1_imagenet", "V1 Table 2", "V1 Table 1", "paper V1, ImageNet"),
    ("readme_imagenet", "README ImageNet", None, "official code, ImageNet"),
    ("readme_cifar100", "README CIFAR-100", None, "official code, CIFAR-100"),
)


# ------------------------------------------------------------------------------------------ statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value; NaN for none)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)``: the two-sided ``level`` confidence interval of the mean with the t distribution
    (n - 1 degrees of freedom); low = high = NaN when n < 2."""
    from scipy.stats import t

    mean, sd = mean_std(values)
    n = sum(1 for v in values if v is not None and not math.isnan(float(v)))
    if n < 2:
        return mean, float("nan"), float("nan"), n
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


def pair_key(run) -> tuple:
    """What two runs must share to be paired: the seed and, when recorded, the teacher they were distilled from."""
    return (int(run["seed"]), run.get("teacher_run_id", "") or "")


def by_unit(runs: pd.DataFrame, pair: tuple[str, str], metric: str) -> dict[tuple, float]:
    """``{unit: metric}`` of the runs of one scheme pair ``(x_quant, w_quant)``, keyed by :func:`pair_key`."""
    sel = runs[(runs["x_quant"] == pair[0]) & (runs["w_quant"] == pair[1])]
    return {pair_key(r): float(r[metric]) for _, r in sel.iterrows()}


def paired(runs: pd.DataFrame, a: tuple[str, str], b: tuple[str, str], metric: str) -> list[tuple[tuple, float]]:
    """``[(unit, metric(a) - metric(b))]`` over the units (:func:`pair_key`) on which both scheme pairs
    ``a = (x_quant, w_quant)`` and ``b`` were run, in unit order."""
    va, vb = by_unit(runs, a, metric), by_unit(runs, b, metric)
    return [(u, va[u] - vb[u]) for u in sorted(set(va) & set(vb))]


def _order(x_quant: str, w_quant: str) -> tuple:
    """Display order of a scheme pair: by the activation scheme, then the weight scheme (registry sort keys)."""
    return (get_scheme(x_quant).sort_key, get_scheme(w_quant).sort_key)


# ------------------------------------------------------------------------------------------ the paper


def paper_value(paper: pd.DataFrame, training: str, x_quant: str, w_quant: str, source: str) -> dict | None:
    """The paper's own result for a scheme pair in ``source`` (``training``: ``qat`` or ``post``), skipping the
    2x-batch variant (a different recipe); None when the source does not report it."""
    sel = paper[(paper["training"] == training) & (paper["kind"] == "ours") & (paper["x_quant"] == x_quant)
                & (paper["w_quant"] == w_quant) & (paper["source"] == source)
                & ~paper["note"].str.contains("2x larger batch")]
    return None if sel.empty else sel.iloc[0].to_dict()


def _float(s) -> float:
    try:
        return float(s)
    except (TypeError, ValueError):
        return float("nan")


def _with_paper(row: dict, paper: pd.DataFrame, training: str, x: str, w: str) -> None:
    for prefix, source, fallback, _ in PAPER_REFERENCES:
        p = paper_value(paper, training, x, w, source)
        if p is None and fallback:
            p = paper_value(paper, training, x, w, fallback)
        row[f"{prefix}_top1"] = _float(p["top1"]) if p else float("nan")
        row[f"{prefix}_top1_std"] = _float(p["top1_std"]) if p else float("nan")
        row[f"{prefix}_source"] = p["source"] if p else ""


# ------------------------------------------------------------------------------------------------ tables


def qat_table(runs: pd.DataFrame, paper: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """One row per (model, x_quant, w_quant): top-1 / top-5 mean ± sample std over seeds, the seeds, the
    provenance of every run (``;``-joined in seed order) and the paper's top-1 for the same scheme pair."""
    rows = []
    groups = runs.groupby(["model", "x_quant", "w_quant"], sort=False)
    for (model, x, w), g in sorted(groups, key=lambda kv: (kv[0][0], _order(kv[0][1], kv[0][2]))):
        g = g.sort_values("seed")
        row = {"dataset": dataset, "model": model, "k_a": get_scheme(x).label, "k_w": get_scheme(w).label,
               "x_quant": x, "w_quant": w, "n_seeds": len(g), "seeds": ";".join(str(s) for s in g["seed"])}
        for metric in ("top1", "top5"):
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(g[metric].tolist())
        for k in PROVENANCE:
            vals = [str(v) for v in g[k]]
            row[k] = ";".join(dict.fromkeys(vals)) if k == "commit" else ";".join(vals)
        _with_paper(row, paper, "qat", x, w)
        rows.append(row)
    return pd.DataFrame(rows)


def ptq_table(ptq: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Post-training results (``lsqbq analyze ptq`` rows with their model and seed) -> mean ± std per (model,
    weight scheme) over the fp models of every seed, with the paper's V1 Table 1 post-training top-1."""
    rows = []
    for (model, w), g in sorted(ptq.groupby(["model", "w_quant"], sort=False),
                                key=lambda kv: (kv[0][0], get_scheme(kv[0][1]).sort_key)):
        g = g.sort_values("seed")
        t1, s1 = mean_std(g["top1"].tolist())
        t5, s5 = mean_std(g["top5"].tolist())
        s = get_scheme(w)
        p = paper_value(paper, "qat", s.name, s.name, "V1 Table 1") if s.is_fp else \
            paper_value(paper, "post", get_scheme(None).name, w, "V1 Table 1")
        rows.append({"model": model, "k_a": get_scheme(None).label, "k_w": s.label, "w_quant": w,
                     "n_seeds": len(g), "seeds": ";".join(str(v) for v in g["seed"]),
                     "top1_mean": t1, "top1_std": s1, "top5_mean": t5, "top5_std": s5,
                     "v1_imagenet_top1": _float(p["top1"]) if p else float("nan"),
                     **{k: ";".join(str(v) for v in g[k]) for k in PROVENANCE if k in g}})
    return pd.DataFrame(rows)


def error_table(error: pd.DataFrame) -> pd.DataFrame:
    """The error analyses of every model in one table: synthetic rows (identical in every model's file) once,
    with model ``-``, no seed and no run; each model's weight and activation rows under its name and seed."""
    from ..analysis.lloyd_max import DISTRIBUTIONS

    df = error.copy()
    synthetic = df["source"].isin(DISTRIBUTIONS)
    df.loc[synthetic, "model"] = "-"
    df["seed"] = df["seed"].astype(object).where(~synthetic, "")
    for k in PROVENANCE[1:]:  # synthetic data depend on the code (commit) alone, not on a run
        if k in df:
            df[k] = df[k].where(~synthetic, "")
    return df.drop_duplicates(subset=["model", "source", "scheme"]).reset_index(drop=True)


def kernel_latency(kernels: pd.DataFrame) -> tuple[dict[str, float], str]:
    """Latency (ms) per kernel name of ``lsqbq bench kernels`` results, and what it is the latency of.

    The sum, over the layer shapes measured for every kernel, of the end-to-end conv latency (``kind == conv``;
    GEMMs when no conv was timed) at batch 1 and 1 thread: the headline setting.
    """
    k = kernels.copy()
    if "ms" not in k and "seconds" in k:
        k["ms"] = 1e3 * k["seconds"]
    for col, val in (("batch", 1), ("threads", 1)):
        if col in k and (k[col] == val).any():
            k = k[k[col] == val]
    kind = "?"
    if "kind" in k:
        kind = "conv" if (k["kind"] == "conv").any() else "gemm"
        k = k[k["kind"] == kind]
    mode = ""
    if "scale_mode" in k:  # the trained students fit activation scales per sample: time that mode
        k = k[k["scale_mode"].isna() | (k["scale_mode"] == "fitted")]
        mode = ", activation scales fitted per sample"
    k = k.assign(scheme=k["scheme"].astype(str))
    layers = set.intersection(*(set(g["layer"]) for _, g in k.groupby("scheme"))) if len(k) else set()
    k = k[k["layer"].isin(layers)]
    best = k.groupby(["scheme", "layer"])["ms"].min()  # the fastest implementation of each (fp32 layout, engine)
    what = (f"end-to-end {kind} latency summed over {len(layers)} ResNet-18 3x3 layer shapes, batch 1, 1 thread"
            f"{mode}")
    return best.groupby(level="scheme").sum().to_dict(), what


def pareto_table(qat: pd.DataFrame, kernels: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of every QAT row beside the measured latency of the kernel that would run it.

    The kernel is :func:`lsqbq.schemes.kernel_name` of the scheme pair (``fp32`` when either side is full
    precision); bit widths without a measured kernel (gf-3) get no latency. A row is on the Pareto front of its
    model when no other row is at least as fast and more accurate, or faster and at least as accurate.
    """
    total, what = kernel_latency(kernels)
    rows = []
    for q in qat.to_dict("records"):
        label = kernel_name(q["x_quant"], q["w_quant"]) or ""
        rows.append({"model": q["model"], "x_quant": q["x_quant"], "w_quant": q["w_quant"], "k_a": q["k_a"],
                     "k_w": q["k_w"], "top1_mean": q["top1_mean"], "top1_std": q["top1_std"], "kernel": label,
                     "latency_ms": float(total.get(label, float("nan"))), "latency_of": what})
    for r in rows:
        same = [o for o in rows if o["model"] == r["model"] and not math.isnan(o["latency_ms"])]
        r["pareto"] = (not math.isnan(r["latency_ms"])) and not any(
            (o["latency_ms"] <= r["latency_ms"] and o["top1_mean"] > r["top1_mean"])
            or (o["latency_ms"] < r["latency_ms"] and o["top1_mean"] >= r["top1_mean"]) for o in same)
    return pd.DataFrame(rows)
