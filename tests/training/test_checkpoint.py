"""Checkpoint files: atomic saves without leftovers, weights_only loads, one-line errors, load_model."""
from __future__ import annotations

import random
import warnings

import pytest
import torch

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
