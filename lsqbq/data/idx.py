"""Fashion-MNIST and MNIST: the four IDX files (``*-idx3-ubyte.gz`` images, ``*-idx1-ubyte.gz`` labels).

IDX layout: big-endian int32 magic (0x00000803 images, 0x00000801 labels), one int32 per dimension,
then the uint8 payload. Files are read gzipped or plain, from ``root`` or torchvision's
``root/<Name>/raw/`` layout. Each decompressed file is checked against its known sha256 (for MNIST
only shapes and label counts are checked), so a corrupt or truncated file is an error, never a partial set.
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
    for d in (root, root / _TORCHVISION_DIR[name] / "raw"):
        for suffix in (".gz", ""):
            p = d / (stem + suffix)
            if p.is_file():
                return p
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a bad deflate stream is zlib.error
        what = "truncated" if isinstance(e, EOFError) else "corrupt"
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e}); the file is {what}, replace it") from None


MAGIC = {3: 0x00000803, 1: 0x00000801}  # uint8 images (N, H, W), uint8 labels (N,)


def parse_idx(raw: bytes, path: Path, ndim: int | None = None) -> np.ndarray:
    """Decode an uint8 IDX file; ``ndim`` (3 images, 1 labels) is checked when given."""
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, shorter than an IDX header (4 bytes); the file is truncated")
    magic = int.from_bytes(raw[:4], "big")
    want = MAGIC.get(ndim) if ndim is not None else None
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 8 or (want is not None and magic != want):
        expected = f"0x{want:08x}" if want is not None else "0x000008NN (uint8)"
        kind = {3: "image file", 1: "label file"}.get(ndim, "file")
        raise DataError(f"{path}: magic number 0x{magic:08x}, expected {expected}; not an IDX uint8 {kind}")
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
        raw = _read_bytes(path)
        if name == "fashion-mnist":
            digest = hashlib.sha256(raw).hexdigest()
            if digest != FASHION_SHA256[stem]:
                raise DataError(f"{path}: sha256 of the decompressed file is {digest}, expected "
                                f"{FASHION_SHA256[stem]} (corrupt); {how_to_get(name, root_p)}")
        arrays[key] = parse_idx(raw, path, ndim=3 if key.endswith("images") else 1)
    n_train, n_test = 60000, 10000
    expect = {"train_images": (n_train, 28, 28), "train_labels": (n_train,),
              "test_images": (n_test, 28, 28), "test_labels": (n_test,)}
    for key, shape in expect.items():
        if arrays[key].shape != shape:
            raise DataError(f"{paths[key]}: shape {arrays[key].shape}, expected {shape} (not the full {name} "
                            f"{key.split('_')[0]} set); {how_to_get(name, root_p)}")
    for key in ("train_labels", "test_labels"):
        counts = np.bincount(arrays[key], minlength=10)
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
