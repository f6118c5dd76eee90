"""The tracking store: which URI, opening it safely, and the raw SQL MLflow's API cannot do.

A URI resolves, in order of precedence, to ``tracking.uri`` from the config, ``$MLFLOW_TRACKING_URI``, or the
*local* store :data:`DEFAULT_URI` (relative to the working directory, i.e. the project root).

Artifacts of a SQLite store go to ``mlartifacts/`` beside the database. When the database path is relative,
experiments record their artifact location *relative* too (``mlartifacts/<experiment id>``), so a store pulled on
another machine serves its artifacts from the project root; :func:`relocate` rewrites an older store's absolute
locations. MLflow's API makes every location absolute, so those rewrites are SQL on MLflow's ``experiments`` and
``runs`` tables (:func:`set_artifact_locations`).

:func:`init_store` opens a store before anything is logged into it and refuses what is not one:

* a fresh SQLite store gets its schema under an exclusive lock on ``<db>.lock`` (:func:`store_lock`), so any number
  of processes may start on a new store at once;
* a SQLite file that holds tables but not MLflow's (another program's database) is refused, naming the file,
  instead of getting MLflow's tables added to it;
* an HTTP(S) store is connected to once, with a timeout of :data:`CONNECT_TIMEOUT_S` seconds, so a server that
  refuses connections is an error naming the URI in seconds rather than minutes of MLflow's silent retries.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from ..errors import ConfigError

try:  # POSIX; elsewhere the store is initialised without a lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["DEFAULT_URI", "CONNECT_TIMEOUT_S", "resolve_uri", "uri_key", "sqlite_path", "client", "store_lock",
           "init_store", "retry", "set_artifact_locations", "relocate",
           "running_runs_sql", "end_run_sql"]

DEFAULT_URI = "sqlite:///mlruns-local/mlflow.db"  # ad-hoc runs; the workflow names the published store
CONNECT_TIMEOUT_S = 5.0
# creating a store's tables is routine, not news: keep stderr for errors; and the database errors MLflow logs with
# a traceback before raising them again reach the user once, as the one-line error that names the store's file
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def resolve_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else :data:`DEFAULT_URI`."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def uri_key(uri: str | None) -> str:
    """Where a URI came from, for error messages."""
    if uri:
        return "tracking.uri"
    return "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default tracking store"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory databases)."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        return None if path in ("", ":memory:") else Path(path)
    return None


def artifact_root(uri: str) -> str | None:
    """``file://<db dir>/mlartifacts`` of a SQLite store, else None (the server decides)."""
    db = sqlite_path(uri)
    return (db.resolve().parent / "mlartifacts").as_uri() if db is not None else None


def relative_artifact_location(uri: str, experiment_id: str) -> str | None:
    """``<db dir>/mlartifacts/<id>`` as a relative path when the SQLite path is relative, else None."""
    db = sqlite_path(uri)
    if db is None or db.is_absolute():
        return None
    return (db.parent / "mlartifacts" / str(experiment_id)).as_posix()


def retry(fn, tries: int = 20):
    """``fn()``, retried on the transient "database is locked" errors of concurrent SQLite writers."""
    for i in range(tries):
        try:
            return fn()
        except Exception as e:  # mlflow wraps sqlalchemy errors in MlflowException
            if "locked" not in str(e).lower() or i == tries - 1:
                raise
            time.sleep(0.2 * (i + 1))


def client(uri: str | None = None):
    """An ``MlflowClient`` of the resolved store (imports mlflow: about two seconds the first time)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=resolve_uri(uri))


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Exclusive ``flock`` on ``<db>.lock`` beside a SQLite store (a no-op for other stores).

    Held while a fresh store's schema is created: concurrent first-time migrations of one SQLite file would
    otherwise race and leave it half-migrated.
    """
    db = sqlite_path(uri)
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


def sqlite_tables(db: Path, key: str = "tracking.uri") -> set[str]:
    """Table names of an existing SQLite file, opened read-only.

    Raises:
        ConfigError: the file is not a SQLite database (or cannot be read), naming ``key`` and the file.
    """
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=60)) as con:
            return {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as e:
        raise ConfigError(f"{key}: {db} is not a readable SQLite database ({e}); point the tracking URI at an MLflow "
                          "store or at a new file") from None


def check_sqlite_store(db: Path, key: str = "tracking.uri") -> None:
    """Refuse an existing, non-empty SQLite file without MLflow's tables (never add them to another database)."""
    if not db.is_file() or db.stat().st_size == 0:
        return
    tables = sqlite_tables(db, key)
    if tables and not {"experiments", "runs"} <= tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise ConfigError(f"{key}: {db} is a SQLite database of something else (tables: {shown}), not an MLflow "
                          "store; refusing to add MLflow's tables to it; use a new file, e.g. "
                          f"sqlite:///{db.with_name('mlflow.db')}")


def check_http_store(uri: str, key: str = "tracking.uri", timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Connect once to an ``http(s)://`` store's host and port; an error naming the URI if that fails."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise ConfigError(f"{key}: cannot connect to the MLflow server {uri!r} ({why}); start it (`mlflow server "
                          f"--port {port}`) or use a SQLite store, sqlite:///path/to/mlflow.db") from None


def init_store(uri: str | None = None) -> str:
    """Create the tracking store's schema if needed (idempotent, safe concurrently); returns the resolved URI.

    Raises:
        ConfigError: the URI names no store MLflow can open (unknown scheme, missing directory, a SQLite file of
            another program, an HTTP server that refuses connections, ...), naming the URI or the file.
    """
    resolved = resolve_uri(uri)
    key = uri_key(uri)
    db = sqlite_path(resolved)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{key}: {resolved!r}: cannot create directory {db.parent} ({e.strerror}); "
                              "use another sqlite:///path/to/mlflow.db") from None
        check_sqlite_store(db, key)
    check_http_store(resolved, key)
    try:
        with store_lock(resolved):
            retry(lambda: client(resolved).search_experiments(max_results=1))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - mlflow raises many kinds for a bad URI
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise ConfigError(f"{key}: cannot open the MLflow store {resolved!r} ({why}); use "
                          f"sqlite:///path/to/mlflow.db (default {DEFAULT_URI}) or http://host:port") from None
    return resolved


# ------------------------------------------------------------------------------------ SQL on MLflow's tables


def set_artifact_locations(db: Path, experiments: dict[str, str], runs: dict[str, str]) -> None:
    """Rewrite artifact locations in a SQLite store directly (MLflow's API makes every location absolute)."""
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:
        con.executemany("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                        [(loc, int(i)) for i, loc in experiments.items()])
        con.executemany("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", [(u, r) for r, u in runs.items()])


def run_artifact_uri(db: Path, run_id: str) -> str | None:
    """The stored ``artifact_uri`` of run ``run_id`` ("" when unset), None when the run is not in the store."""
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
        row = con.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
    return None if row is None else (row[0] or "")


def relocate(uri: str | None = None) -> tuple[int, int]:
    """Make the artifact locations of a SQLite store under its own directory relative (idempotent).

    ``file:///abs/<db dir>/mlartifacts/...`` and ``/abs/<db dir>/mlartifacts/...`` become
    ``<db dir as given>/mlartifacts/...``. Returns (experiments, runs) rewritten.
    """
    resolved = resolve_uri(uri)
    db = sqlite_path(resolved)
    if db is None or db.is_absolute():
        raise ConfigError(f"relocate: {resolved!r} is not a SQLite store with a relative path; run it from the "
                          "project root with sqlite:///mlflow.db")
    if not db.is_file():
        raise ConfigError(f"relocate: {db} does not exist")
    check_sqlite_store(db, "relocate")
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
        set_artifact_locations(db, exps, runs)
    return len(exps), len(runs)


def running_runs_sql(db: Path, tag_keys: tuple[str, ...], experiment: str | None = None) -> list[dict]:
    """Active RUNNING runs of a SQLite store, read-only: ``{"run_id", "name", "experiment", "tags"}`` with the
    tags among ``tag_keys``. A store that does not exist yet (or an empty file) has none; nothing is created."""
    if not db.is_file() or db.stat().st_size == 0:
        return []
    check_sqlite_store(db)
    query = ("SELECT r.run_uuid, r.name, e.name FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
             "WHERE r.status = 'RUNNING' AND r.lifecycle_stage = 'active'")
    args: tuple = ()
    if experiment is not None:
        query, args = query + " AND e.name = ?", (experiment,)
    with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=60)) as con:
        runs = [{"run_id": r, "name": n, "experiment": e, "tags": {}} for r, n, e in con.execute(query, args)]
        by_id = {run["run_id"]: run for run in runs}
        if by_id:
            marks = ",".join("?" * len(tag_keys))
            for run_id, key, value in con.execute(f"SELECT run_uuid, key, value FROM tags WHERE key IN ({marks})",
                                                  tag_keys):
                if run_id in by_id:
                    by_id[run_id]["tags"][key] = value
    return runs


def end_run_sql(db: Path, run_id: str, status: str, tags: dict[str, str]) -> bool:
    """End a RUNNING run of a SQLite store with ``status`` and ``tags`` (what ``MlflowClient.set_terminated`` and
    ``set_tag`` write), in one transaction; False, changing nothing, when it is no longer RUNNING."""
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:
        done = con.execute("UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ? AND status = 'RUNNING'",
                           (status, int(time.time() * 1000), run_id)).rowcount
        if done:
            con.executemany('INSERT OR REPLACE INTO tags ("key", value, run_uuid) VALUES (?, ?, ?)',
                            [(k, v[:8000], run_id) for k, v in tags.items()])
    return bool(done)
