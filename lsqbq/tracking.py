"""MLflow tracking and run provenance: the only module that imports ``mlflow``.

Every training (and evaluation) run is an MLflow run in the store at, in order of precedence,
``tracking.uri`` from the config, ``$MLFLOW_TRACKING_URI``, or the *local* store
``sqlite:///mlruns-local/mlflow.db`` (relative to the working directory, i.e. the project root). Two stores:

* the **published** store ``sqlite:///mlflow.db`` + ``mlartifacts/``, versioned by DVC, written only by the
  workflow (it sets ``MLFLOW_TRACKING_URI`` for every job);
* the **local** store ``mlruns-local/`` (git- and DVC-ignored) for everything run by hand — smoke runs,
  benchmarks, users' own trainings — so local work never dirties the published store or blocks ``dvc pull``.

Artifacts of a SQLite store go to ``mlartifacts/`` beside the database. When the database path is relative,
experiments record their artifact location *relative* too (``mlartifacts/<experiment id>``), so a store
pulled on another machine serves its artifacts to ``mlflow ui`` / ``MlflowClient`` started in the project
root; ``python -m lsqbq.tracking relocate`` rewrites an older store's absolute locations.

The first use of a fresh SQLite store creates its schema under an exclusive lock on ``<db>.lock``, so any
number of processes may start on a new store at once; ``python -m lsqbq.tracking init [--uri URI]``
does the same ahead of time.

Telemetry is off: importing the ``lsqbq`` package sets ``MLFLOW_DISABLE_TELEMETRY=true`` and ``DO_NOT_TRACK=true``
(unless already set), before this module imports mlflow, so no command opens a network connection to a tracking
host other than the one configured.

Provenance (:func:`provenance_tags`): git commit and dirty flag, config and data hashes, versions, device.
"""
from __future__ import annotations

import argparse
import os
import contextlib
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from .errors import CheckpointError, ConfigError

try:  # POSIX; elsewhere the store is initialised without a lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["DEFAULT_URI", "resolve_uri", "init_store", "store_lock", "start_run", "Run", "NullRun", "git_info",
           "client", "versions", "provenance_tags", "run_name", "check_run"]

DEFAULT_URI = "sqlite:///mlruns-local/mlflow.db"  # ad-hoc runs; the workflow names the published store
# creating a store's tables is routine, not news: keep stderr for errors
for _name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
    logging.getLogger(_name).setLevel(logging.WARNING)
_PROJECT = Path(__file__).resolve().parent.parent
_ERROR_TAG = "error"


def resolve_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _uri_key(uri: str | None) -> str:
    """Where a URI came from, for error messages."""
    if uri:
        return "tracking.uri"
    return "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default tracking store"


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        return None if path in ("", ":memory:") else Path(path)
    return None


def _artifact_root(uri: str) -> str | None:
    db = _sqlite_path(uri)
    return (db.resolve().parent / "mlartifacts").as_uri() if db is not None else None


def _relative_artifact_location(uri: str, experiment_id: str) -> str | None:
    """``<db dir>/mlartifacts/<id>`` as a relative path when the SQLite path is relative, else None."""
    db = _sqlite_path(uri)
    if db is None or db.is_absolute():
        return None
    return (db.parent / "mlartifacts" / str(experiment_id)).as_posix()


def _set_artifact_locations(db: Path, experiments: dict[str, str], runs: dict[str, str]) -> None:
    """Rewrite artifact locations in a SQLite store directly (MLflow's API makes every location absolute)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:
        con.executemany("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                        [(loc, int(i)) for i, loc in experiments.items()])
        con.executemany("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", [(u, r) for r, u in runs.items()])


def relocate(uri: str | None = None) -> tuple[int, int]:
    """Make the artifact locations of a SQLite store under its own directory relative (idempotent).

    ``file:///abs/<db dir>/mlartifacts/...`` and ``/abs/<db dir>/mlartifacts/...`` become
    ``<db dir as given>/mlartifacts/...``. Returns (experiments, runs) rewritten.
    """
    import sqlite3

    resolved = resolve_uri(uri)
    db = _sqlite_path(resolved)
    if db is None or db.is_absolute():
        raise ConfigError(f"relocate: {resolved!r} is not a SQLite store with a relative path; run it from the "
                          "project root with sqlite:///mlflow.db")
    if not db.is_file():
        raise ConfigError(f"relocate: {db} does not exist")
    prefixes = [(db.resolve().parent / "mlartifacts").as_uri(), str(db.resolve().parent / "mlartifacts")]
    target = (db.parent / "mlartifacts").as_posix()

    def rel(loc: str) -> str | None:
        for p in prefixes:
            if loc == p or loc.startswith(p + "/"):
                return target + loc[len(p):]
        return None

    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
        exps = {str(i): rel(loc) for i, loc in con.execute("SELECT experiment_id, artifact_location FROM experiments")}
        runs = {r: rel(u) for r, u in con.execute("SELECT run_uuid, artifact_uri FROM runs")}
    exps = {k: v for k, v in exps.items() if v is not None}
    runs = {k: v for k, v in runs.items() if v is not None}
    with store_lock(resolved):
        _set_artifact_locations(db, exps, runs)
    return len(exps), len(runs)


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


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Exclusive ``flock`` on ``<db>.lock`` beside a SQLite store (a no-op for other stores).

    Held while a fresh store's schema is created: concurrent first-time migrations of one SQLite file would
    otherwise race and leave it half-migrated.
    """
    db = _sqlite_path(uri)
    if db is None or fcntl is None:
        yield
        return
    lock = db.with_name(db.name + ".lock")
    with open(lock, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def init_store(uri: str | None = None) -> str:
    """Create the tracking store's schema if needed (idempotent, safe concurrently); returns the resolved URI.

    Raises:
        ConfigError: the URI names no store MLflow can open (unknown scheme, missing directory, ...).
    """
    resolved = resolve_uri(uri)
    db = _sqlite_path(resolved)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{_uri_key(uri)}: {resolved!r}: cannot create directory {db.parent} ({e.strerror}); "
                              "use another sqlite:///path/to/mlflow.db") from None
    try:
        with store_lock(resolved):
            _retry(lambda: client(resolved).search_experiments(max_results=1))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - mlflow raises many kinds for a bad URI
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise ConfigError(f"{_uri_key(uri)}: cannot open the MLflow store {resolved!r} ({why}); use "
                          f"sqlite:///path/to/mlflow.db (default {DEFAULT_URI}) or http://host:port") from None
    return resolved


def check_run(run_id: str, uri: str | None = None, source: str | Path = "the checkpoint") -> None:
    """Raise CheckpointError unless ``run_id`` exists in the store (a resume must continue its own run)."""
    resolved = resolve_uri(uri)
    try:
        _retry(lambda: client(resolved).get_run(run_id))
    except Exception:  # noqa: BLE001 - RESOURCE_DOES_NOT_EXIST and friends
        raise CheckpointError(f"{source}: its MLflow run {run_id} is not in the store {resolved!r}; resume with "
                              "the tracking.uri (or MLFLOW_TRACKING_URI) of the original run, or train afresh "
                              "into a new --out") from None


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


def versions() -> dict[str, str]:
    return {"mlflow_version": mlflow.__version__}


def provenance_tags(cfg, data_hash: str, device, threads: int, world: int,
                    teacher_run_id: str | None = None) -> dict[str, str]:
    """Tags that identify what a run computed: code (git commit, dirty flag, versions), config hash, data hash,
    device, world size, dataset, model, schemes, seed, teacher; ``cfg.tracking.tags`` last (they may override)."""
    import torch

    import lsqbq

    from .config import config_hash

    device = torch.device(device)
    tags = {**git_info(), "data_hash": data_hash, "lsqbq_version": lsqbq.__version__,
            "torch_version": torch.__version__, **versions(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({threads} threads)",
            "world_size": str(world), "config_hash": config_hash(cfg), "dataset": cfg.data.name,
            "model": cfg.model.name, "x_quant": cfg.model.x_quant, "w_quant": cfg.model.w_quant,
            "seed": str(cfg.seed)}
    if cfg.kd.teacher:
        tags["teacher_run_id"] = teacher_run_id or "unknown"
        tags["teacher_checkpoint"] = cfg.kd.teacher
    tags.update(cfg.tracking.tags)
    return tags


def run_name(cfg) -> str:
    """``tracking.run_name`` or ``{model}-a{x_quant}-w{w_quant}-s{seed}``."""
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    return f"{cfg.model.name}-a{cfg.model.x_quant}-w{cfg.model.w_quant}-s{cfg.seed}"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


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

    def fail(self, error: BaseException) -> None:
        """End the run FAILED (KILLED for an interrupt) with the error as tag ``error``; never raises, so the
        original exception is the one the caller sees."""
        interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
        try:
            self.set_tags({_ERROR_TAG: _one_line(error)[:5000]})
        except Exception:  # noqa: BLE001
            pass
        try:
            self.end("KILLED" if interrupted else "FAILED")
        except Exception as e:  # noqa: BLE001
            print(f"warning: could not mark MLflow run {self.run_id} as failed ({_one_line(e)})", file=sys.stderr)


class NullRun(Run):
    """Stand-in when tracking is disabled (unit tests of the loop) or on non-zero distributed ranks."""

    def __init__(self):
        self.run_id, self.experiment_id = None, None

    def log_params(self, params): pass
    def log_metrics(self, metrics, step): pass
    def set_tags(self, tags): pass
    def log_artifact(self, path, artifact_path=None): pass
    def end(self, status="FINISHED"): pass
    def fail(self, error): pass


def _param_str(v: Any) -> str:
    s = "null" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
    return s[:6000]


def _experiment_id(c: MlflowClient, name: str, uri: str) -> str:
    exp = _retry(lambda: c.get_experiment_by_name(name))
    if exp is not None:
        return exp.experiment_id
    try:
        exp_id = _retry(lambda: c.create_experiment(name, artifact_location=_artifact_root(uri)))
        relative = _relative_artifact_location(uri, exp_id)
        if relative is not None:  # travels with the store: resolved against the working directory
            _set_artifact_locations(_sqlite_path(uri), {exp_id: relative}, {})
        return exp_id
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
        run = _retry(lambda: c.get_run(run_id))
        _retry(lambda: c.update_run(run_id, status="RUNNING"))
        if _ERROR_TAG in run.data.tags:  # the error of an earlier, interrupted attempt
            _retry(lambda: c.delete_tag(run_id, _ERROR_TAG))
        return Run(c, run_id, run.info.experiment_id)
    with store_lock(uri):
        exp_id = _experiment_id(c, experiment, uri)
    mlflow_tags = {"mlflow.runName": run_name, **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
    run = _retry(lambda: c.create_run(exp_id, run_name=run_name, tags=mlflow_tags))
    return Run(c, run.info.run_id, exp_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsqbq.tracking", description="MLflow store helpers.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="create the tracking store's schema (optional: the first run does it too)")
    p.add_argument("--uri", default=None, help=f"tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_URI})")
    r = sub.add_parser("relocate", help="make a SQLite store's artifact locations relative to the project root")
    r.add_argument("--uri", default=None, help=f"tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_URI})")
    args = parser.parse_args(argv)
    if args.command == "init":
        print(init_store(args.uri))
    else:
        n_exp, n_runs = relocate(args.uri)
        print(f"relocated {n_exp} experiments and {n_runs} runs to relative artifact locations")
    return 0


if __name__ == "__main__":
    from .cli import run_command

    sys.exit(run_command("tracking", main))
