"""ImageNet-style folders: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

Augmentation as in the paper's ImageNet recipe: train RandomResizedCrop(size) + horizontal flip +
ColorJitter(0.4, 0.4, 0.4); eval Resize(size * 256 / 224) + CenterCrop(size); ImageNet normalisation.
The random transforms draw from torch's generator, which the DataLoader seeds per worker from the run
seed, so a run is repeatable for a fixed worker count. The data hash covers the sorted list of
(relative path, size) pairs, not the pixels (hashing a 150 GB tree per run is not worth it).
Images are decoded to 8-bit RGB from any Pillow mode (:mod:`lsqbq.data.images`: 16-bit scaled, alpha
composited onto black) when a batch is built; an empty, truncated, corrupt, oversized (decompression bomb) or
unsupported image raises :class:`DataError` naming the file. The listing (:mod:`lsqbq.data.scan`) refuses
links that leave the dataset, symlink loops and special files (pipes, devices, sockets) before any training
starts, as it does empty files.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ._common import DataError, DataNotFoundError, DatasetInfo, subset_indices
from .images import load_image
from .registry import DatasetSpec, register_dataset
from .scan import scan_split

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def info(num_classes: int, size: int) -> DatasetInfo:
    return DatasetInfo(num_classes=num_classes, in_chans=3, image_size=size, mean=MEAN, std=STD)


def how_to_get(root: Path) -> str:
    return f"put the images in {root}/train/<class>/ and {root}/val/<class>/ (one folder per class), or `dvc pull`"


def _folder_class():
    """The ImageFolder subclass, created on first use (torchvision loads lazily) and kept as a module attribute
    so that DataLoader workers can unpickle it by name."""
    if "SafeImageFolder" in globals():
        return globals()["SafeImageFolder"]
    import torchvision

    class SafeImageFolder(torchvision.datasets.ImageFolder):
        """torchvision's ImageFolder listed by :func:`lsqbq.data.scan.scan_split` (no links out of the dataset,
        no loops, no special files) and decoded by :func:`lsqbq.data.images.load_image`."""

        def __init__(self, split_dir: Path, transform, allowed: tuple[Path, ...]):
            self.allowed = allowed
            super().__init__(str(split_dir), transform=transform, loader=load_image)

        def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            return scan_split(Path(directory), class_to_idx, self.allowed)

    SafeImageFolder.__qualname__ = "SafeImageFolder"
    globals()["SafeImageFolder"] = SafeImageFolder
    return SafeImageFolder


def __getattr__(name: str):
    if name == "SafeImageFolder":
        return _folder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build(root: str | Path, size: int = 224, augment: bool = True):
    """-> (train ImageFolder, val ImageFolder, DatasetInfo, data hash)."""
    from torchvision import transforms as T

    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataNotFoundError(f"imagefolder: {root / split} not found; {how_to_get(root)}")
    normalize = T.Normalize(MEAN, STD)
    if augment:
        train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ColorJitter(0.4, 0.4, 0.4),
                              T.ToTensor(), normalize])
    else:
        train_tf = T.Compose([T.Resize(size * 256 // 224), T.CenterCrop(size), T.ToTensor(), normalize])
    eval_tf = T.Compose([T.Resize(size * 256 // 224), T.CenterCrop(size), T.ToTensor(), normalize])
    allowed = (root.resolve(),) + tuple((root / split).resolve() for split in ("train", "val"))
    try:
        folder = _folder_class()
        train = folder(root / "train", train_tf, allowed)
        val = folder(root / "val", eval_tf, allowed)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataNotFoundError(f"imagefolder: {e}; {how_to_get(root)}") from None
    if train.classes != val.classes:
        only = sorted(set(train.classes) ^ set(val.classes))
        raise DataError(f"imagefolder: class folders of {root / 'train'} and {root / 'val'} differ "
                        f"({len(train.classes)} vs {len(val.classes)} classes; not in both: {only[:5]}); "
                        f"use the same class folders in both")
    h = hashlib.sha256()
    for split, ds in (("train", train), ("val", val)):
        for path, label in ds.samples:
            p = Path(path)
            nbytes = p.stat().st_size
            if nbytes == 0:
                raise DataError(f"{p}: the image file is empty (0 bytes); replace or delete it")
            h.update(f"{split}/{p.relative_to(root / split)}:{nbytes}:{label}\n".encode())
    return train, val, info(len(train.classes), size), h.hexdigest()


def count_info(root, image_size: int | None = None) -> DatasetInfo:
    """DatasetInfo of the folder at ``root``: one class per sub-folder of ``root/train``."""
    from ..errors import ConfigError

    if root is None:
        raise ConfigError("data.root: imagefolder needs the root to count classes; set data.root")
    train = Path(root) / "train"
    if not train.is_dir():
        raise DataNotFoundError(f"imagefolder: {train} not found; {how_to_get(Path(root))}")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    return info(len(classes), image_size or 224)


def _subset(ds, size):
    from torch.utils.data import Subset

    idx = subset_indices(len(ds), size)
    return ds if idx is None else Subset(ds, idx.tolist())


def _build(d, seed: int):
    train, test, info_, digest = build(d.root, d.image_size or 224, d.augment)
    return _subset(train, d.train_subset), _subset(test, d.test_subset), info_, digest


register_dataset(DatasetSpec(
    name="imagefolder", num_classes=None, in_chans=3, image_size=None, stem="imagenet", info=count_info,
    build=_build, prepare=lambda root, source=None: build(root)[3], hash=lambda root: build(root)[3]))
