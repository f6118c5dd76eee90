"""Datasets: verification, clear errors, on-disk stand-ins for CIFAR/ImageFolder, deterministic loaders."""
from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lsqbq.config import from_dict
from lsqbq.errors import ConfigError
from lsqbq.data import DataError, build_loaders, idx, main, set_epoch
from lsqbq.data._common import ArrayDataset, DatasetInfo, array_hash

FMNIST_HASH = "51bad0352284eacba9865b8317af0b9281dae4f52f7f667217f2ee65f7069790"


def test_fashion_mnist_arrays_and_hash(fmnist_root):
    arrays, digest = idx.load("fashion-mnist", fmnist_root)
    assert arrays["train_images"].shape == (60000, 28, 28) and arrays["test_images"].shape == (10000, 28, 28)
    assert np.bincount(arrays["train_labels"]).tolist() == [6000] * 10
    assert np.bincount(arrays["test_labels"]).tolist() == [1000] * 10
    assert digest == FMNIST_HASH
    assert digest == array_hash(arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                                arrays["test_labels"])


def test_prepare_cli_copies_and_prints_hash(fmnist_root, tmp_path, capsys):
    assert main(["prepare", "fashion-mnist", "--root", str(tmp_path / "fm"), "--source", fmnist_root]) == 0
    assert capsys.readouterr().out.strip() == FMNIST_HASH
    assert sorted(p.name for p in (tmp_path / "fm").iterdir()) == sorted(f + ".gz" for f in idx.FILES.values())


def test_data_hash_checks_the_dataset_named(fmnist_root, tmp_path, capsys):
    """The Fashion-MNIST files are not MNIST: ``data hash mnist`` on them exits 3 naming the first file."""
    from lsqbq import cli

    capsys.readouterr()
    assert cli.main(["data", "hash", "mnist", "--root", fmnist_root]) == 3
    first = idx.find_file(Path(fmnist_root), "mnist", idx.FILES["train_images"])
    assert capsys.readouterr().err.strip() == (
        f"lsqbq data: {first}: this is the Fashion-MNIST file train-images-idx3-ubyte (its sha256 is the official "
        f"one), not mnist; use the dataset name fashion-mnist for {Path(fmnist_root).resolve()}, or point mnist at "
        f"the MNIST files")
    assert cli.main(["data", "hash", "fashion-mnist", "--root", fmnist_root]) == 0
    assert capsys.readouterr().out.strip() == FMNIST_HASH


def test_registry_properties_agree_with_the_readers(tmp_path):
    """Each registered dataset's classes / channels / size are those its reader reports."""
    from lsqbq.data import dataset_info, get_dataset, list_datasets

    folder = tmp_path / "images"
    for cls in ("a", "b", "c"):
        (folder / "train" / cls).mkdir(parents=True)
    assert list_datasets() == ["fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder"]
    for name in list_datasets():
        spec, info = get_dataset(name), dataset_info(name, folder, 40)
        assert info.num_classes == (spec.num_classes or 3) and info.in_chans == spec.in_chans
        assert info.image_size == (spec.image_size or 40) and len(info.mean) == spec.in_chans
    with pytest.raises(ConfigError, match="data.name: unknown dataset 'svhn'; choose one of fashion-mnist, mnist"):
        get_dataset("svhn")


def test_missing_data_names_path_and_remedy(tmp_path):
    with pytest.raises(DataError) as e:
        idx.load("fashion-mnist", tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "lsqbq data prepare" in msg and "dvc pull" in msg


def test_corrupt_file_is_an_error(fmnist_root, tmp_path):
    root = tmp_path / "fm"
    shutil.copytree(fmnist_root, root)
    path = root / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one label changed: sizes and format stay valid
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="sha256.*corrupt"):
        idx.load("fashion-mnist", root)
    path.write_bytes(gzip.compress(bytes(raw[:-10])))  # truncated
    with pytest.raises(DataError, match="truncated|corrupt"):
        idx.load("fashion-mnist", root)


def _cfg(name, root, **data):
    return from_dict({"seed": 3, "data": {"name": name, "root": str(root), "batch_size": 8, "eval_batch_size": 16,
                                          **data}, "model": {"name": "resnet_small"}})


def _write_cifar(root: Path, name: str, n_train: int = 40, n_test: int = 16):
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, key, classes = root / "cifar-10-batches-py", "labels", 10
        files = [(f"data_batch_{i}", n_train // 5) for i in range(1, 6)] + [("test_batch", n_test)]
    else:
        folder, key, classes = root / "cifar-100-python", "fine_labels", 100
        files = [("train", n_train), ("test", n_test)]
    folder.mkdir(parents=True)
    for fname, n in files:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: rng.integers(0, classes, n).tolist()}
        with open(folder / fname, "wb") as f:
            pickle.dump(entry, f)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_standin_loads(tmp_path, name):
    _write_cifar(tmp_path, name)
    train, test = build_loaders(_cfg(name, tmp_path))
    assert train.info.num_classes == (10 if name == "cifar10" else 100) and len(train.dataset) == 40
    x, y = next(iter(train))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # channel-major decoding: pixel (r, c) of channel k is data[k*1024 + r*32 + c]
    folder = tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    with open(folder / ("test_batch" if name == "cifar10" else "test"), "rb") as f:
        raw = pickle.load(f)["data"]
    ds = test.dataset
    assert ds.images[0, 5, 7, 2] == raw[0, 2 * 1024 + 5 * 32 + 7]


def test_cifar_missing_batch_is_named(tmp_path):
    _write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        build_loaders(_cfg("cifar10", tmp_path))


def test_imagefolder_standin(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(d / f"{i}.png")
    cfg = from_dict({"seed": 0, "data": {"name": "imagefolder", "root": str(tmp_path), "batch_size": 4,
                                         "eval_batch_size": 4, "image_size": 32}})
    train, test = build_loaders(cfg)
    assert train.info.num_classes == 2
    x, y = next(iter(train))
    assert x.shape == (4, 3, 32, 32)
    xv, yv = next(iter(test))
    assert xv.shape == (4, 3, 32, 32) and sorted(yv.tolist()) == [0, 0, 1, 1]
    with pytest.raises(DataError, match="val"):
        shutil.rmtree(tmp_path / "val")
        build_loaders(cfg)


def test_augmentation_is_a_function_of_seed_epoch_index():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 6, 6), dtype=np.uint8)
    info = DatasetInfo(10, 1, 6, (0.0,), (1.0,), pad=2, flip=True)
    ds = ArrayDataset(images, np.zeros(20), info, train=True, augment=True, seed=1)
    a, _ = ds.__getitems__([3, 7, 11])
    b, _ = ds.__getitems__([11, 3])
    torch.testing.assert_close(a[[2, 0]], b)  # independent of batch composition
    ds.set_epoch(1)
    c, _ = ds.__getitems__([3, 7, 11])
    assert not torch.equal(a, c)
    # every augmented image is a flipped-or-not crop of the zero-padded original (brute force over offsets)
    for i, img in zip([3, 7, 11], c):
        padded = np.pad(images[i] / 255.0, 2)
        crops = [padded[oy:oy + 6, ox:ox + 6] for oy in range(5) for ox in range(5)]
        crops += [cr[:, ::-1] for cr in crops]
        assert any(np.allclose(img[0].numpy(), cr, atol=1e-6) for cr in crops)


def test_loaders_are_deterministic_and_shard_the_global_batch(fmnist_root):
    cfg = _cfg("fashion-mnist", fmnist_root, train_subset=64, test_subset=32)
    one, _ = build_loaders(cfg)
    set_epoch(one, 1)
    x1, y1 = next(iter(one))
    again, _ = build_loaders(cfg)
    set_epoch(again, 1)
    torch.testing.assert_close(next(iter(again))[0], x1)
    shards = []
    for rank in range(2):
        loader, test = build_loaders(cfg, rank=rank, world=2)
        set_epoch(loader, 1)
        shards.append(next(iter(loader)))
        assert len(test.sampler) == 16
    x2 = torch.cat([s[0] for s in shards])
    # the two ranks' first batches together are exactly the single-process first global batch
    key = lambda x: sorted(map(tuple, x.flatten(1)[:, ::7].tolist()))  # noqa: E731
    assert key(x2) == key(x1)
    set_epoch(one, 2)
    assert not torch.equal(next(iter(one))[0], x1)
