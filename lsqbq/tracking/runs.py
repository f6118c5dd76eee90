"""Training runs: :func:`start_run` creates (or, on resume, reopens) one MLflow run; :class:`Run` logs into it.

Logging goes through ``MlflowClient`` (no global fluent state). Every run gets its process's identity as tags
(:func:`lsqbq.tracking.stale.process_tags`), renewed when a resume reopens it, so a run whose process dies is
found and ended by the stale-run sweep. A resume refuses a run that is RUNNING in a live process (two processes
must never write one run).

A full disk under the store is an ``OSError`` (ENOSPC) naming the store's file or the artifact being written,
not MLflow's bare "No space left on device"; :meth:`Run.fail` then notes the failure for the sweep when it
cannot end the run itself (:func:`lsqbq.tracking.stale.leave_note`).
"""
from __future__ import annotations

import errno
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import TrainingError
from .stale import CLOSED_BY_TAG, ERROR_TAG, PID_TAG, drop_note, leave_note, process_state, process_tags
from .store import artifact_root, client, init_store, relative_artifact_location, retry, set_artifact_locations
from .store import sqlite_path, store_lock

__all__ = ["Run", "NullRun", "start_run", "check_run", "local_path", "one_line"]


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def local_path(location: str) -> Path | None:
    """The local directory an artifact location names (``file://`` URI, absolute or relative path), else None."""
    from urllib.parse import unquote, urlparse

    if location.startswith("file:"):
        return Path(unquote(urlparse(location).path))
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", location):
        return None
    return Path(location)


def _disk_full(e: BaseException) -> bool:
    """True when ``e`` (or an exception it wraps) reports a full disk or quota."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        text = str(e).lower()
        if "no space left on device" in text or "database or disk is full" in text or "disk quota" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def _param_str(v: Any) -> str:
    s = "null" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
    return s[:6000]


class Run:
    """A thin handle on one MLflow run of the store ``uri``."""

    def __init__(self, client_, run_id: str, experiment_id: str, uri: str | None = None):
        self.client, self.run_id, self.experiment_id, self.uri = client_, run_id, experiment_id, uri

    def _write(self, fn, what: str, path: str | Path | None = None):
        """``fn()`` (retried while the store is locked); a full disk becomes an OSError naming ``path`` (default:
        the store's database file, or its URI)."""
        try:
            return retry(fn)
        except Exception as e:
            if not _disk_full(e):
                raise
            where = path or sqlite_path(self.uri or "") or self.uri or "the MLflow store"
            raise OSError(errno.ENOSPC, f"No space left on device (MLflow run {self.run_id}: {what})",
                          str(where)) from e

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = retry(lambda: self.client.get_run(self.run_id)).data.params
        items = [Param(k, _param_str(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            self._write(lambda: self.client.log_batch(self.run_id, params=items[i:i + 100]), "logging the params")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None]
        self._write(lambda: self.client.log_batch(self.run_id, metrics=items), f"logging the metrics of step {step}")

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        self._write(lambda: self.client.log_batch(self.run_id, tags=items), "setting the tags")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log file ``path``; a no-op when it already is that artifact (a run attached to its checkpoint
        directory, :func:`lsqbq.tracking.attach_artifacts`, resumed and logging the directory's own files)."""
        root = local_path(retry(lambda: self.client.get_run(self.run_id)).info.artifact_uri or "")
        dest = None
        if root is not None:
            dest = root / (artifact_path or "") / Path(path).name
            if dest.exists() and dest.resolve() == Path(path).resolve():
                return
        self._write(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
                    f"logging artifact {Path(path).name}", dest)

    def end(self, status: str = "FINISHED") -> None:
        self._write(lambda: self.client.set_terminated(self.run_id, status=status), f"ending it {status}")

    def fail(self, error: BaseException) -> None:
        """End the run FAILED (KILLED for an interrupt) with the error as tag ``error``; never raises, so the
        original exception is the one the caller sees. When the store cannot take the tag or the status (a full
        disk: an update in place may still fit where a new tag does not), the run is left RUNNING and the failure
        is noted for the next stale-run sweep, which ends the run with both."""
        interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
        status, message = ("KILLED" if interrupted else "FAILED"), one_line(error)[:5000]
        try:
            self.set_tags({ERROR_TAG: message})
            self.end(status)  # only once the error is in: a run ended without it would keep it from the sweep
            return
        except Exception as e:  # noqa: BLE001
            why = e
        note = leave_note(self.run_id, status, message)
        later = ("the next `python -m lsqbq.tracking stale --close` ends it " + status if note
                 else "`python -m lsqbq.tracking stale --close` ends it KILLED")
        print(f"warning: could not mark MLflow run {self.run_id} as {status.lower()} ({one_line(why)}); {later}",
              file=sys.stderr)


class NullRun(Run):
    """Stand-in when tracking is disabled (unit tests of the loop) or on non-zero distributed ranks."""

    def __init__(self):
        self.client, self.run_id, self.experiment_id, self.uri = None, None, None, None

    def log_params(self, params): pass
    def log_metrics(self, metrics, step): pass
    def set_tags(self, tags): pass
    def log_artifact(self, path, artifact_path=None): pass
    def end(self, status="FINISHED"): pass
    def fail(self, error): pass


def _experiment_id(c, name: str, uri: str) -> str:
    exp = retry(lambda: c.get_experiment_by_name(name))
    if exp is not None:
        return exp.experiment_id
    try:
        exp_id = retry(lambda: c.create_experiment(name, artifact_location=artifact_root(uri)))
        relative = relative_artifact_location(uri, exp_id)
        if relative is not None:  # travels with the store: resolved against the working directory
            set_artifact_locations(sqlite_path(uri), {exp_id: relative}, {})
        return exp_id
    except Exception:  # created concurrently by another job
        exp = retry(lambda: c.get_experiment_by_name(name))
        if exp is None:
            raise
        return exp.experiment_id


def start_run(experiment: str, run_name: str, uri: str | None = None, tags: dict[str, Any] | None = None,
              run_id: str | None = None) -> Run:
    """Create a run in ``experiment`` (created if missing), or reopen ``run_id`` (resume); either way tagged with
    this process (:func:`lsqbq.tracking.stale.process_tags`).

    Raises:
        TrainingError: ``run_id`` is RUNNING in another live process on this host.
    """
    uri = init_store(uri)
    c = client(uri)
    me = process_tags()
    if run_id is not None:
        run = retry(lambda: c.get_run(run_id))
        if run.info.status == "RUNNING":
            state, why = process_state(run.data.tags)
            if state == "alive" and run.data.tags.get(PID_TAG) != str(os.getpid()):
                raise TrainingError(f"MLflow run {run_id} is still RUNNING ({why}); wait for that process to end, "
                                    "or stop it, before resuming")
        handle = Run(c, run_id, run.info.experiment_id, uri)
        handle.set_tags(me)  # before it is RUNNING again: a sweep in between sees a live process
        handle._write(lambda: c.update_run(run_id, status="RUNNING"), "reopening it")
        drop_note(run_id)  # how an earlier attempt ended no longer applies
        for key in (ERROR_TAG, CLOSED_BY_TAG):  # how an earlier, interrupted attempt ended
            if key in run.data.tags:
                retry(lambda: c.delete_tag(run_id, key))
        return handle
    with store_lock(uri):
        exp_id = _experiment_id(c, experiment, uri)
    mlflow_tags = {"mlflow.runName": run_name, **{k: str(v) for k, v in (tags or {}).items() if v is not None}, **me}
    run = retry(lambda: c.create_run(exp_id, run_name=run_name, tags=mlflow_tags))
    return Run(c, run.info.run_id, exp_id, uri)


def check_run(run_id: str, uri: str | None = None, source: str | Path = "the checkpoint") -> None:
    """Raise CheckpointError unless ``run_id`` exists in the store (a resume must continue its own run)."""
    from ..errors import CheckpointError
    from .store import resolve_uri

    resolved = resolve_uri(uri)
    try:
        retry(lambda: client(resolved).get_run(run_id))
    except Exception:  # noqa: BLE001 - RESOURCE_DOES_NOT_EXIST and friends
        raise CheckpointError(f"{source}: its MLflow run {run_id} is not in the store {resolved!r}; resume with "
                              "the tracking.uri (or MLFLOW_TRACKING_URI) of the original run, or train afresh "
                              "into a new --out") from None
