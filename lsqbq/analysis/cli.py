"""``lsqbq analyze error | ptq | angles | sweep``: the analyses as commands writing ``PREFIX.csv`` and ``PREFIX.md``
(and ``PREFIX.png`` for ``angles`` and ``sweep``).

Usage::

    lsqbq analyze error  --checkpoint checkpoints/.../checkpoint.pt --out results/analysis/DATASET/MODEL/error
    lsqbq analyze ptq    --checkpoint checkpoints/.../checkpoint.pt --out results/analysis/DATASET/MODEL/ptq
    lsqbq analyze angles --checkpoint checkpoints/.../fp_fp/s0/checkpoint.pt \\
        [--students checkpoints/.../ls-2_ls-1/s0/checkpoint.pt] --out results/analysis/DATASET/MODEL/angles_fp_fp_s0
    lsqbq analyze sweep  --out results/analysis/synthetic/angle_sweep   # Gaussian to sparse rows, no model needed
    lsqbq analyze error  --synthetic-only --out results/analysis/synthetic   # no model needed
    lsqbq analyze angles --render-only --out results/analysis/DATASET/MODEL/angles  # md + png from the CSV

The markdown file is rendered from the CSV just written, so it is a pure function of the CSV.

Each computing invocation (not ``--render-only``) is recorded as one MLflow run in experiment ``lsqbq-analysis``
(or nested under the analysed checkpoint's training run when that run is in the same store): the arguments as
params, the row count (and for ``ptq`` each scheme's top-1 / top-5 / KL / NLL) as metrics, the files written as
artifacts and tag ``lsqbq.source_run_ids``. ``LSQBQ_TRACKING=0`` skips it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

from ..schemes import get_scheme
from . import figures, report
from .hooks import layer_inputs, quantizer_inputs, weight_rows
from .lloyd_max import DISTRIBUTIONS
from .measures import ANGLE_SCHEMES, PTQ_SCHEMES, angle_rows, error_rows, synthetic_rows
from .ptq import BN_IMAGES, calibration_loader, ptq_rows
from .angle_views import angles_view, sweep_view
from .sweep import SWEEP_P, crossing, sweep_rows

__all__ = ["build_parser", "main", "render_outputs"]

PROVENANCE = ("commit", "config_hash", "data_hash", "run_id")
#: MLflow experiment of an analysis whose checkpoint's training run is not in the store (else it nests under it).
EXPERIMENT = "lsqbq-analysis"
FIGURES = ("angles", "sweep")  # the commands that draw PREFIX.png
_SOURCES: list = []  # MLflow run ids of the checkpoints read by this invocation


def _load(checkpoint: str, threads: int | None, test_subset: int | None = None):
    """(model in eval mode, its config, test loader) of a training checkpoint; the checkpoint's MLflow run id is
    kept in ``_SOURCES`` for the analysis run."""
    from .. import data as D
    from ..checkpoint import load_model

    if threads:
        torch.set_num_threads(threads)
    loaded = load_model(checkpoint)
    model, cfg = loaded.model.eval(), loaded.config
    _SOURCES.append(_provenance(checkpoint).get("run_id") or loaded.state.get("run_id"))
    if test_subset is not None:
        cfg.data.test_subset = test_subset
    _, test_loader = D.build_loaders(cfg)
    return model, cfg, test_loader


def _provenance(checkpoint: str | None) -> dict:
    """commit / config hash / data hash / run id of the model analysed, from the metrics.json beside it."""
    if checkpoint is None:
        return {}
    path = Path(checkpoint).with_name("metrics.json")
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    return {k: m.get(k, "") for k in PROVENANCE}


# ---------------------------------------------------------------------------------------------- views


def _display(name: str) -> str:
    return get_scheme(name).display


def error_view(df: pd.DataFrame) -> pd.DataFrame:
    """Long table: data, scheme, levels, MSE, relative error, Lloyd-Max MSE and the excess over it."""
    has_bound = df["lloyd_max_mse"] > 0
    return pd.DataFrame({
        "data": df["source"], "scheme": df["scheme"].map(_display), "levels": df["levels"],
        "MSE": df["mse"].map(lambda v: f"{v:.4g}"), "relative error": df["rel_error"].map(lambda v: f"{v:.4f}"),
        "Lloyd-Max MSE": df["lloyd_max_mse"].where(has_bound).map(lambda v: "" if pd.isna(v) else f"{v:.4g}"),
        "vs Lloyd-Max": df["excess"].where(has_bound).map(report.fmt_percent)})


def ptq_view(df: pd.DataFrame) -> pd.DataFrame:
    """Top-1 / top-5, KL to the fp model and NLL per weight scheme; the BatchNorm re-estimation columns when it ran."""
    view = pd.DataFrame({"weights": df["w_quant"].map(_display), "k^w": df["k_w"],
                         "top-1 (%)": df["top1"].map(report.fmt_value), "top-5 (%)": df["top5"].map(report.fmt_value)})
    for col, title in (("kl", "KL to fp (nats)"), ("nll", "NLL (nats)")):
        if col in df:
            view[title] = df[col].map(lambda v: report.fmt_value(v, 4))
    if "top1_bn" in df and df["top1_bn"].notna().any():
        view["BN re-estimated: top-1 (%)"] = df["top1_bn"].map(report.fmt_value)
        view["BN re-estimated: KL to fp (nats)"] = df["kl_bn"].map(lambda v: report.fmt_value(v, 4))
    return view


def _write(rows: list[dict], prefix: str | Path, command: str) -> None:
    """``PREFIX.csv`` from ``rows``, then the markdown (and figure) rendered from it."""
    report.write_csv(rows, Path(prefix).with_suffix(".csv"))
    render_outputs(command, prefix)


def render_outputs(command: str, prefix: str | Path) -> None:
    """``PREFIX.md`` (and ``PREFIX.png`` for ``angles`` and ``sweep``) from an existing ``PREFIX.csv``: a pure
    function of it."""
    prefix = Path(prefix)
    csv = prefix.with_suffix(".csv")
    title, note, view = DOCS[command]
    df = report.read_csv(csv)
    blocks = [note, view(df)]
    if command == "sweep":
        p = crossing(df)
        blocks.append(f"{_display('ls-2')} falls below {_display('gf-4')} at spike weight p = {p:.2f}." if p == p
                      else f"{_display('ls-2')} stays above {_display('gf-4')} over the whole sweep.")
    report.write_markdown(prefix.with_suffix(".md"), title, blocks)
    if command == "angles":
        figures.plot_angles([csv], prefix.with_suffix(".png"))
    elif command == "sweep":
        figures.plot_sweep(csv, prefix.with_suffix(".png"))


ERROR_TITLE = "Quantization error: MSE, relative error and the Lloyd-Max optimum with the same number of levels"
ERROR_NOTE = ("Rows are quantized independently and errors pooled over all rows of a source: MSE = Σ(x − x_q)² / N, "
              "relative error = ‖x − x_q‖ / ‖x‖. Lloyd-Max: the optimal quantizer with the same number of levels, "
              "fitted per row; 'official skip-3': the official code's every-third-value search.")
PTQ_TITLE = "Post-training quantization of the weights (activations full precision)"
PTQ_NOTE = ("The trained model's weights quantized per output channel with each scheme, activations full precision; "
            "on the same test images: accuracy, KL(p_fp ‖ p_q) of the quantized model's softmax to the trained "
            "model's and the test NLL (cross-entropy), both mean nats per image. *BN re-estimated* (a separate "
            "measurement): the same after recomputing every BatchNorm layer's running statistics on a fixed set of "
            "training images (`bn_images` in the CSV), KL still to the unchanged trained model.")
ANGLES_TITLE = "Angle and relative error between activations and their quantization, per layer"
ANGLES_NOTE = ("Mean ± half-width of the 95 % interval over images (normal approximation) of the angle "
               "arccos(⟨x, x_q⟩ / ‖x‖‖x_q‖) and of ‖x − x_q‖ / ‖x‖, one row x per image; the spread is the standard "
               "deviation of the angle over images. *input*: the teacher's BN outputs (signed, unclamped) or what "
               "the student's activation quantizers see (each quantized layer's input after its clamp). Tail of "
               "the rows: excess kurtosis (0 for a normal) and the fraction of values with |x| < 0.1 SD (0.080 for "
               "a normal), per row, averaged over images.")
SWEEP_TITLE = "Angle of each scheme on synthetic rows from Gaussian to sparse"
SWEEP_NOTE = ("Spike-and-slab rows of unit variance: a value lies in the narrow spike N(0, (0.01 s)²) with "
              "probability p, else in the slab N(0, s²). Mean angle over the rows (degrees) and the rows' tail "
              "measures; p = 0 is N(0, 1).")
DOCS = {"error": (ERROR_TITLE, ERROR_NOTE, error_view), "ptq": (PTQ_TITLE, PTQ_NOTE, ptq_view),
        "angles": (ANGLES_TITLE, ANGLES_NOTE, angles_view), "sweep": (SWEEP_TITLE, SWEEP_NOTE, sweep_view)}


# ------------------------------------------------------------------------------------------- commands


def cmd_error(args) -> list[dict]:
    rows: list[dict] = []
    for i, dist in enumerate(args.distributions):
        rows += error_rows(dist, [synthetic_rows(dist, args.rows, args.n, seed=args.seed + i)])
    prov = {}
    if args.checkpoint and not args.synthetic_only:
        model, _, loader = _load(args.checkpoint, args.threads, args.test_subset)
        prov = _provenance(args.checkpoint)
        rows += error_rows("weights", weight_rows(model))
        _, acts = layer_inputs(model, loader, args.images)
        rows += error_rows("activations", acts, lloyd_rows=args.lloyd_rows)
    for r in rows:
        r.update(prov)
    _write(rows, args.out, "error")
    return rows


def _load_ptq(args):
    """(model in eval mode, test loader, calibration loader or None): :func:`_load` plus the fixed training images
    of the BatchNorm re-estimation (:func:`~lsqbq.analysis.ptq.calibration_loader`, augmentation off)."""
    from .. import data as D
    from ..checkpoint import load_model
    from ..errors import InputError

    if args.bn_images < 0:
        raise InputError(f"--bn-images: the number of calibration images must be 0 (skip) or more, got "
                         f"{args.bn_images}")
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.checkpoint)
    _SOURCES.append(_provenance(args.checkpoint).get("run_id") or loaded.state.get("run_id"))
    cfg = loaded.config
    if args.test_subset is not None:
        cfg.data.test_subset = args.test_subset
    cfg.data.augment = False  # the calibration images as the test images are seen: no random crop or flip
    train, test = D.build_loaders(cfg)
    if not args.bn_images or train is None:
        if args.bn_images:
            print("no training split: BatchNorm re-estimation skipped", file=sys.stderr)
        return loaded.model.eval(), test, None
    return loaded.model.eval(), test, calibration_loader(train.dataset, args.bn_images, cfg.data.batch_size,
                                                         train.collate_fn)


def cmd_ptq(args) -> list[dict]:
    """Every weight scheme measured in one pass over the test set (:func:`~lsqbq.analysis.ptq.ptq_rows`)."""
    model, loader, calibration = _load_ptq(args)
    prov = _provenance(args.checkpoint)
    rows = [{**r, **prov} for r in ptq_rows(model, args.schemes, loader, calibration)]
    _write(rows, args.out, "ptq")
    return rows


def _pair(cfg) -> str:
    return f"{cfg.model.x_quant}/{cfg.model.w_quant}"


def cmd_angles(args) -> list[dict]:
    """Angles on the teacher's BN outputs, then on what each student's activation quantizers see (the same
    images: the teacher's test loader)."""
    from ..checkpoint import load_model

    model, cfg, loader = _load(args.checkpoint, args.threads, args.test_subset)
    names, acts = layer_inputs(model, loader, args.images)
    rows = [{**r, **_provenance(args.checkpoint)}
            for r in angle_rows(names, acts, args.schemes, input="teacher", input_run=_pair(cfg))]
    for student in args.students:
        loaded = load_model(student)
        _SOURCES.append(_provenance(student).get("run_id") or loaded.state.get("run_id"))
        names, acts = quantizer_inputs(loaded.model.eval(), loader, args.images)
        rows += [{**r, **_provenance(student)}
                 for r in angle_rows(names, acts, args.schemes, input="student", input_run=_pair(loaded.config))]
    _write(rows, args.out, "angles")
    return rows


def cmd_sweep(args) -> list[dict]:
    rows = sweep_rows(args.p, args.schemes, args.rows, args.n, args.seed)
    _write(rows, args.out, "sweep")
    return rows


def _record(args, rows: list[dict]) -> None:
    """The MLflow run of one analysis: arguments, row count (ptq: accuracy per scheme), the files written."""
    from .. import tracking

    prefix = Path(args.out)
    params = {k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in vars(args).items()
              if k not in ("render_only", "run_record")}
    metrics: dict = {"rows": len(rows)}
    if args.command == "ptq":
        for r in rows:
            metrics.update({f"{k} {r['w_quant']}": r[k] for k in ("top1", "top5", "kl", "nll", "top1_bn", "kl_bn")
                            if r[k] == r[k]})  # NaN (no re-estimation) left out
    label = tracking._checkpoint_label(args.checkpoint) if args.checkpoint and not getattr(
        args, "synthetic_only", False) else "synthetic"
    run = dict(
        experiment=EXPERIMENT, name=f"analyze {args.command} {label}", params=params, metrics=metrics,
        artifacts=[prefix.with_suffix(s) for s in (".csv", ".md", ".png")[:3 if args.command in FIGURES else 2]],
        tags={"lsqbq.kind": f"analyze {args.command}", "checkpoint": args.checkpoint,
              "data_hash": rows[0].get("data_hash") if rows and rows[0].get("data_hash") else None},
        source_run_ids=_SOURCES)
    if args.run_record:  # recorded later by `python -m lsqbq.tracking record`, with the other jobs' runs
        tracking.write_run_record(args.run_record, **run)
        return
    run_id = tracking.record_run(run.pop("experiment"), run.pop("name"), **run)
    if run_id:
        print(f"MLflow run {run_id} (analyze {args.command} {label})", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lsqbq analyze",
                                description="Analyses of the quantizers on synthetic data and on a trained model.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--checkpoint", help="checkpoint.pt of the trained model")
        sp.add_argument("--out", required=True, help="output prefix: writes PREFIX.csv and PREFIX.md")
        sp.add_argument("--render-only", action="store_true",
                        help="rewrite PREFIX.md (and PREFIX.png) from an existing PREFIX.csv; nothing is recomputed")
        sp.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        sp.add_argument("--test-subset", type=int, default=None, help="evaluate on this many test images")
        sp.add_argument("--images", type=int, default=128, help="images whose activations are analysed")
        run_record(sp)

    def run_record(sp):
        sp.add_argument("--run-record", default=None, metavar="FILE.json",
                        help="write the MLflow run to FILE.json instead of recording it (record it, with others, "
                             "by `python -m lsqbq.tracking record FILE.json ...`)")

    e = sub.add_parser("error", help="quantization error vs Lloyd-Max and the official search")
    common(e)
    e.add_argument("--synthetic-only", action="store_true", help="skip the model's weights and activations")
    e.add_argument("--distributions", nargs="+", default=list(DISTRIBUTIONS), choices=DISTRIBUTIONS,
                   help="unit-variance synthetic distributions")
    e.add_argument("--rows", type=int, default=64, help="rows per synthetic sample")
    e.add_argument("--n", type=int, default=4608, help="values per synthetic row (a 512x3x3 filter)")
    e.add_argument("--seed", type=int, default=0, help="seed of the first synthetic sample (+1 per distribution)")
    e.add_argument("--lloyd-rows", type=int, default=None, help="activation rows per layer for Lloyd-Max")

    q = sub.add_parser("ptq", help="post-training weight quantization accuracy")
    common(q)
    q.add_argument("--schemes", nargs="+", default=list(PTQ_SCHEMES), help="weight schemes to evaluate")
    q.add_argument("--bn-images", type=int, default=BN_IMAGES,
                   help="training images for the BatchNorm re-estimation after weight quantization (0: skip it)")

    a = sub.add_parser("angles", help="per-layer angle / relative error of quantized activations")
    common(a)
    a.add_argument("--schemes", nargs="+", default=list(ANGLE_SCHEMES), help="activation schemes to compare")
    a.add_argument("--students", nargs="*", default=[],
                   help="student checkpoints whose quantized layers' (clamped) inputs are analysed too")

    w = sub.add_parser("sweep", help="angles on synthetic rows from Gaussian to sparse (spike-and-slab)")
    w.add_argument("--out", required=True, help="output prefix: writes PREFIX.csv, PREFIX.md and PREFIX.png")
    w.add_argument("--render-only", action="store_true", help="rewrite PREFIX.md and PREFIX.png from PREFIX.csv")
    w.add_argument("--p", nargs="+", type=float, default=list(SWEEP_P), help="spike weights, each in [0, 1)")
    w.add_argument("--schemes", nargs="+", default=list(ANGLE_SCHEMES), help="activation schemes to compare")
    w.add_argument("--rows", type=int, default=32, help="rows per spike weight")
    w.add_argument("--n", type=int, default=2048, help="values per row")
    w.add_argument("--seed", type=int, default=0, help="seed of the first sample (+1 per spike weight)")
    run_record(w)
    w.set_defaults(checkpoint=None, synthetic_only=True)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.render_only:
        if not Path(args.out).with_suffix(".csv").is_file():
            parser.error(f"--render-only needs {Path(args.out).with_suffix('.csv')}")
        render_outputs(args.command, args.out)
        return 0
    if args.command == "error" and not args.checkpoint:
        args.synthetic_only = True
    elif args.command in ("ptq", "angles") and not args.checkpoint:
        parser.error(f"{args.command} needs --checkpoint")
    if args.command == "sweep" and not all(0 <= p < 1 for p in args.p):
        parser.error(f"--p: every spike weight must be in [0, 1), got {' '.join(map(str, args.p))}")
    if args.command == "sweep" and min(args.rows, args.n) < 2:
        parser.error(f"--rows and --n must be at least 2 (a spread needs two rows), got {args.rows} and {args.n}")
    _SOURCES.clear()
    rows = {"error": cmd_error, "ptq": cmd_ptq, "angles": cmd_angles, "sweep": cmd_sweep}[args.command](args)
    _record(args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
