"""The workflow on a real SLURM cluster: a single-node SLURM 22.05 with accounting, started on this machine by
``scripts/slurm_local.sh`` (root; Debian's packages), runs the test profile's trainings, evaluations, models
benchmark and tables through the SLURM executor with the project's own profile (its analyses and the kernel and
quantizer benchmarks, jobs of the same kind, are left out to save time); its tables are compared with the session's
shared local run of the whole profile (``shared_test_profile_run``, also read by the end-to-end tests).
Checked: every job ran as a SLURM job (``sacct``) charged to the default account without the executor guessing one,
the tables' numbers equal the local run's, and a training job cancelled with ``scancel`` is resubmitted by the next
``snakemake`` call and resumes from its partial checkpoint. The commands are those of docs/reproduce.md's cluster section
(run through ``_frequent_status_checks.py``, which only shortens the executor's pause between status checks).

One test function: its steps share a cluster and a run (pytest-xdist could split separate tests over workers).
"""
from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from workflow._repo import (REPO, copy_repo, dvc, env_for, job_counts,  # tests/workflow/_repo.py
                            run, shared_test_profile_run, snakemake)

pytestmark = pytest.mark.slow

SCRIPT = str(REPO / "scripts" / "slurm_local.sh")
# the test profile less its analyses and its kernel and quantizer benchmarks (a copy of it, written by slurm_profile)
SLURM_SUBSET = "slurm-subset.yaml"
# The project's SLURM profile as shipped; the first status check comes after 2 s instead of 40 (jobs take seconds).
ON_SLURM = ["--profile", "workflow/profiles/slurm", "--slurm-init-seconds-before-status-checks", "2"]
# `python -m snakemake` whose SLURM executor checks its jobs every 2 s instead of backing off (the jobs take seconds)
SNAKEMAKE = [sys.executable, str(Path(__file__).with_name("_frequent_status_checks.py"))]
TABLES = "results/tables/fashion-mnist"  # both runs use output_root=. (as TEST_PROFILE does)
TABLES_COMPARED = ("qat.csv", "qat_runs.csv")  # the tables of the trainings and evaluations
RUN = "fashion-mnist/resnet_small/fp_fp/s0"
EPOCHS = 3  # of the cancelled run: it is cancelled after its first saved epoch


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root: scripts/slurm_local.sh installs Debian packages and starts the SLURM daemons")
    was_up = subprocess.run([SCRIPT, "status"], capture_output=True).returncode == 0
    p = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, timeout=1200)
    if p.returncode == 3:  # no package registry, a daemon that cannot start here, ...
        pytest.skip(p.stderr.strip().splitlines()[-1])
    assert p.returncode == 0, p.stdout + p.stderr
    _cancel_leftover_jobs(_pytest_root(tmp_path_factory.getbasetemp()))
    yield
    if not was_up:
        subprocess.run([SCRIPT, "stop"], capture_output=True, timeout=300)


def _pytest_root(basetemp: Path) -> Path:
    """pytest's folder of every session's temporary folders (``pytest-of-<user>``), above this session's."""
    return next((p for p in basetemp.parents if p.name.startswith("pytest-of-")), basetemp.parent)


def _cancel_leftover_jobs(root: Path, timeout: float = 120.0) -> list[str]:
    """Cancel the jobs that an interrupted earlier session of these tests left queued or running (their working
    folders lie under pytest's temporary ``root``; this session has submitted none yet): this session's jobs would
    wait behind them on the one node until the executor gave up. Returns their ids."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], capture_output=True, text=True, check=True).stdout
    stale = [job for job, _, folder in (line.partition("|") for line in out.splitlines())
             if Path(folder.strip()).is_relative_to(root)]
    if stale:
        subprocess.run(["scancel", *stale], check=True)
        deadline = time.time() + timeout
        while time.time() < deadline and subprocess.run(["squeue", "-h", "-j", ",".join(stale)], capture_output=True,
                                                        text=True).stdout.strip():
            time.sleep(1)
    return stale


def _sacct(*args: str) -> list[dict[str, str]]:
    """Job records (allocations) of the accounting; from any start time: sacct's default window begins at midnight,
    which dropped a job that started before it from a run across midnight."""
    fields = ["JobID", "Comment", "State", "Account", "Partition", "Elapsed"]
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-S", "2000-01-01T00:00:00",
                          "-o", ",".join(f"{f}%200" for f in fields), *args],
                         capture_output=True, text=True, check=True).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


def _sacct_until(*args: str, timeout: float = 60.0) -> list[dict[str, str]]:
    """:func:`_sacct` repeated until it lists a job: slurmctld hands job records to slurmdbd asynchronously, so a
    job that just ended may not be in the accounting yet."""
    deadline = time.time() + timeout
    while not (jobs := _sacct(*args)) and time.time() < deadline:
        time.sleep(1)
    return jobs


def _rule(comment: str) -> str:
    """The rule of a job from the comment the executor gives it: rule_NAME or rule_NAME_wildcards_..."""
    return comment.removeprefix("rule_").split("_wildcards_")[0]


def _run_uuid(output: str) -> str:
    return re.search(r"SLURM run ID: (\S+)", output).group(1)


def _stop(proc: subprocess.Popen) -> None:
    """End a snakemake call left running by a failure: SIGTERM makes it scancel its jobs first."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def _read(path) -> str:
    return path.read_text() if path.exists() else ""


def _table(repo, name: str) -> pd.DataFrame:
    """A table as text, without what differs by copy or run: the commit, run ids and times."""
    df = pd.read_csv(repo / TABLES / name, dtype=str)
    return df.drop(columns=[c for c in df.columns if c == "commit" or c.endswith("run_id") or "time" in c])


@pytest.mark.cluster
def test_workflow_on_slurm(cluster, tmp_path, tmp_path_factory):
    t0 = time.time()
    local, slurm = (copy_repo(tmp_path / name) for name in ("local", "slurm"))
    for repo in (local, slurm):
        dvc(["pull", "fashion_mnist"], repo)

    # 1. The test profile's subset through SLURM. Meanwhile 2. a cancelled training job in the other copy, also on SLURM
    # (SLURM jobs spend much of their time waiting for status checks, so the two overlap well), then the session's
    # shared local run of the whole profile as the reference (made by whichever test asked first).
    with open(tmp_path / "slurm.log", "w") as slurm_log:
        _write_subset(slurm)
        main = subprocess.Popen([*SNAKEMAKE, *ON_SLURM, "--configfile", SLURM_SUBSET, "--config", "output_root=."],
                                cwd=slurm, env=env_for(slurm, cluster=True), stdout=slurm_log, stderr=subprocess.STDOUT)
        try:
            t1 = time.time()
            states, done_epochs = _cancel_then_resume(local, tmp_path)
            t2 = time.time()
            shared, _ = shared_test_profile_run(tmp_path_factory)
            reference = {name: _table(shared, name) for name in TABLES_COMPARED}
            main.wait(timeout=1500)
        finally:
            _stop(main)
    out = (tmp_path / "slurm.log").read_text()
    assert main.returncode == 0, out[-6000:]
    t3 = time.time()
    print(f"\ncopies {t1 - t0:.0f} s; a training job cancelled at epoch {done_epochs}/{EPOCHS} and resumed by the next "
          f"call {t2 - t1:.0f} s: {states}; SLURM run {t3 - t0:.0f} s (side by side)")

    # Every job but the target rule ran as a SLURM job: charged to the default account (the profile asks sacctmgr;
    # the executor guessed nothing), on the default partition, completed.
    expected = {r: n for r, n in job_counts(out).items() if r not in ("all", "default", "total")}
    assert expected.get("train") == 4 and expected.get("make_tables") == 1 and expected.get("bench_models") == 1, \
        out[-3000:]
    jobs = _sacct("--name", _run_uuid(out))
    for j in jobs:
        print(f"  {j['JobID']:>5} {j['State']:<10} {j['Account']:<6} {j['Partition']:<5} {j['Elapsed']} {j['Comment']}")
    assert collections.Counter(_rule(j["Comment"]) for j in jobs) == expected
    assert {(j["State"], j["Account"], j["Partition"]) for j in jobs} == {("COMPLETED", "lsqbq", "main")}
    assert "guess" not in out and "invalid option" not in out, out[-3000:]

    # The tables' numbers equal those of the local run.
    for name in TABLES_COMPARED:
        pd.testing.assert_frame_equal(_table(slurm, name), reference[name], obj=name)


def _write_subset(repo) -> None:
    """``repo/SLURM_SUBSET``: config/test.yaml without its analyses and its kernel and quantizer benchmarks."""
    cfg = yaml.safe_load((repo / "config" / "test.yaml").read_text())
    cfg["analysis"]["enabled"] = False
    cfg["bench"].update(kernels=False, quantizers=False)
    (repo / SLURM_SUBSET).write_text(yaml.safe_dump(cfg))


def _cancel_then_resume(repo, tmp_path) -> tuple[list[str], int]:
    """A longer teacher run on SLURM in `repo`, cancelled with scancel once it saved an epoch: the snakemake call
    fails (no retry allowed in it), the next one resubmits the job, which resumes after the saved epoch.
    Returns the SLURM states of the two jobs and the epochs done before the cancel."""
    cfg = yaml.safe_load((repo / "config" / "test.yaml").read_text())
    cfg["set"] = [s for s in cfg["set"] if not s.startswith("epochs=")] + [f"epochs={EPOCHS}"]
    (repo / "resume.yaml").write_text(yaml.safe_dump(cfg))
    target = f".test/checkpoints/{RUN}/checkpoint.pt"
    resume = [target, *ON_SLURM, "--configfile", "resume.yaml"]
    ckpt_dir = repo / ".test" / "checkpoints" / RUN
    first_log = open(tmp_path / "cancelled.log", "w")
    first = subprocess.Popen([*SNAKEMAKE, *resume, "--retries", "0"], cwd=repo,
                             env=env_for(repo, cluster=True), stdout=first_log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 900
        while time.time() < deadline and first.poll() is None and not list(ckpt_dir.glob("partial-*/resume.pt")):
            time.sleep(0.2)
        assert first.poll() is None, _read(tmp_path / "cancelled.log")[-3000:]
        queued = subprocess.run(["squeue", "-h", "-o", "%i|%k", "--name", _run_uuid(_read(tmp_path / "cancelled.log"))],
                                capture_output=True, text=True, check=True).stdout.splitlines()
        train = [job for job, comment in (line.split("|") for line in queued) if _rule(comment) == "train"]
        assert len(train) == 1, (queued, first.poll())
        cancelled = train[0]
        subprocess.run(["scancel", cancelled], check=True)
        first.wait(timeout=600)
    finally:
        _stop(first)
        first_log.close()
    first_out = _read(tmp_path / "cancelled.log")
    assert first.returncode != 0 and "CANCELLED" in first_out, first_out[-3000:]
    partial = list(ckpt_dir.glob("partial-*/resume.pt"))
    assert len(partial) == 1
    done_epochs = int(torch.load(partial[0], weights_only=True)["epoch"])
    assert 1 <= done_epochs < EPOCHS

    second = run([*SNAKEMAKE, *resume], repo, timeout=900, cluster=True)
    log = (repo / ".test" / "logs" / "train" / f"{RUN}.log").read_text()
    ran = [e for e in range(1, EPOCHS + 1) if f"epoch {e}/{EPOCHS}:" in log]
    assert ran == list(range(done_epochs + 1, EPOCHS + 1)), log[-2000:]  # resumed, not restarted
    assert json.loads((ckpt_dir / "metrics.json").read_text())["epochs"] == EPOCHS
    assert not list(ckpt_dir.glob("partial-*"))
    # the cancelled job by its id; of the second call, the training jobs only (the first call may also have run
    # prepare_data in this fresh copy)
    first_jobs = _sacct_until("-j", cancelled)
    resumed = [j for j in _sacct_until("--name", _run_uuid(second.stdout + second.stderr))
               if _rule(j["Comment"]) == "train"]
    states = [j["State"] for j in first_jobs + resumed]
    assert states[0].startswith("CANCELLED") and states[1:] == ["COMPLETED"], (states, first_jobs, resumed)
    return states, done_epochs

