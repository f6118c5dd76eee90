"""Fixtures for the training tests: the real Fashion-MNIST files and small run configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

PROJECT = Path(__file__).resolve().parents[2]


def _from_dvc_cache(dest: Path) -> bool:
    """Copy the four Fashion-MNIST files out of the in-repo DVC cache (the ``fashion_mnist`` stage of dvc.lock)."""
    import json
    import shutil

    import yaml

    lock, cache = PROJECT / "dvc.lock", PROJECT / "dvc-store" / "files" / "md5"
    if not lock.is_file():
        return False
    outs = yaml.safe_load(lock.read_text())["stages"].get("fashion_mnist", {}).get("outs", [])
    md5 = next((o["md5"] for o in outs if o.get("path") == "data/fashion-mnist"), None)
    listing = cache / md5[:2] / md5[2:] if md5 else None
    if listing is None or not listing.is_file():
        return False
    entries = json.loads(listing.read_text())
    blobs = [(cache / e["md5"][:2] / e["md5"][2:], dest / e["relpath"]) for e in entries]
    if not all(src.is_file() for src, _ in blobs):
        return False
    for src, dst in blobs:
        shutil.copyfile(src, dst)
    return True


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory) -> str:
    """A verified Fashion-MNIST directory: the project's data/ copy, else the in-repo DVC cache, else the Debian
    package."""
    from lsqbq.data import DataError, idx

    local = PROJECT / "data" / "fashion-mnist"
    try:
        idx.load("fashion-mnist", local)
        return str(local)
    except DataError:
        pass
    root = tmp_path_factory.mktemp("fashion-mnist")
    if _from_dvc_cache(root):
        idx.load("fashion-mnist", root)
        return str(root)
    if not idx.DEBIAN_FASHION.is_dir():
        pytest.skip("Fashion-MNIST not available (run `lsqbq data prepare fashion-mnist --root data/fashion-mnist`)")
    idx.prepare("fashion-mnist", root)
    return str(root)


def tiny_config(tmp_path: Path, fmnist_root: str, **sections) -> dict:
    """A seconds-long run: 512 training / 256 test images, a width-4 ResNet, tracking in tmp_path."""
    cfg = {
        "seed": 0, "epochs": 1, "threads": 1, "progress": "off",
        "data": {"name": "fashion-mnist", "root": fmnist_root, "train_subset": 512, "test_subset": 256,
                 "batch_size": 64, "eval_batch_size": 256},
        "model": {"name": "resnet_small", "width": 4, "layers": [1, 1], "stem_stride": 2,
                  "x_quant": "ls-1", "w_quant": "ls-1", "clamp": 2.0},
        "optim": {"name": "adam", "lr": 0.01},
        "schedule": {"name": "cosine"},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "test"},
        "output": {"dir": str(tmp_path / "run")},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg
