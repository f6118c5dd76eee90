"""MLflow tracking and run provenance: the only package that imports ``mlflow``.

Every training (and evaluation) run is an MLflow run in the store at, in order of precedence, ``tracking.uri`` from
the config, ``$MLFLOW_TRACKING_URI``, or the *local* store ``sqlite:///mlruns-local/mlflow.db`` (relative to the
working directory, i.e. the project root). Two stores:

* the **published** store ``sqlite:///mlflow.db`` + ``mlartifacts/``, versioned by DVC, written only by the
  workflow (it sets ``MLFLOW_TRACKING_URI`` for every job);
* the **local** store ``mlruns-local/`` (git- and DVC-ignored) for everything run by hand — smoke runs,
  benchmarks, users' own trainings — so local work never dirties the published store or blocks ``dvc pull``.

Telemetry is off: importing the ``lsqbq`` package sets ``MLFLOW_DISABLE_TELEMETRY=true`` and ``DO_NOT_TRACK=true``
(unless already set), before any module imports mlflow, so no command opens a network connection to a tracking host
other than the one configured.

One idea per module (each name below is importable from ``lsqbq.tracking``, loaded on first use so that
``python -m lsqbq.tracking stale`` never imports MLflow):

* :mod:`~lsqbq.tracking.store`: URI resolution, opening a store safely (:func:`init_store`), its lock, and the raw
  SQL on MLflow's tables (:func:`relocate`);
* :mod:`~lsqbq.tracking.runs`: training runs (:func:`start_run`, :class:`Run`, :class:`NullRun`, :func:`check_run`);
* :mod:`~lsqbq.tracking.records`: evaluation, analysis and benchmark runs (:func:`record_run`,
  :func:`record_evaluation`);
* :mod:`~lsqbq.tracking.provenance`: git commit, versions and what a run computed (:func:`provenance_tags`);
* :mod:`~lsqbq.tracking.stale`: runs whose process died, found and ended (:func:`close_stale_runs`);
* :mod:`~lsqbq.tracking.run_file`: ``OUT/run.json``, so ``--resume`` continues a run killed before its first
  checkpoint (:func:`interrupted_run`);
* :mod:`~lsqbq.tracking.artifacts`: a training run's artifacts served from its checkpoint directory
  (:func:`attach_artifacts`);
* :mod:`~lsqbq.tracking.deferred`: runs written to a file by the job that computed them and recorded later, many
  in one process (:func:`write_run_record`, :func:`record_run_records`);
* :mod:`~lsqbq.tracking.cli`: ``python -m lsqbq.tracking {init,stale,relocate,attach,record}``.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "store": ("DEFAULT_URI", "resolve_uri", "init_store", "store_lock", "client", "relocate"),
    "runs": ("start_run", "Run", "NullRun", "check_run"),
    "provenance": ("git_info", "versions", "provenance_tags", "run_name"),
    "records": ("tracking_enabled", "record_run", "record_evaluation", "checkpoint_run_id", "SOURCE_RUNS_TAG",
                "TRACKING_ENV"),
    "stale": ("RunningRun", "running_runs", "stale_runs", "close_stale_runs", "process_tags"),
    "artifacts": ("attach_artifacts",),
    "run_file": ("RUN_FILE", "write_run_file", "read_run_file", "interrupted_run"),
    "deferred": ("DIGEST_TAG", "write_run_record", "record_run_records"),
    "cli": ("main",),
}
_ALIASES = {"_local_path": ("runs", "local_path"), "_checkpoint_label": ("records", "checkpoint_label"),
            "_sqlite_path": ("store", "sqlite_path"), "_retry": ("store", "retry")}
_WHERE = {name: (module, name) for module, names in _EXPORTS.items() for name in names} | _ALIASES

__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name: str):
    """Load the module that owns ``name`` on first use (``lsqbq.tracking.X`` and ``from lsqbq.tracking import X``)."""
    if name in _WHERE:
        module, attr = _WHERE[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
