"""Every MLflow run ends: a training killed in its first epoch (before any ``resume.pt``) is continued by
``--resume`` as the same run, which ends FINISHED; the stale-run sweep (``python -m lsqbq.tracking stale``, also
``lsqbq tracking stale``) lists and ends runs whose process is gone and never a live one; a full disk under the
store is an error naming the path, and the run ends FAILED."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml
from training.conftest import fmnist_root, tiny_config  # noqa: F401  (fixture)

from lsqbq import tracking
from lsqbq.cli import run_command
from lsqbq.config import from_dict
from lsqbq.errors import ConfigError
from lsqbq.tracking import stale
from lsqbq.train import run

from ._helpers import REPO, guarded_env

# A run created by a process that then vanishes without ending it (as after kill -9 or the OOM killer).
ORPHAN = """
import os, sys
import lsqbq.tracking as T
run = T.start_run("sweep", "orphan", uri=sys.argv[1])
print(run.run_id, flush=True)
os._exit(0)
"""


def _runs(db) -> dict[str, tuple[str, str | None]]:
    """run id -> (status, error tag), read with SQL (independently of the code under test)."""
    with sqlite3.connect(db) as con:
        status = dict(con.execute("select run_uuid, status from runs"))
        errors = dict(con.execute("select run_uuid, value from tags where key = 'error'"))
    return {r: (s, errors.get(r)) for r, s in status.items()}


def _tracking(*args, tmp_path, module=True):
    env, _ = guarded_env(tmp_path)
    cmd = [sys.executable, "-m", "lsqbq.tracking", *args] if module else [sys.executable, "-m", "lsqbq.cli",
                                                                          "tracking", *args]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_kill_9_in_the_first_epoch_then_resume_continues_the_same_run(tmp_path, fmnist_root):  # noqa: F811
    cfg = tiny_config(tmp_path, fmnist_root, epochs=1, progress="lines", progress_every=1,
                      data={"train_subset": 1536, "test_subset": 128, "batch_size": 64},
                      model={"x_quant": "ls-2", "width": 6})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out, db = tmp_path / "run", tmp_path / "mlflow.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "LSQBQ_BACKEND": os.environ.get("LSQBQ_BACKEND", "reference")}
    proc = subprocess.Popen([sys.executable, "-m", "lsqbq.train", "--config", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    lines, deadline = [], time.monotonic() + 300
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("epoch 1/1 batch 2/"):
                proc.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "".join(lines)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -9, "".join(lines)
    assert not (out / "resume.pt").exists(), "killed after the first checkpoint: the case is not tested"
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    assert _runs(db) == {run_id: ("RUNNING", None)}          # nobody could end it

    listed = _tracking("stale", "--uri", cfg["tracking"]["uri"], tmp_path=tmp_path)
    assert listed.returncode == 0 and f"{run_id}  test/" in listed.stdout and "is gone" in listed.stdout, listed
    assert _runs(db)[run_id][0] == "RUNNING"                  # listing changes nothing

    final = run(from_dict(cfg), resume=True)
    assert final["run_id"] == run_id
    assert _runs(db) == {run_id: ("FINISHED", None)}          # one run, the same, ended
    assert json.loads((out / "metrics.json").read_text())["run_id"] == run_id


def test_sweep_lists_and_ends_dead_runs_never_live_or_foreign_ones(tmp_path):
    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    env, _ = guarded_env(tmp_path)
    orphan = subprocess.run([sys.executable, "-c", ORPHAN, uri], env=env, capture_output=True, text=True,
                            timeout=300, check=True).stdout.split()[-1]
    live = tracking.start_run("sweep", "live", uri=uri)                        # this process: alive
    reused = tracking.start_run("sweep", "reused", uri=uri)                    # its pid now names another process
    reused.set_tags({stale.START_TAG: "0:0"})
    remote = tracking.start_run("sweep", "remote", uri=uri)                    # another host: never judged
    remote.set_tags({stale.HOST_TAG: socket.gethostname() + "-elsewhere", stale.PID_TAG: "1"})
    other = tracking.start_run("elsewhere", "dead-in-another-experiment", uri=uri)
    other.set_tags({stale.START_TAG: "0:0"})

    listed = _tracking("stale", "--uri", uri, "--experiment", "sweep", tmp_path=tmp_path)
    assert listed.returncode == 0, listed
    ids = {line.split()[0] for line in listed.stdout.splitlines() if "  sweep/" in line}
    assert ids == {orphan, reused.run_id}, listed.stdout
    assert f"process {os.getpid()} on {socket.gethostname()} is gone (the pid now belongs to a process started " \
           "later)" in listed.stdout
    assert listed.stdout.splitlines()[-1] == "2 stale run(s) found"
    assert {r: s for r, (s, _) in _runs(db).items()} == dict.fromkeys(
        [orphan, live.run_id, reused.run_id, remote.run_id, other.run_id], "RUNNING")

    closed = _tracking("stale", "--uri", uri, "--experiment", "sweep", "--close", tmp_path=tmp_path, module=False)
    assert closed.returncode == 0 and closed.stdout.splitlines()[-1] == "2 stale run(s) ended", closed
    runs = _runs(db)
    assert runs[orphan][0] == runs[reused.run_id][0] == "KILLED"
    assert runs[orphan][1].startswith("process ") and "is gone and never ended the run" in runs[orphan][1]
    assert runs[live.run_id] == runs[remote.run_id] == runs[other.run_id] == ("RUNNING", None)

    again = _tracking("stale", "--uri", uri, "--close", tmp_path=tmp_path)    # every experiment; idempotent
    assert again.returncode == 0 and other.run_id in again.stdout and orphan not in again.stdout, again
    assert _runs(db)[other.run_id][0] == "KILLED" and _runs(db)[live.run_id] == ("RUNNING", None)
    live.end()


def test_resuming_a_run_that_is_still_running_elsewhere_is_refused(tmp_path):
    """Two processes must never write one run: reopening a RUNNING run whose process is alive is an error."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_ = tracking.start_run("x", "r", uri=uri)
    parent = os.getppid()   # a live process other than this one, on this host
    run_.set_tags({stale.PID_TAG: str(parent), stale.START_TAG: stale.process_start(parent)})
    from lsqbq.errors import TrainingError

    with pytest.raises(TrainingError, match=rf"^MLflow run {run_.run_id} is still RUNNING \(process {parent} on "):
        tracking.start_run("x", "r", uri=uri, run_id=run_.run_id)
    assert _runs(tmp_path / "mlflow.db") == {run_.run_id: ("RUNNING", None)}


def test_sweep_of_a_missing_or_empty_store_is_fast_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "mlflow.db"
    env, _ = guarded_env(tmp_path)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "lsqbq.tracking", "stale", "--uri", f"sqlite:///{missing}", "--close"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert out.returncode == 0 and out.stdout == "0 stale run(s) ended\n" and not out.stderr, out
    assert not (tmp_path / "nowhere").exists()
    assert elapsed < 5, elapsed                     # no MLflow import: a fraction of a second on a quiet machine
    assert "mlflow" not in subprocess.run(
        [sys.executable, "-c", "import sys, lsqbq.tracking.cli as c; c.main(['stale', '--uri', sys.argv[1]]);"
         "print(sorted(m for m in sys.modules if m.startswith('mlflow')))", f"sqlite:///{missing}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()[-1]
    empty = tmp_path / "empty.db"
    empty.touch()
    assert run_command("tracking", tracking.main, ["stale", "--uri", f"sqlite:///{empty}", "--close"]) == 0
    assert empty.stat().st_size == 0


def test_sweep_refuses_a_sqlite_file_of_another_program(tmp_path, capsys):
    foreign = tmp_path / "inventory.db"
    with sqlite3.connect(foreign) as con:
        con.execute("create table items (name text)")
    capsys.readouterr()
    code = run_command("tracking", tracking.main, ["stale", "--uri", f"sqlite:///{foreign}", "--close"])
    err = capsys.readouterr().err.strip()
    assert code == ConfigError.exit_code and err.startswith(f"lsqbq tracking: tracking.uri: {foreign} is a SQLite "
                                                            "database of something else (tables: items)"), err


FULL_DISK = """
set -e
mount -t tmpfs -o size=32m tmpfs "$STORE"
"$PY" -m lsqbq.cli train --config "$CFG" > "$LOG" 2>&1 &
pid=$!
for i in $(seq 30000); do [ -f "$OUT/run.json" ] && break; sleep 0.01; done
kill -STOP $pid                                                     # no epoch ends while the disk fills
dd if=/dev/zero of="$STORE/filler" bs=64k 2>/dev/null || true      # the disk under the store is now full
kill -CONT $pid
set +e; wait $pid; echo "train exit $?"; set -e
rm "$STORE/filler"
"$PY" -m lsqbq.tracking stale --uri "sqlite:///$STORE/mlflow.db" --close
cp "$STORE/mlflow.db" "$KEEP"
"""


@pytest.mark.slow
def test_full_disk_under_the_store_names_the_path_and_the_run_ends_failed(tmp_path, fmnist_root):  # noqa: F811
    """A real ENOSPC: the store lives on a 32 MB tmpfs (in a user and mount namespace) that is filled while the
    training runs. The training fails with an error naming the store's file; its run ends FAILED with that error,
    by the training itself or, when the store cannot take even that, by the next sweep."""
    env, _ = guarded_env(tmp_path)
    if subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True,
                      env=env).returncode != 0:
        pytest.skip("cannot mount a small file system here (unshare --user --mount refused)")
    store = tmp_path / "store"
    store.mkdir()
    # Enough epochs that the training is still running when its run file appears (2 tiny epochs once ended first).
    cfg = tiny_config(tmp_path, fmnist_root, epochs=40, data={"train_subset": 256, "test_subset": 64},
                      tracking={"uri": f"sqlite:///{store / 'mlflow.db'}"})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env.update(STORE=str(store), PY=sys.executable, CFG=str(tmp_path / "cfg.yaml"), LOG=str(tmp_path / "train.log"),
               OUT=str(tmp_path / "run"), KEEP=str(tmp_path / "kept.db"))
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", FULL_DISK], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    log = (tmp_path / "train.log").read_text() if (tmp_path / "train.log").exists() else ""
    assert proc.returncode == 0 and "train exit 1" in proc.stdout, f"{proc.stdout}{proc.stderr}{log}"
    runs = _runs(tmp_path / "kept.db")
    assert len(runs) == 1, runs
    (run_id, (status, error)), = runs.items()
    line = [ln for ln in log.splitlines() if ln.startswith("lsqbq train: ")]
    assert len(line) == 1 and line[0].startswith("lsqbq train: [Errno 28] No space left on device (") and \
        f"(MLflow run {run_id}: " in line[0] and f"): '{store}/" in line[0], log
    assert status == "FAILED" and error.startswith("OSError: [Errno 28] No space left on device") and \
        str(store) in error, (status, error, proc.stdout)
    assert "Traceback" not in log and not (tmp_path / "run" / "metrics.json").exists()


def test_a_failure_the_process_could_not_record_ends_failed_at_the_sweep(tmp_path):
    """A process whose store was unwritable (a full disk) notes its failure; the sweep ends the run FAILED with it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env, _ = guarded_env(tmp_path)
    script = ORPHAN.replace("os._exit(0)", "T.stale.leave_note(run.run_id, 'FAILED', 'OSError: disk full at X')\n"
                                           "os._exit(1)")
    run_id = subprocess.run([sys.executable, "-c", script, uri], env=env, capture_output=True, text=True,
                            timeout=300, check=False).stdout.split()[-1]
    assert (stale.notes_dir() / f"{run_id}.json").is_file()
    assert [r.run_id for r in tracking.close_stale_runs(uri)] == [run_id]
    assert _runs(tmp_path / "mlflow.db") == {run_id: ("FAILED", "OSError: disk full at X")}
    assert not (stale.notes_dir() / f"{run_id}.json").exists()


def test_a_failure_whose_error_tag_did_not_fit_stays_for_the_sweep(tmp_path):
    """A full disk may still take the status update in place but not the new error tag: the run is then not ended
    without its error, but left to the sweep with a note, which ends it FAILED with the error."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env, _ = guarded_env(tmp_path)
    script = ORPHAN.replace("os._exit(0)", "def full(tags):\n"
                                           "    raise OSError(28, 'No space left on device')\n"
                                           "run.set_tags = full\n"
                                           "run.fail(ValueError('disk full at Y'))\n"
                                           "os._exit(1)")
    p = subprocess.run([sys.executable, "-c", script, uri], env=env, capture_output=True, text=True, timeout=300,
                       check=False)
    run_id = p.stdout.split()[-1]
    assert _runs(tmp_path / "mlflow.db") == {run_id: ("RUNNING", None)}, p.stderr
    assert "ends it FAILED" in p.stderr and (stale.notes_dir() / f"{run_id}.json").is_file()
    assert [r.run_id for r in tracking.close_stale_runs(uri)] == [run_id]
    (status, error), = _runs(tmp_path / "mlflow.db").values()
    assert status == "FAILED" and "disk full at Y" in error
