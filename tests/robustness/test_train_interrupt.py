"""A training process killed mid-epoch (`kill -9`, or SIGTERM from a scheduler) resumes with `--resume` to the
same weights and metrics, bit for bit, as an uninterrupted run; no temporary file survives; SIGTERM ends the MLflow
run KILLED."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from training.conftest import fmnist_root, tiny_config  # noqa: F401  (fixture)

from lsqbq import checkpoint as ckpt_io
from lsqbq.config import from_dict
from lsqbq.train import run

from ._helpers import REPO

pytestmark = pytest.mark.slow


def _config(root, fmnist_root):  # noqa: F811
    return tiny_config(root, fmnist_root, epochs=3, progress="lines", progress_every=1,
                       data={"train_subset": 1536, "test_subset": 128, "batch_size": 64},
                       model={"x_quant": "ls-2", "width": 6})


def _start_and_signal(cfg, sig, at="epoch 2/3 batch 2/"):
    """Train ``cfg`` in a subprocess; send ``sig`` once its progress reaches ``at`` -> (returncode, output)."""
    path = os.path.join(cfg["output"]["dir"] + ".yaml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "LSQBQ_BACKEND": os.environ.get("LSQBQ_BACKEND", "reference")}
    proc = subprocess.Popen([sys.executable, "-m", "lsqbq.train", "--config", path], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    lines, deadline = [], time.monotonic() + 300
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(at):
                proc.send_signal(sig)
                break
            assert time.monotonic() < deadline, "".join(lines)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, "".join(lines) + (rest or "")


def _weights(path):
    return ckpt_io.load(path)["model"]


def _status(cfg, run_id):
    from mlflow.tracking import MlflowClient

    r = MlflowClient(tracking_uri=cfg["tracking"]["uri"]).get_run(run_id)
    return r.info.status, r.data.tags.get("error")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killed_training_resumes_bit_identically(tmp_path, fmnist_root, sig):  # noqa: F811
    full_cfg = _config(tmp_path / "full", fmnist_root)
    full = run(from_dict(full_cfg))

    cfg = _config(tmp_path / "killed", fmnist_root)
    code, output = _start_and_signal(cfg, sig)
    assert code == (-9 if sig == signal.SIGKILL else 128 + 15), output
    out = tmp_path / "killed" / "run"
    state = ckpt_io.load(out / "resume.pt")
    assert state["epoch"] == 1, output                 # killed inside epoch 2: the epoch-1 checkpoint is intact
    assert not (out / "checkpoint.pt").exists()        # published only once the last epoch is done
    assert not (out / "metrics.json").exists()
    if sig == signal.SIGTERM:
        assert _status(cfg, state["run_id"]) == ("KILLED", "Terminated: terminated by SIGTERM")
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    else:
        assert _status(cfg, state["run_id"])[0] == "RUNNING"   # nobody could end it

    resumed = run(from_dict(cfg), resume=True)
    for key in ("top1", "top5", "loss"):
        assert resumed[key] == full[key], key
    a, b = _weights(tmp_path / "full" / "run" / "checkpoint.pt"), _weights(out / "checkpoint.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = [{k: v for k, v in row.items() if k != "images_per_s"}
               for row in ckpt_io.load(out / "checkpoint.pt")["history"]]
    assert history == [{k: v for k, v in row.items() if k != "images_per_s"}
                       for row in ckpt_io.load(tmp_path / "full" / "run" / "checkpoint.pt")["history"]]
    assert resumed["run_id"] == state["run_id"] and _status(cfg, state["run_id"]) == ("FINISHED", None)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.json", "resume.pt"]
    assert json.loads((out / "metrics.json").read_text())["top1"] == full["top1"]
