"""ImageNet-style folders: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

Augmentation as in the paper's ImageNet recipe: train RandomResizedCrop(size) + horizontal flip +
ColorJitter(0.4, 0.4, 0.4); eval Resize(size * 256 / 224) + CenterCrop(size); ImageNet normalisation.
The random transforms draw from torch's generator, which the DataLoader seeds per worker from the run
seed, so a run is repeatable for a fixed worker count. The data hash covers the sorted list of
(relative path, size) pairs, not the pixels (hashing a 150 GB tree per run is not worth it).
Images are decoded when a batch is built; an empty, truncated or corrupt image raises :class:`DataError`
naming the file (empty files are reported before any training starts).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ._common import DataError, DataNotFoundError, DatasetInfo

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def info(num_classes: int, size: int) -> DatasetInfo:
    return DatasetInfo(num_classes=num_classes, in_chans=3, image_size=size, mean=MEAN, std=STD)


def how_to_get(root: Path) -> str:
    return f"put the images in {root}/train/<class>/ and {root}/val/<class>/ (one folder per class), or `dvc pull`"


def load_image(path: str):
    """Decode ``path`` as RGB with PIL (fully, so truncation shows here); a bad file -> :class:`DataError`."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports bad files as OSError (UnidentifiedImageError)
        nbytes = Path(path).stat().st_size if Path(path).is_file() else 0
        raise DataError(f"{path}: cannot decode the image ({nbytes} bytes; {type(e).__name__}: {e}); the file is "
                        f"empty, truncated or not an image, replace or delete it") from None


def build(root: str | Path, size: int = 224, augment: bool = True):
    """-> (train ImageFolder, val ImageFolder, DatasetInfo, data hash)."""
    import torchvision
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
    try:
        train = torchvision.datasets.ImageFolder(str(root / "train"), transform=train_tf, loader=load_image)
        val = torchvision.datasets.ImageFolder(str(root / "val"), transform=eval_tf, loader=load_image)
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
