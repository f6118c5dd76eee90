"""What each generated markdown file shows: the reader-facing tables built from the aggregated CSVs, with the
sentences that say what the numbers mean. Every number comes from the CSV next to the markdown file."""
from __future__ import annotations

import math
import statistics

import pandas as pd

from ..schemes import get_scheme
from .aggregate import PAPER_REFERENCES
from ..analysis.exact import EXACT_RTOL
from ..stats import BOOTSTRAP_RESAMPLES, EQUIVALENCE_MARGIN, FAMILY_ALPHA
from .claims import BENCH_TOLERANCE
from .verdicts import CONTRADICTED, REPRODUCED
from .render import fmt_interval, fmt_mean_std, fmt_percent, fmt_signed, fmt_value

__all__ = ["qat_doc", "ptq_doc", "error_doc", "pareto_doc", "claims_doc", "BITS_SENTENCE"]

BITS_SENTENCE = ("k^a and k^w are the bits of the activations and of the weights: the number of ±1 sign planes "
                 "(1, 2, 3), T for ternary ({−2v, 0, +2v}, stored in 2 bits) and 32 for full precision (fp).")


def _disp(name: str) -> str:
    return get_scheme(name).display


def _plural(n: int, word: str) -> str:
    """``"1 seed"``, ``"3 seeds"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _seeds(cells: pd.Series) -> str:
    """``"seed 0"`` / ``"seeds 0, 1, 2"`` from ``;``-joined seed lists."""
    seeds = sorted({int(s) for cell in cells for s in str(cell).split(";") if s != ""})
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def _seed_groups(table: pd.DataFrame, common: int) -> str:
    """What the cells of ``table`` (columns ``n_seeds``, ``seeds``) average over: ``"seeds 0, 1, 2 (3 runs per
    cell)"``, and for cells with another count ``"; cells marked (n=10): seeds 0, ..., 9"``."""
    same = table["n_seeds"] == common
    text = f"{_seeds(table.loc[same, 'seeds'])} ({_plural(common, 'run')} per cell)"
    for n in sorted(set(table.loc[~same, "n_seeds"].astype(int))):
        text += f"; cells marked (n={n}): {_seeds(table.loc[table['n_seeds'] == n, 'seeds'])}"
    return text


def _common_n(n: pd.Series) -> int:
    return int(statistics.mode(n.tolist())) if len(n) else 0


def _cell(mean, std, n: int, common: int) -> str:
    s = fmt_mean_std(mean, std, n)
    return s if not s or n == common else f"{s} (n={n})"


def _paper_cell(row, prefix: str) -> str:
    return fmt_mean_std(row[f"{prefix}_top1"], row.get(f"{prefix}_top1_std"), 2, 1)


# --------------------------------------------------------------------------------------------------- QAT


def qat_doc(qat: pd.DataFrame, dataset: str) -> tuple[str, list]:
    """Title and blocks of qat.md: one row per scheme pair, one column per model, the paper beside."""
    models = list(dict.fromkeys(qat["model"]))
    common = _common_n(qat["n_seeds"])
    pairs = list(dict.fromkeys(zip(qat["x_quant"], qat["w_quant"])))
    rows = []
    for x, w in pairs:
        sel = qat[(qat["x_quant"] == x) & (qat["w_quant"] == w)]
        row = {"activations": _disp(x), "weights": _disp(w), "k^a": get_scheme(x).label, "k^w": get_scheme(w).label}
        for m in models:
            r = sel[sel["model"] == m]
            row[m] = "" if r.empty else _cell(r["top1_mean"].iloc[0], r["top1_std"].iloc[0], int(r["n_seeds"].iloc[0]),
                                              common)
        first = sel.iloc[0]
        for prefix, _, _, title in PAPER_REFERENCES:
            row[title] = _paper_cell(first, prefix)
        rows.append(row)
    notes = [
        f"Top-1 test accuracy (%) after quantization-aware training, mean ± sample standard deviation over "
        f"{_seed_groups(qat, common)}; each student is distilled from the fp teacher of its model and seed. "
        f"{BITS_SENTENCE}",
        "The last three columns are the paper's ResNet-18 results for the same scheme pair (paper V1: Table 2, "
        "mean ± std over 5 runs, else Table 1; official code: its README, single runs). They are references for "
        "the order of the rows, not targets: a different dataset and a different model.",
        "Top-5, every run's accuracy, git commit, config and data hashes and MLflow run ids: `qat.csv` and "
        "`qat_runs.csv`.",
    ]
    return f"Quantization-aware training on {dataset}: top-1 accuracy (%)", [notes[0], pd.DataFrame(rows), *notes[1:]]


# ----------------------------------------------------------------------------------------- post-training


def _ptq_pivot(ptq: pd.DataFrame, columns: list[tuple[str, str, str, int]], common: int) -> pd.DataFrame:
    """One row per weight scheme, a column per model and measure: ``columns`` lists (measure, its n column, title
    (``""``: the model's name alone), digits); cells mean ± std over the fp models, ``(n=k)`` where a cell counts
    other than ``common`` values."""
    rows = []
    for w in dict.fromkeys(ptq["w_quant"]):
        sel = ptq[ptq["w_quant"] == w]
        row = {"weights": _disp(w), "k^w": get_scheme(w).label}
        for model in dict.fromkeys(ptq["model"]):
            r = sel[sel["model"] == model]
            for m, n_col, title, digits in columns:
                n = 0 if r.empty else int(r[n_col].iloc[0])
                cell = "" if r.empty else fmt_mean_std(r[f"{m}_mean"].iloc[0], r[f"{m}_std"].iloc[0], n, digits)
                row[f"{model}: {title}" if title else model] = cell if not cell or n == common else f"{cell} (n={n})"
        rows.append(row)
    return pd.DataFrame(rows)


def ptq_doc(ptq: pd.DataFrame, dataset: str) -> tuple[str, list]:
    """Title and blocks of ptq.md: top-1 per weight scheme and model, the paper beside; when the results carry them,
    the KL to the fp model and the test NLL and, as a separate extra, both after BatchNorm re-estimation."""
    common = _common_n(ptq["n_seeds"])
    note = (f"The trained fp model's weights quantized per output channel after training, activations in full "
            f"precision; top-1 test accuracy (%), mean ± std over the fp models of {_seeds(ptq['seeds'])}. "
            f"{BITS_SENTENCE} Paper: V1 Table 1 (ResNet-18 on ImageNet), a reference, not a target. Top-5 and "
            "provenance: `ptq.csv`.")
    top1 = _ptq_pivot(ptq, [("top1", "n_seeds", "", 2)], common)
    top1["paper V1, ImageNet"] = [fmt_value(ptq.loc[ptq["w_quant"] == w, "v1_imagenet_top1"].iloc[0], 1)
                                  for w in dict.fromkeys(ptq["w_quant"])]
    blocks = [note, top1]
    if "kl_mean" in ptq and ptq["kl_mean"].notna().any():
        blocks += [
            "## KL divergence to the fp model and test NLL",
            "The same quantized models on the same test images, in the same pass: the mean over images of "
            "KL(p_fp ‖ p_q), the quantized model's softmax against the fp model's (0 for fp), and the test NLL "
            f"(cross-entropy), nats per image; mean ± std over the fp models ({_plural(common, 'fp model')} per "
            "cell unless marked). Unlike top-1 they do not jump at the argmax: they order schemes on an accuracy "
            "cliff.", _ptq_pivot(ptq, [("kl", "n_kl", "KL", 4), ("nll", "n_nll", "NLL", 3)], common)]
    if "top1_bn_mean" in ptq and ptq["top1_bn_mean"].notna().any():
        sizes = sorted({int(v) for c in ptq["bn_images"].fillna("") for v in str(c).split(";") if v not in ("", "0")})
        blocks += [
            "## Extra: BatchNorm re-estimation after weight quantization",
            "A separate measurement, not used by the claims: after the weights are quantized, every BatchNorm "
            f"layer's running statistics are recomputed on a fixed set of {' / '.join(map(str, sizes))} training "
            "images (no augmentation, the rest of the model in eval mode), then measured as above; KL is still to "
            "the unchanged fp model, so the fp row shows what re-estimation alone changes.",
            _ptq_pivot(ptq, [("top1_bn", "n_top1_bn", "top-1 (%)", 2), ("kl_bn", "n_kl_bn", "KL", 4)], common)]
    return f"Post-training weight quantization on {dataset}", blocks


# ---------------------------------------------------------------------------------------------- errors


def _source_title(model: str, source: str) -> str:
    return source if model == "-" else f"{model} {source}"


def error_doc(error: pd.DataFrame) -> tuple[str, list]:
    """Two pivots (scheme x data): MSE above the Lloyd-Max optimum, and the relative error."""
    df = error[[not get_scheme(s).is_fp for s in error["scheme"]]]
    columns = list(dict.fromkeys(zip(df["model"], df["source"])))
    schemes = sorted(dict.fromkeys(df["scheme"]), key=lambda n: get_scheme(n).sort_key)

    def pivot(fmt) -> pd.DataFrame:
        rows = []
        for s in schemes:
            row = {"scheme": _disp(s), "levels": str(get_scheme(s).levels)}
            for model, source in columns:
                r = df[(df["scheme"] == s) & (df["model"] == model) & (df["source"] == source)]
                row[_source_title(model, source)] = "" if r.empty else fmt(r.iloc[0])
            rows.append(row)
        return pd.DataFrame(rows)

    blocks = [
        "Each row of the data (a synthetic row, an output channel of the weights, one image's activations at a "
        "layer) is quantized on its own; errors are pooled over all rows. Synthetic data: unit-variance samples. "
        f"Model data: the trained fp model of {_seeds(error['seed'])}. Lloyd-Max: the optimal quantizer with "
        "the same number of levels, fitted to each row without any symmetry constraint; the foldable schemes are "
        "symmetric about zero, so on skewed rows (a large excess for every scheme) the optimum is out of their "
        "reach. 'official skip-3': the official code's search over every third value.",
        "## MSE above the Lloyd-Max optimum",
        pivot(lambda r: fmt_percent(r["excess"])),
        "## Relative error ‖x − x_q‖ / ‖x‖",
        pivot(lambda r: f"{r['rel_error']:.3f}"),
        "MSE, the Lloyd-Max MSE and provenance: `error.csv`.",
    ]
    return "Quantization error per scheme", blocks


# ---------------------------------------------------------------------------------------------- pareto


def _ms(v) -> str:
    return "" if pd.isna(v) else f"{v:.3g}"


def pareto_doc(pareto: pd.DataFrame) -> tuple[str, list]:
    view = pd.DataFrame({
        "model": pareto["model"], "activations": pareto["x_quant"].map(_disp),
        "weights": pareto["w_quant"].map(_disp), "runs on": pareto["runs_on"],
        "scales": pareto["scale_mode"].fillna(""),
        "batch 1 (ms)": pareto["ms_b1"].map(_ms), "batch 256 (ms)": pareto["ms_b256"].map(_ms),
        "stored scales, batch 1 / 256 (ms)": [f"{_ms(a)} / {_ms(b)}" if not pd.isna(a) else ""
                                              for a, b in zip(pareto["stored_ms_b1"], pareto["stored_ms_b256"])],
        "top-1 (%)": [fmt_mean_std(m, s, 2 if s > 0 else 1)
                      for m, s in zip(pareto["top1_mean"], pareto["top1_std"])],
        "Pareto front": pareto["pareto"].map(lambda v: "yes" if v else "")})
    note = ("Accuracy of each scheme pair (mean ± std over seeds) beside the latency of that model itself, measured "
            "by `lsqbq bench models` on the first seed's checkpoint (1 thread, median of repeats, the faster input "
            "layout): the `to_bitwise` conversion when activations and weights are both quantized (k^a x k^w "
            "binary planes; `scales`: activation scales fitted per sample at run time, or the stored moving "
            "averages), else the fp32 model, which is what a full-precision side runs on; the last column times the "
            "same bitwise model with the stored moving averages (no per-image fit; its top-1 is in the inference "
            "table). A pair is on the Pareto front when no other pair of its model is both at least as fast at "
            "batch 1 and more accurate.")
    return "Accuracy vs measured latency of each model", [note, view]


def inference_doc(table: pd.DataFrame) -> tuple[str, list]:
    """Top-1 per activation-scale mode and bitwise, one row per student with quantized activations."""
    def cells(prefix: str) -> list[str]:
        return [fmt_mean_std(m, s, 2) for m, s in zip(table[f"{prefix}_mean"], table[f"{prefix}_std"])]

    view = pd.DataFrame({
        "model": table["model"], "activations": table["x_quant"].map(_disp), "weights": table["w_quant"].map(_disp),
        "fitted scales": cells("top1_fitted"), "stored scales": cells("top1_stored"),
        "stored - fitted": [f"{fmt_signed(g, 2)} {fmt_interval(lo, hi, 2)}".strip()
                            for g, lo, hi in zip(table["gap_mean"], table["gap_ci_low"], table["gap_ci_high"])],
        "seeds": table["seeds"].map(lambda v: str(v).replace(";", ", "))})
    if "top1_bitwise_mean" in table:
        view["bitwise"] = cells("top1_bitwise")
        view["agreement (min %)"] = table["agreement_min"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    note = ("Test top-1 (%) of every student with quantized activations, mean ± std over seeds, with the activation "
            "scales fitted on each image at run time (what the official code evaluates and the default profile "
            "trains with) and with the moving averages recorded during training (what the paper describes for "
            "inference: no per-image fit). `stored - fitted`: mean paired difference over seeds, points, with its "
            "95 % t interval. `bitwise`: the same checkpoint converted with `to_bitwise` and run on XNOR/popcount "
            "kernels (scales as trained); `agreement`: images where its prediction equals the simulated model's, "
            "lowest over seeds.")
    return "Top-1 by activation-scale mode, simulated and bitwise", [note, view]


# ---------------------------------------------------------------------------------------------- claims


def _difference(r) -> str:
    unit = {"points": " pts", "degrees": "°", "% slower": " %", "% (largest)": " % (largest)"}.get(r["unit"], "")
    digits = 1 if "%" in str(r["unit"]) else 2
    if r["kind"] == "lloyd_max":
        return f"{r['difference']:+.1e} %".replace("-", "−") + " (largest)"
    d = fmt_signed(r["difference"], digits, unit)
    ci = fmt_interval(r["ci_low"], r["ci_high"], digits)
    return f"{d} {ci}".strip()


def _holm(r) -> str:
    if pd.isna(r["holm_level"]):
        return ""
    return f"{fmt_interval(r['holm_low'], r['holm_high'], 2)} at {100 * r['holm_level']:.2f} %"


def _excluded(r) -> str:
    """The one-sided 95 % bounds of an unresolved accuracy claim: differences beyond them are excluded."""
    if r["kind"] not in ("ptq", "qat") or r["verdict"] in (REPRODUCED, CONTRADICTED) or pd.isna(r["bound_high"]):
        return ""
    return f"A − B outside {fmt_interval(r['bound_low'], r['bound_high'], 2)}"


def _paired_over(r) -> str:
    n = int(r["n"]) if not pd.isna(r["n"]) else 0
    if r["kind"] == "angle":
        images = _plural(int(r["images"]), "image") if not pd.isna(r["images"]) else "images"
        return f"{_plural(n, 'teacher')} × {images} each" if n > 1 else f"{images}, one teacher"
    if r["kind"] == "cost":
        return "step benchmark, schemes side by side"
    if r["kind"] == "lloyd_max":
        return f"{_plural(n, 'density')}, exact; tolerance {EXACT_RTOL:g} relative".replace("densitys", "densities")
    unit = _plural(n, "fp model" if r["kind"] == "ptq" else "seed")
    if not pd.isna(r.get("images", float("nan"))):
        unit += f" × {int(r['images']):,} test images"
    elif r["kind"] in ("ptq", "qat"):
        unit += " (seed-only t)"
    return unit if n > 1 or not pd.isna(r["ci_low"]) else f"{unit} (no interval)"


def _room(qat: pd.DataFrame) -> float:
    """The largest top-1 gap between a model's fp/fp row and its least accurate quantized row (NaN without fp)."""
    gaps = []
    for _, g in qat.groupby("model"):
        fp = g[[get_scheme(x).is_fp and get_scheme(w).is_fp for x, w in zip(g["x_quant"], g["w_quant"])]]
        if len(fp) and len(g) > 1:
            gaps.append(float(fp["top1_mean"].iloc[0] - g["top1_mean"].min()))
    return max(gaps) if gaps else float("nan")


def _interval_shrink(n: int, m: int) -> float:
    """Width of a 95 % t interval over m pairs relative to one over n pairs with the same spread:
    (t_{0.975, m-1} / sqrt m) / (t_{0.975, n-1} / sqrt n)."""
    from scipy.stats import t

    if n < 2:
        return float("nan")
    return float(t.ppf(0.975, m - 1) / m**0.5 / (t.ppf(0.975, n - 1) / n**0.5))


def claims_doc(claims: pd.DataFrame, qat: pd.DataFrame, paper_gaps: list[float], dataset: str) -> tuple[str, list]:
    """Title and blocks of claims.md; ``paper_gaps``: the paper's top-1 gaps between adjacent schemes of the QAT
    ordering (what this profile would need to resolve)."""
    records = [r for _, r in claims.iterrows()]
    view = pd.DataFrame({
        "claim": claims["claim"], "model": claims["model"], "scales": claims["scales"].fillna(""),
        "paper": claims["paper"], "ours": claims["ours"],
        "difference [95 % CI]": [_difference(r) for r in records],
        "Holm-adjusted CI": [_holm(r) for r in records],
        "seed-only t CI": [fmt_interval(r["t_low"], r["t_high"], 1 if "%" in str(r["unit"]) else 2) for r in records],
        "excluded (one-sided 95 %)": [_excluded(r) for r in records],
        "paired over": [_paired_over(r) for r in records], "verdict": claims["verdict"]})
    models = ", ".join(dict.fromkeys(qat["model"]))
    n = _common_n(qat["n_seeds"]) if len(qat) else 0
    accuracy = []
    for kind, what in (("qat", "quantization-aware training"), ("ptq", "post-training quantization")):
        rows = claims[claims["kind"] == kind]
        half = ((rows["ci_high"] - rows["ci_low"]) / 2).dropna()
        if len(half):
            apart = int(rows["verdict"].isin([REPRODUCED, CONTRADICTED]).sum())
            same = int(rows["verdict"].str.startswith("equivalent").sum())
            accuracy.append(f"±{fmt_value(half.median(), 1)} points for {what} ({apart} of {len(rows)} "
                            f"comparisons resolved after Holm, {same} equivalent within "
                            f"±{EQUIVALENCE_MARGIN:g} points)")
    teachers = claims.loc[claims["kind"] == "angle", "n"]
    images = claims.loc[claims["kind"] == "angle", "images"]
    counts = sorted({int(k) for k in qat["n_seeds"]}) if len(qat) else []
    seeds = (_plural(n, "seed") if len(counts) <= 1 else
             f"{counts[0]} to {counts[-1]} seeds per row ({counts[-1]} for the runs the claims compare)")
    can = f"**What this profile can and cannot show.** {dataset} with {models}, {seeds}. "
    if (claims["kind"] == "lloyd_max").any():
        can += "The Lloyd-Max comparison is exact. "
    if len(teachers):
        if teachers.max() > 1:
            can += (f"The angle comparisons rest on {int(teachers.max())} fp teachers per model at most, "
                    f"{int(images.max())} test images each: their intervals are over teachers. ")
        else:
            can += (f"The angle comparisons rest on {int(images.max())} test images of one fp teacher per model: "
                    "firm for that teacher, not over teachers. ")
        can += ("Whether ls-2 beats gf-4 depends on the activations' distribution (greedy 16 levels win on "
                "Gaussian rows, 4 optimal levels on sparse ones: `lsqbq analyze sweep`); the equal-bit rows test "
                "the method itself. ")
    if accuracy:
        gaps = [fmt_value(g, 1) for g in paper_gaps]
        gap_text = (f" The paper's gaps between adjacent schemes of the QAT ordering are {', '.join(gaps[:-1])} "
                    f"and {gaps[-1]} points (V1, ImageNet).") if len(gaps) > 1 else ""
        fewest = counts[0] if counts else n
        more = max(10, counts[-1] if counts else n)
        shrink = _interval_shrink(fewest, more) if fewest < more else float("nan")
        narrow = (f" With the same spread, {more} seeds would narrow a {fewest}-seed interval to "
                  f"{fmt_value(100 * shrink, 0)} % of its width;" if not math.isnan(shrink) else "")
        can += (f"The accuracy claims rest on {seeds}: the median 95 % interval of a paired difference is "
                f"{' and '.join(accuracy)}.{gap_text}{narrow} {'a' if narrow else 'A'} harder dataset (the cifar10, "
                "cifar100 and imagenet profiles) widens the gaps themselves. ")
    room = _room(qat)
    if not math.isnan(room):
        can += (f"Every quantized model is within {fmt_value(room, 1)} points of its fp teacher, which leaves "
                "little room between schemes. ")
    can += "The paper's absolute numbers are references, not targets: a different dataset and model."
    blocks = [
        "Each claim of the paper against our results. *difference* is A − B for a claim about A and B, named in "
        "the claim's order (for 'A below B' a negative difference supports it): top-1 points, degrees, or percent "
        "of step time. Differences are paired over what both sides share: the seed (every student of "
        "seed s is distilled from the fp teacher of seed s) for quantization-aware training, the fp model of each "
        "seed for post-training quantization, and for angles the fp teacher of each seed (both schemes on the same "
        "images, each teacher's images averaged; with one teacher, its images, the two schemes' intervals combined "
        "as independent); angles are measured on the teachers' BN outputs and on what the students' activation "
        "quantizers see (their clamped inputs), as each row's setting says. Training cost comes from one step of "
        "the model timed for every scheme side by side (`lsqbq bench training`), the wall time of whole runs "
        "being context only. Quantization-aware training is judged twice: with the "
        "activation scales fitted on each image and with the moving averages stored in training (*scales*).",
        "Intervals. *difference [95 % CI]*: unadjusted. For an accuracy claim it comes from a paired hierarchical "
        "bootstrap over seeds and test images together when every run of the row has per-image predictions (each "
        f"of {BOOTSTRAP_RESAMPLES:,} replicates draws the seeds with replacement and, independently, the test "
        "images with replacement, the same images for every seed and both schemes: d* = 100 wᵀ D v / (S N) with "
        "D the per-image difference in correctness, w and v the seed and image counts); otherwise, as *paired "
        "over* says, from the t distribution over the seeds alone (n − 1 degrees of freedom), which ignores the "
        "sampling of the test set. *seed-only t CI* is that t interval for every row. Angles: t over "
        "teachers (normal approximation over images with one teacher). Training cost: one benchmark, no interval; "
        f"reproduced beyond a ±{BENCH_TOLERANCE:g} % timing tolerance. Lloyd-Max: exact, the scheme's codebook "
        "scored on each unit-variance density by quadrature against Lloyd's iteration on the same density "
        "(for N(0, 1): MSE 0.1175 with 4 levels, "
        f"0.1902 with 3), equal within a relative {EXACT_RTOL:g}.",
        f"Multiplicity. The accuracy claims (post-training and both scale modes of quantization-aware training) "
        f"form one family at {100 * FAMILY_ALPHA:.0f} % family-wise error: Holm's step-down procedure on their "
        "two-sided p-values, each claim's interval recomputed at its adjusted level (the level of its step, or "
        "of the first step not rejected), so that the interval excludes zero exactly when Holm rejects. "
        "*excluded*: for an accuracy claim not resolved, the one-sided 95 % bounds [L, U] of A − B: a difference "
        "above U is excluded at 95 %, and so is one below L (e.g. U = +0.26: an advantage of A above 0.26 points "
        "is excluded).",
        "Verdict (from the Holm-adjusted interval for accuracy claims, else the 95 % interval): **reproduced** when "
        "the whole interval lies on the side the paper claims, **contradicted** when it lies on the other side; "
        f"otherwise **equivalent within ±{EQUIVALENCE_MARGIN:g} points** when both one-sided 95 % bounds lie "
        f"inside ±{EQUIVALENCE_MARGIN:g} points of top-1 (two one-sided tests at 5 %, a margin fixed in advance for "
        "every accuracy claim), else **not separable at this scale** (or when a single pair gives no interval).",
        view if len(view) else "No claim of the paper can be tested with these results.",
        can,
        "Every measurement, interval and the pairing of each row: `claims.csv`.",
    ]
    return f"The paper's claims, checked on {dataset}", blocks
