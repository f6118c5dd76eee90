"""The accuracy claims (post-training and quantization-aware training), with the statistics of
:mod:`lsqbq.stats`:

difference, ``ci_low``/``ci_high``  mean paired difference A - B (points) and its unadjusted 95 % interval by
                                   ``method``: the paired hierarchical bootstrap over seeds and test images
                                   (:mod:`lsqbq.stats.bootstrap`) when ``predictions.npy`` exists for every run of
                                   the row, else the seed-only paired t interval (:mod:`lsqbq.stats.paired_t`);
``t_low``/``t_high``               the seed-only t interval, always;
``p_value``                        two-sided p of a zero difference by ``method``;
``holm_*``                         the Holm-adjusted level and interval over the family of all accuracy rows
                                   (:func:`adjust_family`; :mod:`lsqbq.stats.multiplicity`), which gives the verdict;
``bound_low``/``bound_high``       one-sided 95 % bounds by ``method`` (:mod:`lsqbq.stats.equivalence`), the
                                   largest differences the data exclude, and the basis of "equivalent within ±margin".

Each post-training row is followed by a supporting row of kind :data:`PTQ_SUPPORT` when the post-training results
carry ``kl``: the paired difference of the mean KL(p_fp || p_q) to the fp model's outputs (nats per test image) with
its seed-only t interval over the fp models, verdict on "A below B". It is outside the Holm family (no ``holm_*``,
no ``analysis``): evidence beside the accuracy verdict, not a test of its own.

Quantization-aware training rows come once per activation-scale mode: scales fitted per image and the moving
averages stored in training (``top1_fitted`` / ``top1_stored`` of the evaluations); without evaluations, once with
the accuracy recorded by training ("as trained").
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import DataError
from ..schemes import get_scheme
from ..stats import EQUIVALENCE_MARGIN, FAMILY_ALPHA, hierarchical_bootstrap, holm_levels, one_sided_bounds, paired_t
from .aggregate import mean_std, pair_key, paper_value
from .predictions import correct
from .render import fmt_mean_std
from .verdicts import decide, row, verdict

__all__ = ["LEVEL", "QAT_ORDER", "QAT_WEIGHTS", "KINDS", "PTQ_SUPPORT", "ptq_claims", "qat_claims", "adjust_family",
           "scale_modes"]

LEVEL = 0.95  # unadjusted confidence level
#: Claim 3: each scheme (activations, 1-bit ls-1 weights) above the next.
QAT_ORDER = ("ls-2", "gf-2", "ls-T", "ls-1")
QAT_WEIGHTS = "ls-1"
KINDS = ("ptq", "qat")  # the family of accuracy claims
PTQ_SUPPORT = "ptq_kl"  # kind of the supporting KL rows of the post-training claims (not in the family)
METHOD_T = "paired t over seeds"
METHOD_BOOTSTRAP = "hierarchical bootstrap over seeds and test images"
#: Recorded accuracies are rounded to 0.01 points; predictions must reproduce them within this.
ACCURACY_TOLERANCE = 0.006


def _disp(name: str) -> str:
    return get_scheme(name).display


def _statistics(diffs: list[float], corrects: tuple[np.ndarray, np.ndarray] | None, why_t: str) -> dict:
    """The statistic columns of one accuracy row (module docstring) and the analysis that gives its verdict."""
    t = paired_t(diffs)
    if corrects is not None:
        primary, method = hierarchical_bootstrap(*corrects), METHOD_BOOTSTRAP
        images = corrects[0].shape[1]
    else:
        primary, method, images = t, f"{METHOD_T} ({why_t})", float("nan")
    lo, hi = primary.interval(LEVEL)
    bl, bh = one_sided_bounds(primary)
    tl, th = t.interval(LEVEL)
    return dict(difference=primary.estimate, ci_low=lo, ci_high=hi, method=method, t_low=tl, t_high=th,
                p_value=primary.pvalue, bound_low=bl, bound_high=bh, margin=EQUIVALENCE_MARGIN, n=t.n,
                images=images, verdict=decide(lo, hi, bl, bh), analysis=primary)


# ------------------------------------------------------------------------------ post-training ls-2 >> gf-2


def _ptq_kl_row(g: pd.DataFrame, a: str, b: str, claim: str, model: str) -> dict | None:
    """The supporting row of one post-training claim: mean KL to the fp model of ``a`` minus ``b``, paired by fp
    model, seed-only t interval at :data:`LEVEL`; verdict on ``a`` below ``b``. None without KL values."""
    if "kl" not in g:
        return None
    va, vb = (g[g["w_quant"] == w].set_index("run_id")["kl"].dropna() for w in (a, b))
    common = sorted(set(va.index) & set(vb.index))
    if not common:
        return None
    t = paired_t([float(va[r] - vb[r]) for r in common])
    lo, hi = t.interval(LEVEL)
    ms = [mean_std(v[common].tolist()) for v in (va, vb)]
    ours = f"KL {fmt_mean_std(*ms[0], t.n, 4)} vs {fmt_mean_std(*ms[1], t.n, 4)} nats"
    if "nll" in g:
        nll = [mean_std(g[g["w_quant"] == w].set_index("run_id")["nll"].reindex(common).tolist())[0] for w in (a, b)]
        ours += f"; test NLL {nll[0]:.3f} vs {nll[1]:.3f} nats"
    return row(kind=PTQ_SUPPORT, claim=f"{claim}: supporting evidence, KL to the fp model's outputs (not in the Holm "
                                       "family)", paper="none (the paper reports top-1 only)", model=model,
               setting="fp model's weights quantized, activations fp; mean KL(p_fp ‖ p_q) over the test images, "
                       f"nats; {_disp(a)} below {_disp(b)} supports the claim",
               scales="", ours=ours, difference=t.estimate, ci_low=lo, ci_high=hi, method=METHOD_T, t_low=lo,
               t_high=hi, p_value=t.pvalue, n=t.n, unit="nats", pairing="by fp model (seed)",
               verdict=verdict(lo, hi, sign=-1))


def ptq_claims(ptq: pd.DataFrame, paper: pd.DataFrame) -> list[dict]:
    """Post-training weight quantization: ls-2 against gf-2, paired by the fp model (one per seed); seed-only t
    (post-training evaluations keep no per-image predictions). Verdicts unadjusted until :func:`adjust_family`.
    Each row is followed by its supporting KL row (:func:`_ptq_kl_row`) when ``ptq`` has a ``kl`` column."""
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
        stats = _statistics([float(va[r] - vb[r]) for r in common], None, "no per-image predictions for PTQ")
        n = stats["n"]
        ours = f"{fmt_mean_std(*mean_std(va[common].tolist()), n)} vs {fmt_mean_std(*mean_std(vb[common].tolist()), n)}"
        claim = f"post-training {_disp(a)} weights far above {_disp(b)}"
        rows.append(row(kind="ptq", claim=claim, paper=ref,
                        model=model, setting="fp model's weights quantized, activations fp; test top-1 (%)",
                        scales="", ours=ours, unit="points", pairing="by fp model (seed)", **stats))
        support = _ptq_kl_row(g, a, b, claim, model)
        if support is not None:
            rows.append(support)
    return rows


# ------------------------------------------------------------------------------ quantization-aware training


def scale_modes(runs: pd.DataFrame) -> list[tuple[str, str, str | None]]:
    """``[(label, accuracy column, predictions mode)]``: fitted and stored scales when evaluations recorded both,
    else the accuracy recorded by training."""
    if "top1_stored" in runs and "top1_fitted" in runs:
        return [("fitted", "top1_fitted", "fitted"), ("stored", "top1_stored", "stored")]
    return [("as trained", "top1", None)]


def _units(g: pd.DataFrame, pair: tuple[str, str]) -> dict[tuple, pd.Series]:
    sel = g[(g["x_quant"] == pair[0]) & (g["w_quant"] == pair[1])]
    return {pair_key(r): r for _, r in sel.iterrows()}


def _correct(r: pd.Series, predictions: dict, mode: str, column: str) -> np.ndarray | None:
    """Per-image correctness of run ``r`` with ``mode``, checked against its recorded accuracy; None if absent."""
    p = predictions.get(r["run_id"])
    c = None if p is None else correct(p, mode)
    if c is None:
        return None
    acc, recorded = 100 * float(c.mean()), float(r[column])
    if not math.isnan(recorded) and abs(acc - recorded) > ACCURACY_TOLERANCE:
        raise DataError(f"predictions of run {r['run_id']} ({r['model']} {r['x_quant']}/{r['w_quant']} seed "
                        f"{r['seed']}): {mode} accuracy {acc:.3f} % differs from the recorded {column} "
                        f"{recorded:.2f} %; the predictions and metrics.json come from different evaluations")
    return c


def _paired_correct(ua: dict, ub: dict, units: list, predictions: dict | None, mode: str | None,
                    column: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(S, N)`` correctness of A and B over ``units`` when every run has predictions for ``mode``."""
    if not predictions or mode is None:
        return None
    rows = [[_correct(side[u], predictions, mode, column) for u in units] for side in (ua, ub)]
    if any(c is None for side in rows for c in side):
        return None
    sizes = {c.size for side in rows for c in side}
    if len(sizes) != 1:
        raise DataError(f"predictions of one claim cover different test sets (sizes {sorted(sizes)}); "
                        "evaluate every run on the same test split")
    targets = [predictions[side[u]["run_id"]]["target"] for side in (ua, ub) for u in units]
    if any(not np.array_equal(targets[0], t) for t in targets[1:]):
        raise DataError("predictions of one claim disagree on the test images' targets; evaluate every run on "
                        "the same test split in dataset order")
    return np.stack(rows[0]), np.stack(rows[1])


def qat_claims(runs: pd.DataFrame, paper: pd.DataFrame, predictions: dict[str, np.ndarray] | None = None
               ) -> list[dict]:
    """Quantization-aware training with 1-bit weights: ls-2 > gf-2 > ls-T > ls-1 (activations), each adjacent
    pair compared on the runs that share seed and teacher, once per scale mode (:func:`scale_modes`).
    ``predictions``: ``{run id: predictions}`` (:mod:`lsqbq.tables.predictions`). Verdicts are unadjusted until
    :func:`adjust_family`."""
    rows = []
    for label, column, mode in scale_modes(runs):
        for model, g in runs.groupby("model", sort=True):
            for hi_s, lo_s in zip(QAT_ORDER, QAT_ORDER[1:]):
                a, b = (hi_s, QAT_WEIGHTS), (lo_s, QAT_WEIGHTS)
                ua, ub = _units(g, a), _units(g, b)
                units = [u for u in sorted(set(ua) & set(ub))
                         if not math.isnan(float(ua[u][column]) - float(ub[u][column]))]
                if not units:
                    continue
                diffs = [float(ua[u][column]) - float(ub[u][column]) for u in units]
                corrects = _paired_correct(ua, ub, units, predictions, mode, column)
                stats = _statistics(diffs, corrects, "no per-image predictions")
                refs = []
                for source, name in (("V1 Table 2", "V1"), ("README ImageNet", "official code")):
                    pa, pb = (paper_value(paper, "qat", x, w, source) for x, w in (a, b))
                    if pa and pb:
                        refs.append(f"{name} {pa['top1']} vs {pb['top1']}")
                ms = [mean_std([float(side[u][column]) for u in units]) for side in (ua, ub)]
                n = stats["n"]
                teachers = all(t for _, t in units)
                rows.append(row(
                    kind="qat", claim=f"QAT: {_disp(hi_s)} above {_disp(lo_s)} activations ({_disp(QAT_WEIGHTS)} "
                                      "weights)",
                    paper="ImageNet: " + ", ".join(refs) if refs else "V1 Tables 1-2", model=model,
                    setting=f"top-1 (%) after quantization-aware training, activation scales {label}",
                    scales=label, ours=f"{fmt_mean_std(*ms[0], n)} vs {fmt_mean_std(*ms[1], n)}", unit="points",
                    pairing="by seed and teacher" if teachers else "by seed", **stats))
    return rows


# ------------------------------------------------------------------------------ the family


def adjust_family(rows: list[dict], alpha: float = FAMILY_ALPHA) -> list[dict]:
    """Holm over the accuracy rows (kinds :data:`KINDS`) of ``rows``: each gets ``holm_level`` from the rows'
    p-values (:func:`~lsqbq.stats.multiplicity.holm_levels`), its interval at that level by its own method, and
    the verdict read off that interval (equivalence still from the unadjusted one-sided bounds). Other rows are
    returned unchanged."""
    family = [r for r in rows if r["kind"] in KINDS and "analysis" in r]
    levels = holm_levels([float(r["p_value"]) for r in family], alpha)
    for r, level in zip(family, levels):
        lo, hi = r["analysis"].interval(level)
        r.update(holm_level=level, holm_low=lo, holm_high=hi,
                 verdict=decide(lo, hi, r["bound_low"], r["bound_high"], r["margin"]))
    return rows
