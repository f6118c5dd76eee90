"""``lsqbq tables``: per-run results -> tables (CSV + markdown), figures and the claims table.

Usage::

    lsqbq tables --dataset fashion-mnist --out results/tables/fashion-mnist \\
        --train results/train/fashion-mnist/*/*/s*/metrics.json \\
        [--evaluate results/evaluate/.../metrics.json ...] [--ptq results/analysis/.../ptq_fp_fp_s0.csv ...] \\
        [--error results/analysis/.../error.csv ...] [--angles results/analysis/.../angles.csv ...] \\
        [--bitwise results/evaluate/.../bitwise.json ...] [--models-bench results/bench/models.csv] \\
        [--training-bench results/bench/training.csv] \\
        [--paper lsqbq/reference/paper_numbers.csv]
    lsqbq tables --from-mlflow [--profile config/config.yaml]   # store, experiment, dataset and --out from it

Outputs in ``--out`` (markdown for the reader; CSV with every number and its provenance):
    ``qat``     the paper's main table: top-1 per (model, activation scheme, weight scheme), mean ± std over seeds,
                the paper's numbers beside; ``qat_runs.csv``: one row per run with commit, hashes, MLflow run id;
    ``ptq``     post-training weight quantization of the fp models;
    ``error``   quantization error against the Lloyd-Max optimum;
    ``inference``  top-1 with fitted and with stored activation scales, their paired gap, and bitwise;
    ``angles.csv`` / ``angles.png``, ``pareto`` (+ ``pareto.png``: each model's own latency) when their inputs
                are given;
    ``claims``  each claim of the paper with our paired difference, its 95 % interval and a verdict.

Runs are identified by the dataset / model / schemes / seed stored in each ``metrics.json``; analysis CSVs are
joined to the run they analysed by MLflow run id. Every result file is validated (:mod:`~lsqbq.tables.run_files`):
an invalid one is an error naming the file and the key, or with ``--exclude-invalid`` its run is left out of every
table and listed in the notes. ``--from-mlflow`` rebuilds ``qat`` from the MLflow store alone.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from ..errors import DataError, LsqbqError
from ..schemes import get_scheme
from . import aggregate, claims, figures, predictions, render, runs, views

__all__ = ["build_parser", "main", "build"]


def _write(out: Path, name: str, data: pd.DataFrame, doc, excluded: list[str] = ()) -> Path:
    """``name.csv`` from ``data``, then ``name.md`` and ``name.html`` (for ``snakemake --report``) rendered from
    the CSV as read back (``doc(df) -> (title, blocks)``), so both are functions of the CSV alone; the runs
    ``--exclude-invalid`` left out are listed at the end of the notes."""
    csv = render.write_csv(data, out / f"{name}.csv")
    title, blocks = doc(render.read_csv(csv))
    blocks = [*blocks, *render.excluded_notes(excluded)]
    render.write_markdown(out / f"{name}.md", title, blocks)
    render.write_html(out / f"{name}.html", title, blocks)
    return csv


def _sorted_runs(df: pd.DataFrame) -> pd.DataFrame:
    key = [(m, get_scheme(x).sort_key, get_scheme(w).sort_key, s)
           for m, x, w, s in zip(df["model"], df["x_quant"], df["w_quant"], df["seed"])]
    return df.iloc[sorted(range(len(df)), key=key.__getitem__)].reset_index(drop=True)


def profile_defaults(path: str | Path) -> dict[str, str]:
    """Where a workflow profile's runs are: ``{"dataset", "experiment", "tracking_uri", "out"}`` as the workflow
    names them (``config/config.yaml`` of the working directory merged with ``path``; see
    workflow/rules/common.smk)."""
    import yaml

    if not Path(path).is_file():
        raise DataError(f"--profile {path}: no such file; run from the project root or give a workflow profile such "
                        "as config/test.yaml")
    from ..workflow_store import store_uri

    default = Path("config/config.yaml")
    published = yaml.safe_load(default.read_text()) or {} if default.is_file() else {}
    cfg: dict = dict(published)
    if Path(path) != default:
        cfg.update(yaml.safe_load(Path(path).read_text()) or {})
    dataset = cfg.get("dataset_tag") or cfg.get("dataset")
    mlflow = cfg.get("mlflow") or {}
    root = Path(cfg.get("output_root") or ".")
    return {"dataset": dataset, "experiment": mlflow.get("experiment") or f"lsqbq-{cfg.get('profile')}-{dataset}",
            "tracking_uri": store_uri(cfg, published),
            "out": (root / "results" / "tables" / "from-mlflow" / str(dataset)).as_posix()}


def _fill_defaults(args) -> None:
    """``--from-mlflow``: unset ``--dataset``, ``--experiment``, ``--tracking-uri`` and ``--out`` from the profile;
    otherwise ``--out`` and ``--dataset`` are required."""
    if args.from_mlflow:
        for key, value in profile_defaults(args.profile).items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    missing = [f"--{k}" for k in ("out", "dataset") if getattr(args, k) is None]
    if missing:
        raise DataError(f"{' and '.join(missing)} required (or --from-mlflow, which takes them from the profile)")


def _load(args) -> tuple[runs.RunSet, dict[str, pd.DataFrame]]:
    """The runs (with what ``--exclude-invalid`` left out and the evaluation files kept) and the analyses
    (``ptq``, ``error``, ``angles``) joined to them: every input read and validated before anything is written."""
    if args.from_mlflow:
        return runs.RunSet(runs.runs_from_mlflow(args.tracking_uri, args.experiment, args.dataset)), {}
    found = runs.read_runs(args.train, args.evaluate, args.bitwise, dataset=args.dataset,
                           exclude_invalid=args.exclude_invalid)
    excluded = found.excluded
    if found.runs.empty:
        raise DataError("no runs found; pass the runs' metrics.json files with --train"
                        + (f" (--exclude-invalid left out {len(excluded)} result file"
                           f"{'s' if len(excluded) > 1 else ''}, the first: {excluded[0]})" if excluded else ""))
    skip = excluded if args.exclude_invalid else None
    analyses = {k: runs.load_analysis(getattr(args, k), found.runs, excluded=skip) for k in ("ptq", "error", "angles")}
    return found, analyses


def build(args) -> None:
    """Every output the given inputs allow (see the module docstring)."""
    _fill_defaults(args)
    paper = runs.load_paper(args.paper)
    found, analyses = _load(args)
    run_df, excluded = found.runs, found.excluded
    if run_df.empty:
        raise DataError("no runs found; pass the runs' metrics.json files with --train")
    # per-image predictions beside the kept evaluations: the claims' test-set uncertainty (read before writing)
    per_image = predictions.load_predictions(found.evaluate)
    for message in excluded:
        print(f"lsqbq tables: excluded (--exclude-invalid): {message}", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    qat = aggregate.qat_table(run_df, paper, args.dataset)
    qat_csv = _write(out, "qat", qat, lambda df: views.qat_doc(df, args.dataset), excluded)
    if args.from_mlflow:
        return
    render.write_csv(_sorted_runs(run_df), out / "qat_runs.csv")
    ptq = analyses["ptq"]
    if not ptq.empty:
        _write(out, "ptq", aggregate.ptq_table(ptq, paper), lambda df: views.ptq_doc(df, args.dataset), excluded)
    error = analyses["error"]
    if not error.empty:
        error = aggregate.error_table(error)
        _write(out, "error", error, views.error_doc, excluded)
    angles = analyses["angles"]
    if not angles.empty:
        figures.plot_angles([render.write_csv(angles, out / "angles.csv")], out / "angles.png")
    inference = aggregate.inference_table(run_df)
    if not inference.empty:
        _write(out, "inference", inference, views.inference_doc, excluded)
    if args.models_bench:
        pareto = aggregate.pareto_table(render.read_csv(qat_csv), pd.read_csv(args.models_bench))
        figures.plot_pareto(_write(out, "pareto", pareto, views.pareto_doc, excluded), out / "pareto.png")
    bench = runs.load_training_bench(args.training_bench)
    table = claims.build_claims(run_df, paper, ptq=ptq, error=error, angles=angles, bench=bench,
                                predictions=per_image)
    _write(out, "claims", table,
           lambda df: views.claims_doc(df, render.read_csv(qat_csv), claims.qat_paper_gaps(paper), args.dataset),
           excluded)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lsqbq tables", description="Build result tables, figures and the claims table.")
    p.add_argument("--out", default=None,
                   help="output directory (with --from-mlflow: results/tables/from-mlflow/<dataset> of the profile)")
    p.add_argument("--dataset", default=None,
                   help="dataset name shown in the titles and the dataset column (with --from-mlflow: the profile's)")
    p.add_argument("--train", nargs="*", default=[], help="metrics.json of every training run")
    p.add_argument("--evaluate", nargs="*", default=[], help="metrics.json of re-evaluations (`lsqbq evaluate`)")
    p.add_argument("--ptq", nargs="*", default=[], help="post-training CSVs from `lsqbq analyze ptq`")
    p.add_argument("--error", nargs="*", default=[], help="quantization-error CSVs from `lsqbq analyze error`")
    p.add_argument("--angles", nargs="*", default=[], help="angle CSVs from `lsqbq analyze angles`")
    p.add_argument("--bitwise", nargs="*", default=[],
                   help="bitwise.json of every bitwise evaluation (`python -m lsqbq.kernels.evaluation`)")
    p.add_argument("--models-bench", default=None,
                   help="models.csv from `lsqbq bench models`: each model's own latency (accuracy-latency table)")
    p.add_argument("--training-bench", default=None,
                   help="training.csv from `lsqbq bench training` (step time in the training-cost claim)")
    p.add_argument("--paper", default=None, help="paper numbers CSV (default: the packaged reference)")
    p.add_argument("--exclude-invalid", action="store_true",
                   help="leave out runs whose result files are invalid (missing, non-finite or out-of-range values, "
                        "wrong types, identity that disagrees with the folder or --dataset, results their row's "
                        "other runs have) and list them in every table's notes; default: such a file is an error")
    p.add_argument("--from-mlflow", action="store_true", help="build the QAT table from the MLflow store alone")
    p.add_argument("--profile", default="config/config.yaml",
                   help="workflow profile whose runs --from-mlflow reads (default: the default profile)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (with --from-mlflow; default: the profile's store)")
    p.add_argument("--experiment", default=None,
                   help="MLflow experiment (with --from-mlflow; default: the profile's, lsqbq-<profile>-<dataset>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        build(args)
    except LsqbqError as exc:
        print(f"lsqbq tables: {exc}", file=sys.stderr)
        return exc.exit_code
    written = sorted(p.name for p in Path(args.out).iterdir() if p.is_file())
    print(f"lsqbq tables: wrote {len(written)} files to {args.out}: {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
