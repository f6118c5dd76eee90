"""Evaluations, analyses and benchmarks as MLflow runs (tracking.record_run) linked to the training run they read,
and training artifacts attached to their checkpoint directory (tracking.attach_artifacts)."""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from training.conftest import fmnist_root, tiny_config  # noqa: F401  (fixture)

from lsqbq import tracking
from lsqbq.errors import CheckpointNotFoundError, ConfigError


@pytest.fixture(autouse=True)
def _tracking_on(monkeypatch):
    monkeypatch.delenv("LSQBQ_TRACKING", raising=False)


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def _training_run(uri: str, experiment: str = "lsqbq-test-train") -> str:
    run = tracking.start_run(experiment, "resnet-als-1-wls-1-s0", uri=uri, tags={"model": "resnet"})
    run.end()
    return run.run_id


# ------------------------------------------------------------------------------------------ record_run


def test_record_run_is_a_finished_child_of_its_training_run(tmp_path):
    uri = _uri(tmp_path)
    train_id = _training_run(uri)
    out = tmp_path / "eval.json"
    out.write_bytes(b'{"top1": 61.5}\n')
    run_id = tracking.record_run(
        "lsqbq-evaluate", "eval ls-1_ls-1 resnet/ls-1_ls-1/s0", uri=uri,
        params={"checkpoint": "ck/checkpoint.pt", "overrides": None, "quick": True},
        metrics={"top1": 61.5, "n": 256, "loss": float("nan"), "fused": True, "kernels": "native", "a@b": 2.0},
        artifacts=[out, tmp_path / "not-written.csv"], tags={"data_hash": "abc123", "scale_mode": None},
        source_run_ids=[train_id, None, "unknown"])
    c = MlflowClient(uri)
    r, train = c.get_run(run_id), c.get_run(train_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "eval ls-1_ls-1 resnet/ls-1_ls-1/s0"
    assert r.info.experiment_id == train.info.experiment_id  # nested in the UI under the training run
    t = r.data.tags
    assert t["mlflow.parentRunId"] == train_id and t[tracking.SOURCE_RUNS_TAG] == train_id
    assert t["data_hash"] == "abc123" and "scale_mode" not in t
    assert t["git_dirty"] in ("true", "false", "unknown") and t["git_commit"] and t["mlflow_version"]
    assert t["host"] and int(t["threads"]) >= 1 and "torch_version" in t
    assert r.data.params == {"checkpoint": "ck/checkpoint.pt", "overrides": "null", "quick": "true"}
    assert r.data.metrics == {"top1": 61.5, "n": 256.0, "a_b": 2.0}  # finite numbers only
    assert [a.path for a in c.list_artifacts(run_id)] == ["eval.json"]
    got = Path(c.download_artifacts(run_id, "eval.json", str(tmp_path / "dl")))
    assert got.read_bytes() == out.read_bytes()


def test_record_run_without_a_source_in_the_store_uses_its_own_experiment(tmp_path):
    uri = _uri(tmp_path)
    a, b = _training_run(uri), _training_run(uri)
    c = MlflowClient(uri)
    for sources in (["0123456789abcdef0123456789abcdef"], [a, b], []):
        run_id = tracking.record_run("lsqbq-analysis", "analyze", params={}, metrics={"rows": 3}, uri=uri,
                                     source_run_ids=sources)
        r = c.get_run(run_id)
        assert c.get_experiment(r.info.experiment_id).name == "lsqbq-analysis"
        assert "mlflow.parentRunId" not in r.data.tags
        assert r.data.tags[tracking.SOURCE_RUNS_TAG] == ",".join(sources)


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_lsqbq_tracking_off_creates_nothing(tmp_path, monkeypatch, value):
    monkeypatch.setenv("LSQBQ_TRACKING", value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _uri(tmp_path))
    assert tracking.record_run("bench", "bench_x", params={"a": 1}, metrics={"m": 1.0}) is None
    assert not (tmp_path / "store").exists()


def test_record_run_not_strict_turns_a_store_error_into_a_warning(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="MLflow logging of 'bench_x' failed"):
        assert tracking.record_run("bench", "bench_x", params={}, metrics={}, strict=False,
                                   uri=f"sqlite:///{blocker / 'sub' / 'mlflow.db'}") is None
    with pytest.raises(ConfigError):
        tracking.record_run("bench", "bench_x", params={}, metrics={}, uri=f"sqlite:///{blocker / 'sub' / 'm.db'}")


# ------------------------------------------------------------------------------------------- attach


def _logged_training(tmp_path: Path, monkeypatch) -> tuple[str, str, Path]:
    """A run that logged checkpoint.pt / metrics.json / config.yaml (project root: tmp_path), and the checkpoint
    directory holding the same files. (An absolute store URI: MLflow caches stores by URI within a process.)"""
    monkeypatch.chdir(tmp_path)
    uri = _uri(tmp_path)
    run = tracking.start_run("lsqbq-test-train", "r", uri=uri)
    ck = tmp_path / "checkpoints" / "resnet" / "ls-1_ls-1" / "s0"
    ck.mkdir(parents=True)
    (ck / "checkpoint.pt").write_bytes(bytes(range(256)) * 64)
    (ck / "metrics.json").write_text(json.dumps({"run_id": run.run_id, "top1": 50.0}) + "\n")
    (ck / "config.yaml").write_text("seed: 0\n")
    for name in ("checkpoint.pt", "metrics.json", "config.yaml"):
        run.log_artifact(ck / name)
    run.end()
    return uri, run.run_id, ck


def _artifact_uri(db: Path, run_id: str) -> str:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()[0]


def test_attach_serves_the_checkpoint_directory_and_drops_the_logged_copies(tmp_path, monkeypatch, capsys):
    uri, run_id, ck = _logged_training(tmp_path, monkeypatch)
    old = tracking._local_path(_artifact_uri(tmp_path / "store" / "mlflow.db", run_id))
    assert old.is_relative_to(tmp_path / "store" / "mlartifacts") and (old / "checkpoint.pt").is_file()
    assert tracking.main(["attach", "--metrics", str(ck / "metrics.json"), "--uri", uri]) == 0
    assert "checkpoints/resnet/ls-1_ls-1/s0" in capsys.readouterr().out
    assert _artifact_uri(tmp_path / "store" / "mlflow.db", run_id) == "checkpoints/resnet/ls-1_ls-1/s0"
    assert not old.exists() and not old.parent.exists()  # mlartifacts/<exp>/<run id>/ is gone: stored once
    c = MlflowClient(uri)
    assert sorted(a.path for a in c.list_artifacts(run_id)) == ["checkpoint.pt", "config.yaml", "metrics.json"]
    got = Path(c.download_artifacts(run_id, "checkpoint.pt", str(tmp_path / "dl")))
    assert got.read_bytes() == (ck / "checkpoint.pt").read_bytes()
    # idempotent, also by --run-id / --dir
    assert tracking.main(["attach", "--run-id", run_id, "--dir", str(ck), "--uri", uri]) == 0
    assert _artifact_uri(tmp_path / "store" / "mlflow.db", run_id) == "checkpoints/resnet/ls-1_ls-1/s0"


def test_attach_outside_the_project_root_is_absolute(tmp_path, monkeypatch):
    uri, run_id, ck = _logged_training(tmp_path, monkeypatch)
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "root").mkdir()
    elsewhere.mkdir()
    for f in ck.iterdir():
        (elsewhere / f.name).write_bytes(f.read_bytes())
    monkeypatch.chdir(tmp_path / "root")
    assert tracking.attach_artifacts(run_id, elsewhere, uri) == str(elsewhere)
    c = MlflowClient(uri)
    assert sorted(a.path for a in c.list_artifacts(run_id)) == ["checkpoint.pt", "config.yaml", "metrics.json"]


def test_attach_errors(tmp_path, monkeypatch):
    uri, run_id, ck = _logged_training(tmp_path, monkeypatch)
    db = tmp_path / "store" / "mlflow.db"
    before = _artifact_uri(db, run_id)
    with pytest.raises(ConfigError, match="no such run"):
        tracking.attach_artifacts("f" * 32, ck, uri)
    with pytest.raises(CheckpointNotFoundError, match="no such directory"):
        tracking.attach_artifacts(run_id, tmp_path / "missing", uri)
    with pytest.raises(ConfigError, match="not a SQLite store"):
        tracking.attach_artifacts(run_id, ck, "http://localhost:5000")
    with pytest.raises(ConfigError, match="does not exist"):
        tracking.attach_artifacts(run_id, ck, "sqlite:///nowhere/mlflow.db")
    (ck / "checkpoint.pt").write_bytes(b"another checkpoint")  # the logged copy would be lost
    with pytest.raises(ConfigError, match="differ"):
        tracking.attach_artifacts(run_id, ck, uri)
    assert _artifact_uri(db, run_id) == before and (tracking._local_path(before) / "checkpoint.pt").is_file()
    (ck / "metrics.json").write_text("{}")
    with pytest.raises(Exception, match="no run_id"):
        tracking.main(["attach", "--metrics", str(ck / "metrics.json"), "--uri", uri])


# ------------------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fmnist_root):  # noqa: F811
    """A seconds-long tracked training: (store URI, checkpoint path, training run id)."""
    from lsqbq.config import from_dict
    from lsqbq.train import run

    tmp = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(tmp, fmnist_root, data={"train_subset": 64, "test_subset": 64, "batch_size": 32},
                      model={"width": 4, "layers": [1]})
    cfg["tracking"]["log_checkpoint"] = False
    final = run(from_dict(cfg))
    return cfg["tracking"]["uri"], tmp / "run" / "checkpoint.pt", final["run_id"]


def test_evaluate_records_a_run_under_the_checkpoints_training(trained, tmp_path, monkeypatch, capsys):
    from lsqbq.evaluate import main as evaluate_main

    uri, ckpt, train_id = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    c = MlflowClient(uri)
    before = {r.info.run_id for r in c.search_runs([c.get_run(train_id).info.experiment_id])}
    out = tmp_path / "e.json"
    assert evaluate_main(["--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    result = json.loads(out.read_text())
    assert json.loads(printed.out) == result and "eval_run_id" not in result  # the JSON is unchanged
    runs = [r for r in c.search_runs([c.get_run(train_id).info.experiment_id]) if r.info.run_id not in before]
    assert len(runs) == 1
    r = runs[0]
    assert r.info.run_id in printed.err and r.info.status == "FINISHED"
    assert r.info.run_name.startswith(f"eval {result['x_quant']}_{result['w_quant']} ")
    assert r.data.tags["mlflow.parentRunId"] == train_id == r.data.tags[tracking.SOURCE_RUNS_TAG]
    assert r.data.tags["data_hash"] == result["data_hash"] and r.data.tags["checkpoint"] == str(ckpt)
    assert r.data.params["checkpoint"] == str(ckpt) and r.data.params["w_quant"] == result["w_quant"]
    for k in ("top1", "top5", "loss", "n"):
        assert r.data.metrics[k] == pytest.approx(result[k])
    assert "final_top1" not in r.data.metrics  # never taken for a training by `lsqbq tables --from-mlflow`
    got = Path(c.download_artifacts(r.info.run_id, "e.json", str(tmp_path / "dl")))
    assert got.read_bytes() == out.read_bytes()

    assert evaluate_main(["--checkpoint", str(ckpt), "--device", "cpu", "--no-track"]) == 0
    assert len(c.search_runs([c.get_run(train_id).info.experiment_id])) == len(before) + 1


def test_analyze_ptq_records_a_run_with_its_files(trained, tmp_path, monkeypatch):
    from lsqbq.analysis.cli import main as analyze_main

    uri, ckpt, train_id = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    c = MlflowClient(uri)
    exp = c.get_run(train_id).info.experiment_id
    before = {r.info.run_id for r in c.search_runs([exp])}
    prefix = tmp_path / "ptq"
    assert analyze_main(["ptq", "--checkpoint", str(ckpt), "--out", str(prefix), "--schemes", "ls-1",
                         "--test-subset", "64"]) == 0
    (r,) = [r for r in c.search_runs([exp]) if r.info.run_id not in before]
    assert r.data.tags["mlflow.parentRunId"] == train_id and r.info.run_name.startswith("analyze ptq ")
    assert r.data.metrics["rows"] == 1 and "top1 ls-1" in r.data.metrics
    assert sorted(a.path for a in c.list_artifacts(r.info.run_id)) == ["ptq.csv", "ptq.md"]
    got = Path(c.download_artifacts(r.info.run_id, "ptq.csv", str(tmp_path / "dl")))
    assert got.read_bytes() == prefix.with_suffix(".csv").read_bytes()


def test_an_analysis_run_record_becomes_the_same_run_once(trained, tmp_path, monkeypatch):
    """--run-record writes the run instead of recording it; `python -m lsqbq.tracking record` records it as the
    analysis itself would have (parent, metrics, artifacts, the computing process's tags), and only once."""
    from lsqbq.analysis.cli import main as analyze_main
    from lsqbq.tracking.cli import main as tracking_main

    uri, ckpt, train_id = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    c = MlflowClient(uri)
    exp = c.get_run(train_id).info.experiment_id
    before = {r.info.run_id for r in c.search_runs([exp])}
    prefix, record = tmp_path / "ptq", tmp_path / "logs" / "ptq.run.json"
    assert analyze_main(["ptq", "--checkpoint", str(ckpt), "--out", str(prefix), "--schemes", "ls-1",
                         "--test-subset", "64", "--run-record", str(record)]) == 0
    assert {r.info.run_id for r in c.search_runs([exp])} == before  # nothing recorded by the analysis
    written = json.loads(record.read_text())
    assert written["tags"]["host"] and written["tags"]["git_commit"] and written["source_run_ids"] == [train_id]

    done = tmp_path / "logs" / "recorded.txt"
    for _ in range(2):  # the second time the record's digest is in the store: skipped
        assert tracking_main(["record", "--uri", uri, "--done", str(done), str(record)]) == 0
    assert done.read_text() == "0 run(s) recorded, 1 already in the store\n"
    (r,) = [r for r in c.search_runs([exp]) if r.info.run_id not in before]
    assert r.data.tags["mlflow.parentRunId"] == train_id and r.info.run_name.startswith("analyze ptq ")
    files = "\n".join(hashlib.sha256(prefix.with_suffix(s).read_bytes()).hexdigest() for s in (".csv", ".md"))
    assert r.data.tags["lsqbq.result_sha256"] == hashlib.sha256(files.encode()).hexdigest()

    # the same analysis again (a rerun of the workflow): the files are the same, so no new run, though the record
    # differs (its tags name the process that wrote it)
    assert analyze_main(["ptq", "--checkpoint", str(ckpt), "--out", str(prefix), "--schemes", "ls-1",
                         "--test-subset", "64", "--run-record", str(record)]) == 0
    written = json.loads(record.read_text())
    written["tags"]["host"] = "another-host"
    record.write_text(json.dumps(written))
    assert tracking_main(["record", "--uri", uri, str(record)]) == 0
    assert len(c.search_runs([exp])) == len(before) + 1
    assert r.data.tags["threads"] == written["tags"]["threads"] and "run_record" not in r.data.params
    assert r.data.metrics["rows"] == 1 and r.data.metrics["top1 ls-1"] == written["metrics"]["top1 ls-1"]
    assert sorted(a.path for a in c.list_artifacts(r.info.run_id)) == ["ptq.csv", "ptq.md"]


def test_a_file_that_is_not_a_run_record_is_named_and_nothing_is_recorded(tmp_path):
    from lsqbq.errors import DataError
    from lsqbq.tracking.deferred import record_run_records

    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({k: [] if k in ("artifacts", "source_run_ids") else {} if k in (
        "params", "metrics", "tags") else "x" for k in ("experiment", "name", "params", "metrics", "artifacts",
                                                       "tags", "source_run_ids")}))
    bad.write_text('{"experiment": "x"}')
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    with pytest.raises(DataError, match=r"bad\.json: not a run record \(missing name, params"):
        record_run_records([good, bad], uri)
    assert not (tmp_path / "m.db").exists()


def test_bitwise_evaluation_records_a_run_with_its_scale_mode(trained, tmp_path, monkeypatch, capsys):
    from lsqbq.kernels.evaluation import main as bitwise_main

    uri, ckpt, train_id = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    c = MlflowClient(uri)
    exp = c.get_run(train_id).info.experiment_id
    before = {r.info.run_id for r in c.search_runs([exp])}
    out = tmp_path / "b.json"
    assert bitwise_main(["--checkpoint", str(ckpt), "--limit", "32", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (r,) = [r for r in c.search_runs([exp]) if r.info.run_id not in before]
    assert r.info.run_id in capsys.readouterr().err and r.info.run_name.startswith("bitwise ")
    assert r.data.tags["mlflow.parentRunId"] == train_id and r.data.tags["scale_mode"] == result["scale_mode"]
    assert r.data.metrics["top1_agreement"] == pytest.approx(result["top1_agreement"]) and r.data.metrics["n"] == 32
    assert [a.path for a in c.list_artifacts(r.info.run_id)] == ["b.json"]


def test_an_attached_run_logging_its_own_directory_files_is_a_no_op(tmp_path, monkeypatch):
    """A finished run resumed after attach (train --resume re-evaluates and logs metrics.json again)."""
    uri, run_id, ck = _logged_training(tmp_path, monkeypatch)
    tracking.attach_artifacts(run_id, ck, uri)
    run = tracking.start_run("ignored", "r", uri=uri, run_id=run_id)
    run.log_artifact(ck / "metrics.json")  # the same file: shutil would raise SameFileError
    other = tmp_path / "notes.txt"
    other.write_text("new")
    run.log_artifact(other)
    run.end()
    assert (ck / "notes.txt").read_text() == "new"
    assert sorted(a.path for a in MlflowClient(uri).list_artifacts(run_id)) == [
        "checkpoint.pt", "config.yaml", "metrics.json", "notes.txt"]


def test_git_dirty_ignores_the_generated_results_but_not_the_code(tmp_path):
    """The workflow rewrites the committed results/ while it runs: that is not a dirty tree; an edited source is."""
    import subprocess

    from lsqbq.tracking import git_info

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "qat.md").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    assert git_info(tmp_path)["git_dirty"] == "false"
    (tmp_path / "results" / "qat.md").write_text("new\n")
    assert git_info(tmp_path)["git_dirty"] == "false"
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_info(tmp_path)["git_dirty"] == "true"
