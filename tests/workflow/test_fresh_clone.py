"""The committed default profile: a fresh clone + `dvc pull` schedules no training job.

Skipped until the default profile's checkpoints are recorded in dvc.lock (after `snakemake --cores all`,
`dvc commit -f && dvc push` and a commit of dvc.lock, dvc-store/ and results/).
"""
import pytest
import yaml

from ._repo import REPO, SKIP, copy_repo, dvc, job_counts, snakemake

pytestmark = pytest.mark.slow


def _checkpoints_recorded() -> bool:
    lock = REPO / "dvc.lock"
    if not lock.is_file():
        return False
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return bool(stages.get("checkpoints", {}).get("outs")) and (REPO / "results" / "train").is_dir()


@pytest.mark.skipif(not _checkpoints_recorded(), reason="default-profile checkpoints not yet in dvc.lock")
def test_default_profile_pull_then_no_training(tmp_path):
    clone = copy_repo(tmp_path / "clone", skip=tuple(s for s in SKIP if s != "results/"))
    dvc(["pull"], clone)
    assert list((clone / "checkpoints").rglob("checkpoint.pt"))
    out = snakemake(["-n", "--cores", "2"], clone).stdout
    counts = job_counts(out)
    assert "train" not in counts and "prepare_data" not in counts, out[-3000:]
