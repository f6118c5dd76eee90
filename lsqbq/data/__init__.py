"""Datasets and loaders: ``fashion-mnist`` (default), ``mnist``, ``cifar10``, ``cifar100``, ``imagefolder``.

Python::

    train_loader, test_loader = lsqbq.data.build_loaders(cfg)   # cfg: lsqbq.config.Config
    train_loader.info, train_loader.data_hash                   # DatasetInfo, sha256 of the data

CLI::

    lsqbq data prepare fashion-mnist --root data/fashion-mnist  # copy + verify, print the data hash
    lsqbq data hash cifar10 --root data/cifar10                 # verify an existing copy, print its hash

Each name is registered once in :mod:`lsqbq.data.registry` (``get_dataset(name)`` -> a ``DatasetSpec`` with its
classes, channels, image size, ResNet stem and reader functions; ``list_datasets()``); the functions below and the
config ask it, never a name by hand.

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

from . import idx, cifar, imagefolder  # noqa: I001 - registration order is the order of list_datasets()
from ..errors import ConfigError
from ._common import ArrayDataset, DataError, DataNotFoundError, DatasetInfo, batched_collate
from .registry import DatasetSpec, get_dataset, list_datasets, register_dataset

__all__ = ["DATASETS", "DataError", "DataNotFoundError", "DatasetInfo", "DatasetSpec", "build_datasets",
           "build_loaders", "dataset_info", "get_dataset", "list_datasets", "register_dataset", "set_epoch",
           "prepare", "data_hash", "main"]

DATASETS = tuple(list_datasets())


def dataset_info(name: str, root: str | None = None, image_size: int | None = None) -> DatasetInfo:
    """Classes, channels, image size and normalisation of a dataset (imagefolder needs ``root``)."""
    return get_dataset(name).info(root, image_size)


def build_datasets(cfg, seed: int | None = None):
    """-> (train dataset, test dataset, DatasetInfo, data hash) for ``cfg.data``."""
    return get_dataset(cfg.data.name).build(cfg.data, cfg.seed if seed is None else seed)


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
    """Fetch (or copy from ``source``) and verify ``name`` under ``root``; returns the data hash."""
    return get_dataset(name).prepare(Path(root), None if source is None else Path(source))


def data_hash(name: str, root: str | Path) -> str:
    """Verify that ``root`` holds the dataset ``name`` (known checksums, shapes, class counts); its data hash."""
    return get_dataset(name).hash(Path(root))


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
