"""Fashion-MNIST and MNIST: the four IDX files (``*-idx3-ubyte.gz`` images, ``*-idx1-ubyte.gz`` labels).

IDX layout: big-endian int32 magic (0x00000803 images, 0x00000801 labels), one int32 per dimension,
then the uint8 payload. Files are read gzipped or plain, from ``root`` or torchvision's
``root/<Name>/raw/`` layout. Each decompressed file is checked against its known sha256 (for MNIST: its
shapes and the official images per class, and that it is not a Fashion-MNIST file), so a corrupt, truncated or
wrong file is an error, never a partial or mislabelled set. A gzip stream is read no further than its IDX header
announces (a decompression bomb is refused without inflating it), and a name that is a pipe or a device is refused.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from ._common import DataError, DataNotFoundError, DatasetInfo
from .images import check_regular_file
from .registry import DatasetSpec, array_datasets, register_dataset

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# sha256 of the decompressed official Fashion-MNIST files (identical for the zalandoresearch release,
# torchvision's mirror and the Debian package dataset-fashion-mnist, whose .gz bytes differ).
FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# md5 of the .gz files: the official release, and the Debian package's recompressed copy.
FASHION_GZ_MD5 = {
    "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "cf8536b0aa1a6ac5fa3f23001093305c"),
    "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", "10bea18fdb374794d4bb42e356e600c9"),
    "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", "f78720b4224f21cce2f2ccf2d7a94c9a"),
    "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", "0d30e22e447f3c33dab9ed536400ac01"),
}
# Images per class of the official MNIST release (LeCun et al.): what tells MNIST from another 28x28 set.
MNIST_LABEL_COUNTS = {
    "train_labels": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    "test_labels": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
}
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")  # package dataset-fashion-mnist

FASHION_INFO = DatasetInfo(num_classes=10, in_chans=1, image_size=28, mean=(0.2860,), std=(0.3530,), pad=2, flip=True)
MNIST_INFO = DatasetInfo(num_classes=10, in_chans=1, image_size=28, mean=(0.1307,), std=(0.3081,), pad=2, flip=False)

_TORCHVISION_DIR = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}


def how_to_get(name: str, root: Path) -> str:
    if name == "fashion-mnist":
        return (f"run `lsqbq data prepare fashion-mnist --root {root}` (copies the Debian package "
                f"dataset-fashion-mnist, `apt-get install dataset-fashion-mnist`, or downloads with torchvision), "
                f"or `dvc pull` in the project")
    return f"run `lsqbq data prepare {name} --root {root}` where the network allows a torchvision download"


def find_file(root: Path, name: str, stem: str) -> Path | None:
    """The first of ``root/stem.gz``, ``root/stem`` and torchvision's ``raw/`` copies that exists; a name that
    exists but is not a regular file (a pipe, a device linked in) is a :class:`DataError` naming it."""
    for d in (root, root / _TORCHVISION_DIR[name] / "raw"):
        for suffix in (".gz", ""):
            p = d / (stem + suffix)
            if os.path.lexists(p):
                check_regular_file(p)
                return p
    return None


# Largest decompressed size of each file: the full training set (a header claiming more is refused unread).
MAX_BYTES = {"train-images-idx3-ubyte": 16 + 60000 * 28 * 28, "t10k-images-idx3-ubyte": 16 + 60000 * 28 * 28,
             "train-labels-idx1-ubyte": 8 + 60000, "t10k-labels-idx1-ubyte": 8 + 60000}


def _read_bytes(path: Path, limit: int, ndim: int | None = None) -> bytes:
    """The decompressed bytes of ``path``, read no further than its IDX header says (at most ``limit``).

    A gzip stream that inflates beyond the size its header announces (a decompression bomb, or trailing data)
    stops being read one byte past that size, so memory never exceeds the header's size plus one block.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) == 4:
                _check_magic(head, path, ndim)
                head += f.read(4 * head[3])
            dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range((len(head) - 4) // 4)]
            need = len(head) + int(np.prod(dims, dtype=object)) if dims else limit
            if need > limit:
                raise DataError(f"{path}: its IDX header announces {dims} = {need} bytes, more than the "
                                f"{limit} bytes of the full set; the file is corrupt or crafted, replace it")
            body = f.read(need - len(head) + 1)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a bad deflate stream is zlib.error
        what = "truncated" if isinstance(e, EOFError) else "corrupt"
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e}); the file is {what}, replace it") from None
    if dims and len(head) + len(body) > need:
        size = (f"inflates to more than {need} bytes" if opener is gzip.open
                else f"{path.stat().st_size} bytes")
        raise DataError(f"{path}: {size}, but its header {tuple(dims)} needs {need} bytes (trailing data, corrupt "
                        f"or a decompression bomb); replace it")
    return head + body


MAGIC = {3: 0x00000803, 1: 0x00000801}  # uint8 images (N, H, W), uint8 labels (N,)


def _check_magic(raw: bytes, path: Path, ndim: int | None) -> None:
    magic = int.from_bytes(raw[:4], "big")
    want = MAGIC.get(ndim) if ndim is not None else None
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 8 or (want is not None and magic != want):
        expected = f"0x{want:08x}" if want is not None else "0x000008NN (uint8)"
        kind = {3: "image file", 1: "label file"}.get(ndim, "file")
        raise DataError(f"{path}: magic number 0x{magic:08x}, expected {expected}; not an IDX uint8 {kind}")


def parse_idx(raw: bytes, path: Path, ndim: int | None = None) -> np.ndarray:
    """Decode an uint8 IDX file; ``ndim`` (3 images, 1 labels) is checked when given."""
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, shorter than an IDX header (4 bytes); the file is truncated")
    _check_magic(raw, path, ndim)
    n = raw[3]
    offset = 4 + 4 * n
    if len(raw) < offset:
        raise DataError(f"{path}: {len(raw)} bytes, shorter than its {offset}-byte header; the file is truncated")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(n))
    expected = offset + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes, but its header {dims} needs {expected} bytes "
                        f"({'truncated' if len(raw) < expected else 'trailing data'} or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


@lru_cache(maxsize=4)
def _load_cached(name: str, root: str, stamp: tuple) -> tuple[dict[str, np.ndarray], str]:
    from ._common import array_hash

    root_p = Path(root)
    arrays = {}
    paths = {}
    for key, stem in FILES.items():
        path = paths[key] = find_file(root_p, name, stem)
        if path is None:
            raise DataNotFoundError(f"{name}: {root_p / (stem + '.gz')} not found; {how_to_get(name, root_p)}")
        ndim = 3 if key.endswith("images") else 1
        raw = _read_bytes(path, MAX_BYTES[stem], ndim)
        digest = hashlib.sha256(raw).hexdigest()
        if name == "mnist" and digest == FASHION_SHA256[stem]:
            raise DataError(f"{path}: this is the Fashion-MNIST file {stem} (its sha256 is the official one), not "
                            f"mnist; use the dataset name fashion-mnist for {root_p}, or point mnist at the MNIST files")
        if name == "fashion-mnist":
            if digest != FASHION_SHA256[stem]:
                raise DataError(f"{path}: sha256 of the decompressed file is {digest}, expected "
                                f"{FASHION_SHA256[stem]} (corrupt); {how_to_get(name, root_p)}")
        arrays[key] = parse_idx(raw, path, ndim=ndim)
    n_train, n_test = 60000, 10000
    expect = {"train_images": (n_train, 28, 28), "train_labels": (n_train,),
              "test_images": (n_test, 28, 28), "test_labels": (n_test,)}
    for key, shape in expect.items():
        if arrays[key].shape != shape:
            raise DataError(f"{paths[key]}: shape {arrays[key].shape}, expected {shape} (not the full {name} "
                            f"{key.split('_')[0]} set); {how_to_get(name, root_p)}")
    for key in ("train_labels", "test_labels"):
        counts = np.bincount(arrays[key], minlength=10)
        if name == "mnist" and counts.tolist() != list(MNIST_LABEL_COUNTS[key]):
            raise DataError(f"{paths[key]}: label counts {counts.tolist()}, expected MNIST's "
                            f"{list(MNIST_LABEL_COUNTS[key])} (not the MNIST {key.split('_')[0]} labels, or corrupt)")
        if len(counts) != 10 or (name == "fashion-mnist" and not (counts == counts[0]).all()):
            raise DataError(f"{paths[key]}: label counts {counts.tolist()}, expected 10 classes"
                            f"{' of equal size' if name == 'fashion-mnist' else ''} (corrupt)")
    digest = array_hash(arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"])
    return arrays, digest


def load(name: str, root: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """Read and verify the four arrays -> ({train_images (60000,28,28) uint8, train_labels, test_*}, data hash)."""
    root = Path(root)
    paths = []
    for stem in FILES.values():
        path = find_file(root, name, stem)
        if path is None:
            raise DataNotFoundError(f"{name}: {root / (stem + '.gz')} not found; {how_to_get(name, root)}")
        paths.append(path)
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    return _load_cached(name, str(root.resolve()), stamp)


def prepare(name: str, root: str | Path, source: str | Path | None = None) -> str:
    """Put the four .gz files under ``root`` and verify them; returns the data hash.

    Sources, in order: ``source`` (a directory with the .gz files), the Debian package location
    (Fashion-MNIST only), else a torchvision download into ``root``.
    """
    root = Path(root)
    if source is None and name == "fashion-mnist" and DEBIAN_FASHION.is_dir():
        source = DEBIAN_FASHION
    if source is not None:
        source = Path(source)
        srcs = [source / (stem + ".gz") for stem in FILES.values()]
        for src in srcs:
            if not src.is_file():
                raise DataNotFoundError(f"{src} not found (expected the 4 official .gz files in {source})")
        load(name, source)  # verify before copying: a corrupt source leaves nothing behind in root
        root.mkdir(parents=True, exist_ok=True)
        for src in srcs:
            dst = root / src.name
            if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
                tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
                try:
                    shutil.copyfile(src, tmp)
                    os.replace(tmp, dst)
                finally:
                    tmp.unlink(missing_ok=True)
    elif find_file(root, name, FILES["train_images"]) is None:
        import torchvision

        root.mkdir(parents=True, exist_ok=True)
        cls = torchvision.datasets.FashionMNIST if name == "fashion-mnist" else torchvision.datasets.MNIST
        try:
            cls(str(root), train=True, download=True)
            cls(str(root), train=False, download=True)
        except Exception as e:  # no network: say what to do instead
            raise DataError(f"{name}: download into {root} failed ({e}); {how_to_get(name, root)}") from None
    _, digest = load(name, root)
    return digest


def _build(name: str, d, seed: int):
    arrays, digest = load(name, d.root)
    info = INFO[name]
    train, test = array_datasets(arrays, info, d, seed)
    return train, test, info, digest


INFO = {"fashion-mnist": FASHION_INFO, "mnist": MNIST_INFO}
for _name in INFO:
    register_dataset(DatasetSpec(
        name=_name, num_classes=10, in_chans=1, image_size=28, stem="cifar",
        info=lambda root=None, image_size=None, _n=_name: INFO[_n],
        build=lambda d, seed, _n=_name: _build(_n, d, seed),
        prepare=lambda root, source=None, _n=_name: prepare(_n, root, source),
        hash=lambda root, _n=_name: load(_n, root)[1]))
