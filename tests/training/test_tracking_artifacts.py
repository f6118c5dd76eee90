"""MLflow artifacts travel with the store: relative artifact locations, downloadable after a move."""
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import pytest

LOG = textwrap.dedent("""
    import sys
    from pathlib import Path
    from lsqbq import tracking
    Path("hello.txt").write_text("hello")
    run = tracking.start_run("exp", "r", uri="sqlite:///store/mlflow.db")
    run.log_artifact("hello.txt")
    run.end()
    print(run.run_id)
""")
FETCH = textwrap.dedent("""
    import sys
    from mlflow.tracking import MlflowClient
    c = MlflowClient(tracking_uri="sqlite:///store/mlflow.db")
    path = c.download_artifacts(sys.argv[1], "hello.txt", dst_path="out")
    print(open(path).read())
""")


def _py(code, cwd, *args):
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, check=True,
                          timeout=300).stdout.strip().splitlines()[-1]


def test_a_moved_store_still_serves_its_artifacts(tmp_path):
    """Train on machine A, `dvc pull` on machine B: the experiment's artifact location is relative."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    run_id = _py(LOG, a)
    with sqlite3.connect(a / "store" / "mlflow.db") as con:
        (loc,) = con.execute("SELECT artifact_location FROM experiments WHERE name = 'exp'").fetchone()
    assert loc.startswith("store/mlartifacts/") and str(tmp_path) not in loc
    b.mkdir()
    shutil.copytree(a / "store", b / "store")
    shutil.rmtree(a)  # nothing of the first machine is left
    assert _py(FETCH, b, run_id) == "hello"


def test_relocate_rewrites_absolute_locations_of_an_older_store(tmp_path):
    run_id = _py(LOG, tmp_path)
    db = tmp_path / "store" / "mlflow.db"
    absolute = (tmp_path / "store" / "mlartifacts").as_uri()
    with sqlite3.connect(db) as con:  # as an older store wrote them
        con.execute("UPDATE experiments SET artifact_location = ? || '/' || experiment_id WHERE name = 'exp'",
                    (absolute,))
        con.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, 'store/mlartifacts', ?)", (absolute,))
    out = subprocess.run([sys.executable, "-m", "lsqbq.tracking", "relocate", "--uri", "sqlite:///store/mlflow.db"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "relocated 1 experiments and 1 runs" in out
    with sqlite3.connect(db) as con:
        (uri,) = con.execute("SELECT artifact_uri FROM runs").fetchone()
    assert uri == f"store/mlartifacts/{uri.split('/')[2]}/{run_id}/artifacts"
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copytree(tmp_path / "store", moved / "store")
    assert _py(FETCH, moved, run_id) == "hello"


def test_ad_hoc_runs_go_to_the_local_store_not_the_published_one(tmp_path, monkeypatch):
    from lsqbq import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_uri() == "sqlite:///mlruns-local/mlflow.db"
    assert tracking.resolve_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
