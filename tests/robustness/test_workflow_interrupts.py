"""Nothing lost between commands, in a throw-away copy of the project with its pulled checkpoints:

- the workflow and DVC cannot race: whichever starts second refuses, saying why, and nothing it would have touched
  changes (lsqbq.dvc_lock); both orders;
- an evaluation job killed with its Snakemake (kill -9 of the whole process group, after a forced rerun deleted
  its outputs) is redone by the next `snakemake` after `--unlock`, with the same result.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from workflow._repo import SKIP, copy_repo, dvc, env_for, job_counts, snakemake  # tests/workflow/_repo.py

pytestmark = pytest.mark.slow

CHECKPOINTS = "checkpoints/fashion-mnist"
# holds DVC's repository lock exactly as `dvc pull` does (Repo.lock, .dvc/tmp/lock) until its stdin closes
HOLD_DVC_LOCK = ("import sys; from dvc.repo import Repo; r = Repo('.'); r.lock.lock(); print('locked', flush=True); "
                 "sys.stdin.read(); r.lock.unlock()")


def _digest(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pulled(tmp_path_factory):
    # as a fresh clone: the committed results too
    repo = copy_repo(tmp_path_factory.mktemp("race") / "repo", skip=tuple(s for s in SKIP if s != "results/"))
    dvc(["pull"], repo)  # data, checkpoints and the published MLflow store, from the committed DVC store
    return repo


def test_snakemake_refuses_to_start_while_a_dvc_command_holds_the_lock(pulled):
    before, results = _digest(pulled / CHECKPOINTS), _digest(pulled / "results")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_DVC_LOCK], cwd=pulled, env=env_for(pulled),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for args in (["-n", "--cores", "2"], ["--cores", "2"]):  # a dry run would plan from half-pulled files too
            p = snakemake(args, pulled, check=False)
            err = p.stdout + p.stderr
            assert p.returncode != 0, err[-2000:]
            assert f"a DVC command (pid {holder.pid}) holds .dvc/tmp/lock" in err, err[-2000:]
            assert "Wait for it to finish (e.g. `dvc pull`), then rerun snakemake" in err
            assert "Job stats" not in err  # refused before planning anything
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert _digest(pulled / CHECKPOINTS) == before
    assert _digest(pulled / "results") == results  # no job ran
    # once the DVC command is done, the workflow plans from the complete artifacts: nothing to retrain
    counts = job_counts(snakemake(["-n", "--cores", "2"], pulled).stdout)
    assert counts.get("evaluate") and "train" not in counts, counts


def test_dvc_pull_refuses_while_the_workflow_runs(pulled):
    before = _digest(pulled / CHECKPOINTS)
    target = "results/evaluate/fashion-mnist/lenet5/fp_fp/s0/metrics.json"
    run = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", target], cwd=pulled,
                           env=env_for(pulled), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        locks = pulled / ".snakemake" / "locks"
        while time.time() < deadline and run.poll() is None and not (locks.is_dir() and any(locks.iterdir())):
            time.sleep(0.1)  # Snakemake locks its directory after parsing the workflow, i.e. after taking DVC's lock
        assert run.poll() is None, run.stdout.read()[-2000:]
        p = dvc(["pull", "--force"], pulled, check=False)
        assert p.returncode != 0 and "Unable to acquire lock" in p.stdout + p.stderr, p.stdout + p.stderr
    finally:
        out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out[-3000:]
    assert _digest(pulled / CHECKPOINTS) == before  # the pull replaced nothing under the running job
    # and works once the workflow has ended (--force: the job's evaluation run was logged into the pulled store)
    assert dvc(["pull", "--force"], pulled).returncode == 0


def test_a_killed_evaluation_is_redone_by_the_next_run(pulled):
    targets = ["results/evaluate/fashion-mnist/lenet5/ls-2_ls-1/s0/metrics.json"]
    snakemake(["--cores", "1", *targets], pulled)
    first = {t: (pulled / t).read_bytes() for t in targets}
    log = pulled / "forced.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", "--forcerun", "evaluate",
                                 "evaluate_with_bitwise", "--", *targets], cwd=pulled, env=env_for(pulled),
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and (pulled / targets[0]).exists():
            time.sleep(0.05)  # the forced job has started: its outputs are gone
        assert proc.poll() is None, log.read_text()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its job: nothing gets to clean up
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (pulled / targets[0]).exists()
    snakemake(["--unlock"], pulled)
    out = snakemake(["--cores", "1", *targets], pulled)
    assert "Nothing to be done" not in out.stdout + out.stderr
    assert {t: (pulled / t).read_bytes() for t in targets} == first  # redone, the same result
    assert not list(pulled.glob("results/evaluate/**/.*.tmp"))  # no half-written file left behind
