"""Helpers for the workflow tests: throw-away git copies of the project and Snakemake / DVC / git runners."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Outputs of earlier runs never travel into a copy: each test starts from the committed inputs.
SKIP = ("results/", ".test/", "checkpoints/", "logs/", "benchmarks/", "mlruns/", "mlartifacts/", ".snakemake/")
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)


def env_for(cwd: Path) -> dict[str, str]:
    """The environment of a command run in a copy: its own ``lsqbq`` package first on the import path (the
    installed one may be an editable install of another checkout), so code and recorded commit are the copy's."""
    return {**ENV, "PYTHONPATH": str(cwd)}


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env_for(cwd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}")
    return p


def snakemake(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "snakemake", *args], cwd, **kw)


def dvc(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, **kw)


def git(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return run(["git", "-c", "user.name=lsqbq-tests", "-c", "user.email=tests@lsqbq.invalid", *args], cwd, **kw)


def copy_repo(dst: Path, skip: tuple[str, ...] = SKIP) -> Path:
    """A new git repository at ``dst`` holding the project's tracked and untracked-but-not-ignored files
    (as a fresh clone would after the current work is committed), DVC store included, outputs excluded.
    Files of the DVC store are hard-linked when possible (they are content-addressed and never rewritten)."""
    files = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], REPO).stdout.split("\0")
    dst.mkdir(parents=True, exist_ok=True)
    for rel in filter(None, files):
        if rel.startswith(skip) or not (REPO / rel).is_file():
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if rel.startswith("dvc-store/"):
                os.link(REPO / rel, target)
            else:
                shutil.copy2(REPO / rel, target)
        except OSError:
            shutil.copy2(REPO / rel, target)
    git(["init", "-q", "-b", "main"], dst)
    git(["add", "-A"], dst)
    git(["commit", "-qm", "snapshot for tests"], dst)
    return dst


def job_counts(output: str) -> dict[str, int]:
    """``{rule: count}`` from the "Job stats" table of a Snakemake (dry) run; empty if nothing is to be done."""
    counts: dict[str, int] = {}
    if "Job stats:" not in output:
        return counts
    table = output.split("Job stats:", 1)[1]
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts
