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

Evaluations, analyses and benchmarks are runs too (:func:`record_run`): one FINISHED run per invocation with its
parameters, finite metrics, provenance tags (git commit and dirty flag, versions, host, torch threads, and the
caller's: data hash, checkpoint, scale mode, ...), its output files as artifacts, and tag ``lsqbq.source_run_ids``
naming the training run(s) it read. When it reads exactly one training run that is in the same store, it is created
in that run's experiment with ``mlflow.parentRunId`` set, so the MLflow UI shows it nested under the training run;
otherwise it goes to its own experiment (``lsqbq-evaluate``, ``lsqbq-analysis``, ``bench``). Such runs carry no
``final_top1`` metric, so ``lsqbq tables --from-mlflow`` never mistakes them for trainings.

``LSQBQ_TRACKING=0`` (or ``false`` / ``off`` / ``no``) turns :func:`record_run` off for ad-hoc use: the
evaluation, analysis and benchmark commands then create no run and touch no store (``lsqbq evaluate --no-track``
does the same for one command). Training is governed by its config's ``tracking.enabled`` instead.

A training run's artifacts can be *attached* to its checkpoint directory (:func:`attach_artifacts`,
``python -m lsqbq.tracking attach --metrics DIR/metrics.json``): the run's artifact location becomes that
directory (relative to the working directory, i.e. the project root, when inside it) and the copies it had logged
under the store's ``mlartifacts/`` are deleted, so each checkpoint byte is stored once (DVC versions the directory).
"""
from __future__ import annotations

import argparse
import os
import contextlib
import logging
import math
import numbers
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from .errors import CheckpointError, CheckpointNotFoundError, ConfigError

try:  # POSIX; elsewhere the store is initialised without a lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["DEFAULT_URI", "resolve_uri", "init_store", "store_lock", "start_run", "Run", "NullRun", "git_info",
           "client", "versions", "provenance_tags", "run_name", "check_run", "tracking_enabled", "record_run",
           "record_evaluation", "checkpoint_run_id", "attach_artifacts", "relocate", "SOURCE_RUNS_TAG", "TRACKING_ENV"]

DEFAULT_URI = "sqlite:///mlruns-local/mlflow.db"  # ad-hoc runs; the workflow names the published store
# creating a store's tables is routine, not news: keep stderr for errors
for _name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
    logging.getLogger(_name).setLevel(logging.WARNING)
_PROJECT = Path(__file__).resolve().parent.parent
_ERROR_TAG = "error"
TRACKING_ENV = "LSQBQ_TRACKING"  # "0" / "false" / "off" / "no": record_run creates nothing
SOURCE_RUNS_TAG = "lsqbq.source_run_ids"
_PARENT_TAG = "mlflow.parentRunId"


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
    """``{"git_commit": sha or "unknown", "git_dirty": "true"/"false"/"unknown"}`` of the project checkout.

    Dirty means a tracked file other than the generated ``results/`` differs from the commit (the workflow rewrites
    the committed results while it runs; the code, configs and recipes must match the commit)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        commit = head.stdout.strip() if head.returncode == 0 else "unknown"
        # results/ holds generated outputs that the workflow rewrites while it runs; they are not code
        status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
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
        """Log file ``path``; a no-op when it already is that artifact (a run attached to its checkpoint
        directory, :func:`attach_artifacts`, resumed and logging the directory's own files)."""
        root = _local_path(_retry(lambda: self.client.get_run(self.run_id)).info.artifact_uri or "")
        if root is not None:
            dest = root / (artifact_path or "") / Path(path).name
            if dest.exists() and dest.resolve() == Path(path).resolve():
                return
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


# ------------------------------------------------------------------------------ evaluation / analysis runs


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


def _run_tags() -> dict[str, str]:
    """Provenance of an evaluation / analysis / benchmark process: code, versions, host, torch threads."""
    import torch

    import lsqbq

    return {**git_info(), "lsqbq_version": lsqbq.__version__, "torch_version": torch.__version__, **versions(),
            "host": socket.gethostname(), "threads": str(torch.get_num_threads())}


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
    ``artifacts`` (files; missing ones are skipped) at the artifact root. Tags: :func:`_run_tags` provenance, then
    ``tags`` (they may override), and ``lsqbq.source_run_ids`` (comma-separated ids of the runs it read; empty,
    ``None`` and ``"unknown"`` ids are dropped). With exactly one source run that exists in the store, the run goes
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
        warnings.warn(f"MLflow logging of {name!r} failed: {_one_line(e)}")
        return None


def _record_run(experiment, name, params, metrics, artifacts, tags, sources, uri) -> str:
    uri = init_store(uri)
    c = client(uri)
    all_tags = {**_run_tags(), **{k: v for k, v in (tags or {}).items() if v is not None},
                SOURCE_RUNS_TAG: ",".join(sources)}
    if len(sources) == 1:
        try:
            parent = _retry(lambda: c.get_run(sources[0]))
        except Exception:  # noqa: BLE001 - a run of another store (RESOURCE_DOES_NOT_EXIST)
            parent = None
        if parent is not None:
            experiment = _retry(lambda: c.get_experiment(parent.info.experiment_id)).name
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


def _checkpoint_label(checkpoint: str | Path, depth: int = 3) -> str:
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
    name = f"{prefix} {result.get('x_quant')}_{result.get('w_quant')} {_checkpoint_label(checkpoint)}"
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
        from . import checkpoint as ckpt_io

        try:
            return ckpt_io.load(path, "cpu").get("run_id")
        except Exception:  # noqa: BLE001 - provenance only: an unreadable checkpoint has no run id
            return None
    return None


# -------------------------------------------------------------------------------------- attach artifacts


def _local_path(location: str) -> Path | None:
    """The local directory an artifact location names (``file://`` URI, absolute or relative path), else None."""
    from urllib.parse import unquote, urlparse

    if location.startswith("file:"):
        return Path(unquote(urlparse(location).path))
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", location):
        return None
    return Path(location)


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def attach_artifacts(run_id: str, directory: str | Path, uri: str | None = None, force: bool = False) -> str:
    """Make ``directory`` (a checkpoint directory) the artifact location of run ``run_id``; returns the location.

    The location is written relative to the working directory (the project root) when ``directory`` is inside it,
    absolute otherwise, straight into the SQLite store's ``runs`` table (MLflow's API cannot change it). The
    copies the run had logged under the store's ``mlartifacts/`` are then deleted, so each byte is stored once;
    unless ``force``, each of those copies must be present in ``directory`` with the same bytes (nothing the run
    logged is lost). Idempotent.

    Raises:
        ConfigError: not a SQLite store, the store does not exist, the run is not in it, or a logged artifact is
            missing from / different in ``directory`` (without ``force``).
        CheckpointNotFoundError: ``directory`` is not a directory.
    """
    import filecmp
    import sqlite3

    resolved = resolve_uri(uri)
    db = _sqlite_path(resolved)
    if db is None:
        raise ConfigError(f"attach: {resolved!r} ({_uri_key(uri)}) is not a SQLite store; artifacts can be attached "
                          "only in sqlite:///path/to/mlflow.db")
    if not db.is_file():
        raise ConfigError(f"attach: the store {db} does not exist; give the --uri of the run's store")
    target = Path(directory)
    if not target.is_dir():
        raise CheckpointNotFoundError(f"attach --dir {directory}: no such directory; give the run's checkpoint "
                                      "directory (the one holding checkpoint.pt and metrics.json)")
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
        row = con.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
    if row is None:
        raise ConfigError(f"attach --run-id {run_id}: no such run in {resolved!r}; give the run id of the training "
                          "(its metrics.json's run_id) and the --uri of its store")
    old = row[0] or ""
    cwd = Path.cwd().resolve()
    target_abs = target.resolve()
    location = target_abs.relative_to(cwd).as_posix() if _is_within(target_abs, cwd) else str(target_abs)
    location = location or "."
    old_dir = _local_path(old)
    if old_dir is not None and not old_dir.is_absolute():
        old_dir = cwd / old_dir
    store_artifacts = (db.resolve().parent / "mlartifacts").resolve()
    stale = (old_dir is not None and old_dir.resolve() != target_abs and _is_within(old_dir.resolve(), store_artifacts)
             and old_dir.is_dir())
    if stale and not force:
        bad = [f.relative_to(old_dir).as_posix() for f in sorted(old_dir.rglob("*")) if f.is_file()
               and not ((target_abs / f.relative_to(old_dir)).is_file()
                        and filecmp.cmp(f, target_abs / f.relative_to(old_dir), shallow=False))]
        if bad:
            raise ConfigError(f"attach: {len(bad)} artifact(s) of run {run_id} are missing from or differ in "
                              f"{directory} (first: {bad[0]}); attach the directory the run wrote, or pass --force "
                              "to drop the logged copies anyway")
    with store_lock(resolved):
        _set_artifact_locations(db, {}, {run_id: location})
    try:  # MlflowClient keeps each run's artifact repository for the life of the process
        from mlflow.tracking._tracking_service import utils as _mlflow_utils

        _mlflow_utils._artifact_repos_cache.pop(run_id, None)
    except (ImportError, AttributeError):  # pragma: no cover - another MLflow version
        pass
    if stale:
        shutil.rmtree(old_dir.resolve())
        parent = old_dir.resolve().parent  # mlartifacts/<experiment>/<run id>/artifacts: drop the empty run dir
        if parent.name == run_id and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
    return location


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsqbq.tracking", description="MLflow store helpers.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="create the tracking store's schema (optional: the first run does it too)")
    p.add_argument("--uri", default=None, help=f"tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_URI})")
    r = sub.add_parser("relocate", help="make a SQLite store's artifact locations relative to the project root")
    r.add_argument("--uri", default=None, help=f"tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_URI})")
    a = sub.add_parser("attach", help="serve a training run's artifacts from its checkpoint directory (run in the "
                                      "project root) and delete the copies logged under mlartifacts/")
    which = a.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", default=None, help="the training run's id")
    which.add_argument("--metrics", default=None, help="a metrics.json whose run_id names the run (and whose "
                                                       "directory is the default --dir)")
    a.add_argument("--dir", default=None, help="the run's checkpoint directory (checkpoint.pt, metrics.json, ...)")
    a.add_argument("--uri", default=None, help=f"tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_URI})")
    a.add_argument("--force", action="store_true", help="delete the logged copies even where the directory's "
                                                        "files are missing or differ")
    args = parser.parse_args(argv)
    if args.command == "init":
        print(init_store(args.uri))
    elif args.command == "relocate":
        n_exp, n_runs = relocate(args.uri)
        print(f"relocated {n_exp} experiments and {n_runs} runs to relative artifact locations")
    else:
        run_id, directory = args.run_id, args.dir
        if args.metrics is not None:
            run_id = _metrics_run_id(Path(args.metrics))
            directory = directory or str(Path(args.metrics).parent)
        if directory is None:
            parser.error("attach: --run-id needs --dir")
        location = attach_artifacts(run_id, directory, args.uri, force=args.force)
        print(f"run {run_id}: artifacts served from {location}")
    return 0


def _metrics_run_id(path: Path) -> str:
    import json

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


if __name__ == "__main__":
    from .cli import run_command

    sys.exit(run_command("tracking", main))
