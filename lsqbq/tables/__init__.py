"""Result tables and figures from the per-run results, in four steps:

:mod:`~lsqbq.tables.runs`       loading: training runs from the identity in each ``metrics.json`` (or MLflow),
                                analysis CSVs joined to their run, the paper's numbers;
:mod:`~lsqbq.tables.aggregate`  aggregation: mean ± std over seeds, paired differences, t intervals, latencies;
:mod:`~lsqbq.tables.claims`     the paper's claims with our paired differences and verdicts;
:mod:`~lsqbq.tables.render`     rendering: CSV and markdown writers (``DataFrame.to_markdown``), number formats;
                                :mod:`~lsqbq.tables.views` says what each markdown table shows;
:mod:`~lsqbq.tables.figures`    figures drawn from their CSVs;
:mod:`~lsqbq.tables.cli`        ``lsqbq tables``.
"""
from .aggregate import mean_std, pareto_table, ptq_table, qat_table, t_interval
from .claims import build_claims, verdict
from .cli import build_parser, main
from .runs import DEFAULT_PAPER, IDENTITY, PROVENANCE, load_analysis, load_paper, load_runs, runs_from_mlflow

__all__ = ["IDENTITY", "PROVENANCE", "DEFAULT_PAPER", "load_runs", "runs_from_mlflow", "load_paper", "load_analysis",
           "mean_std", "t_interval", "qat_table", "ptq_table", "pareto_table", "build_claims", "verdict",
           "build_parser", "main"]
