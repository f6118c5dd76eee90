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


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A fresh clone (committed results included) after `dvc pull`; both tests only read it (a dry run, the MLflow
    store, `dvc status`), so they share one."""
    clone = copy_repo(tmp_path_factory.mktemp("fresh") / "clone", skip=tuple(s for s in SKIP if s != "results/"))
    dvc(["pull"], clone)
    return clone


@pytest.mark.skipif(not _checkpoints_recorded(), reason="default-profile checkpoints not yet in dvc.lock")
def test_default_profile_pull_then_no_training(clone):
    assert list((clone / "checkpoints").rglob("checkpoint.pt"))
    out = snakemake(["-n", "--cores", "2"], clone).stdout
    counts = job_counts(out)
    assert "train" not in counts and "prepare_data" not in counts, out[-3000:]


@pytest.mark.skipif(not _checkpoints_recorded(), reason="default-profile checkpoints not yet in dvc.lock")
def test_pulled_store_serves_every_published_run_and_its_artifacts(clone, tmp_path, monkeypatch):
    """After `dvc pull` in a fresh clone: every run id the committed tables name is in the pulled MLflow store,
    a training run's checkpoint downloads through MlflowClient with the bytes DVC restored (the artifact location
    is the checkpoint directory, so it is stored once), evaluation runs are nested under their training run, and
    `dvc status` stays clean."""
    import csv

    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(clone)
    client = MlflowClient(tracking_uri="sqlite:///mlflow.db")
    with open(clone / "results" / "tables" / "fashion-mnist" / "qat_runs.csv") as f:
        rows = list(csv.DictReader(f))
    ids = {r["run_id"] for r in rows} | {r["teacher_run_id"] for r in rows if r.get("teacher_run_id")}
    for run_id in sorted(ids):
        assert client.get_run(run_id).info.status == "FINISHED", run_id
    row = next(r for r in rows if r["x_quant"] == "ls-2")
    run = client.get_run(row["run_id"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"checkpoint.pt", "metrics.json", "config.yaml"}
    local = client.download_artifacts(run.info.run_id, "checkpoint.pt", str(tmp_path / "dl"))
    ckpt = clone / run.info.artifact_uri / "checkpoint.pt"
    assert ckpt.is_relative_to(clone / "checkpoints") and open(local, "rb").read() == ckpt.read_bytes()
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert children and all(c.info.status == "FINISHED" for c in children)
    assert not list((clone / "mlartifacts").rglob("checkpoint.pt"))  # no second copy of any checkpoint
    status = dvc(["status"], clone).stdout
    assert "changed" not in status and "modified" not in status, status
