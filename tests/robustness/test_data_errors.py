"""Datasets: crafted, corrupt, truncated and malformed files are a DataError naming the file; no code runs."""
from __future__ import annotations

import copyreg
import gzip
import io
import os
import pickle
import struct
import subprocess
import tarfile

import numpy as np
import pytest

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

from lsqbq.data import DataError, DataNotFoundError, build_loaders, cifar, data_hash, idx, imagefolder, prepare
from lsqbq.errors import LsqbqError

from ._helpers import (IDX_FILES, assert_no_partial_outputs, cifar_batch, idx_bytes, snapshot, write_cifar,
                       write_idx_set, write_imagefolder, write_pickle)

# ------------------------------------------------------------------------------------- CIFAR: no code runs


class _Reduce:
    """An object that pickles as ``func(*args)``: what a crafted file runs on a plain ``pickle.load``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    touch = f"touch '{marker}'"
    code = f"open({str(marker)!r}, 'w').close()"
    batch = cifar_batch(8)
    return {
        "os.system": lambda: pickle.dumps(_Reduce(os.system, touch), protocol=2),
        "builtins.exec": lambda: pickle.dumps(_Reduce(exec, code), protocol=4),
        "builtins.eval": lambda: pickle.dumps(_Reduce(eval, f"__import__('os').system({touch!r})"), protocol=0),
        "subprocess.call": lambda: pickle.dumps(_Reduce(subprocess.call, ["touch", str(marker)]), protocol=2),
        "builtins.open": lambda: pickle.dumps(_Reduce(open, str(marker), "w"), protocol=5),
        # the payload hidden inside an otherwise valid batch dict
        "nested-in-data": lambda: pickle.dumps({**batch, "data": _Reduce(os.system, touch)}, protocol=2),
        "nested-in-labels": lambda: pickle.dumps({**batch, "labels": [_Reduce(exec, code)]}, protocol=2),
        # protocol-0 INST opcode (calls the class named by module/name with the marked arguments)
        "INST-opcode": lambda: b"(S'" + touch.encode() + b"'\nios\nsystem\n.",
        # a numpy array of Python objects whose element is the payload
        "object-array": lambda: pickle.dumps({**batch, "data": np.array([_Reduce(os.system, touch)], dtype=object)},
                                             protocol=2),
    }


PAYLOADS = list(_payloads("m"))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_crafted_cifar_batch_runs_no_code(tmp_path, payload):
    root = tmp_path / "cifar"
    folder = write_cifar(root)
    marker = tmp_path / "PWNED"
    (folder / "data_batch_1").write_bytes(_payloads(marker)[payload]())
    with pytest.raises(DataError) as e:
        cifar.load("cifar10", root)
    assert str(folder / "data_batch_1") in str(e.value)
    assert "refused" in str(e.value) or "cannot decode" in str(e.value)
    assert not marker.exists(), "the crafted pickle ran code"


def test_crafted_cifar_batch_through_extension_registry_runs_no_code(tmp_path):
    """The EXT opcodes name a global through copyreg's registry; they go through the same allow-list."""
    root = tmp_path / "cifar"
    folder = write_cifar(root)
    marker = tmp_path / "PWNED"
    copyreg.add_extension("posix", "system", 0xF0)
    try:
        raw = pickle.dumps(_Reduce(os.system, f"touch '{marker}'"), protocol=2)
        assert b"\x82" in raw  # EXT1 opcode
        (folder / "test_batch").write_bytes(raw)
        with pytest.raises(DataError, match="test_batch"):
            cifar.load("cifar10", root)
    finally:
        copyreg.remove_extension("posix", "system", 0xF0)
    assert not marker.exists()


def test_plain_pickle_would_have_run_the_payload(tmp_path):
    """Control: the payload used above does run under an unrestricted ``pickle.loads``."""
    marker = tmp_path / "PWNED"
    pickle.loads(_payloads(marker)["os.system"]())
    assert marker.exists()


# ------------------------------------------------------------------------------- CIFAR: malformed files


def _malformed(path):
    good = pickle.dumps(cifar_batch(8), protocol=2)
    return {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "random-bytes": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "not-a-dict": pickle.dumps([1, 2, 3], protocol=2),
        "missing-data-key": pickle.dumps({"labels": [1, 2]}, protocol=2),
        "missing-labels-key": pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}, protocol=2),
        "wrong-row-size": pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, protocol=2),
        "label-count-mismatch": pickle.dumps({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1]}, protocol=2),
        "label-out-of-range": pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, protocol=2),
        "negative-label": pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [-1, 0]}, protocol=2),
        "float-data": pickle.dumps({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, protocol=2),
        "string-labels": pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": ["a", "b"]}, protocol=2),
        # resource exhaustion: a terabyte array allocated by calling ndarray or _reconstruct directly
        "ndarray-called": pickle.dumps({"data": _Reduce(np.ndarray, (10**12,), "u1"), "labels": []}, protocol=2),
        "reconstruct-huge": pickle.dumps({"data": _Reduce(_reconstruct, np.ndarray, (10**12,), b"b"), "labels": []},
                                         protocol=2),
        "object-dtype": pickle.dumps({"data": np.array([1, 2], dtype=object), "labels": [0]}, protocol=2),
    }


MALFORMED = {  # case -> what the message must also name
    "truncated": "corrupt", "empty": "corrupt", "random-bytes": "", "not-a-dict": "list",
    "missing-data-key": "'data'", "missing-labels-key": "'labels'", "wrong-row-size": "(2, 100)",
    "label-count-mismatch": "(2,)", "label-out-of-range": "[0, 10)", "negative-label": "[-1, 0]",
    "float-data": "float32", "string-labels": "labels", "ndarray-called": "cannot decode",
    "reconstruct-huge": "refused", "object-dtype": "Python objects",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_cifar_batch_names_file(tmp_path, case):
    root = tmp_path / "cifar"
    folder = write_cifar(root)
    path = folder / "data_batch_2"
    path.write_bytes(_malformed(path)[case])
    before = snapshot(tmp_path)
    with pytest.raises(DataError) as e:
        cifar.load("cifar10", root)
    msg = str(e.value)
    assert str(path) in msg and MALFORMED[case] in msg, msg
    assert "\n" not in msg
    assert_no_partial_outputs(tmp_path, before)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_standin_loads_with_every_pickle_protocol(tmp_path, protocol):
    write_cifar(tmp_path, "cifar100", n_train=12, n_test=4, protocol=protocol)
    arrays, digest = cifar.load("cifar100", tmp_path)
    assert arrays["train_images"].shape == (12, 32, 32, 3) and arrays["test_labels"].shape == (4,)
    assert len(digest) == 64


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the official CIFAR files were written."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def test_cifar_batch_in_the_python2_format_loads(tmp_path):
    """Byte-string keys and array data, and ``numpy.core.multiarray`` as the official files name it."""
    folder = write_cifar(tmp_path)
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump({b"batch_label": b"testing batch 1 of 1", b"labels": [1, 2, 3, 4, 5, 6],
                                       b"data": data, b"filenames": [b"a.png"] * 6})
    raw = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"_codecs" not in raw and b"numpy.core.multiarray" in raw
    (folder / "test_batch").write_bytes(raw)
    arrays, _ = cifar.load("cifar10", tmp_path)
    assert arrays["test_labels"].tolist() == [1, 2, 3, 4, 5, 6]
    assert arrays["test_images"][2, 5, 7, 1] == data[2, 1 * 1024 + 5 * 32 + 7]


def test_cifar_batch_of_official_size_must_match_the_official_md5(tmp_path):
    folder = write_cifar(tmp_path)
    path = write_pickle(folder / "data_batch_1", cifar_batch(10000), protocol=2)
    with pytest.raises(DataError) as e:
        cifar.load("cifar10", tmp_path)
    msg = str(e.value)
    assert str(path) in msg and cifar.FILE_MD5["cifar10"]["data_batch_1"] in msg and "10000" in msg


def test_missing_cifar_batch_is_data_not_found(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataNotFoundError) as e:
        cifar.load("cifar10", tmp_path)
    assert isinstance(e.value, FileNotFoundError) and str(folder / "data_batch_4") in str(e.value)


def test_cifar_archive_with_wrong_md5_is_refused_before_extraction(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        payload = pickle.dumps(cifar_batch(4), protocol=2)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    before = snapshot(tmp_path)
    with pytest.raises(DataError) as e:
        cifar.load("cifar10", tmp_path)
    msg = str(e.value)
    assert str(archive) in msg and cifar.ARCHIVE_MD5["cifar10"][1] in msg
    assert not (tmp_path / "cifar-10-batches-py").exists()
    assert_no_partial_outputs(tmp_path, before)


def _standin_archive(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _official_like_archive(tmp_path, monkeypatch, extra=None):
    """A stand-in archive in ``tmp_path/data`` whose md5 the loader is told to expect."""
    from lsqbq.data._common import file_md5

    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    members = {f"cifar-10-batches-py/{f}": pickle.dumps(cifar_batch(4, seed=i), protocol=2)
               for i, f in enumerate(names)}
    (tmp_path / "data").mkdir()
    archive = _standin_archive(tmp_path / "data" / "cifar-10-python.tar.gz", {**members, **(extra or {})})
    monkeypatch.setitem(cifar.ARCHIVE_MD5, "cifar10", ("cifar-10-python.tar.gz", file_md5(archive)))
    return tmp_path / "data"


def test_cifar_archive_with_the_expected_md5_is_extracted(tmp_path, monkeypatch):
    root = _official_like_archive(tmp_path, monkeypatch, {"outside.txt": b"x"})
    arrays, _ = cifar.load("cifar10", root)
    assert arrays["train_images"].shape == (20, 32, 32, 3)
    assert not (root / "outside.txt").exists()  # only the batch folder is extracted


def test_cifar_archive_with_a_path_traversal_is_refused_before_writing(tmp_path, monkeypatch):
    root = _official_like_archive(tmp_path, monkeypatch, {"cifar-10-batches-py/../../escaped": b"x"})
    before = snapshot(tmp_path)
    with pytest.raises(DataError) as e:
        cifar.load("cifar10", root)
    assert "escaped" in str(e.value) and str(root / "cifar-10-python.tar.gz") in str(e.value)
    assert not (tmp_path / "escaped").exists() and not (root / "cifar-10-batches-py").exists()
    assert_no_partial_outputs(tmp_path, before)


def test_cifar_prepare_from_corrupt_source_copies_nothing(tmp_path):
    source = tmp_path / "source"
    folder = write_cifar(source)
    (folder / "test_batch").write_bytes(b"\x80\x02garbage")
    root = tmp_path / "root"
    with pytest.raises(DataError, match="test_batch"):
        prepare("cifar10", root, source)
    assert not root.exists()


# -------------------------------------------------------------------------------------------------- IDX


def _idx_root(tmp_path, gz=True):
    return write_idx_set(tmp_path / "mnist", n_train=20, n_test=10, gz=gz)


def _gz_cases(raw):
    packed = gzip.compress(raw)
    body = bytearray(packed)
    body[20:40] = b"\xff" * 20  # inside the deflate stream
    crc = bytearray(packed)
    crc[-8] ^= 0xFF  # the CRC32 trailer
    return {
        "deflate-stream-corrupt": (bytes(body), "corrupt"),
        "truncated": (packed[: len(packed) // 2], "truncated"),
        "not-gzip": (b"this is not gzip data at all", "corrupt"),
        "crc-mismatch": (bytes(crc), "corrupt"),
    }


@pytest.mark.parametrize("case", ["deflate-stream-corrupt", "truncated", "not-gzip", "crc-mismatch"])
def test_corrupt_gz_names_file(tmp_path, case):
    root = _idx_root(tmp_path)
    path = root / "train-labels-idx1-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    data, word = _gz_cases(raw)[case]
    path.write_bytes(data)
    with pytest.raises(DataError) as e:
        idx.load("mnist", root)
    msg = str(e.value)
    assert str(path) in msg and word in msg, msg
    assert not isinstance(e.value, FileNotFoundError)


@pytest.mark.parametrize("key,magic", [("train_images", 0x00000801), ("train_labels", 0x00000803),
                                       ("test_images", 0xDEADBEEF), ("test_labels", 0x00000D01)])
def test_idx_wrong_magic_names_file_and_magic(tmp_path, key, magic):
    root = _idx_root(tmp_path, gz=False)
    path = root / IDX_FILES[key]
    raw = bytearray(path.read_bytes())
    raw[:4] = magic.to_bytes(4, "big")
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        idx.load("mnist", root)
    msg = str(e.value)
    want = idx.MAGIC[3 if key.endswith("images") else 1]
    assert str(path) in msg and f"0x{magic:08x}" in msg and f"0x{want:08x}" in msg, msg


@pytest.mark.parametrize("case", ["payload-truncated", "trailing-bytes", "header-truncated", "two-bytes"])
def test_idx_size_mismatch_names_file_and_sizes(tmp_path, case):
    root = _idx_root(tmp_path, gz=False)
    path = root / IDX_FILES["test_images"]
    raw = path.read_bytes()  # 16-byte header + 10 * 28 * 28
    new = {"payload-truncated": raw[:-100], "trailing-bytes": raw + b"\0" * 7, "header-truncated": raw[:10],
           "two-bytes": raw[:2]}[case]
    path.write_bytes(new)
    with pytest.raises(DataError) as e:
        idx.load("mnist", root)
    msg = str(e.value)
    assert str(path) in msg and f"{len(new)} bytes" in msg, msg
    if case in ("payload-truncated", "trailing-bytes"):
        assert str(len(raw)) in msg and "(10, 28, 28)" in msg


def test_idx_wrong_image_count_names_file_and_shapes(tmp_path):
    root = _idx_root(tmp_path)
    with pytest.raises(DataError) as e:
        idx.load("mnist", root)
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and "(20, 28, 28)" in msg and "(60000, 28, 28)" in msg


def test_idx_missing_file_is_data_not_found(tmp_path):
    root = _idx_root(tmp_path)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError) as e:
        idx.load("mnist", root)
    assert "t10k-labels-idx1-ubyte" in str(e.value) and "lsqbq data prepare" in str(e.value)


def test_idx_prepare_from_corrupt_source_copies_nothing(tmp_path):
    source = _idx_root(tmp_path)
    path = source / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:30])
    root = tmp_path / "copy"
    with pytest.raises(DataError, match="t10k-images"):
        prepare("mnist", root, source)
    assert not root.exists()


# ------------------------------------------------------------------------------------------ ImageFolder


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BAD_IMAGES = {  # case -> (file to damage, how)
    "truncated-jpeg": ("train/cat/1.jpg", _truncate),
    "random-bytes-jpeg": ("train/dog/0.jpg", lambda p: p.write_bytes(os.urandom(300))),
    "text-as-png": ("val/dog/0.png", lambda p: p.write_text("not an image")),
    "header-only-jpeg": ("val/cat/0.jpg", lambda p: p.write_bytes(p.read_bytes()[:20])),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_corrupt_image_names_file(imagefolder_root, case):
    rel, damage = BAD_IMAGES[case]
    path = imagefolder_root / rel
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    damage(path)
    train, val, _, _ = imagefolder.build(imagefolder_root, size=8)
    ds = train if rel.startswith("train") else val
    i = [s[0] for s in ds.samples].index(str(path))
    with pytest.raises(DataError) as e:
        ds[i]
    msg = str(e.value)
    assert str(path) in msg and "bytes" in msg and "\n" not in msg


def test_empty_image_is_refused_before_training(imagefolder_root):
    path = imagefolder_root / "val" / "dog" / "0.jpg"
    path.write_bytes(b"")
    with pytest.raises(DataError) as e:
        imagefolder.build(imagefolder_root, size=8)
    assert str(path) in str(e.value) and "0 bytes" in str(e.value)


def test_corrupt_image_in_a_worker_process_names_file(imagefolder_root):
    """A DataLoader worker re-raises the same class; the message still names the file."""
    from lsqbq.config import from_dict

    path = imagefolder_root / "train" / "dog" / "1.jpg"
    _truncate(path)
    cfg = from_dict({"seed": 0, "data": {"name": "imagefolder", "root": str(imagefolder_root), "batch_size": 4,
                                         "eval_batch_size": 4, "image_size": 8, "workers": 1}})
    train, _ = build_loaders(cfg)
    with pytest.raises(DataError) as e:
        for _ in train:
            pass
    assert str(path) in str(e.value)


def test_missing_val_split_is_data_not_found(imagefolder_root):
    import shutil

    shutil.rmtree(imagefolder_root / "val")
    with pytest.raises(DataNotFoundError) as e:
        imagefolder.build(imagefolder_root)
    assert str(imagefolder_root / "val") in str(e.value)


def test_class_folders_that_differ_are_named(imagefolder_root):
    write_imagefolder(imagefolder_root, classes=("bird",), per_split=(("val", 1),))
    with pytest.raises(DataError) as e:
        imagefolder.build(imagefolder_root)
    assert "bird" in str(e.value) and "2 vs 3" in str(e.value)


def test_class_folder_without_images_is_named(imagefolder_root):
    (imagefolder_root / "train" / "fish").mkdir()
    (imagefolder_root / "val" / "fish").mkdir()
    with pytest.raises(DataError) as e:
        imagefolder.build(imagefolder_root)
    assert "fish" in str(e.value)


# ------------------------------------------------------------------------------ every data error is one


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder"])
def test_missing_root_of_every_dataset_is_one_error_class(tmp_path, name):
    with pytest.raises(DataNotFoundError) as e:
        data_hash(name, tmp_path / "nowhere")
    assert isinstance(e.value, LsqbqError) and e.value.exit_code == 3
    assert str(tmp_path / "nowhere") in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "nowhere").exists()


def test_unknown_dataset_is_a_config_error(tmp_path):
    from lsqbq.errors import ConfigError

    with pytest.raises(ConfigError, match="'svhn'.*fashion-mnist"):
        data_hash("svhn", tmp_path)


def test_train_end_to_end_corrupt_image_fails_the_run_naming_the_file(imagefolder_root, tmp_path, capsys):
    """Through ``lsqbq train``: exit 3, one line naming the image, the MLflow run FAILED, no outputs."""
    import sqlite3

    from lsqbq import cli

    from ._helpers import REPO

    bad = imagefolder_root / "train" / "dog" / "1.jpg"
    _truncate(bad)
    store = tmp_path / "mlflow.db"
    sets = {"data.name": "imagefolder", "data.root": imagefolder_root, "data.train_subset": "null",
            "data.test_subset": "null", "data.batch_size": 2, "data.image_size": 8, "model.width": 4, "threads": 1,
            "tracking.uri": f"sqlite:///{store}"}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    before = snapshot(tmp_path)
    code = cli.main(["train", "--config", str(REPO / "config" / "smoke.yaml"), *args, "--out", str(tmp_path / "run")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lsqbq ")]
    assert code == 3 and len(err) == 1 and err[0].startswith("lsqbq train: ") and str(bad) in err[0], err
    with sqlite3.connect(store) as db:
        assert [s for (s,) in db.execute("select status from runs")] == ["FAILED"]
    assert not (tmp_path / "run").exists()
    assert_no_partial_outputs(tmp_path, before, allowed=("mlflow.db", "mlflow.db.lock"))
