"""Which MLflow store a workflow run logs into: one owner for the rule that keeps users' runs out of the
published store.

The published store (``mlflow.db`` + ``mlartifacts`` under the output root, DVC-tracked) receives the runs of the
default profile on its own data only: the configuration agrees with ``config/config.yaml`` on every key of
:data:`PUBLISHED_KEYS`. Any other profile, or the default one pointed at another dataset, data root, tag or output
root (``--config`` overrides), logs into ``mlruns-profiles/<profile>-<dataset>/mlflow.db`` (ignored by git and
DVC), so ``dvc status`` stays clean and ``dvc pull`` never meets a user's runs. ``mlflow.uri`` in the
configuration, then ``$MLFLOW_TRACKING_URI``, take precedence over both.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PUBLISHED_KEYS", "is_published", "default_store", "store_uri"]

PUBLISHED_KEYS = ("profile", "dataset", "dataset_tag", "data_root", "output_root")


def is_published(config: dict, published: dict) -> bool:
    """Whether ``config`` is the published profile ``published`` (the parsed ``config/config.yaml``) on its data."""
    return all(config.get(k) == published.get(k) for k in PUBLISHED_KEYS)


def default_store(config: dict, published: dict) -> str:
    """The SQLite store of ``config`` when neither ``mlflow.uri`` nor ``$MLFLOW_TRACKING_URI`` names one."""
    root = Path(config.get("output_root") or ".")
    dataset = config.get("dataset_tag") or config.get("dataset")
    own = root / "mlflow.db" if is_published(config, published) else (
        root / "mlruns-profiles" / f"{config.get('profile')}-{dataset}" / "mlflow.db")
    return f"sqlite:///{own.as_posix()}"


def store_uri(config: dict, published: dict) -> str:
    """``mlflow.uri`` of ``config``, else ``$MLFLOW_TRACKING_URI``, else :func:`default_store`."""
    return ((config.get("mlflow") or {}).get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
            or default_store(config, published))
