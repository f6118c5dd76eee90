"""Datasets and loaders: ``fashion-mnist`` (default), ``mnist``, ``cifar10``, ``cifar100``, ``imagefolder``.

Python::

    train_loader, test_loader = lsqbq.data.build_loaders(cfg)   # cfg: lsqbq.config.Config
    train_loader.info, train_loader.data_hash                   # DatasetInfo, sha256 of the data

CLI::

    lsqbq data prepare fashion-mnist --root data/fashion-mnist  # copy + verify, print the data hash
    lsqbq data hash cifar10 --root data/cifar10                 # verify an existing copy, print its hash

Loaders are deterministic: the shuffling order is a function of (seed, epoch) through a
DistributedSampler (also with one process, so one process and N processes see the same global
batches), and in-memory augmentation is a function of (seed, epoch, sample index). Call
``set_epoch(loader, epoch)`` before each epoch. Missing files raise :class:`DataNotFoundError`, corrupt or
malformed ones :class:`DataError` (both from :mod:`lsqbq.errors`), naming the file and how to obtain the data.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset

from . import cifar, idx, imagefolder
from ..errors import ConfigError
from ._common import ArrayDataset, DataError, DataNotFoundError, DatasetInfo, batched_collate, subset_indices

__all__ = ["DATASETS", "DataError", "DataNotFoundError", "DatasetInfo", "build_datasets", "build_loaders",
           "dataset_info", "set_epoch", "prepare", "main"]

DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder")


def dataset_info(name: str, root: str | None = None, image_size: int | None = None) -> DatasetInfo:
    """Classes, channels, image size and normalisation of a dataset (imagefolder needs ``root``)."""
    if name == "fashion-mnist":
        return idx.FASHION_INFO
    if name == "mnist":
        return idx.MNIST_INFO
    if name in cifar.INFO:
        return cifar.INFO[name]
    if name == "imagefolder":
        if root is None:
            raise ConfigError("data.root: imagefolder needs the root to count classes; set data.root")
        train = Path(root) / "train"
        if not train.is_dir():
            raise DataNotFoundError(f"imagefolder: {train} not found; {imagefolder.how_to_get(Path(root))}")
        classes = sorted(p.name for p in train.iterdir() if p.is_dir())
        return imagefolder.info(len(classes), image_size or 224)
    raise ConfigError(f"data.name: unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def build_datasets(cfg, seed: int | None = None):
    """-> (train dataset, test dataset, DatasetInfo, data hash) for ``cfg.data``."""
    d = cfg.data
    seed = cfg.seed if seed is None else seed
    if d.name in ("fashion-mnist", "mnist"):
        arrays, digest = idx.load(d.name, d.root)
        info = dataset_info(d.name)
    elif d.name in ("cifar10", "cifar100"):
        arrays, digest = cifar.load(d.name, d.root, download=d.download)
        info = dataset_info(d.name)
    elif d.name == "imagefolder":
        train, test, info, digest = imagefolder.build(d.root, d.image_size or 224, d.augment)
        return _subset(train, d.train_subset), _subset(test, d.test_subset), info, digest
    else:
        raise ConfigError(f"data.name: unknown dataset {d.name!r}; choose one of {', '.join(DATASETS)}")
    tr = subset_indices(len(arrays["train_labels"]), d.train_subset)
    te = subset_indices(len(arrays["test_labels"]), d.test_subset)
    pick = lambda a, i: a if i is None else a[i]  # noqa: E731
    train = ArrayDataset(pick(arrays["train_images"], tr), pick(arrays["train_labels"], tr), info, train=True,
                         augment=d.augment, seed=seed)
    test = ArrayDataset(pick(arrays["test_images"], te), pick(arrays["test_labels"], te), info, train=False)
    return train, test, info, digest


def _subset(ds, size):
    idx_ = subset_indices(len(ds), size)
    return ds if idx_ is None else Subset(ds, idx_.tolist())


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...`` in order: an evaluation shard without padding duplicates."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loaders(cfg, rank: int = 0, world: int = 1) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders for ``cfg`` (per-rank batch = ``data.batch_size // world``).

    Both loaders carry ``.info`` (DatasetInfo) and ``.data_hash``.
    """
    d = cfg.data
    if d.batch_size % world:
        raise ConfigError(f"data.batch_size: {d.batch_size} is not divisible by the {world} distributed ranks; "
                          f"choose a multiple of {world}")
    train, test, info, digest = build_datasets(cfg)
    array_based = isinstance(train, ArrayDataset)
    collate = batched_collate if array_based else None
    g = torch.Generator().manual_seed(cfg.seed)
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=False)
    common = dict(num_workers=d.workers, collate_fn=collate, pin_memory=torch.cuda.is_available(),
                  persistent_workers=False)
    train_loader = DataLoader(train, batch_size=d.batch_size // world, sampler=sampler, generator=g,
                              drop_last=False, **common)
    test_loader = DataLoader(test, batch_size=d.eval_batch_size, sampler=ShardSampler(len(test), rank, world), **common)
    for loader in (train_loader, test_loader):
        loader.info, loader.data_hash = info, digest
    return train_loader, test_loader


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Select the shuffling order and augmentation of ``epoch`` (0-based)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    ds = loader.dataset
    while isinstance(ds, Subset):
        ds = ds.dataset
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(int(loader.sampler.seed if hasattr(loader.sampler, "seed") else 0) + epoch)


def prepare(name: str, root: str | Path, source: str | Path | None = None) -> str:
    """Fetch (or copy) and verify ``name`` under ``root``; returns the data hash."""
    if name in ("fashion-mnist", "mnist"):
        return idx.prepare(name, root, source)
    if name in ("cifar10", "cifar100"):
        if source is not None:
            _copy_cifar(name, Path(root), Path(source))
        return cifar.load(name, root, download=True)[1]
    if name == "imagefolder":
        return imagefolder.build(root)[3]
    raise ConfigError(f"data.name: unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _copy_cifar(name: str, root: Path, source: Path) -> None:
    """Extract the official archive found in ``source`` (md5-checked) into ``root``, or copy its batch folder."""
    import shutil

    archive, folder = source / cifar.ARCHIVE_MD5[name][0], cifar.LAYOUT[name][0]
    if archive.is_file():
        cifar.extract_archive(name, root, archive)
    elif (source / folder).is_dir():
        cifar.load(name, source)  # verify before copying: a corrupt source leaves nothing behind in root
        shutil.copytree(source / folder, root / folder, dirs_exist_ok=True)
    else:
        raise DataNotFoundError(f"{name}: neither {archive} nor {source / folder}/ exists; "
                                f"{cifar.how_to_get(name, root)}")


def data_hash(name: str, root: str | Path) -> str:
    if name in ("fashion-mnist", "mnist"):
        return idx.load(name, root)[1]
    if name in ("cifar10", "cifar100"):
        return cifar.load(name, root)[1]
    if name == "imagefolder":
        return imagefolder.build(root)[3]
    raise ConfigError(f"data.name: unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lsqbq data", description="Prepare and verify datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="copy or download a dataset into ROOT and verify it; prints the data hash")
    p.add_argument("name", choices=DATASETS, help="dataset")
    p.add_argument("--root", required=True, help="dataset directory, e.g. data/fashion-mnist")
    p.add_argument("--source", default=None,
                   help="directory holding the official files to copy: the four IDX .gz files, or the CIFAR "
                        "archive or its extracted folder (optional)")
    h = sub.add_parser("hash", help="verify an existing copy and print its data hash")
    h.add_argument("name", choices=DATASETS, help="dataset")
    h.add_argument("--root", required=True, help="dataset directory, e.g. data/fashion-mnist")
    args = parser.parse_args(argv)
    # errors propagate: the command line (lsqbq.cli) prints them as one line with the DataError exit code
    if args.command == "prepare":
        digest = prepare(args.name, args.root, args.source)
    else:
        digest = data_hash(args.name, args.root)
    print(digest)
    return 0
