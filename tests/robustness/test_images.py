"""Images that lie: every Pillow mode decoded to the right 8-bit RGB (checked pixel by pixel against numpy
arithmetic on the stored values), or refused naming the file; links out of the dataset, symlink loops and
special files refused by name before any training; decompression bombs (PNG, IDX .gz) refused before memory
grows."""
from __future__ import annotations

import gzip
import os
import socket
import struct
import zlib

import numpy as np
import pytest

from lsqbq import cli
from lsqbq.data import DataError, data_hash, idx, imagefolder
from lsqbq.data.images import load_image
from lsqbq.errors import LsqbqError

from ._helpers import IDX_FILES, assert_no_partial_outputs, idx_bytes, snapshot, write_idx_set

RNG = np.random.default_rng(0)
H, W = 5, 7


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def _decoded(path) -> np.ndarray:
    img = load_image(str(path))
    assert img.mode == "RGB" and img.size == (W, H)
    return np.asarray(img)


def _grey(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[..., None], 3, axis=-1)


# --------------------------------------------------------------------------------- modes, pixel by pixel

def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    from PIL import Image

    v = RNG.integers(0, 65536, (H, W)).astype(np.uint16)
    v[0, 0], v[0, 1] = 0, 65535
    path = _save(Image.fromarray(v), tmp_path / "a.png")        # a 16-bit greyscale PNG
    assert Image.open(path).mode in ("I;16", "I")                # as Pillow reads it back
    got = _decoded(path)
    want = _grey(np.floor(v.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8))
    assert np.array_equal(got, want)
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) > 20   # not all-255


def test_32_bit_integer_image_with_16_bit_values(tmp_path):
    from PIL import Image

    v = RNG.integers(0, 65536, (H, W)).astype(np.int32)
    path = _save(Image.fromarray(v, "I"), tmp_path / "a.tif")
    assert Image.open(path).mode == "I"
    assert np.array_equal(_decoded(path), _grey(np.floor(v * 255 / 65535 + 0.5).astype(np.uint8)))


def test_32_bit_integer_image_outside_16_bits_is_refused(tmp_path):
    from PIL import Image

    v = np.full((H, W), 70000, np.int32)
    path = _save(Image.fromarray(v, "I"), tmp_path / "big.tif")
    with pytest.raises(DataError) as e:
        load_image(str(path))
    assert str(e.value).startswith(f"{path}: 32-bit integer image with values in [70000, 70000]")


def test_float_image_in_unit_range(tmp_path):
    from PIL import Image

    v = RNG.random((H, W)).astype(np.float32)
    path = _save(Image.fromarray(v, "F"), tmp_path / "f.tif")
    assert np.array_equal(_decoded(path), _grey(np.rint(v.astype(np.float64) * 255).astype(np.uint8)))


@pytest.mark.parametrize("value", [2.5, float("nan")])
def test_float_image_outside_unit_range_is_refused(tmp_path, value):
    from PIL import Image

    v = np.zeros((H, W), np.float32)
    v[1, 1] = value
    path = _save(Image.fromarray(v, "F"), tmp_path / "f.tif")
    with pytest.raises(DataError) as e:
        load_image(str(path))
    assert str(e.value).startswith(f"{path}: floating-point image with values in") and "[0, 1]" in str(e.value)


def test_palette_without_transparency_uses_the_palette(tmp_path):
    from PIL import Image

    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    index = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    img = Image.fromarray(index, "P")
    img.putpalette(palette.ravel().tolist())
    path = _save(img, tmp_path / "p.png")
    assert np.array_equal(_decoded(path), palette[index])


def test_palette_with_a_transparent_index_is_black_there(tmp_path):
    from PIL import Image

    palette = RNG.integers(1, 256, (256, 3), dtype=np.uint8)
    index = RNG.integers(0, 4, (H, W), dtype=np.uint8)
    img = Image.fromarray(index, "P")
    img.putpalette(palette.ravel().tolist())
    path = _save(img, tmp_path / "p.png", transparency=2)
    assert Image.open(path).info.get("transparency") == 2
    want = palette[index].copy()
    want[index == 2] = 0
    assert np.array_equal(_decoded(path), want)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_onto_black(tmp_path, mode):
    from PIL import Image

    bands = 4 if mode == "RGBA" else 2
    v = RNG.integers(0, 256, (H, W, bands), dtype=np.uint8)
    v[0, 0, -1], v[0, 1, -1] = 0, 255
    path = _save(Image.fromarray(v, mode), tmp_path / "a.png")
    colour = v[..., :3].astype(np.int64) if mode == "RGBA" else _grey(v[..., 0]).astype(np.int64)
    alpha = v[..., -1:].astype(np.int64)
    want = np.floor(colour * alpha / 255 + 0.5).astype(np.uint8)
    got = _decoded(path)
    assert np.array_equal(got, want)
    assert (got[0, 0] == 0).all() and np.array_equal(got[0, 1], colour[0, 1])


def test_cmyk_is_rgb(tmp_path):
    from PIL import Image

    v = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
    path = _save(Image.fromarray(v, "CMYK"), tmp_path / "c.tif")
    c, m, y, k = (v[..., i].astype(np.int64) for i in range(4))
    want = np.stack([(255 - x) * (255 - k) / 255 for x in (c, m, y)], axis=-1)   # R = (1 - C)(1 - K), ...
    assert np.abs(_decoded(path).astype(np.int64) - want).max() <= 1


def test_bilevel_image_is_black_and_white(tmp_path):
    from PIL import Image

    bits = RNG.random((H, W)) > 0.5
    path = _save(Image.fromarray(bits), tmp_path / "b.png")
    assert Image.open(path).mode == "1"
    assert np.array_equal(_decoded(path), _grey(np.where(bits, 255, 0).astype(np.uint8)))


def test_unsupported_mode_is_refused_naming_the_file(tmp_path):
    from PIL import Image

    path = _save(Image.fromarray(RNG.integers(0, 256, (H, W, 3), dtype=np.uint8), "RGB").convert("LAB"),
                 tmp_path / "lab.tif")
    assert Image.open(path).mode == "LAB"
    with pytest.raises(DataError) as e:
        load_image(str(path))
    assert str(e.value).startswith(f"{path}: image mode 'LAB' is not supported")


def test_16_bit_folder_trains_on_real_contrast(tmp_path):
    """Through the dataset: a 16-bit class folder yields tensors with the image's contrast, not a constant."""
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            v = RNG.integers(0, 65536, (16, 16)).astype(np.uint16)
            Image.fromarray(v).save(tmp_path / split / cls / "0.png")
    train, _, _, _ = imagefolder.build(tmp_path, size=8, augment=False)
    x, _ = train[0]
    assert x.shape == (3, 8, 8) and x.std() > 0.3


# ------------------------------------------------------------------------ decompression bombs

def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` greyscale pixels, followed by a tiny IDAT and IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_decompression_bomb_image_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(60000, 60000))   # 3.6 gigapixels in 100 bytes
    with pytest.raises(DataError) as e:
        load_image(str(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}: refused as a decompression bomb") and "MAX_IMAGE_PIXELS" in msg
    assert "unexpected" not in msg


def test_idx_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    """~1 MB of gzip that inflates to 1 GiB behind a valid label header: reading stops at the header's size."""
    import tracemalloc

    root = write_idx_set(tmp_path / "mnist", n_train=20, n_test=10, gz=True)
    path = root / "train-labels-idx1-ubyte.gz"
    zeros = gzip.compress(b"\0" * (1 << 24), compresslevel=9)          # one 16 MiB member, ~16 KB
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(20, np.uint8))) + zeros * 64)   # + 1 GiB in 64 members
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as e:
            idx.load("mnist", root)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(e.value) == (f"{path}: inflates to more than 28 bytes, but its header (20,) needs 28 bytes "
                            f"(trailing data, corrupt or a decompression bomb); replace it")
    assert peak < 64 << 20, peak     # megabytes, not the gigabyte the stream holds


def test_idx_header_claiming_more_than_the_full_set_is_refused_unread(tmp_path):
    root = write_idx_set(tmp_path / "mnist", n_train=20, n_test=10, gz=True)
    path = root / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">IIII", 0x803, 10**6, 28, 28)))
    with pytest.raises(DataError) as e:
        idx.load("mnist", root)
    assert str(e.value).startswith(f"{path}: its IDX header announces [1000000, 28, 28] = 784000016 bytes, "
                                   f"more than the 47040016 bytes of the full set")


# ------------------------------------------------------------------------------ links and loops

def _two_classes(root):
    from ._helpers import write_imagefolder

    return write_imagefolder(root, per_split=(("train", 2), ("val", 1)))


def test_symlink_loop_is_refused_not_multiplied(tmp_path):
    root = _two_classes(tmp_path / "images")
    link = root / "train" / "cat" / "up"
    link.symlink_to("..")
    with pytest.raises(DataError) as e:
        imagefolder.build(root, size=8)
    assert str(e.value).startswith(f"{link}: symbolic link loop: it points to {(root / 'train').resolve()}")


def test_folder_linked_twice_is_refused(tmp_path):
    root = _two_classes(tmp_path / "images")
    link = root / "train" / "dog" / "more-cats"
    link.symlink_to(root / "train" / "cat")
    with pytest.raises(DataError) as e:
        imagefolder.build(root, size=8)
    assert "is reached twice" in str(e.value) and str(root / "train" / "cat") in str(e.value)


@pytest.mark.parametrize("what", ["file", "folder", "class-folder"])
def test_links_out_of_the_dataset_are_refused(tmp_path, what):
    root = _two_classes(tmp_path / "images")
    outside = _two_classes(tmp_path / "elsewhere")
    link = {"file": root / "train" / "cat" / "x.jpg", "folder": root / "train" / "cat" / "sub",
            "class-folder": root / "train" / "bird"}[what]
    target = {"file": outside / "train" / "cat" / "0.jpg", "folder": outside / "train" / "dog",
              "class-folder": outside / "train" / "cat"}[what]
    link.symlink_to(target)
    if what == "class-folder":
        (root / "val" / "bird").symlink_to(outside / "val" / "cat")
    with pytest.raises(DataError) as e:
        imagefolder.build(root, size=8)
    assert str(e.value).startswith(f"{link}: resolves to {target.resolve()}, outside the dataset root")


def test_links_inside_the_dataset_are_followed(tmp_path):
    root = _two_classes(tmp_path / "images")
    (root / "extra").mkdir()
    (root / "train" / "cat" / "0.jpg").rename(root / "extra" / "0.jpg")
    (root / "train" / "cat" / "0.jpg").symlink_to(root / "extra" / "0.jpg")
    train, _, _, _ = imagefolder.build(root, size=8)
    assert [os.path.basename(p) for p, _ in train.samples] == ["0.jpg", "1.jpg", "0.jpg", "1.jpg"]
    assert train[0][0].shape == (3, 8, 8)


@pytest.mark.parametrize("name", ["a.jpg", "notes"])
def test_link_cycle_is_named(tmp_path, name):
    root = _two_classes(tmp_path / "images")
    link = root / "train" / "cat" / name
    link.symlink_to(root / "train" / "cat" / "other")
    (root / "train" / "cat" / "other").symlink_to(link)
    with pytest.raises(DataError) as e:
        imagefolder.build(root, size=8)
    assert str(e.value).startswith(f"{link}: symbolic link loop") and "delete the link" in str(e.value)


def test_broken_link_is_named(tmp_path):
    root = _two_classes(tmp_path / "images")
    link = root / "val" / "dog" / "gone.jpg"
    link.symlink_to(root / "nowhere.jpg")
    with pytest.raises(DataError) as e:
        imagefolder.build(root, size=8)
    assert str(e.value).startswith(f"{link}: broken symbolic link")


# ------------------------------------------------------------------------------ special files

def _fifo(path):
    os.mkfifo(path)


def _socket(path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    return s


@pytest.mark.parametrize("kind, word", [("fifo", "a named pipe"), ("socket", "a socket")])
def test_special_image_files_are_named_never_read(tmp_path, kind, word):
    root = _two_classes(tmp_path / "images")
    path = root / "train" / "dog" / "2.png"
    keep = _fifo(path) if kind == "fifo" else _socket(path)
    try:
        with pytest.raises(DataError) as e:
            imagefolder.build(root, size=8)      # would block forever opening the pipe
        assert str(e.value) == f"{path}: {word}, not a regular file; remove it from the dataset folder"
        with pytest.raises(DataError, match=word):
            load_image(str(path))
    finally:
        if keep is not None:
            keep.close()


def test_dev_zero_linked_in_is_outside_the_root(tmp_path):
    root = _two_classes(tmp_path / "images")
    path = root / "train" / "dog" / "zero.jpg"
    path.symlink_to("/dev/zero")
    with pytest.raises(DataError) as e:
        imagefolder.build(root, size=8)
    assert str(e.value).startswith(f"{path}: resolves to /dev/zero, outside the dataset root")
    with pytest.raises(DataError, match="a character device, not a regular file"):
        load_image(str(path))


@pytest.mark.parametrize("special", ["fifo", "dev-zero"])
def test_special_idx_file_is_named_not_missing(tmp_path, special):
    root = write_idx_set(tmp_path / "mnist", n_train=20, n_test=10, gz=False)
    path = root / IDX_FILES["test_labels"]
    path.unlink()
    _fifo(path) if special == "fifo" else path.symlink_to("/dev/zero")
    with pytest.raises(DataError) as e:
        idx.load("mnist", root)
    word = "a named pipe" if special == "fifo" else "a character device"
    assert str(e.value) == f"{path}: {word}, not a regular file; remove it from the dataset folder"
    assert "not found" not in str(e.value) and "0 bytes" not in str(e.value)


def test_special_cifar_batch_is_named_not_missing(tmp_path):
    from ._helpers import write_cifar

    folder = write_cifar(tmp_path / "cifar10", "cifar10")
    root, path = folder.parent, folder / "test_batch"
    path.unlink()
    _fifo(path)
    with pytest.raises(DataError) as e:
        data_hash("cifar10", root)
    assert str(e.value).startswith(f"{path}: a named pipe") and isinstance(e.value, LsqbqError)


# ------------------------------------------------------------------------------ data hash checks the dataset

def test_data_hash_mnist_of_another_labelling_is_refused(tmp_path, capsys):
    """60000 + 10000 28x28 images whose classes are not MNIST's (equal counts): exit 3 naming the labels file."""
    root = write_idx_set(tmp_path / "mnist", gz=True)
    before = snapshot(tmp_path)
    assert cli.main(["data", "hash", "mnist", "--root", str(root)]) == 3
    err = capsys.readouterr().err.strip()
    assert err == (f"lsqbq data: {root / 'train-labels-idx1-ubyte.gz'}: label counts [6000, 6000, 6000, 6000, "
                   f"6000, 6000, 6000, 6000, 6000, 6000], expected MNIST's [5923, 6742, 5958, 6131, 5842, 5421, "
                   f"5918, 6265, 5851, 5949] (not the MNIST train labels, or corrupt)")
    assert_no_partial_outputs(tmp_path, before)


@pytest.mark.parametrize("case", ["loop", "fifo", "outside"])
def test_data_hash_of_a_lying_folder_is_one_line_exit_3(tmp_path, capsys, case):
    root = _two_classes(tmp_path / "images")
    path = root / "train" / "dog" / {"loop": "up", "fifo": "x.png", "outside": "y.png"}[case]
    if case == "loop":
        path.symlink_to("..")
    elif case == "fifo":
        _fifo(path)
    else:
        path.symlink_to(tmp_path / "elsewhere.png")
        (tmp_path / "elsewhere.png").write_bytes(b"x")
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert cli.main(["data", "hash", "imagefolder", "--root", str(root)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lsqbq data: {path}: ")
    assert_no_partial_outputs(tmp_path, before)
