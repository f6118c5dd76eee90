"""The smoke configuration end to end through the CLI: one epoch, a full MLflow run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_config_cli(tmp_path, fmnist_root):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "lsqbq.train", "--config", str(PROJECT / "config" / "smoke.yaml"),
           "--set", f"data.root={fmnist_root}", "--out", str(tmp_path / "smoke")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "smoke" / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["top1"] > 30  # chance is 10
    run = MlflowClient(tracking_uri=uri).get_run(metrics["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["model.x_quant"] == "ls-1"
    assert run.data.tags["data_hash"] == metrics["data_hash"]
    assert len(MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "top1")) == 1
