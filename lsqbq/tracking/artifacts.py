"""Attach a training run's artifacts to its checkpoint directory, so each checkpoint byte is stored once.

:func:`attach_artifacts` (``python -m lsqbq.tracking attach --metrics DIR/metrics.json``) makes the run's artifact
location that directory (relative to the working directory, i.e. the project root, when inside it) and deletes the
copies it had logged under the store's ``mlartifacts/`` (DVC versions the directory).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import CheckpointNotFoundError, ConfigError
from .runs import local_path
from .store import check_sqlite_store, resolve_uri, run_artifact_uri, set_artifact_locations, sqlite_path, store_lock
from .store import uri_key

__all__ = ["attach_artifacts"]


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

    resolved = resolve_uri(uri)
    db = sqlite_path(resolved)
    if db is None:
        raise ConfigError(f"attach: {resolved!r} ({uri_key(uri)}) is not a SQLite store; artifacts can be attached "
                          "only in sqlite:///path/to/mlflow.db")
    if not db.is_file():
        raise ConfigError(f"attach: the store {db} does not exist; give the --uri of the run's store")
    check_sqlite_store(db, "attach")
    target = Path(directory)
    if not target.is_dir():
        raise CheckpointNotFoundError(f"attach --dir {directory}: no such directory; give the run's checkpoint "
                                      "directory (the one holding checkpoint.pt and metrics.json)")
    old = run_artifact_uri(db, run_id)
    if old is None:
        raise ConfigError(f"attach --run-id {run_id}: no such run in {resolved!r}; give the run id of the training "
                          "(its metrics.json's run_id) and the --uri of its store")
    cwd = Path.cwd().resolve()
    target_abs = target.resolve()
    location = target_abs.relative_to(cwd).as_posix() if _is_within(target_abs, cwd) else str(target_abs)
    location = location or "."
    old_dir = local_path(old)
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
        set_artifact_locations(db, {}, {run_id: location})
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
