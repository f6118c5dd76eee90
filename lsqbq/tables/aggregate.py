"""Aggregation: runs -> one row per (model, scheme pair) with mean ± std over seeds, the paper's numbers beside
them, post-training and error summaries, top-1 per activation-scale mode and bitwise, each model's measured
latency, and paired differences with t intervals.

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

from ..errors import DataError
from ..schemes import get_scheme, kernel_name
from .runs import PROVENANCE

__all__ = ["PAPER_REFERENCES", "mean_std", "t_interval", "by_unit", "paired", "pair_key", "paper_value", "qat_table",
           "ptq_table", "error_table", "inference_table", "checkpoint_latency", "pareto_table", "PTQ_MEASURES"]

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
    provenance of every run (``;``-joined in seed order) and the paper's top-1 for the same scheme pair.

    ``n_seeds`` and ``seeds`` count the values in the top-1 cell: a run without a top-1 (an MLflow run that
    logged none) is in no row."""
    rows = []
    groups = runs[runs["top1"].notna()].groupby(["model", "x_quant", "w_quant"], sort=False)
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


#: The smooth measures of ``lsqbq analyze ptq`` (:mod:`lsqbq.analysis.ptq`) and those after BatchNorm
#: re-estimation, aggregated by :func:`ptq_table` when the results carry them.
PTQ_MEASURES = ("kl", "nll", "top1_bn", "kl_bn", "nll_bn")


def ptq_table(ptq: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Post-training results (``lsqbq analyze ptq`` rows with their model and seed) -> mean ± std per (model,
    weight scheme) over the fp models of every seed, with the paper's V1 Table 1 post-training top-1; ``n_seeds``
    and ``seeds`` count the values in the top-1 cell. For every measure of :data:`PTQ_MEASURES` the results have,
    ``{m}_mean``, ``{m}_std`` and ``n_{m}`` (the values in that cell: runs without it are left out), and
    ``bn_images``, the calibration sizes of the re-estimation (``;``-joined, distinct)."""
    measures = [m for m in PTQ_MEASURES if m in ptq]
    rows = []
    for (model, w), g in sorted(ptq[ptq["top1"].notna()].groupby(["model", "w_quant"], sort=False),
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
        for m in measures:
            rows[-1][f"{m}_mean"], rows[-1][f"{m}_std"] = mean_std(g[m].tolist())
            rows[-1][f"n_{m}"] = int(g[m].notna().sum())
        if "bn_images" in g:
            rows[-1]["bn_images"] = ";".join(dict.fromkeys(str(int(v)) for v in g["bn_images"].dropna()))
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


def inference_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, x_quant, w_quant) with quantized activations: test top-1 (mean ± std over seeds) with
    activation scales fitted per sample and with the moving averages recorded in training, their paired gap
    ``stored - fitted`` (:func:`t_interval` over seeds), and the top-1 of the bitwise (XNOR/popcount) model with
    its agreement with the simulated one (% of images, lowest over seeds). Empty without those columns. Every
    non-empty cell of a row counts the runs of ``seeds`` (else :class:`DataError`)."""
    if "top1_stored" not in runs:
        return pd.DataFrame()
    rows = []
    sel = runs[[not get_scheme(x).is_fp for x in runs["x_quant"]]]
    groups = sel.groupby(["model", "x_quant", "w_quant"], sort=False)
    for (model, x, w), g in sorted(groups, key=lambda kv: (kv[0][0], _order(kv[0][1], kv[0][2]))):
        g = g.sort_values("seed")
        row = {"model": model, "x_quant": x, "w_quant": w, "k_a": get_scheme(x).label, "k_w": get_scheme(w).label,
               "n_seeds": len(g), "seeds": ";".join(str(v) for v in g["seed"])}
        for mode in ("fitted", "stored"):
            row[f"top1_{mode}_mean"], row[f"top1_{mode}_std"] = mean_std(g[f"top1_{mode}"].tolist())
        _same_runs(g, [c for c in ("top1_fitted", "top1_stored", "top1_bitwise") if c in g], (model, x, w))
        gap, low, high, _ = t_interval((g["top1_stored"] - g["top1_fitted"]).tolist())
        row.update({"gap_mean": gap, "gap_ci_low": low, "gap_ci_high": high})
        if "top1_bitwise" in g:
            row["top1_bitwise_mean"], row["top1_bitwise_std"] = mean_std(g["top1_bitwise"].tolist())
            row["agreement_min"] = float(g["top1_agreement"].min())
            row["bitwise_scale_mode"] = ";".join(sorted(set(g["bitwise_scale_mode"].dropna().astype(str)) - {""}))
        rows.append(row)
    return pd.DataFrame(rows)


def _same_runs(g: pd.DataFrame, columns: list[str], row: tuple) -> None:
    """Every non-empty cell of a row counts the row's ``seeds``: raise :class:`DataError` when a column has values
    for some of the row's runs only."""
    for c in columns:
        have = g.loc[g[c].notna(), "seed"].tolist()
        if 0 < len(have) < len(g):
            raise DataError(f"{row[0]} {row[1]}/{row[2]}: {c} of seeds {', '.join(map(str, have))} only, of seeds "
                            f"{', '.join(map(str, g['seed']))}; every cell of a row must count the same runs "
                            "(lsqbq.tables.runs.read_runs checks this for the files it reads)")


def checkpoint_latency(models: pd.DataFrame) -> pd.DataFrame:
    """Latency (ms per batch, 1 thread) of every checkpoint ``lsqbq bench models`` timed, at each batch size:
    ``bitwise_ms`` (the faster input layout of ``to_bitwise`` as the model evaluates) and its ``scale_mode``,
    ``stored_ms`` (the conversion with the stored moving-average scales; NaN when not timed), and ``teacher_ms`` /
    ``simulated_ms`` (eager fp32 teacher, faster layout; the simulated student)."""
    m = models[(models["kind"] == "checkpoint") & (models["threads"] == 1)].copy()
    m["impl_kind"] = m["impl"].str.replace(" channels_last", "", regex=False)
    rows = []
    for (model, x, w, batch), g in m.groupby(["model", "x_quant", "w_quant", "batch"], sort=False):
        best = g.groupby("impl_kind")["ms"].min()
        bit = g[g["impl_kind"] == "bitwise"]
        rows.append({"model": model, "x_quant": x, "w_quant": w, "batch": int(batch),
                     "bitwise_ms": float(best.get("bitwise", float("nan"))),
                     "stored_ms": float(best.get("bitwise stored", float("nan"))),
                     "teacher_ms": float(best.get("fp32 teacher", float("nan"))),
                     "simulated_ms": float(best.get("simulated", float("nan"))),
                     "scale_mode": str(bit["scale_mode"].iloc[0]) if len(bit) else ""})
    return pd.DataFrame(rows)


def pareto_table(qat: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of every QAT row beside the measured latency of that model itself (``lsqbq bench models``, first
    seed's checkpoint, 1 thread, batch 1 and 256): the bitwise conversion when activations and weights are both
    quantized, else the fp32 model (a full-precision side runs in fp32: the teacher's latency); ``stored_ms_b*``:
    the bitwise conversion with the stored moving-average scales instead of the trained mode. A row is on the
    Pareto front of its model (at batch 1) when no other row is at least as fast and more accurate, or faster and
    at least as accurate."""
    lat = checkpoint_latency(models)
    rows = []
    for q in qat.to_dict("records"):
        model, x, w = q["model"], q["x_quant"], q["w_quant"]
        binary = not (get_scheme(x).is_fp or get_scheme(w).is_fp)
        row = {"model": model, "x_quant": x, "w_quant": w, "k_a": q["k_a"], "k_w": q["k_w"],
               "top1_mean": q["top1_mean"], "top1_std": q["top1_std"],
               "runs_on": f"bitwise {kernel_name(x, w)}" if binary else "fp32", "scale_mode": ""}
        for batch in (1, 256):
            own = lat[(lat["model"] == model) & (lat["batch"] == batch)]
            if binary:
                own = own[(own["x_quant"] == x) & (own["w_quant"] == w)]
                row[f"ms_b{batch}"] = float(own["bitwise_ms"].iloc[0]) if len(own) else float("nan")
                row[f"stored_ms_b{batch}"] = float(own["stored_ms"].iloc[0]) if len(own) else float("nan")
                row["scale_mode"] = row["scale_mode"] or (own["scale_mode"].iloc[0] if len(own) else "")
            else:  # every timed checkpoint carries its teacher's latency
                row[f"ms_b{batch}"] = float(own["teacher_ms"].median()) if len(own) else float("nan")
                row[f"stored_ms_b{batch}"] = float("nan")
        rows.append(row)
    for r in rows:
        same = [o for o in rows if o["model"] == r["model"] and not math.isnan(o["ms_b1"])]
        r["pareto"] = (not math.isnan(r["ms_b1"])) and not any(
            (o["ms_b1"] <= r["ms_b1"] and o["top1_mean"] > r["top1_mean"])
            or (o["ms_b1"] < r["ms_b1"] and o["top1_mean"] >= r["top1_mean"]) for o in same)
    return pd.DataFrame(rows)
