"""The tiny profile (config/test.yaml) run for real in a throw-away clone, then versioned with DVC and pulled
into a second clone, which must not retrain anything; plus a killed training job that resumes.

The copy runs the test profile with ``output_root=.`` so its checkpoints land where dvc.yaml's ``checkpoints``
stage tracks them (checkpoints/fashion-mnist), exactly like the default profile's.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import re

import pytest
import torch
import yaml

from ._repo import TEST_PROFILE as PROFILE
from ._repo import copy_repo, dvc, env_for, git, job_counts, run, shared_test_profile_run, snakemake

pytestmark = pytest.mark.slow

TABLES = "results/tables/fashion-mnist"
EPOCHS = 30  # of the interrupted run: long enough (about 0.2 s an epoch) to be killed before its end


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A copy of the project after `dvc pull` of the raw data and a full run of the test profile (shared with the
    cluster test's local reference: one run per session)."""
    repo, log = shared_test_profile_run(tmp_path_factory)
    assert len(list((repo / "data" / "fashion-mnist").glob("*.gz"))) == 4
    return repo, log


def test_tables_contents(done):
    repo, _ = done
    cfg = yaml.safe_load((repo / "config" / "test.yaml").read_text())
    pairs = [("fp", "fp")] + [(s["x_quant"], s["w_quant"]) for s in cfg["students"]]
    qat = pd.read_csv(repo / TABLES / "qat.csv", dtype={"k_a": str, "k_w": str})
    assert sorted(zip(qat.x_quant, qat.w_quant)) == sorted(pairs)
    assert (qat.n_seeds == 1).all() and qat.top1_mean.between(0.0, 100.0).all()
    assert (qat.top5_mean >= qat.top1_mean).all()
    assert qat[qat.x_quant.eq("fp") & qat.w_quant.eq("fp")].top1_mean.item() > 15.0  # the teacher beats chance
    head = git(["rev-parse", "HEAD"], repo).stdout.strip()
    data_hash = (repo / "results/data/fashion-mnist/data_hash.txt").read_text().strip()
    for row in qat.itertuples():
        metrics = json.loads((repo / f"results/train/fashion-mnist/{row.model}/{row.x_quant}_{row.w_quant}/s0/"
                                     "metrics.json").read_text())
        assert row.top1_mean == pytest.approx(metrics["top1"])
        assert (row.commit, row.config_hash, row.data_hash, row.run_id) == (
            head, metrics["config_hash"], data_hash, metrics["run_id"])
    ls2 = qat[(qat.x_quant == "ls-2") & (qat.w_quant == "ls-1")].iloc[0]
    assert (ls2.k_a, ls2.k_w, ls2.v1_imagenet_top1, ls2.readme_imagenet_top1, ls2.readme_cifar100_top1) == (
        "2", "1", 60.4, 63.4, 74.4)
    md = (repo / TABLES / "qat.md").read_text()
    assert re.search(rf"\| ls-2 +\| ls-1 +\| 2 +\| 1 +\|.*{ls2.top1_mean:.2f}", md), md

    runs = pd.read_csv(repo / TABLES / "qat_runs.csv")
    assert (runs.top1_eval - runs.top1).abs().max() < 1e-6  # the stored checkpoints reproduce the logged numbers

    ptq = pd.read_csv(repo / TABLES / "ptq.csv")
    assert set(ptq.w_quant) == {"fp", "gf-1", "gf-2", "gf-3", "gf-4", "ls-T", "ls-2"}
    teacher = qat[(qat.x_quant == "fp") & (qat.w_quant == "fp")].iloc[0]
    fp = ptq[ptq.w_quant == "fp"].iloc[0]
    assert fp.top1_mean == pytest.approx(teacher.top1_mean)  # unquantized weights: the teacher's own accuracy
    assert (ptq.run_id == teacher.run_id).all()

    err = pd.read_csv(repo / TABLES / "error.csv")
    normal = err[err.source == "normal"].set_index("scheme")
    assert normal.loc["ls-2", "mse"] == pytest.approx(0.1175, rel=0.05)
    assert normal.loc["ls-2", "mse"] < normal.loc["gf-2", "mse"]
    assert {"weights", "activations"} <= set(err.source)
    for name in ("angles.png", "pareto.png"):
        assert (repo / TABLES / name).stat().st_size > 10_000
    pareto = pd.read_csv(repo / TABLES / "pareto.csv")
    lat = dict(zip(pareto.runs_on, pareto.ms_b1))
    assert lat["bitwise 1x1"] > 0 and lat["bitwise 2x1"] > 0 and lat["fp32"] > 0
    models = pd.read_csv(repo / "results/bench/models.csv")  # the checkpoints, both scale modes, timed
    ck = models[models.kind == "checkpoint"]
    stored = ck[ck.impl.str.startswith("bitwise stored")]
    assert len(stored) and set(stored.scale_mode) == {"stored"}
    assert set(ck[ck.impl.isin(["bitwise", "bitwise channels_last"])].scale_mode) == {"fitted"}
    assert pareto[pareto.runs_on != "fp32"]["stored_ms_b1"].notna().all()
    inference = pd.read_csv(repo / TABLES / "inference.csv")  # both scale modes and bitwise, every student
    assert inference[["top1_fitted_mean", "top1_stored_mean", "top1_bitwise_mean"]].notna().all().all()
    assert (inference["agreement_min"] > 99).all()
    assert (repo / "benchmarks/train/fashion-mnist/resnet_small/ls-2_ls-1/s0.tsv").is_file()
    assert (repo / "logs/train/fashion-mnist/resnet_small/ls-2_ls-1/s0.log").is_file()


def test_from_mlflow_equals_workflow_table(done, tmp_path):
    repo, _ = done
    run([sys.executable, "-m", "lsqbq.cli", "tables", "--from-mlflow", "--tracking-uri", "sqlite:///.test/mlflow.db",
         "--experiment", "lsqbq-test-fashion-mnist", "--dataset", "fashion-mnist", "--out", str(tmp_path)], repo)
    for name in ("qat.csv", "qat.md"):
        assert (tmp_path / name).read_text() == (repo / TABLES / name).read_text()
    # the same with every location taken from the profile
    printed = run([sys.executable, "-m", "lsqbq.cli", "tables", "--from-mlflow", "--profile", "config/test.yaml"],
                  repo).stdout
    default_out = repo / ".test/results/tables/from-mlflow/fashion-mnist"
    assert "wrote 3 files" in printed and (default_out / "qat.md").read_text() == (repo / TABLES / "qat.md").read_text()


def test_second_run_has_nothing_to_do(done):
    repo, _ = done
    out = snakemake(["-n", "--cores", "2", *PROFILE], repo).stdout
    assert job_counts(out) == {} and "Nothing to be done" in out


def test_dvc_pull_in_fresh_clone_trains_nothing(done, tmp_path):
    repo, _ = done
    dvc(["commit", "-f", "checkpoints"], repo)
    dvc(["push"], repo)
    git(["add", "-A"], repo)
    git(["commit", "-qm", "test-profile results and checkpoints"], repo)
    clone = tmp_path / "clone"
    git(["clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "checkpoints").exists()
    dvc(["pull"], clone)
    ckpts = sorted(p.relative_to(clone).as_posix() for p in (clone / "checkpoints").rglob("checkpoint.pt"))
    assert ckpts == sorted(p.relative_to(repo).as_posix() for p in (repo / "checkpoints").rglob("checkpoint.pt"))
    assert not list((clone / "checkpoints").rglob("partial-*"))
    out = snakemake(["-n", "--cores", "2", *PROFILE], clone).stdout
    counts = job_counts(out)
    assert "train" not in counts and "prepare_data" not in counts, out[-3000:]


def test_killed_training_resumes(tmp_path):
    """Kill Snakemake (SIGKILL) once the teacher saved an epoch; the next call resumes after it and finishes."""
    repo = copy_repo(tmp_path / "repo")
    dvc(["pull", "fashion_mnist"], repo)
    cfg = yaml.safe_load((repo / "config" / "test.yaml").read_text())
    cfg["set"] = [s for s in cfg["set"] if not s.startswith("epochs=")] + [f"epochs={EPOCHS}"]
    (repo / "resume.yaml").write_text(yaml.safe_dump(cfg))
    target = "checkpoints/fashion-mnist/resnet_small/fp_fp/s0/checkpoint.pt"
    cmd = [sys.executable, "-m", "snakemake", target, "--cores", "1", "--configfile", "resume.yaml", "--config",
           "output_root=."]
    ckpt_dir = repo / "checkpoints/fashion-mnist/resnet_small/fp_fp/s0"
    log = repo / "logs/train/fashion-mnist/resnet_small/fp_fp/s0.log"
    proc = subprocess.Popen(cmd, cwd=repo, env=env_for(repo), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if list(ckpt_dir.glob("partial-*/resume.pt")):  # epoch 1 saved
                break
            time.sleep(0.5)
        assert proc.poll() is None, "training finished before it could be interrupted"
        os.killpg(proc.pid, signal.SIGKILL)  # a hard kill: nothing gets to clean up
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    partial = list(ckpt_dir.glob("partial-*/resume.pt"))
    assert len(partial) == 1 and not (ckpt_dir / "checkpoint.pt").exists()
    done_epochs = int(torch.load(partial[0], weights_only=True)["epoch"])
    assert 1 <= done_epochs < EPOCHS
    snakemake(["--unlock", "--configfile", "resume.yaml", "--config", "output_root=."], repo)  # stale lock of the kill
    snakemake([target, "--cores", "1", "--configfile", "resume.yaml", "--config", "output_root=."], repo)
    text = log.read_text()
    ran = [e for e in range(1, EPOCHS + 1) if f"epoch {e}/{EPOCHS}:" in text]
    assert ran == list(range(done_epochs + 1, EPOCHS + 1))  # resumed after the saved epoch, not from scratch
    metrics = json.loads((ckpt_dir / "metrics.json").read_text())
    assert metrics["epochs"] == EPOCHS and not math.isnan(metrics["top1"])
    assert not list(ckpt_dir.glob("partial-*"))


def test_report_shows_the_tables_as_html_without_a_flood_of_warnings(done):
    """`snakemake --report` embeds each table as an HTML page (not a raw link to markdown) and warns about
    missing metadata at most once."""
    import zipfile

    repo, _ = done
    p = snakemake(["--report", "report.zip", *PROFILE], repo)
    log = p.stdout + p.stderr
    assert sum("metadata" in line.lower() for line in log.splitlines()) <= 1, log[-3000:]
    with zipfile.ZipFile(repo / "report.zip") as z:
        pages = {n: z.read(n).decode("utf-8", "replace") for n in z.namelist() if n.endswith("qat.html")}
    assert pages, "qat.html is not in the report"
    page = next(iter(pages.values()))
    assert "<table" in page and "ls-2" in page and "top-1" in page
