"""Runs written to a file by the job that computed them and recorded in the store later, many in one process.

    lsqbq analyze ptq --checkpoint ... --out PREFIX --run-record RECORD.json   # computes, writes RECORD.json
    python -m lsqbq.tracking record RECORD.json ...                            # one process records them all

A *run record* is the JSON object ``{"experiment", "name", "params", "metrics", "artifacts", "tags",
"source_run_ids"}`` of :func:`~lsqbq.tracking.records.record_run`'s arguments, with the computing process's
provenance (:func:`~lsqbq.tracking.provenance.process_run_tags`: commit, versions, host, threads) already in
``tags``, so the run says where it was computed, not where it was recorded. The artifacts are read when the record
is recorded; they must still be where the record names them.

The workflow's jobs import MLflow once in one recording job instead of in each of dozens of seconds-long jobs, and
the SQLite store is written by one process. Each recorded run carries the tag :data:`DIGEST_TAG`, the digest of
what it recorded (:func:`record_digest`: its artifacts' bytes, not the record, whose provenance tags change with
every commit); a record whose digest is already in the store is skipped. So rerunning the workflow from the same
checkpoints, whose analyses write the same files, records nothing new and leaves the published store unchanged
(``dvc status`` clean, the next ``dvc pull`` free to run).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import DataError

__all__ = ["DIGEST_TAG", "RECORD_KEYS", "file_digest", "record_digest", "recorded_digests", "write_run_record",
           "record_run_records", "write_marker"]

#: Tag of every run recorded from files: the SHA-256 of what it recorded (an evaluation's result file; a run
#: record's artifacts, :func:`record_digest`).
DIGEST_TAG = "lsqbq.result_sha256"
#: The keys of a run record (those of :func:`~lsqbq.tracking.records.record_run`).
RECORD_KEYS = ("experiment", "name", "params", "metrics", "artifacts", "tags", "source_run_ids")


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of the file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def record_digest(path: str | Path, record: dict) -> str:
    """SHA-256 (hex) of the record's artifacts: of the newline-joined SHA-256 of each artifact file that exists, in
    the record's order; of the record file itself when none exists."""
    files = [Path(a) for a in record["artifacts"] if Path(a).is_file()]
    if not files:
        return file_digest(path)
    return hashlib.sha256("\n".join(file_digest(f) for f in files).encode()).hexdigest()


def recorded_digests(uri: str | None) -> set[str]:
    """The :data:`DIGEST_TAG` of every run in the store (any experiment)."""
    from .store import client, init_store

    c = client(init_store(uri))
    seen: set[str] = set()
    for exp in c.search_experiments():
        token = None
        while True:
            page = c.search_runs([exp.experiment_id], filter_string=f"tags.`{DIGEST_TAG}` != ''",
                                 max_results=1000, page_token=token)
            seen.update(r.data.tags[DIGEST_TAG] for r in page if DIGEST_TAG in r.data.tags)
            token = page.token
            if not token:
                break
    return seen


def write_run_record(path: str | Path, experiment: str, name: str, *, params: dict, metrics: dict,
                     artifacts=(), tags: dict | None = None, source_run_ids=()) -> Path:
    """Write the run :func:`~lsqbq.tracking.records.record_run` would record now to ``path`` (atomically), the
    process's provenance tags included; returns the path. Metrics are stored as ``record_run`` logs them (finite
    floats; anything else as null, which it drops)."""
    from ..atomic import write_text_atomic
    from .provenance import process_run_tags
    from .records import _finite

    record = {"experiment": experiment, "name": name, "params": params,
              "metrics": {k: _finite(v) for k, v in metrics.items()}, "artifacts": [str(a) for a in artifacts],
              "tags": {**process_run_tags(), **{k: v for k, v in (tags or {}).items() if v is not None}},
              "source_run_ids": [s for s in source_run_ids if s]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")


def _read(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a run record ({e})") from None
    missing = [k for k in RECORD_KEYS if not isinstance(record, dict) or k not in record]
    if missing:
        raise DataError(f"{path}: not a run record (missing {', '.join(missing)})")
    return record


def record_run_records(paths, uri: str | None = None) -> tuple[int, int]:
    """Record every run record in ``paths`` whose digest is not yet in the store; returns ``(recorded, skipped)``.

    Every file is read and checked before the first is recorded: one that is not a run record raises
    :class:`~lsqbq.errors.DataError` naming it, and nothing is recorded.
    """
    from .records import record_run, tracking_enabled

    records = [(Path(p), _read(Path(p))) for p in paths]
    if not tracking_enabled():
        return 0, 0
    seen = recorded_digests(uri)
    recorded = skipped = 0
    for path, r in records:
        digest = record_digest(path, r)
        if digest in seen:
            skipped += 1
            continue
        record_run(r["experiment"], r["name"], params=r["params"], metrics=r["metrics"], artifacts=r["artifacts"],
                   tags={**r["tags"], DIGEST_TAG: digest}, source_run_ids=r["source_run_ids"], uri=uri)
        seen.add(digest)
        recorded += 1
    return recorded, skipped


def write_marker(path: str | Path, line: str) -> Path:
    """The workflow's marker of a recording job: ``line`` (its summary) written to ``path``, atomically."""
    from ..atomic import write_text_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, line + "\n")
