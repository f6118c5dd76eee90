"""One rule for which MLflow store a workflow run logs into (lsqbq.workflow_store), as the workflow and
`lsqbq tables --from-mlflow --profile` both apply it."""
import os
from pathlib import Path

import pytest
import yaml

from lsqbq.tables.cli import profile_defaults
from lsqbq.workflow_store import default_store, is_published, store_uri

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("change, store", [
    ({}, "sqlite:///mlflow.db"),
    ({"dataset_tag": "mine"}, "sqlite:///mlruns-profiles/default-mine/mlflow.db"),
    ({"data_root": "elsewhere"}, "sqlite:///mlruns-profiles/default-fashion-mnist/mlflow.db"),
    ({"profile": "imagefolder-cpu", "dataset": "imagefolder", "dataset_tag": "my-images-cpu"},
     "sqlite:///mlruns-profiles/imagefolder-cpu-my-images-cpu/mlflow.db"),
    ({"output_root": ".other"}, "sqlite:///.other/mlruns-profiles/default-fashion-mnist/mlflow.db"),
])
def test_only_the_published_profile_on_its_data_gets_the_published_store(change, store, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = {**PUBLISHED, **change}
    assert is_published(cfg, PUBLISHED) == (not change)
    assert default_store(cfg, PUBLISHED) == store == store_uri(cfg, PUBLISHED)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert store_uri(cfg, PUBLISHED) == "sqlite:///elsewhere.db"  # the environment wins over the default
    assert store_uri({**cfg, "mlflow": {"uri": "sqlite:///x.db"}}, PUBLISHED) == "sqlite:///x.db"  # then config


def test_tables_from_mlflow_finds_each_profiles_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(ROOT)
    assert profile_defaults("config/config.yaml")["tracking_uri"] == "sqlite:///mlflow.db"
    assert profile_defaults("config/test.yaml")["tracking_uri"] == "sqlite:///.test/mlflow.db"  # named in it
    assert profile_defaults("config/imagefolder-cpu.yaml")["tracking_uri"] == \
        "sqlite:///mlruns-profiles/imagefolder-cpu-my-images-cpu/mlflow.db"
