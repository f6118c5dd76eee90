"""Dataset registry: the one owner of the dataset names and what each one is.

A :class:`DatasetSpec` holds the properties the rest of the project asks about (classes, channels, image
size, the ResNet stem that suits it) and the reader functions (build the train/test datasets, prepare a copy,
hash an existing one). ``get_dataset(name)`` is the only place a name is looked up; an unknown one raises
:class:`~lsqbq.errors.ConfigError` listing ``list_datasets()``. The config model, the ``lsqbq data`` command and
the workflow schema take their names from here (a test checks the schema's enum)::

    spec = get_dataset("cifar10")
    spec.num_classes, spec.in_chans, spec.image_size, spec.stem     # 10, 3, 32, "cifar"
    train, test, info, digest = spec.build(cfg.data, seed)

A new dataset is a reader module plus one ``register_dataset(DatasetSpec(...))``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from ..errors import ConfigError
from ._common import ArrayDataset, DatasetInfo, subset_indices

__all__ = ["DatasetSpec", "register_dataset", "get_dataset", "list_datasets"]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its properties and readers.

    Args:
        name: the config / command-line name (``data.name``).
        num_classes: classes (None: one per class folder, counted at load time).
        in_chans: image channels fed to the model.
        image_size: side of the square input (None: ``data.image_size``, default 224).
        stem: the ResNet stem that suits the image size (``cifar`` for small images, ``imagenet`` otherwise).
        info: ``(root, image_size) -> DatasetInfo``.
        build: ``(data config, seed) -> (train dataset, test dataset, DatasetInfo, data hash)``.
        prepare: ``(root, source or None) -> data hash`` after fetching / copying and verifying.
        hash: ``root -> data hash`` of an existing, verified copy.
    """

    name: str
    num_classes: int | None
    in_chans: int
    image_size: int | None
    stem: Literal["cifar", "imagenet"]
    info: Callable[[Any, Any], DatasetInfo]
    build: Callable[[Any, int], tuple]
    prepare: Callable[[Path, Path | None], str]
    hash: Callable[[Path], str]


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_datasets() -> list[str]:
    """Registered dataset names, in registration order."""
    return list(_REGISTRY)


def get_dataset(name: str) -> DatasetSpec:
    """The spec of ``name``; an unknown name raises :class:`ConfigError` listing the registered ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"data.name: unknown dataset {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def array_datasets(arrays: dict, info: DatasetInfo, d, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """In-memory train / test datasets from ``{train,test}_{images,labels}`` arrays, subset as ``d`` asks."""
    tr = subset_indices(len(arrays["train_labels"]), d.train_subset)
    te = subset_indices(len(arrays["test_labels"]), d.test_subset)
    pick = lambda a, i: a if i is None else a[i]  # noqa: E731
    train = ArrayDataset(pick(arrays["train_images"], tr), pick(arrays["train_labels"], tr), info, train=True,
                         augment=d.augment, seed=seed)
    test = ArrayDataset(pick(arrays["test_images"], te), pick(arrays["test_labels"], te), info, train=False)
    return train, test
