"""Shared test settings: deterministic CPU runs, MLflow telemetry off, runs the code records by default (an
evaluation, an analysis) go to a throw-away store, never to the project's."""
import os
import tempfile

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tempfile.mkdtemp(prefix='lsqbq-tests-')}/mlflow.db")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
