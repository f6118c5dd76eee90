"""MLflow tracking: the only module that imports ``mlflow``.

Every training (and evaluation) run is an MLflow run in the store at, in order of precedence,
``tracking.uri`` from the config, ``$MLFLOW_TRACKING_URI``, or ``sqlite:///mlflow.db`` (relative to the
working directory, i.e. the project root). Artifacts of a SQLite store go to ``mlartifacts/`` beside the
database. Create the schema once before starting parallel jobs (concurrent first-time migrations of one
SQLite file race)::

    python -m lsqbq.tracking init [--uri URI]

Telemetry is off: ``MLFLOW_ENABLE_TELEMETRY=false`` and ``DO_NOT_TRACK=1`` unless already set.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

__all__ = ["DEFAULT_URI", "resolve_uri", "init_store", "start_run", "Run", "NullRun", "git_info", "client"]

DEFAULT_URI = "sqlite:///mlflow.db"
_PROJECT = Path(__file__).resolve().parent.parent


def resolve_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.resolve().parent / "mlartifacts").as_uri()
    return None


def _retry(fn, tries: int = 20):
    """Retry ``fn`` on transient SQLite lock errors of concurrent writers."""
    for i in range(tries):
        try:
            return fn()
        except Exception as e:  # mlflow wraps sqlalchemy errors in MlflowException
            if "locked" not in str(e).lower() or i == tries - 1:
                raise
            time.sleep(0.2 * (i + 1))


def client(uri: str | None = None) -> MlflowClient:
    return MlflowClient(tracking_uri=resolve_uri(uri))


def init_store(uri: str | None = None) -> str:
    """Create the tracking store's schema (idempotent); returns the resolved URI."""
    uri = resolve_uri(uri)
    _retry(lambda: client(uri).search_experiments(max_results=1))
    return uri


def git_info(path: Path = _PROJECT) -> dict[str, str]:
    """``{"git_commit": sha or "unknown", "git_dirty": "true"/"false"/"unknown"}`` of the project checkout."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        commit = head.stdout.strip() if head.returncode == 0 else "unknown"
        status = git("status", "--porcelain", "--untracked-files=no")
        dirty = ("true" if status.stdout.strip() else "false") if status.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", "unknown"
    return {"git_commit": commit, "git_dirty": dirty}


class Run:
    """A thin handle on one MLflow run (logging through MlflowClient, no global fluent state)."""

    def __init__(self, client_: MlflowClient, run_id: str, experiment_id: str):
        self.client, self.run_id, self.experiment_id = client_, run_id, experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, _param_str(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            _retry(lambda: self.client.log_batch(self.run_id, params=items[i:i + 100]))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None]
        _retry(lambda: self.client.log_batch(self.run_id, metrics=items))

    def set_tags(self, tags: dict[str, Any]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        _retry(lambda: self.client.log_batch(self.run_id, tags=items))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def end(self, status: str = "FINISHED") -> None:
        _retry(lambda: self.client.set_terminated(self.run_id, status=status))


class NullRun(Run):
    """Stand-in when tracking is disabled (unit tests of the loop) or on non-zero distributed ranks."""

    def __init__(self):
        self.run_id, self.experiment_id = None, None

    def log_params(self, params): pass
    def log_metrics(self, metrics, step): pass
    def set_tags(self, tags): pass
    def log_artifact(self, path, artifact_path=None): pass
    def end(self, status="FINISHED"): pass


def _param_str(v: Any) -> str:
    s = "null" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
    return s[:6000]


def _experiment_id(c: MlflowClient, name: str, uri: str) -> str:
    exp = _retry(lambda: c.get_experiment_by_name(name))
    if exp is not None:
        return exp.experiment_id
    try:
        return _retry(lambda: c.create_experiment(name, artifact_location=_artifact_root(uri)))
    except Exception:  # created concurrently by another job
        exp = _retry(lambda: c.get_experiment_by_name(name))
        if exp is None:
            raise
        return exp.experiment_id


def start_run(experiment: str, run_name: str, uri: str | None = None, tags: dict[str, Any] | None = None,
              run_id: str | None = None) -> Run:
    """Create a run in ``experiment`` (created if missing), or reopen ``run_id`` (resume)."""
    uri = init_store(uri)
    c = client(uri)
    if run_id is not None:
        info = _retry(lambda: c.get_run(run_id)).info
        _retry(lambda: c.update_run(run_id, status="RUNNING"))
        return Run(c, run_id, info.experiment_id)
    exp_id = _experiment_id(c, experiment, uri)
    mlflow_tags = {"mlflow.runName": run_name, **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
    run = _retry(lambda: c.create_run(exp_id, run_name=run_name, tags=mlflow_tags))
    return Run(c, run.info.run_id, exp_id)


def versions() -> dict[str, str]:
    return {"mlflow_version": mlflow.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsqbq.tracking", description="MLflow store helpers.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="create the tracking store's schema once, before parallel jobs")
    p.add_argument("--uri", default=None, help=f"tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_URI})")
    args = parser.parse_args(argv)
    print(init_store(args.uri))
    return 0


if __name__ == "__main__":
    sys.exit(main())
