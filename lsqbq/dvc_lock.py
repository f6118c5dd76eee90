"""The workflow and DVC never work on the same files at once.

``dvc pull`` / ``dvc checkout`` hold DVC's repository lock (``.dvc/tmp/lock``, an exclusive ``flock`` taken through
``zc.lockfile``) while they write data, checkpoints and the MLflow store. The workflow's main Snakemake process takes
the same lock before it plans anything and keeps it until it exits, so:

- a ``snakemake`` started while a DVC command runs refuses to start (:class:`DvcBusyError`), instead of planning
  from half-pulled checkpoints and retraining over them;
- a ``dvc pull`` started while the workflow runs fails with DVC's own "Unable to acquire lock" instead of replacing
  files under running jobs.

Job processes (cluster jobs re-reading the workflow) do not take it: their main process holds it.
"""
from __future__ import annotations

from pathlib import Path

from .errors import LsqbqError

__all__ = ["DvcBusyError", "hold"]


class DvcBusyError(LsqbqError, RuntimeError):
    """A DVC command holds the repository lock."""


def _holder(lockfile: Path) -> str:
    try:
        pid = lockfile.read_text().strip().split()[0]
    except (OSError, IndexError):
        return "a DVC command"
    return f"a DVC command (pid {pid})"


def hold(repo: str | Path):
    """Take DVC's repository lock of ``repo`` for the life of the returned object (keep a reference to it).

    Returns None where ``repo`` is not a DVC repository or DVC is not installed; raises :class:`DvcBusyError`,
    naming the lock file and the holder's pid, when a DVC command holds it now.
    """
    tmp = Path(repo) / ".dvc" / "tmp"
    if not tmp.parent.is_dir():
        return None
    try:
        import zc.lockfile
    except ImportError:  # DVC (which brings zc.lockfile) is not installed: nothing can race
        return None
    tmp.mkdir(exist_ok=True)
    lockfile = tmp / "lock"
    try:
        return zc.lockfile.LockFile(str(lockfile))
    except zc.lockfile.LockError:
        raise DvcBusyError(
            f"{_holder(lockfile)} holds {lockfile.relative_to(repo)}: "
            "it is writing the data, checkpoints or MLflow store this workflow reads, and a plan made now could "
            "retrain over checkpoints being pulled. Wait for it to finish (e.g. `dvc pull`), then rerun snakemake"
        ) from None
