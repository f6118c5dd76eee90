"""Shared pieces of the dataset modules: in-memory image arrays, batched augmentation, hashing, errors.

``DataError`` (corrupt or malformed files) and ``DataNotFoundError`` (missing files) come from
:mod:`lsqbq.errors`; their messages name the file and how to obtain the data.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError, DataNotFoundError

__all__ = ["DataError", "DataNotFoundError", "DatasetInfo", "ArrayDataset", "array_hash", "sample_hash",
           "subset_indices", "batched_collate", "file_md5"]


def file_md5(path) -> str:
    """md5 of a file's bytes (the checksum torchvision and the dataset authors publish)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 0          # random-crop padding of the training augmentation (0: no crop)
    flip: bool = False    # random horizontal flip in the training augmentation


def array_hash(*arrays: np.ndarray) -> str:
    """sha256 over shape, dtype and bytes of each array, in order (the dataset's content hash)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


_M64 = (1 << 64) - 1


def sample_hash(index: Tensor, epoch: int, seed: int) -> Tensor:
    """SplitMix64-style integer hash of (seed, epoch, sample index) -> int64 per sample.

    Per-sample random augmentation is a pure function of these three numbers, so it does not depend on
    worker count, distributed rank, batch composition or the generator state (resume is exact).
    """
    x = index.to(torch.int64) * 0x9E3779B1 + (epoch * 1_000_003 + seed * 7_919 + 1)
    for mult in (0x5EB1BD16, 0x1CE4E5B9, 0x133111EB):  # 31-bit multipliers keep products inside int64
        x = x ^ (x >> 17)
        x = (x * mult) & 0x7FFFFFFFFFFFFFFF
    return x ^ (x >> 29)


def subset_indices(n: int, size: int | None, seed: int = 0) -> np.ndarray | None:
    """A fixed random subset of ``size`` out of ``n`` (sorted; independent of the run seed); None = all."""
    if size is None or size >= n:
        return None
    g = torch.Generator().manual_seed(seed)
    return np.sort(torch.randperm(n, generator=g)[:size].numpy())


class ArrayDataset(Dataset):
    """Images held in memory as uint8 ``(N, H, W, C)`` with int64 labels ``(N,)``.

    ``__getitems__`` serves a whole batch at once (vectorised crop/flip/normalise), which is what the
    DataLoader calls; a batch comes back already stacked as ``x: (B, C, H, W) float32, y: (B,)``.
    Training augmentation: zero-pad by ``info.pad`` and crop back at a random offset, random horizontal
    flip, both drawn from :func:`sample_hash` of (seed, epoch, index). Call :meth:`set_epoch` each epoch.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, info: DatasetInfo, train: bool,
                 augment: bool = False, seed: int = 0):
        if images.ndim == 3:
            images = images[..., None]
        assert images.ndim == 4 and images.dtype == np.uint8, (images.shape, images.dtype)
        assert len(images) == len(labels)
        images = np.ascontiguousarray(images)
        if not images.flags.writeable:
            images = images.copy()
        self.images = torch.from_numpy(images)  # (N, H, W, C) uint8
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.info, self.train, self.augment, self.seed, self.epoch = info, train, augment and train, seed, 0
        self._mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x = self.images[idx].permute(0, 3, 1, 2).float().div_(255.0)  # (B, C, H, W) in [0, 1]
        if self.augment:
            x = self._augment(x, idx)
        x = (x - self._mean) / self._std
        return x, self.labels[idx]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def _augment(self, x: Tensor, idx: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = sample_hash(idx, self.epoch, self.seed)
        p = self.info.pad
        if p > 0:
            span = 2 * p + 1
            oy, ox = h % span, (h // span) % span                               # (B,) crop offsets
            padded = torch.nn.functional.pad(x, (p, p, p, p))                   # (B, C, H+2p, W+2p)
            rows = oy[:, None] + torch.arange(H)                                # (B, H)
            cols = ox[:, None] + torch.arange(W)                                # (B, W)
            b = torch.arange(B)[:, None, None]
            x = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
            x = x.permute(0, 3, 1, 2)
        if self.info.flip:
            flip = ((h >> 32) & 1).bool()
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x.contiguous()


def batched_collate(batch):
    """Collate for datasets whose ``__getitems__`` already returns a stacked ``(x, y)``."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], Tensor):
        return batch
    return torch.utils.data.default_collate(batch)
