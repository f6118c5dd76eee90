"""``python -m lsqbq.tracking`` (also ``lsqbq tracking``): helpers for the MLflow store.

    python -m lsqbq.tracking init [--uri URI]               # create the store's schema ahead of time
    python -m lsqbq.tracking stale [--uri URI] [--close]    # list (and end) runs whose process died
    python -m lsqbq.tracking relocate [--uri URI]           # make a SQLite store's artifact locations relative
    python -m lsqbq.tracking attach --metrics DIR/metrics.json [--dir DIR] [--uri URI]
    python -m lsqbq.tracking record [--uri URI] [--done FILE] RECORD.json ...   # runs written by --run-record
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import CheckpointError, CheckpointNotFoundError
from .store import DEFAULT_URI

__all__ = ["main"]

_URI_HELP = f"tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_URI})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lsqbq.tracking", description="MLflow store helpers.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="create the tracking store's schema (optional: the first run does it too)")
    p.add_argument("--uri", default=None, help=_URI_HELP)
    s = sub.add_parser("stale", help="list the RUNNING runs whose process is gone (same host, pid dead or reused); "
                                     "with --close, end them KILLED (or FAILED, as their process noted)")
    s.add_argument("--uri", default=None, help=_URI_HELP)
    s.add_argument("--experiment", default=None, help="only runs of this experiment")
    s.add_argument("--close", action="store_true", help="end the stale runs")
    r = sub.add_parser("relocate", help="make a SQLite store's artifact locations relative to the project root")
    r.add_argument("--uri", default=None, help=_URI_HELP)
    a = sub.add_parser("attach", help="serve a training run's artifacts from its checkpoint directory (run in the "
                                      "project root) and delete the copies logged under mlartifacts/")
    which = a.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", default=None, help="the training run's id")
    which.add_argument("--metrics", default=None, help="a metrics.json whose run_id names the run (and whose "
                                                       "directory is the default --dir)")
    a.add_argument("--dir", default=None, help="the run's checkpoint directory (checkpoint.pt, metrics.json, ...)")
    a.add_argument("--uri", default=None, help=_URI_HELP)
    a.add_argument("--force", action="store_true", help="delete the logged copies even where the directory's "
                                                        "files are missing or differ")
    d = sub.add_parser("record", help="record the run records written by jobs (lsqbq analyze --run-record) that "
                                      "are not in the store yet")
    d.add_argument("records", nargs="+", help="run record files (JSON)")
    d.add_argument("--uri", default=None, help=_URI_HELP)
    d.add_argument("--done", default=None, metavar="FILE",
                   help="write a one-line summary here once every record is in the store (the workflow's marker)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "init":
        from .store import init_store

        print(init_store(args.uri))
    elif args.command == "stale":
        _stale(args.uri, args.experiment, args.close)
    elif args.command == "relocate":
        from .store import relocate

        n_exp, n_runs = relocate(args.uri)
        print(f"relocated {n_exp} experiments and {n_runs} runs to relative artifact locations")
    elif args.command == "record":
        _record(args.records, args.uri, args.done)
    else:
        from .artifacts import attach_artifacts

        run_id, directory = args.run_id, args.dir
        if args.metrics is not None:
            run_id = _metrics_run_id(Path(args.metrics))
            directory = directory or str(Path(args.metrics).parent)
        if directory is None:
            parser.error("attach: --run-id needs --dir")
        location = attach_artifacts(run_id, directory, args.uri, force=args.force)
        print(f"run {run_id}: artifacts served from {location}")
    return 0


def _record(records: list[str], uri: str | None, done: str | None) -> None:
    from .deferred import record_run_records, write_marker

    recorded, skipped = record_run_records(records, uri)
    line = f"{recorded} run(s) recorded, {skipped} already in the store"
    print(line)
    if done:
        write_marker(done, line)


def _stale(uri: str | None, experiment: str | None, close: bool) -> None:
    """Print one line per stale run (``<run id>  <experiment>/<name>  <why>``), ending them with ``close``."""
    from .stale import close_stale_runs, stale_runs

    runs = close_stale_runs(uri, experiment) if close else stale_runs(uri, experiment)
    for run in runs:
        print(f"{run.run_id}  {run.experiment}/{run.name}  {run.why}{'  -> ended' if close else ''}")
    verb = "ended" if close else "found"
    print(f"{len(runs)} stale run(s) {verb}")


def _metrics_run_id(path: Path) -> str:
    if not path.is_file():
        raise CheckpointNotFoundError(f"attach --metrics {path}: no such file; give the metrics.json of the training")
    try:
        run_id = json.loads(path.read_text()).get("run_id")
    except (ValueError, AttributeError):
        run_id = None
    if not run_id:
        raise CheckpointError(f"attach --metrics {path}: no run_id in it (a run trained without tracking?); pass "
                              "--run-id")
    return str(run_id)
