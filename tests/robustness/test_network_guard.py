"""No ``lsqbq`` command makes a network attempt: each runs in a subprocess whose audit hook refuses and records
name lookups of, and connections to, any host but loopback. MLflow's telemetry switches are removed from the
environment, so the project has to turn telemetry off itself."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ._helpers import REPO, assert_no_network, guarded_env


def test_the_guard_catches_a_lookup_and_allows_loopback(tmp_path):
    code = ("import socket\n"
            "socket.getaddrinfo('localhost', 80)\n"
            "try:\n    socket.getaddrinfo('example.org', 443)\nexcept OSError as e:\n    print('blocked:', e)\n"
            "s = socket.socket()\n"
            "try:\n    s.connect(('192.0.2.1', 9))\nexcept OSError as e:\n    print('blocked:', e)\n")
    env, log = guarded_env(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("blocked:") == 2
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and "example.org" in lines[0] and "192.0.2.1" in lines[1]


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["bench", "--help"], ["tables", "--help"],
                                  ["train", "--help"]], ids=lambda a: "-".join(a).strip("-"))
def test_help_makes_no_network_attempt(cli, args):
    result = cli(*args)
    assert result.returncode == 0, str(result)
    assert_no_network(result)


def test_data_hash_makes_no_network_attempt(cli, cifar_root):
    result = cli("data", "hash", "cifar10", "--root", cifar_root)
    assert result.returncode == 0, str(result)
    assert len(result.stdout.strip()) == 64
    assert_no_network(result)


def test_smoke_training_and_evaluation_make_no_network_attempt(cli, cifar_root, tmp_path):
    """The smoke config with tiny overrides (CIFAR-10 stand-in, width 4), tracked in a fresh SQLite store."""
    out = tmp_path / "run"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = {"data.name": "cifar10", "data.root": cifar_root, "data.train_subset": "null", "data.test_subset": "null",
            "data.batch_size": 8, "model.width": 4, "threads": 1, "tracking.uri": store}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    train = cli("train", "--config", REPO / "config" / "smoke.yaml", *args, "--out", out)
    assert train.returncode == 0, str(train)
    assert_no_network(train)
    assert {"checkpoint.pt", "metrics.json", "config.yaml"} <= {p.name for p in out.iterdir()}
    evaluation = cli("evaluate", "--checkpoint", out / "checkpoint.pt", "--device", "cpu", "--out", tmp_path / "e.json",
                     env={"MLFLOW_TRACKING_URI": store})
    assert evaluation.returncode == 0, str(evaluation)
    assert_no_network(evaluation)
    assert (tmp_path / "e.json").is_file()
