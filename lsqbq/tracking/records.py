"""Evaluations, analyses and benchmarks as runs (:func:`record_run`): one FINISHED run per invocation.

Each holds its parameters, finite metrics, provenance tags (git commit and dirty flag, versions, host, torch
threads, and the caller's: data hash, checkpoint, scale mode, ...), its output files as artifacts, and tag
``lsqbq.source_run_ids`` naming the training run(s) it read. When it reads exactly one training run that is in the
same store, it is created in that run's experiment with ``mlflow.parentRunId`` set, so the MLflow UI shows it nested
under the training run; otherwise it goes to its own experiment (``lsqbq-evaluate``, ``lsqbq-analysis``, ``bench``).
Such runs carry no ``final_top1`` metric, so ``lsqbq tables --from-mlflow`` never mistakes them for trainings.

``LSQBQ_TRACKING=0`` (or ``false`` / ``off`` / ``no``) turns :func:`record_run` off for ad-hoc use: the
evaluation, analysis and benchmark commands then create no run and touch no store (``lsqbq evaluate --no-track``
does the same for one command). Training is governed by its config's ``tracking.enabled`` instead.
"""
from __future__ import annotations

import math
import numbers
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable

from .provenance import process_run_tags
from .runs import one_line, start_run
from .store import client, init_store, retry

__all__ = ["TRACKING_ENV", "SOURCE_RUNS_TAG", "tracking_enabled", "record_run", "record_evaluation",
           "checkpoint_run_id", "checkpoint_label"]

TRACKING_ENV = "LSQBQ_TRACKING"  # "0" / "false" / "off" / "no": record_run creates nothing
SOURCE_RUNS_TAG = "lsqbq.source_run_ids"
_PARENT_TAG = "mlflow.parentRunId"

def tracking_enabled() -> bool:
    """False when ``$LSQBQ_TRACKING`` is ``0``, ``false``, ``off`` or ``no`` (any case)."""
    return os.environ.get(TRACKING_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


_METRIC_CHARS = re.compile(r"[^A-Za-z0-9_\-. /:]")


def _metric_key(key: str) -> str:
    """A metric name MLflow accepts (alphanumerics, ``_ - . / :`` and spaces; anything else becomes ``_``)."""
    return _METRIC_CHARS.sub("_", str(key))


def _finite(v: Any) -> float | None:
    """``v`` as a float when it is a finite real number (numpy scalars too, booleans not), else None."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _source_ids(ids: Iterable[str | None]) -> list[str]:
    out: list[str] = []
    for i in ids or ():
        if i and str(i) not in ("unknown", "null", "None") and str(i) not in out:
            out.append(str(i))
    return out


def record_run(experiment: str, name: str, *, params: dict[str, Any], metrics: dict[str, Any],
               artifacts: Iterable[str | Path] = (), tags: dict[str, Any] | None = None,
               source_run_ids: Iterable[str | None] = (), uri: str | None = None, strict: bool = True) -> str | None:
    """Record one finished evaluation / analysis / benchmark as a FINISHED MLflow run; returns its id.

    ``params`` are logged as strings (as training's are), ``metrics`` at step 0 keeping only finite numbers,
    ``artifacts`` (files; missing ones are skipped) at the artifact root. Tags: the process's provenance
    (:func:`~lsqbq.tracking.provenance.process_run_tags`), then ``tags`` (they may override), and
    ``lsqbq.source_run_ids`` (comma-separated ids of the runs it read; empty, ``None`` and ``"unknown"`` ids are
    dropped). With exactly one source run that exists in the store, the run goes
    into that run's experiment as its child (``mlflow.parentRunId``); else into ``experiment``.

    Returns None, creating nothing, when ``$LSQBQ_TRACKING`` is off (:func:`tracking_enabled`). An error while
    logging ends the run FAILED and is raised; with ``strict=False`` it is a warning and None is returned (for the
    benchmarks, whose timings must not be lost to a busy store).
    """
    if not tracking_enabled():
        return None
    try:
        return _record_run(experiment, name, params, metrics, artifacts, tags, _source_ids(source_run_ids), uri)
    except Exception as e:  # noqa: BLE001
        if strict:
            raise
        warnings.warn(f"MLflow logging of {name!r} failed: {one_line(e)}")
        return None


def _record_run(experiment, name, params, metrics, artifacts, tags, sources, uri) -> str:
    uri = init_store(uri)
    c = client(uri)
    all_tags = {**process_run_tags(), **{k: v for k, v in (tags or {}).items() if v is not None},
                SOURCE_RUNS_TAG: ",".join(sources)}
    if len(sources) == 1:
        try:
            parent = retry(lambda: c.get_run(sources[0]))
        except Exception:  # noqa: BLE001 - a run of another store (RESOURCE_DOES_NOT_EXIST)
            parent = None
        if parent is not None:
            experiment = retry(lambda: c.get_experiment(parent.info.experiment_id)).name
            all_tags[_PARENT_TAG] = sources[0]
    run = start_run(experiment, name, uri=uri, tags=all_tags)
    try:
        run.log_params(params)
        values = {_metric_key(k): _finite(v) for k, v in metrics.items()}
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            run.log_metrics(values, step=0)
        for path in artifacts:
            if Path(path).is_file():
                run.log_artifact(path)
        run.end("FINISHED")
    except BaseException as e:
        run.fail(e)
        raise
    return run.run_id


def checkpoint_label(checkpoint: str | Path, depth: int = 3) -> str:
    """The names of a checkpoint's last ``depth`` parent directories (``resnet_small/ls-1_ls-1/s0``)."""
    parts = Path(checkpoint).parent.parts
    return "/".join(parts[-depth:]) if parts else str(checkpoint)


def record_evaluation(result: dict[str, Any], *, params: dict[str, Any], out: str | Path | None = None,
                      experiment: str = "lsqbq-evaluate", prefix: str = "eval", tags: dict[str, Any] | None = None,
                      track: bool = True) -> str | None:
    """:func:`record_run` of a checkpoint evaluation ``result`` (as ``lsqbq evaluate`` and the bitwise evaluation
    print it): run ``<prefix> <x>_<w> <checkpoint's parent directories>``, every finite number of ``result`` as a
    metric, ``params``, tags ``checkpoint`` / ``data_hash`` / ``epochs`` (and ``tags``), the ``out`` JSON as artifact,
    linked to ``result["source_run_id"]``. Prints the run id to stderr; ``track=False`` records nothing."""
    if not track:
        return None
    checkpoint = result.get("checkpoint", "")
    name = f"{prefix} {result.get('x_quant')}_{result.get('w_quant')} {checkpoint_label(checkpoint)}"
    metrics = {k: v for k, v in result.items() if k not in ("epochs", "threads")}
    run_tags = {"lsqbq.kind": prefix, "checkpoint": checkpoint, "data_hash": result.get("data_hash"),
                "epochs": result.get("epochs"), **(tags or {})}
    run_id = record_run(experiment, name, params=params, metrics=metrics, artifacts=[out] if out else [],
                        tags=run_tags, source_run_ids=[result.get("source_run_id")])
    if run_id:
        print(f"MLflow run {run_id} ({name})", file=sys.stderr)
    return run_id


def checkpoint_run_id(path: str | Path) -> str | None:
    """The MLflow run id of the training that wrote checkpoint ``path``: ``run_id`` of the ``metrics.json``
    beside it, else the checkpoint's own ``run_id`` (None when neither has one)."""
    path = Path(path)
    metrics = path.with_name("metrics.json")
    if metrics.is_file():
        import json

        try:
            run_id = json.loads(metrics.read_text()).get("run_id")
        except (OSError, ValueError, AttributeError):
            run_id = None
        if run_id:
            return str(run_id)
    if path.is_file():
        from .. import checkpoint as ckpt_io

        try:
            return ckpt_io.load(path, "cpu").get("run_id")
        except Exception:  # noqa: BLE001 - provenance only: an unreadable checkpoint has no run id
            return None
    return None
