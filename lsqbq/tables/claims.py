"""The paper's claims, each checked against our results: measurement, paired difference with its 95 % interval
and a verdict.

Verdict of a claim "A > B" from the interval [lo, hi] of the difference A - B:
    reproduced                    lo > 0 (the whole interval on the claimed side),
    contradicted                  hi < 0 (the whole interval on the other side),
    not separable at this scale   otherwise (the interval holds 0, or fewer than two pairs give no interval).
Claims about an optimum (no sampling unit to pair over) use a stated tolerance instead.
"""
from __future__ import annotations

import math

import pandas as pd

from ..schemes import get_scheme
from .aggregate import by_unit, mean_std, paired, paper_value, t_interval
from .render import fmt_mean_std, fmt_percent, fmt_value

__all__ = ["REPRODUCED", "NOT_SEPARABLE", "CONTRADICTED", "LLOYD_TOLERANCE", "KINDS", "COLUMNS", "verdict",
           "qat_paper_gaps", "build_claims"]

REPRODUCED, NOT_SEPARABLE, CONTRADICTED = "reproduced", "not separable at this scale", "contradicted"
#: A per-row Lloyd-Max codebook fitted to a finite sample is not forced to be symmetric, so it sits slightly below
#: the symmetric optimum ls-2 / ls-T reach; differences within this fraction count as equal.
LLOYD_TOLERANCE = 0.01
#: Claim 3: each scheme (activations, 1-bit ls-1 weights) above the next.
QAT_ORDER = ("ls-2", "gf-2", "ls-T", "ls-1")
QAT_WEIGHTS = "ls-1"
Z95 = 1.959963984540054  # standard normal 97.5 % quantile


def verdict(lo: float, hi: float, sign: int = 1) -> str:
    """Verdict for the claim ``sign * difference > 0`` from the interval ``[lo, hi]`` of the difference."""
    if math.isnan(lo) or math.isnan(hi):
        return NOT_SEPARABLE
    lo, hi = sorted((sign * lo, sign * hi))
    return REPRODUCED if lo > 0 else CONTRADICTED if hi < 0 else NOT_SEPARABLE


#: Kinds of claims, in the paper's order.
KINDS = ("lloyd_max", "ptq", "qat", "angle", "cost")
COLUMNS = ("kind", "claim", "paper", "model", "setting", "ours", "difference", "ci_low", "ci_high", "n", "unit",
           "pairing", "verdict")


def _row(*values) -> dict:
    """One row of the claims table, values in :data:`COLUMNS` order."""
    return dict(zip(COLUMNS, values, strict=True))


def _disp(name: str) -> str:
    return get_scheme(name).display


# ------------------------------------------------------------------------------- 1. Lloyd-Max optimum


def lloyd_max_claims(error: pd.DataFrame) -> list[dict]:
    """ls-2 / ls-T against the Lloyd-Max quantizer with 4 / 3 levels on the symmetric synthetic samples."""
    from ..analysis.lloyd_max import DISTRIBUTIONS

    rows = []
    synth = error[error["source"].isin(DISTRIBUTIONS)].drop_duplicates(subset=["source", "scheme"])
    for name, section in (("ls-2", "3.2.2"), ("ls-T", "3.2.3")):
        sel = synth[synth["scheme"] == name]
        if sel.empty:
            continue
        s = get_scheme(name)
        worst = float(sel["excess"].max())
        ours = " / ".join(f"{r.source} {fmt_percent(r.excess)}" for r in sel.itertuples())
        values = int(sel["n_values"].iloc[0])
        rows.append(_row("lloyd_max",
            f"{s.display} error = Lloyd-Max optimum ({s.levels} levels) on symmetric data",
            f"V1 Sec. {section}: {s.display} is the least-squares optimal foldable quantizer with {s.levels} levels",
            "-", f"synthetic unit-variance samples, {values:,} values each, per-row fit",
            f"MSE above Lloyd-Max: {ours}", 100 * worst, float("nan"), float("nan"), len(sel), "% (largest)",
            f"same rows; tolerance {100 * LLOYD_TOLERANCE:.0f} % (no sampling unit)",
            REPRODUCED if abs(worst) <= LLOYD_TOLERANCE else CONTRADICTED))
    return rows


# -------------------------------------------------------------------------- 2. post-training ls-2 >> gf-2


def ptq_claims(ptq: pd.DataFrame, paper: pd.DataFrame) -> list[dict]:
    """Post-training weight quantization: ls-2 against gf-2, paired by the fp model (one per seed)."""
    a, b = "ls-2", "gf-2"
    fp = get_scheme(None).name
    pa, pb = (paper_value(paper, "post", fp, w, "V1 Table 1") for w in (a, b))
    ref = f"V1 Table 1, ImageNet: {pa['top1']} vs {pb['top1']} top-1" if pa and pb else "V1 Table 1"
    rows = []
    for model, g in ptq.groupby("model", sort=True):
        va = g[g["w_quant"] == a].set_index("run_id")["top1"]
        vb = g[g["w_quant"] == b].set_index("run_id")["top1"]
        common = sorted(set(va.index) & set(vb.index))
        if not common:
            continue
        diffs = [float(va[r] - vb[r]) for r in common]
        mean, lo, hi, n = t_interval(diffs)
        ours = f"{fmt_mean_std(*mean_std(va[common].tolist()), n)} vs {fmt_mean_std(*mean_std(vb[common].tolist()), n)}"
        rows.append(_row("ptq", f"post-training {_disp(a)} weights far above {_disp(b)}", ref, model,
                         "fp model's weights quantized, activations fp; test top-1 (%)", ours, mean, lo, hi, n,
                         "points", "by fp model (seed)", verdict(lo, hi)))
    return rows


# ------------------------------------------------------------------------------ 3. QAT ordering


def qat_claims(runs: pd.DataFrame, paper: pd.DataFrame) -> list[dict]:
    """Quantization-aware training with 1-bit weights: ls-2 > gf-2 > ls-T > ls-1 (activations), each adjacent
    pair compared on the runs that share seed and teacher."""
    rows = []
    for model, g in runs.groupby("model", sort=True):
        for hi_s, lo_s in zip(QAT_ORDER, QAT_ORDER[1:]):
            a, b = (hi_s, QAT_WEIGHTS), (lo_s, QAT_WEIGHTS)
            pairs = paired(g, a, b, "top1")
            if not pairs:
                continue
            mean, lo, hi, n = t_interval([d for _, d in pairs])
            refs = []
            for source, label in (("V1 Table 2", "V1"), ("README ImageNet", "official code")):
                pa, pb = (paper_value(paper, "qat", x, w, source) for x, w in (a, b))
                if pa and pb:
                    refs.append(f"{label} {pa['top1']} vs {pb['top1']}")
            units = {u for u, _ in pairs}
            sel = lambda p: g[(g["x_quant"] == p[0]) & (g["w_quant"] == p[1])]  # noqa: E731
            ms = [mean_std(sel(p)["top1"].tolist()) for p in (a, b)]
            rows.append(_row("qat",
                f"QAT: {_disp(hi_s)} above {_disp(lo_s)} activations ({_disp(QAT_WEIGHTS)} weights)",
                "ImageNet: " + ", ".join(refs) if refs else "V1 Tables 1-2", model,
                "top-1 (%) after quantization-aware training",
                f"{fmt_mean_std(*ms[0], n)} vs {fmt_mean_std(*ms[1], n)}", mean, lo, hi, n, "points",
                "by seed and teacher" if all(t for _, t in units) else "by seed", verdict(lo, hi)))
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
        rows.append(_row("angle",
            f"angle of {_disp(a)} below {_disp(b)} in later layers", "V1 Fig. 4 (ResNet-18, ImageNet; no values)",
            model, f"fp teacher (seed {', '.join(map(str, seeds))}), {images} test images, {which}",
            f"{fmt_value(ga['angle_deg'].mean())}° vs {fmt_value(gb['angle_deg'].mean())}° ({where})", d, lo, hi,
            images,
            "degrees", "over images (one teacher; per-scheme intervals combined)", verdict(lo, hi, sign=-1)))
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
        rows.append(_row("cost", f"training with {_disp(a[0])} activations costs more than with {_disp(b[0])}",
                         "V1 Sec. 3.2.2: 35 % slower than gf-2", model,
                         "wall time of each whole training run", ours, mean, lo, hi,
                         n, "% slower", "by seed and teacher", verdict(lo, hi)))
    return rows


def qat_paper_gaps(paper: pd.DataFrame, source: str = "V1 Table 2") -> list[float]:
    """The paper's top-1 gaps between adjacent activation schemes of :data:`QAT_ORDER` (ls-1 weights)."""
    vals = [paper_value(paper, "qat", x, QAT_WEIGHTS, source) for x in QAT_ORDER]
    return [float(a["top1"]) - float(b["top1"]) for a, b in zip(vals, vals[1:]) if a and b]


def build_claims(runs: pd.DataFrame, paper: pd.DataFrame, ptq: pd.DataFrame | None = None,
                 error: pd.DataFrame | None = None, angles: pd.DataFrame | None = None,
                 bench: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every claim that the given results can test, in the paper's order (missing inputs skip their claims)."""
    rows: list[dict] = []
    if error is not None and not error.empty:
        rows += lloyd_max_claims(error)
    if ptq is not None and not ptq.empty:
        rows += ptq_claims(ptq, paper)
    rows += qat_claims(runs, paper)
    if angles is not None and not angles.empty:
        rows += angle_claims(angles)
    rows += cost_claims(runs, bench if bench is not None else pd.DataFrame())
    return pd.DataFrame(rows, columns=list(COLUMNS))
