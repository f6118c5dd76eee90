"""``OUT/run.json``: the MLflow run of a training's output directory, from the moment the run exists until the
first ``resume.pt`` (which names the run from then on) replaces it.

A training killed before its first ``resume.pt`` (``kill -9`` in the first epoch) leaves no checkpoint that names
its run; this file does, so ``lsqbq train --resume`` continues that same run instead of opening a new one, and a
fresh training into the directory ends it (when its process is provably gone) rather than leaving it RUNNING.
Written atomically; an unreadable file counts as absent.
"""
from __future__ import annotations

import json
from pathlib import Path

from .stale import close_stale_runs
from .store import client, resolve_uri, retry

__all__ = ["RUN_FILE", "write_run_file", "read_run_file", "interrupted_run"]

RUN_FILE = "run.json"


def write_run_file(out_dir: str | Path, run_id: str, uri: str | None = None) -> Path:
    """Write ``{"run_id", "tracking_uri"}`` to ``out_dir/run.json`` atomically; returns its path."""
    from ..atomic import write_text_atomic

    path = Path(out_dir) / RUN_FILE
    write_text_atomic(path, json.dumps({"run_id": run_id, "tracking_uri": resolve_uri(uri)}) + "\n")
    return path


def read_run_file(out_dir: str | Path) -> str | None:
    """The run id ``out_dir/run.json`` records, or None (no file, or not one this module wrote)."""
    try:
        run_id = json.loads((Path(out_dir) / RUN_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) and run_id.isalnum() else None


def interrupted_run(out_dir: str | Path, uri: str | None, resume: bool) -> tuple[str | None, str | None]:
    """The run of an invocation that died before its first checkpoint in ``out_dir`` -> (run id to continue, note).

    With ``resume``: the recorded run when it is in the store and not FINISHED (it is reopened). Without: the
    recorded run is ended as stale if its process is gone (never when it is alive) and None is returned.
    """
    run_id = read_run_file(out_dir)
    if run_id is None:
        return None, None
    if not resume:
        closed = close_stale_runs(uri, run_ids={run_id})
        return None, (f"{Path(out_dir) / RUN_FILE}: ended the stale MLflow run {run_id} of an earlier, killed "
                      "invocation" if closed else None)
    try:
        status = retry(lambda: client(uri).get_run(run_id)).info.status
    except Exception:  # noqa: BLE001 - RESOURCE_DOES_NOT_EXIST: another store
        return None, (f"{Path(out_dir) / RUN_FILE}: MLflow run {run_id} is not in {resolve_uri(uri)!r}; starting a "
                      "new run")
    if status == "FINISHED":
        return None, None
    return run_id, f"continuing MLflow run {run_id} of the interrupted invocation"
