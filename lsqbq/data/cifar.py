"""CIFAR-10 / CIFAR-100 in torchvision's "python version" layout.

``root/cifar-10-batches-py/{data_batch_1..5, test_batch}`` (key ``labels``) and
``root/cifar-100-python/{train, test}`` (key ``fine_labels``): pickled dicts whose ``data`` is
``(N, 3072)`` uint8, channel-major (R plane, G plane, B plane of 32x32). Shapes, label ranges and
the presence of every batch are checked; the data hash covers the decoded arrays.
"""
from __future__ import annotations

import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np

from ._common import DataError, DatasetInfo, array_hash

LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}
INFO = {
    "cifar10": DatasetInfo(10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), pad=4, flip=True),
    "cifar100": DatasetInfo(100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), pad=4, flip=True),
}


def how_to_get(name: str, root: Path) -> str:
    return (f"set data.download: true where the network allows (torchvision writes {root}/{LAYOUT[name][0]}/), "
            f"or copy the extracted python-version archive there, or `dvc pull`")


def _read_batches(name: str, root: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    folder, _, _, label_key, num_classes = LAYOUT[name]
    images, labels = [], []
    for fname in files:
        path = root / folder / fname
        if not path.is_file():
            raise DataError(f"{name}: {path} not found; {how_to_get(name, root)}")
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8)
            lab = np.asarray(entry[label_key], dtype=np.int64)
        except Exception as e:
            raise DataError(f"{path}: cannot decode a CIFAR batch ({type(e).__name__}: {e}); the file is corrupt") from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise DataError(f"{path}: data {data.shape} / labels {lab.shape} are not (N, 3072) / (N,)")
        if len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
            raise DataError(f"{path}: labels outside [0, {num_classes})")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # (N, 32, 32, 3)
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)


@lru_cache(maxsize=2)
def _load_cached(name: str, root: str, stamp: tuple):
    root_p = Path(root)
    _, train_files, test_files, _, _ = LAYOUT[name]
    xtr, ytr = _read_batches(name, root_p, train_files)
    xte, yte = _read_batches(name, root_p, test_files)
    arrays = {"train_images": xtr, "train_labels": ytr, "test_images": xte, "test_labels": yte}
    return arrays, array_hash(xtr, ytr, xte, yte)


def load(name: str, root: str | Path, download: bool = False):
    """-> ({train_images (N,32,32,3) uint8, train_labels (N,), test_images, test_labels}, data hash)."""
    root = Path(root)
    folder, train_files, test_files, _, _ = LAYOUT[name]
    paths = [root / folder / f for f in train_files + test_files]
    if download and not all(p.is_file() for p in paths):
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        try:
            cls(str(root), train=True, download=True)
        except Exception as e:
            raise DataError(f"{name}: download into {root} failed ({e}); {how_to_get(name, root)}") from None
    for p in paths:
        if not p.is_file():
            raise DataError(f"{name}: {p} not found; {how_to_get(name, root)}")
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    return _load_cached(name, str(root.resolve()), stamp)
