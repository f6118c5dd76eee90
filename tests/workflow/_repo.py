"""Helpers for the workflow tests: throw-away git copies of the project and Snakemake / DVC / git runners."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Outputs of earlier runs never travel into a copy: each test starts from the committed inputs.
SKIP = ("results/", ".test/", "checkpoints/", "logs/", "benchmarks/", "mlruns/", "mlartifacts/", ".snakemake/")
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)


def no_slurm_bin() -> str:
    """A directory holding an ``scontrol`` that fails at once, to put first on PATH.

    Snakemake imports every executor plugin when it starts, and the SLURM plugin's import runs ``scontrol show
    config``: where SLURM's client is installed but no controller answers (a CI machine before or after the cluster
    test), that call waits 9 s, in each of the ~45 Snakemake calls of the suite. Calls that do not use the
    cluster get this stand-in; the plugin then takes SLURM's MinJobAge as unknown, as on a machine without SLURM.
    """
    bin_dir = Path(tempfile.gettempdir()) / f"lsqbq-tests-no-slurm-{os.getuid()}"
    tool = bin_dir / "scontrol"
    if not tool.exists():
        bin_dir.mkdir(exist_ok=True)
        tmp = bin_dir / f".scontrol.{os.getpid()}"
        tmp.write_text("#!/bin/sh\necho 'scontrol: no SLURM cluster in this test' >&2\nexit 1\n")
        tmp.chmod(0o755)
        os.replace(tmp, tool)
    return str(bin_dir)


def env_for(cwd: Path, cluster: bool = False) -> dict[str, str]:
    """The environment of a command run in a copy: its own ``lsqbq`` package first on the import path (the
    installed one may be an editable install of another checkout), so code and recorded commit are the copy's;
    without ``cluster``, :func:`no_slurm_bin` first on PATH."""
    env = {**ENV, "PYTHONPATH": str(cwd)}
    if not cluster:
        env["PATH"] = no_slurm_bin() + os.pathsep + env.get("PATH", "")
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900, cluster: bool = False,
        **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env_for(cwd, cluster), capture_output=True, text=True, timeout=timeout,
                       **kw)
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
        if rel.startswith(skip):
            continue
        target = dst / rel
        if (REPO / rel).is_symlink():  # e.g. profiles/default -> ../workflow/profiles/default, kept a link
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(REPO / rel), target)
            continue
        if not (REPO / rel).is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if rel.startswith("dvc-store/"):
                os.link(REPO / rel, target)
            else:
                shutil.copy2(REPO / rel, target)
        except OSError:
            shutil.copy2(REPO / rel, target)
    git(["init", "-q", "-b", "main"], dst)
    # Objects stored uncompressed: a copy lives for one session, and zlib on the ~80 MB DVC store is most of the
    # time of `git add` (about 4 s of a copy's 5 on a loaded 2-core machine, against about 1 s).
    git(["config", "core.looseCompression", "0"], dst)
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


TEST_PROFILE = ["--configfile", "config/test.yaml", "--config", "output_root=."]


def made_once(tmp_path_factory, name: str, make) -> Path:
    """The folder ``name`` of this test session, made by ``make(folder)`` once per session: the first pytest-xdist
    worker to ask makes it under a file lock, the others wait for it and reuse it; a folder an interrupted ``make``
    left half-made is made again."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # every worker's base directory lies in one session directory
    home, done = base / name, base / name / ".made"
    with FileLock(str(base / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir()
            make(home)
            done.write_text("")
    return home


def shared_test_profile_run(tmp_path_factory) -> tuple[Path, str]:
    """One real run of the test profile (config/test.yaml with ``output_root=.``, so its checkpoints land where
    dvc.yaml tracks them) per test session (:func:`made_once`), in a throw-away copy after ``dvc pull`` of the raw
    data; returns the copy and Snakemake's output.

    Every test that reads such a run (the end-to-end tests, the cluster test's local reference) shares it. Users of
    the run read its results; the few that write (a DVC commit, a report) add files without changing its results.
    """
    def make(home: Path) -> None:
        repo = copy_repo(home / "repo")
        dvc(["pull", "fashion_mnist"], repo)  # raw data from the committed store: no network, no Debian package
        p = snakemake(["--cores", "2", *TEST_PROFILE], repo, timeout=1500)
        (home / "snakemake.log").write_text(p.stdout + p.stderr)

    home = made_once(tmp_path_factory, "shared-test-profile", make)
    return home / "repo", (home / "snakemake.log").read_text()
