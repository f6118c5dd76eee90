"""The MLflow store: concurrent first use of a fresh SQLite store, no network attempt from a tracked training
(MLflow telemetry off without any variable set by the caller), a SQLite file of another program refused rather than
given MLflow's tables, and an HTTP store that refuses connections failing in seconds with an error naming it."""
from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml
from training.conftest import fmnist_root, tiny_config  # noqa: F401  (fixture)

from lsqbq.cli import run_command
from lsqbq.errors import ConfigError
from lsqbq.tracking import main as tracking_main
from lsqbq.train import main as train_main

from ._helpers import guarded_env

# Variables that make MLflow skip telemetry on its own (it assumes CI or a test run): removed too, so that only
# the project's own setting can keep a tracked run off the network.
CI_MARKERS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "TRAVIS", "CIRCLECI",
              "TF_BUILD", "BUILDKITE", "TEAMCITY_VERSION", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN",
              "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID",
              "MLFLOW_TRACKING_URI")


def _env(tmp_path):
    env, log = guarded_env(tmp_path)
    for key in CI_MARKERS:
        env.pop(key, None)
    return env, log


def _tiny(tmp_path, fmnist_root, name, store):  # noqa: F811
    cfg = tiny_config(tmp_path / name, fmnist_root, data={"train_subset": 64, "test_subset": 64, "batch_size": 32},
                      model={"width": 4, "layers": [1]})
    cfg["tracking"] = {"uri": f"sqlite:///{store}", "experiment": "race", "log_checkpoint": False}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_concurrent_trainings_on_a_fresh_sqlite_store_all_finish(tmp_path, fmnist_root):  # noqa: F811
    store = tmp_path / "fresh" / "mlflow.db"
    env, log = _env(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "lsqbq.cli", "train", "--config",
                               str(_tiny(tmp_path, fmnist_root, f"job{i}", store))],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
             for i in range(4)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    with sqlite3.connect(store) as con:
        statuses = sorted(s for (s,) in con.execute("select status from runs"))
        tables = [t for (t,) in con.execute("select name from sqlite_master where type = 'table'")]
    assert statuses == ["FINISHED"] * 4
    assert not [t for t in tables if t.startswith("_alembic_tmp")], tables
    assert not (log.exists() and log.read_text()), log.read_text()


@pytest.mark.slow
def test_tracked_training_makes_no_network_attempt(tmp_path, fmnist_root):  # noqa: F811
    """A tracked run under an audit hook that refuses name lookups and connections to non-loopback hosts records
    none; the same hook catches plain MLflow phoning home (the control), so the check can fail."""
    env, log = _env(tmp_path)
    control = ("from mlflow.tracking import MlflowClient\n"
               f"c = MlflowClient('sqlite:///{tmp_path / 'control.db'}')\n"
               "r = c.create_run(c.create_experiment('x'))\n"
               "c.set_terminated(r.info.run_id)\n")
    subprocess.run([sys.executable, "-c", control], env=env, cwd=tmp_path, capture_output=True, timeout=300)
    attempts = log.read_text() if log.exists() else ""
    if not attempts:
        pytest.skip("this MLflow version makes no telemetry call to catch (the control saw none)")
    log.unlink()

    cfg = _tiny(tmp_path, fmnist_root, "tracked", tmp_path / "mlflow.db")
    proc = subprocess.run([sys.executable, "-m", "lsqbq.cli", "train", "--config", str(cfg)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not log.exists() or not log.read_text(), log.read_text()


# Started in N processes at once; each waits at a barrier (a file per started process in READY) until all N have
# started, then opens the store: they reach it within a poll interval (5 ms) of each other.
RACE = """
import os, sys, time
import lsqbq.tracking as T
store, ready, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
open(os.path.join(ready, str(os.getpid())), "w").close()
give_up = time.time() + 240
while len(os.listdir(ready)) < n:
    if time.time() > give_up:
        sys.exit(f"only {len(os.listdir(ready))} of {n} processes started")
    time.sleep(0.005)
run = T.start_run("race", "r", uri="sqlite:///" + store)
run.log_metrics({"m": 1.0}, step=1)
run.end()
"""


@pytest.mark.slow
def test_simultaneous_first_use_of_a_fresh_store(tmp_path):
    """Four processes open one fresh store at the same instant (the sharpest form of the race: without the lock on
    ``<db>.lock`` at most one of them survived and the store could be left half-migrated)."""
    store, ready = tmp_path / "mlflow.db", tmp_path / "ready"
    ready.mkdir()
    env, log = _env(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(store), str(ready), "4"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(o[-2000:] for o in outputs)
    with sqlite3.connect(store) as con:
        assert sorted(s for (s,) in con.execute("select status from runs")) == ["FINISHED"] * 4
    assert (tmp_path / "mlflow.db.lock").exists()


def _one_error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def _tables(db) -> list[str]:
    with sqlite3.connect(db) as con:
        return sorted(t for (t,) in con.execute("select name from sqlite_master where type = 'table'"))


@pytest.mark.parametrize("command", ["init", "train"])
def test_a_sqlite_file_of_another_program_is_refused_not_migrated(tmp_path, capsys, command):
    db = tmp_path / "inventory.db"
    with sqlite3.connect(db) as con:
        con.execute("create table items (name text, count integer)")
        con.execute("insert into items values ('bolt', 3)")
    before = db.read_bytes()
    capsys.readouterr()
    if command == "init":
        code = run_command("tracking", tracking_main, ["init", "--uri", f"sqlite:///{db}"])
    else:
        code = run_command("train", train_main, ["--set", f"data.root={tmp_path / 'no-data'}", "--set",
                                                 f"tracking.uri=sqlite:///{db}", "--out", str(tmp_path / "out")])
    line = _one_error_line(capsys)
    assert code == ConfigError.exit_code, line
    assert line == (f"lsqbq {'tracking' if command == 'init' else 'train'}: tracking.uri: {db} is a SQLite database "
                    "of something else (tables: items), not an MLflow store; refusing to add MLflow's tables to it; "
                    f"use a new file, e.g. sqlite:///{tmp_path / 'mlflow.db'}")
    assert db.read_bytes() == before and _tables(db) == ["items"]          # untouched
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlartifacts").exists()


def test_a_file_that_is_no_database_is_refused_naming_it(tmp_path, capsys):
    db = tmp_path / "notes.db"
    db.write_text("these are notes, not a database\n" * 100)
    before = db.read_bytes()
    capsys.readouterr()
    code = run_command("tracking", tracking_main, ["init", "--uri", f"sqlite:///{db}"])
    line = _one_error_line(capsys)
    assert code == ConfigError.exit_code and line.startswith(
        f"lsqbq tracking: tracking.uri: {db} is not a readable SQLite database (file is not a database)"), line
    assert db.read_bytes() == before


def test_an_mlflow_store_and_an_empty_file_are_accepted(tmp_path, capsys):
    """The controls: the check refuses only foreign databases."""
    empty = tmp_path / "empty.db"
    empty.touch()
    assert run_command("tracking", tracking_main, ["init", "--uri", f"sqlite:///{empty}"]) == 0
    assert {"experiments", "runs", "tags", "metrics", "params"} <= set(_tables(empty))
    assert run_command("tracking", tracking_main, ["init", "--uri", f"sqlite:///{empty}"]) == 0   # idempotent


def _refused_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", ["init", "train"])
def test_an_http_store_that_refuses_connections_fails_in_seconds(tmp_path, capsys, command):
    uri = f"http://127.0.0.1:{_refused_port()}"
    capsys.readouterr()
    t0 = time.monotonic()
    if command == "init":
        code = run_command("tracking", tracking_main, ["init", "--uri", uri])
    else:
        code = run_command("train", train_main, ["--set", f"data.root={tmp_path / 'no-data'}", "--set",
                                                 f"tracking.uri={uri}", "--out", str(tmp_path / "out")])
    elapsed = time.monotonic() - t0
    line = _one_error_line(capsys)
    assert code == ConfigError.exit_code and elapsed < 20, (elapsed, line)   # not MLflow's minutes of retries
    assert line.startswith(f"lsqbq {'tracking' if command == 'init' else 'train'}: tracking.uri: cannot connect to "
                           f"the MLflow server {uri!r} (Connection refused)"), line
    assert not (tmp_path / "out").exists()

