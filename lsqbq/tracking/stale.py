"""Runs whose process died: every MLflow run this project starts ends, at the latest at the next sweep.

A process killed by ``kill -9``, the OOM killer or a power cut cannot end its own run, which would then stay
RUNNING forever. So every run started here carries its process's identity (:func:`process_tags`): host name,
pid, and the process's start time (the kernel's boot id and start tick on Linux), and a RUNNING run is **stale**
when that process is provably gone (:func:`process_state`): it was on this host, and its pid is no longer alive, or
is alive with another start time (a reused pid). A run of another host, or one without these tags (older runs,
other programs), is never judged: only its own host can tell.

:func:`close_stale_runs` ends stale runs KILLED with tag ``error`` saying which process vanished. A process that
failed but could not end its run itself (the store's disk full, say) leaves a note in a RAM directory
(:func:`leave_note`); the sweep ends such a run with the note's status (FAILED) and error instead.

The sweep reads a SQLite store with plain SQL and never imports MLflow, so ``python -m lsqbq.tracking stale``
takes a fraction of a second; a store that does not exist yet has no stale run and is not created.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .store import end_run_sql, init_store, resolve_uri, retry, running_runs_sql, sqlite_path

__all__ = ["HOST_TAG", "PID_TAG", "START_TAG", "ERROR_TAG", "CLOSED_BY_TAG", "process_start", "process_tags",
           "process_state", "RunningRun", "running_runs", "stale_runs", "close_stale_runs", "leave_note", "drop_note",
           "notes_dir"]

HOST_TAG, PID_TAG, START_TAG = "lsqbq.host", "lsqbq.pid", "lsqbq.process_start"
ERROR_TAG = "error"
CLOSED_BY_TAG = "lsqbq.closed_by"
_KEYS = (HOST_TAG, PID_TAG, START_TAG)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """An identity of process ``pid``'s start that a reused pid does not share, or None when no such process runs.

    Linux: ``<boot id>:<start tick>`` from ``/proc/<pid>/stat`` (a zombie counts as gone); elsewhere psutil's
    creation time when psutil is installed; else ``"alive"`` for a pid that exists (no reuse check).
    """
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return None if fields[0] in ("Z", "X") else f"{_boot_id()}:{fields[19]}"  # state, starttime (field 22)
    try:
        import psutil

        return repr(psutil.Process(pid).create_time())
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess, AccessDenied
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "alive"


def process_tags() -> dict[str, str]:
    """Tags naming the calling process: host, pid, start (:func:`process_start`)."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), START_TAG: process_start(os.getpid()) or ""}


def process_state(tags: dict[str, str]) -> tuple[str, str]:
    """(``"alive"`` / ``"gone"`` / ``"unknown"``, why) of the process that a run's tags name."""
    host, pid, start = tags.get(HOST_TAG), tags.get(PID_TAG), tags.get(START_TAG)
    if not host or not pid or not pid.isdigit():
        return "unknown", "the run records no process (started by another program or an older version)"
    who = f"process {pid} on {host}"
    if host != socket.gethostname():
        return "unknown", f"{who}: another host"
    now = process_start(int(pid))
    if now is None:
        return "gone", f"{who} is gone"
    if start and now != "alive" and now != start:
        return "gone", f"{who} is gone (the pid now belongs to a process started later)"
    return "alive", f"{who} is alive"


@dataclass(frozen=True)
class RunningRun:
    """A RUNNING run and the state of its process."""

    run_id: str
    name: str
    experiment: str
    state: str   # alive | gone | unknown
    why: str


def notes_dir() -> Path:
    """Where a failing process notes the runs it could not end: a RAM file system when there is one (``/dev/shm``),
    so a full disk does not stop the note, else the temporary directory; one per user."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return base / f"lsqbq-unended-runs-{os.getuid() if hasattr(os, 'getuid') else 0}"


def leave_note(run_id: str, status: str, error: str) -> Path | None:
    """Note that ``run_id`` ended ``status`` with ``error`` for the next sweep; None if even that fails."""
    try:
        notes_dir().mkdir(parents=True, exist_ok=True)
        path = notes_dir() / f"{run_id}.json"
        path.write_text(json.dumps({"status": status, "error": error}))
        return path
    except OSError:
        return None


def drop_note(run_id: str) -> None:
    """Forget the note of ``run_id`` (it was ended, or reopened by a resume)."""
    try:
        (notes_dir() / f"{run_id}.json").unlink(missing_ok=True)
    except OSError:
        pass


def _read_note(run_id: str) -> dict | None:
    path = notes_dir() / f"{run_id}.json"
    try:
        note = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) and note.get("status") in ("FAILED", "KILLED") else None


def running_runs(uri: str | None = None, experiment: str | None = None) -> list[RunningRun]:
    """Every active RUNNING run of the store (of ``experiment`` only, when given), with its process's state.

    A SQLite store is read with SQL (no MLflow import); one that does not exist yet has no runs and is not created.
    """
    resolved = resolve_uri(uri)
    db = sqlite_path(resolved)
    if db is not None:
        rows = running_runs_sql(db, _KEYS, experiment)
    else:
        rows = _running_runs_api(init_store(resolved), experiment)
    return [RunningRun(r["run_id"], r["name"] or "", r["experiment"], *process_state(r["tags"])) for r in rows]


def _running_runs_api(uri: str, experiment: str | None) -> list[dict]:
    from .store import client

    c = client(uri)
    if experiment is not None:
        exp = retry(lambda: c.get_experiment_by_name(experiment))
        exps = [exp] if exp is not None else []
    else:
        exps = retry(lambda: c.search_experiments())
    rows = []
    for exp in exps:
        for run in retry(lambda: c.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")):
            rows.append({"run_id": run.info.run_id, "name": run.info.run_name, "experiment": exp.name,
                         "tags": {k: v for k, v in run.data.tags.items() if k in _KEYS}})
    return rows


def stale_runs(uri: str | None = None, experiment: str | None = None) -> list[RunningRun]:
    """The RUNNING runs whose process is provably gone (:func:`process_state`)."""
    return [r for r in running_runs(uri, experiment) if r.state == "gone"]


def close_stale_runs(uri: str | None = None, experiment: str | None = None, run_ids=None,
                     status: str = "KILLED") -> list[RunningRun]:
    """End every stale run (of ``experiment``, or among ``run_ids``, when given) ``status`` (KILLED) with tag
    ``error`` naming the vanished process, or with the status and error its process noted (:func:`leave_note`).
    A live run, and one whose process cannot be judged, is never touched. Returns the runs ended."""
    resolved = resolve_uri(uri)
    db = sqlite_path(resolved)
    closed = []
    for run in stale_runs(resolved, experiment):
        if run_ids is not None and run.run_id not in run_ids:
            continue
        note = _read_note(run.run_id)
        end_status = note["status"] if note else status
        vanished = f"{run.why} and never ended the run (killed, or crashed before it could)"
        tags = {ERROR_TAG: str(note["error"]) if note else vanished,
                CLOSED_BY_TAG: "stale-run sweep"}
        if db is not None:
            ended = end_run_sql(db, run.run_id, end_status, tags)
        else:
            ended = _end_run_api(resolved, run.run_id, end_status, tags)
        if ended:
            drop_note(run.run_id)
            closed.append(run)
    return closed


def _end_run_api(uri: str, run_id: str, status: str, tags: dict[str, str]) -> bool:
    from .store import client

    c = client(uri)
    if retry(lambda: c.get_run(run_id)).info.status != "RUNNING":
        return False
    for key, value in tags.items():
        retry(lambda: c.set_tag(run_id, key, value))
    retry(lambda: c.set_terminated(run_id, status=status))
    return True
