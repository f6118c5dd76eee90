"""Checkpoint files: atomic saves without leftovers, weights_only loads, one-line errors, load_model."""
from __future__ import annotations

import importlib.util
import os
import random
import stat
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from lsqbq import atomic
from lsqbq import checkpoint as ckpt_io
from lsqbq.config import from_dict, model_options, to_dict
from lsqbq.errors import CheckpointError, CheckpointNotFoundError
from lsqbq.layers import QuantConv2d


def _tiny_model_checkpoint(path, **model):
    cfg = from_dict({"model": {"name": "resnet_small", "width": 4, "layers": [1], "x_quant": "ls-1",
                               "w_quant": "ls-1", **model}})
    options = model_options(cfg, 10, 1)
    net = ckpt_io.build_model(cfg.model.name, options)
    ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "config": to_dict(cfg), "model_options": options,
                         "model": net.state_dict(), "epoch": 1}, path)
    return net


def test_atomic_save_and_weights_only_load(tmp_path):
    path = tmp_path / "c.pt"
    ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "x": torch.ones(3), "rng": ckpt_io.rng_state()}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    state = ckpt_io.load(path)
    assert torch.equal(state["x"], torch.ones(3))
    torch.manual_seed(5)
    saved = ckpt_io.rng_state()
    a = torch.rand(3)
    ckpt_io.set_rng_state(ckpt_io.load(ckpt_io.save_atomic({"format": 1, **saved}, tmp_path / "r.pt")))
    assert torch.equal(torch.rand(3), a)


def test_failed_save_removes_its_temp_file_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt_io.save_atomic({"format": 1, "v": torch.zeros(2)}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_io.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt_io.save_atomic({"format": 1, "v": torch.ones(2)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    monkeypatch.undo()
    assert torch.equal(ckpt_io.load(path)["v"], torch.zeros(2))


def test_stale_temp_files_of_a_killed_save_are_removed_by_the_next_save(tmp_path):
    path = tmp_path / "checkpoint.pt"
    stale = [tmp_path / ".checkpoint.pt.abc123.tmp", tmp_path / ".checkpoint.pt.zz.tmp"]
    for s in stale:
        s.write_bytes(b"partial")
    other = tmp_path / ".other.pt.x.tmp"
    other.write_bytes(b"not ours")
    ckpt_io.save_atomic({"format": 1}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.x.tmp", "checkpoint.pt"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_permissions_the_umask_gives(tmp_path, umask):
    """Checkpoints (plain and compact), metrics files and their overwrites get ``0o666 & ~umask``, as
    ``open()`` gives: not the ``0600`` of a ``tempfile.mkstemp`` file."""
    old = os.umask(umask)
    try:
        written = [ckpt_io.save_atomic({"format": 1, "v": torch.ones(2)}, tmp_path / "plain.pt"),
                   ckpt_io.save_atomic({"format": 2, "model": {"w": torch.randn(300)}}, tmp_path / "c.pt",
                                       compact=True),
                   ckpt_io.write_text_atomic(tmp_path / "metrics.json", "{}\n"),
                   ckpt_io.write_text_atomic(tmp_path / "metrics.json", "{\"top1\": 1.0}\n")]
        (tmp_path / "open.txt").write_text("x")
    finally:
        os.umask(old)
    want = stat.S_IMODE((tmp_path / "open.txt").stat().st_mode)
    assert want == 0o666 & ~umask
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == want, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "metrics.json", "open.txt", "plain.pt"]
    assert ckpt_io.load(tmp_path / "c.pt")["model"]["w"].shape == (300,)


def test_temporary_file_names_never_reuse_an_existing_file(tmp_path, monkeypatch):
    """A name taken by another writer's temporary file is skipped (``O_EXCL``), never truncated."""
    theirs = tmp_path / ".m.json.aa.tmp"
    theirs.write_text("another writer")
    tokens = iter(["aa", "bb"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(tokens))
    fd, tmp = atomic._create_tmp(tmp_path / "m.json")
    os.close(fd)
    assert tmp.name == ".m.json.bb.tmp" and theirs.read_text() == "another writer"


def _with_repeated_entry(src: Path, dst: Path) -> str:
    """``dst``: the zip checkpoint ``src`` with a zeroed second copy of its largest entry appended; its name."""
    dst.write_bytes(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        big = max(z.infolist(), key=lambda i: i.file_size)
    with warnings.catch_warnings(), zipfile.ZipFile(dst, "a") as z:
        warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name"
        z.writestr(big.filename, bytes(big.file_size))
    return big.filename


@pytest.mark.parametrize("compact", [False, True])
def test_repeated_zip_entry_is_refused_naming_it(tmp_path, compact):
    """torch.load reads one of two same-named entries without a word; lsqbq refuses the file, naming the entry."""
    path = ckpt_io.save_atomic({"format": 2, "model": {"w": torch.randn(4096)}}, tmp_path / "c.pt", compact=compact)
    bad = tmp_path / "twice.pt"
    name = _with_repeated_entry(path, bad)
    assert torch.load(bad, weights_only=True)["model"] is not None  # torch alone accepts it
    with pytest.raises(CheckpointError) as err:
        ckpt_io.load(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}: damaged: the zip archive holds the entry {name!r} 2 times"), msg
    assert "\n" not in msg and "retrain" in msg


CORRUPT = {
    "empty": lambda good: b"",
    "truncated": lambda good: good[: len(good) // 2],
    "truncated_tail": lambda good: good[:-10],
    "random": lambda good: random.Random(0).randbytes(4096),
    "text": lambda good: b"model: resnet\n",
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_files_raise_checkpoint_error_naming_the_file(tmp_path, kind):
    good = tmp_path / "good.pt"
    ckpt_io.save_atomic({"format": 1, "x": torch.randn(2000)}, good)
    bad = tmp_path / f"{kind}.pt"
    bad.write_bytes(CORRUPT[kind](good.read_bytes()))
    with pytest.raises(CheckpointError) as err:
        ckpt_io.load(bad)
    msg = str(err.value)
    assert str(bad) in msg and "\n" not in msg and ("retrain" in msg or "lsqbq train" in msg), msg


def test_random_bytes_of_many_lengths_raise_checkpoint_error(tmp_path):
    """Seeded random files reach every branch of the unpickler (IndexError, struct.error, KeyError, EOFError, ...):
    each one is a one-line CheckpointError naming the file, never another exception or a warning."""
    bad = tmp_path / "random.pt"
    for seed in range(400):
        rng = random.Random(seed)
        bad.write_bytes(rng.randbytes(rng.choice([1, 2, 7, 64, 512, 8192])))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(CheckpointError) as err:
                ckpt_io.load(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value), (seed, str(err.value))


def test_pickled_code_is_refused_without_running_it(tmp_path, capfd):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": 1, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only") as err:
        ckpt_io.load(tmp_path / "evil.pt")
    assert "print" in str(err.value) and str(tmp_path / "evil.pt") in str(err.value)
    assert "pwned" not in capfd.readouterr().out


def test_foreign_and_incomplete_files(tmp_path):
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match=r"tensor\.pt: not an lsqbq checkpoint \(it holds a Tensor"):
        ckpt_io.load(tmp_path / "tensor.pt")
    torch.save({"model": {}}, tmp_path / "dict.pt")
    with pytest.raises(CheckpointError, match="without 'format'"):
        ckpt_io.load(tmp_path / "dict.pt")
    torch.save({"format": 1, "model": {}}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing config, model_options"):
        ckpt_io.load_model(tmp_path / "partial.pt")
    with pytest.raises(CheckpointNotFoundError, match="nope.pt"):
        ckpt_io.load(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        ckpt_io.load(tmp_path)


def test_load_model_rebuilds_the_same_network(tmp_path):
    net = _tiny_model_checkpoint(tmp_path / "c.pt")
    loaded = ckpt_io.load_model(tmp_path / "c.pt")
    assert not loaded.model.training and loaded.config.model.width == 4 and loaded.state["epoch"] == 1
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded.model(x), net.eval()(x), rtol=0, atol=0)
    other = ckpt_io.load_model(tmp_path / "c.pt", options={"w_quant": "ls-2"}).model   # re-quantized weights
    schemes = {m.w_scheme.name for m in other.modules() if isinstance(m, QuantConv2d)}
    assert schemes == {"ls-2"}


def test_width_mismatch_names_the_file_and_the_tensor(tmp_path):
    _tiny_model_checkpoint(tmp_path / "c.pt")
    state = ckpt_io.load(tmp_path / "c.pt")
    cfg = from_dict({"model": {"name": "resnet_small", "width": 8, "layers": [1]}})
    wide = ckpt_io.build_model("resnet_small", model_options(cfg, 10, 1))
    with pytest.raises(CheckpointError, match=r"c\.pt: the weights do not fit the model \(shape of .*\(4") as err:
        ckpt_io.load_weights(wide, state["model"], tmp_path / "c.pt")
    assert "width" in str(err.value)


def test_missing_model_options(tmp_path):
    _tiny_model_checkpoint(tmp_path / "c.pt")
    state = ckpt_io.load(tmp_path / "c.pt")
    state["model_options"] = {}
    torch.save(state, tmp_path / "noopts.pt")
    with pytest.raises(CheckpointError, match=r"noopts\.pt: the checkpoint holds no model options"):
        ckpt_io.load_model(tmp_path / "noopts.pt")


def test_x_quant_with_another_k_loads(tmp_path):
    """A model rebuilt with an activation scheme of another k drops the recorded moving average (was a size
    mismatch of x_scales_ema)."""
    _tiny_model_checkpoint(tmp_path / "c.pt", act_stats="off")
    for x_quant in ("ls-2", "fp", "gf-3"):
        model = ckpt_io.load_model(tmp_path / "c.pt", options={"x_quant": x_quant}).model
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


# ------------------------------------------------------------------------------------------ compact (format 2)


def _awkward_state():
    """Float32 values whose bits a lossy or byte-order-confused codec would change, plus entries kept as they are."""
    g = torch.Generator().manual_seed(3)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-45, -1e-45, 3.4e38, 1.17549435e-38])
    nan_payload = torch.tensor([0x7FC00001, 0xFFC12345, 0x7F800001], dtype=torch.int64).to(torch.int32).view(
        torch.float32)                                              # NaNs with payloads and a signalling NaN
    w = torch.randn(40, 30, generator=g) * 0.05
    return {
        "fc.weight": w,
        "conv.weight": torch.randn(8, 4, 3, 3, generator=g),
        "strided": w.t(),                                           # non-contiguous
        "special": torch.cat([special.repeat(40), nan_payload.repeat(10)]),
        "small": torch.randn(5, generator=g),                       # below the split threshold: stored as is
        "empty": torch.empty(0, 300),
        "steps": torch.tensor(7),                                   # int64 buffer
        "half": torch.randn(300, generator=g).half(),               # other dtypes stored as they are
    }


def _bits(t):
    return t.contiguous().view(torch.int32) if t.dtype == torch.float32 else t


def test_split_state_round_trips_every_bit(tmp_path):
    state = _awkward_state()
    split = ckpt_io.split_state(state)
    assert isinstance(split["fc.weight"], dict) and isinstance(split["special"], dict)
    assert split["small"] is state["small"] and split["steps"] is state["steps"] and split["half"] is state["half"]
    joined = ckpt_io.join_state(split, "x.pt")
    assert list(joined) == list(state)
    for k, v in state.items():
        assert joined[k].dtype == v.dtype and joined[k].shape == v.shape, k
        assert torch.equal(_bits(joined[k]), _bits(v)), k
    # the byte planes are little-endian: the high plane holds sign and exponent
    assert torch.equal(split["conv.weight"]["hi"] >> 7, (state["conv.weight"].flatten() < 0).to(torch.uint8))


def test_compact_checkpoint_loads_the_same_tensors_and_is_smaller(tmp_path):
    state = {"fc1.weight": torch.randn(500, 800, generator=torch.Generator().manual_seed(0)) * 0.04,
             **_awkward_state()}
    obj = {"format": 1, "model": state, "epoch": 3, "history": [{"top1": 90.0}]}
    plain = ckpt_io.save_atomic(obj, tmp_path / "plain.pt")
    compact = ckpt_io.save_atomic(obj, tmp_path / "compact.pt", compact=True)
    assert compact.stat().st_size < 0.9 * plain.stat().st_size     # ~15 % smaller for weight-like values
    back = ckpt_io.load(compact)
    assert back["format"] == 2 and back["epoch"] == 3 and back["history"] == obj["history"]
    for k, v in state.items():
        assert torch.equal(_bits(back["model"][k]), _bits(v)), k
    raw = torch.load(compact, weights_only=True)                   # plain torch reads it too (split entries)
    assert set(raw["model"]["fc.weight"]) == {"f32_split", "hi", "lo"}
    again = ckpt_io.save_atomic(obj, tmp_path / "again.pt", compact=True)
    assert again.read_bytes() == compact.read_bytes()               # deterministic: equal checkpoints, equal files
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("compact", [False, True])
def test_flipped_bit_in_the_weights_is_a_checkpoint_error(tmp_path, compact):
    """torch.load does not check the zip's CRC-32: without lsqbq's check a flipped weight bit loads silently."""
    path = ckpt_io.save_atomic({"format": 2, "model": {"w": torch.randn(4096) * 0.1}}, tmp_path / "c.pt",
                               compact=compact)
    with zipfile.ZipFile(path) as z:
        big = max(z.infolist(), key=lambda i: i.compress_size)       # the (low bytes of the) weights
        data = bytearray(path.read_bytes())
        start = big.header_offset + 30 + len(big.filename.encode()) + len(big.extra)
    data[start + big.compress_size // 2] ^= 0x10
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    assert torch.load(bad, weights_only=True)["model"] is not None  # torch alone accepts the damaged file
    with pytest.raises(CheckpointError, match=r"bad\.pt: damaged: the checksum of 'archive/data/\d+' does not match"):
        ckpt_io.load(bad)


@pytest.mark.parametrize("entry, needs", [
    ({"f32_split": [2, 3], "hi": torch.zeros(6, dtype=torch.uint8), "lo": torch.zeros(5, 3, dtype=torch.uint8)},
     "and lo uint8[6, 3]"),
    ({"f32_split": [4], "hi": torch.zeros(4), "lo": torch.zeros(4, 3, dtype=torch.uint8)}, "hi uint8[4]"),
    ({"f32_split": "4", "hi": torch.zeros(4, dtype=torch.uint8)}, "shape '4'"),
    ({"f32_split": [-1, 4], "hi": torch.zeros(4, dtype=torch.uint8)}, "shape [-1, 4]"),
])
def test_malformed_split_entry_names_the_entry(tmp_path, entry, needs):
    torch.save({"format": 2, "model": {"layer.weight": entry}}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="model entry layer.weight is malformed") as err:
        ckpt_io.load(tmp_path / "m.pt")
    assert needs in str(err.value) and str(tmp_path / "m.pt") in str(err.value)


def test_checkpoint_of_a_newer_format_asks_for_an_upgrade(tmp_path):
    torch.save({"format": ckpt_io.FORMAT + 1, "model": {}}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match=r"newer lsqbq \(checkpoint format 3; this version reads formats 1 to 2\)"):
        ckpt_io.load(tmp_path / "new.pt")
    torch.save({"format": True, "model": {}}, tmp_path / "bool.pt")
    with pytest.raises(CheckpointError, match="not an lsqbq checkpoint"):
        ckpt_io.load(tmp_path / "bool.pt")


def test_compact_script_converts_format_1_bit_for_bit_and_only_once(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("compact_checkpoints",
                                                  Path(__file__).parents[2] / "scripts" / "compact_checkpoints.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run = tmp_path / "lenet5" / "fp_fp" / "s0" / "checkpoint.pt"
    _tiny_model_checkpoint(run, width=16)                           # written plain
    old = {"format": 1, **{k: v for k, v in ckpt_io.load(run).items() if k != "format"}}
    torch.save(old, run)                                            # as an earlier release wrote it
    assert script.main([str(tmp_path)]) == 0
    new = ckpt_io.load(run)
    assert new["format"] == 2 and script.same({**old, "format": 2}, new)
    assert isinstance(torch.load(run, weights_only=True)["model"]["stages.0.0.conv1.weight"], dict)   # 16x16x3x3
    size = run.stat().st_size
    assert script.main([str(run)]) == 0 and run.stat().st_size == size    # already compact: left alone
    assert sorted(p.name for p in run.parent.iterdir()) == ["checkpoint.pt"]
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "empty-dir")])
