"""CIFAR-10 / CIFAR-100 in torchvision's "python version" layout.

``root/cifar-10-batches-py/{data_batch_1..5, test_batch}`` (key ``labels``) and
``root/cifar-100-python/{train, test}`` (key ``fine_labels``): pickled dicts whose ``data`` is
``(N, 3072)`` uint8, channel-major (R plane, G plane, B plane of 32x32). Shapes, label ranges and
the presence of every batch are checked; the data hash covers the decoded arrays.

The batches are pickles, so they are read with a restricted unpickler that admits only what the format
holds (dicts, lists, strings, bytes, ints and numpy arrays of plain dtypes): a crafted file is a
:class:`DataError` naming it, and nothing in it runs. A batch holding as many images as the official one
must match the official md5; the official archive (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``),
when it lies in ``root``, is checked against its md5 before it is extracted.
"""
from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from ._common import DataError, DataNotFoundError, DatasetInfo, array_hash, file_md5
from .images import check_regular_file
from .registry import DatasetSpec, array_datasets, register_dataset

LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}
INFO = {
    "cifar10": DatasetInfo(10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), pad=4, flip=True),
    "cifar100": DatasetInfo(100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), pad=4, flip=True),
}
URL = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
# md5 of the official archives and of the files they hold (the values torchvision checks).
ARCHIVE_MD5 = {
    "cifar10": ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}
FILE_MD5 = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    },
}
# images per file of the official release: a file of this size must be the official file
OFFICIAL_COUNT = {"cifar10": {"test_batch": 10000, **{f"data_batch_{i}": 10000 for i in range(1, 6)}},
                  "cifar100": {"train": 50000, "test": 10000}}


def how_to_get(name: str, root: Path) -> str:
    return (f"set data.download: true where the network allows (writes {root}/{LAYOUT[name][0]}/), "
            f"or put the official {ARCHIVE_MD5[name][0]} in {root}, or copy its extracted folder there, or `dvc pull`")


# ------------------------------------------------------------------------------------------ safe unpickling


class _Refused(pickle.UnpicklingError):
    """The pickle asks for something a CIFAR batch never holds."""


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` in a pickle: an argument of ``_reconstruct``, never called itself."""


_NDARRAY = _NdarrayClass()


def _reconstruct(cls, shape, typecode):
    """``numpy.core.multiarray._reconstruct`` restricted to the empty plain ndarray that ``__setstate__`` fills."""
    if cls is not _NDARRAY:
        raise _Refused(f"array class {cls!r} is not numpy.ndarray")
    if tuple(shape) != (0,) or np.dtype(typecode).hasobject:
        raise _Refused(f"an array reconstructed as shape {shape!r}, type {typecode!r}")
    return np.ndarray.__new__(np.ndarray, (0,), typecode)


def _dtype(*args):
    """``numpy.dtype`` restricted to dtypes without Python objects."""
    if not args or not isinstance(args[0], str):
        raise _Refused(f"numpy dtype from {args!r}")
    dt = np.dtype(args[0])
    if dt.hasobject:
        raise _Refused("a numpy dtype holding Python objects")
    return np.dtype(*args)


def _frombuffer(buf, dtype, shape, order):
    """``numpy.core.numeric._frombuffer`` (protocol-5 arrays) restricted to plain dtypes."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _Refused(f"array of dtype {dtype!r}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _codecs_encode(obj, encoding="utf-8"):
    """``_codecs.encode`` as protocol 2 uses it for bytes: a string encoded as latin-1."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with {encoding!r}")
    return obj.encode("latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _codecs_encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Admits only the globals a CIFAR batch refers to; anything else is refused before it is looked up."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"it refers to {module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused("it holds a persistent reference")


def safe_load_batch(path: Path) -> dict:
    """Unpickle one CIFAR batch file without running code; a crafted or corrupt file -> :class:`DataError`."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        entry = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except _Refused as e:
        raise DataError(f"{path}: refused: {e}, which a CIFAR batch never holds (only dicts, lists, strings, "
                        f"ints and uint8 arrays); the file is not an official CIFAR batch, replace it") from None
    except Exception as e:  # noqa: BLE001 - truncated or garbled bytes surface as many exception types
        raise DataError(f"{path}: cannot decode a CIFAR batch ({type(e).__name__}: {e}); the file is corrupt "
                        f"or truncated, replace it") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path}: holds a {type(entry).__name__}, expected the dict of a CIFAR batch")
    return entry


# ------------------------------------------------------------------------------------------------ loading


def _check_md5(name: str, path: Path, n_images: int) -> None:
    official = OFFICIAL_COUNT[name].get(path.name)
    if official is None or n_images != official:
        return  # a subset or stand-in: checked for shape and labels only
    expected = FILE_MD5[name][path.name]
    got = file_md5(path)
    if got != expected:
        raise DataError(f"{path}: md5 {got} differs from the official file's {expected} although it holds "
                        f"{n_images} images like the official one (corrupt or modified); "
                        f"{how_to_get(name, path.parents[1])}")


def _read_batches(name: str, root: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    folder, _, _, label_key, num_classes = LAYOUT[name]
    images, labels = [], []
    for fname in files:
        path = root / folder / fname
        if not path.is_file():
            raise DataNotFoundError(f"{name}: {path} not found; {how_to_get(name, root)}")
        entry = safe_load_batch(path)
        if "data" not in entry or label_key not in entry:
            raise DataError(f"{path}: keys {sorted(map(str, entry))} lack 'data' or {label_key!r}; "
                            f"not a {name} batch")
        try:
            data = entry["data"]
            if isinstance(data, np.ndarray) and data.dtype != np.uint8:
                raise ValueError(f"data has dtype {data.dtype}, expected uint8")
            data = np.asarray(data, dtype=np.uint8)
            lab = np.asarray(entry[label_key])
            if lab.dtype.kind not in "iu":
                raise ValueError(f"{label_key} has dtype {lab.dtype}, expected integers")
            lab = lab.astype(np.int64)
        except (ValueError, TypeError, OverflowError) as e:
            raise DataError(f"{path}: cannot decode a CIFAR batch ({e}); the file is corrupt") from None
        if data.ndim != 2 or data.shape[1] != 3072 or lab.shape != (len(data),):
            raise DataError(f"{path}: data {data.shape} / {label_key} {lab.shape} are not (N, 3072) / (N,)")
        if len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
            raise DataError(f"{path}: {label_key} span [{lab.min()}, {lab.max()}], outside [0, {num_classes})")
        _check_md5(name, path, len(data))
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


def extract_archive(name: str, root: Path, archive: Path | None = None) -> None:
    """Check the official archive's md5 and extract its batch folder into ``root``."""
    fname, md5 = ARCHIVE_MD5[name]
    archive = Path(archive) if archive is not None else root / fname
    got = file_md5(archive)
    if got != md5:
        raise DataError(f"{archive}: md5 {got} differs from the official archive's {md5} (corrupt, truncated "
                        f"or another file); delete it and fetch it again")
    folder = LAYOUT[name][0]
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name == folder or m.name.startswith(folder + "/")]
            for m in members:  # checked before anything is written
                if ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                    raise DataError(f"{archive}: member {m.name!r} is not a plain file inside {folder}/; "
                                    f"refusing to extract the archive")
            root.mkdir(parents=True, exist_ok=True)
            tar.extractall(root, members=members, filter="data")
    except (OSError, EOFError, tarfile.TarError) as e:
        raise DataError(f"{archive}: cannot extract ({e})") from None


def fetch(name: str, root: Path) -> None:
    """Fetch the official archive (md5-checked by torchvision) into ``root`` and extract it."""
    from torchvision.datasets.utils import download_url

    fname, md5 = ARCHIVE_MD5[name]
    try:
        download_url(URL[name], str(root), filename=fname, md5=md5)
    except Exception as e:  # noqa: BLE001 - no network, proxy, HTTP errors: say what to do instead
        (root / fname).unlink(missing_ok=True)  # never leave a partial or corrupt archive behind
        raise DataError(f"{name}: download into {root} failed ({e}); {how_to_get(name, root)}") from None
    extract_archive(name, root)


def load(name: str, root: str | Path, download: bool = False):
    """-> ({train_images (N,32,32,3) uint8, train_labels (N,), test_images, test_labels}, data hash).

    Missing batches are extracted from the official archive in ``root`` if it is there, else downloaded
    when ``download`` is true.
    """
    root = Path(root)
    folder, train_files, test_files, _, _ = LAYOUT[name]
    paths = [root / folder / f for f in train_files + test_files]
    if not all(p.is_file() for p in paths):
        if (root / ARCHIVE_MD5[name][0]).is_file():
            extract_archive(name, root)
        elif download:
            root.mkdir(parents=True, exist_ok=True)
            fetch(name, root)
    for p in paths:
        if os.path.lexists(p):
            check_regular_file(p)   # a pipe or device under a batch name: an error naming it, not "not found"
        if not p.is_file():
            raise DataNotFoundError(f"{name}: {p} not found; {how_to_get(name, root)}")
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    return _load_cached(name, str(root.resolve()), stamp)


def prepare(name: str, root: str | Path, source: str | Path | None = None) -> str:
    """Extract the official archive found in ``source`` (md5-checked) into ``root``, or copy its batch folder
    (verified first: a corrupt source leaves nothing behind in ``root``); else download. Returns the data hash."""
    root = Path(root)
    if source is not None:
        source = Path(source)
        archive, folder = source / ARCHIVE_MD5[name][0], LAYOUT[name][0]
        if archive.is_file():
            extract_archive(name, root, archive)
        elif (source / folder).is_dir():
            load(name, source)
            shutil.copytree(source / folder, root / folder, dirs_exist_ok=True)
        else:
            raise DataNotFoundError(f"{name}: neither {archive} nor {source / folder}/ exists; "
                                    f"{how_to_get(name, root)}")
    return load(name, root, download=True)[1]


def _build(name: str, d, seed: int):
    arrays, digest = load(name, d.root, download=d.download)
    train, test = array_datasets(arrays, INFO[name], d, seed)
    return train, test, INFO[name], digest


for _name in ("cifar10", "cifar100"):
    register_dataset(DatasetSpec(
        name=_name, num_classes=INFO[_name].num_classes, in_chans=3, image_size=32, stem="cifar",
        info=lambda root=None, image_size=None, _n=_name: INFO[_n],
        build=lambda d, seed, _n=_name: _build(_n, d, seed),
        prepare=lambda root, source=None, _n=_name: prepare(_n, root, source),
        hash=lambda root, _n=_name: load(_n, root)[1]))
