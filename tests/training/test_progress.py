"""Progress reporting: lines every N batches and per epoch (loss, top-1, images/s, ETA) when not on a terminal."""
from __future__ import annotations

import io
import re

from lsqbq.progress import Progress, format_duration


def _feed(progress: Progress, epoch: int, batches: int, batch: int = 10):
    loss_sum = correct = seen = 0.0
    for i, _ in enumerate(progress.wrap(range(batches), epoch)):
        loss_sum, correct, seen = loss_sum + 0.5 * batch, correct + 0.8 * batch, seen + batch
        progress.batch(i, loss_sum, correct, int(seen), 1e-3)
    progress.end_epoch({"epoch": epoch + 1, "train_loss": 0.5, "val_loss": 0.6, "top1": 80.0, "top5": 99.0,
                        "lr": 1e-3, "images_per_s": 123.0})


def test_lines_every_n_batches_and_per_epoch():
    out = io.StringIO()
    p = Progress("lines", epochs=3, steps_per_epoch=25, start_epoch=1, every=10, stream=out)
    _feed(p, 1, 25)
    _feed(p, 2, 25)
    lines = out.getvalue().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["epoch 2/3 batch 10/25", "epoch 2/3 batch 20/25", "epoch 2/3",
                                                  "epoch 3/3 batch 10/25", "epoch 3/3 batch 20/25", "epoch 3/3"]
    assert re.fullmatch(r"epoch 2/3 batch 10/25: loss 0\.5000 top1 80\.0 % \d+ img/s lr 1\.00e-03 "
                        r"ETA epoch \d+:\d\d:\d\d, run \d+:\d\d:\d\d", lines[0]), lines[0]
    assert lines[2].startswith("epoch 2/3: train_loss 0.5000 val_loss 0.6000 top1 80.00") and "ETA" in lines[2]
    assert "ETA" not in lines[5]                                          # nothing left after the last epoch


def test_default_interval_is_about_ten_lines_per_epoch():
    out = io.StringIO()
    _feed(Progress("lines", epochs=1, steps_per_epoch=469, stream=out), 0, 469)
    assert len(out.getvalue().splitlines()) == 10 + 1         # batches 46, 92, ..., 460 and the epoch line


def test_off_and_other_ranks_are_quiet_and_auto_prints_lines_when_piped(capsys):
    for p in (Progress("off", 1, 5, stream=io.StringIO()), Progress("lines", 1, 5, enabled=False)):
        _feed(p, 0, 5)
    off = Progress("off", 1, 5)
    _feed(off, 0, 5)
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1 and captured.out.startswith("epoch 1/1: train_loss")  # the epoch line only
    auto = Progress("auto", 1, 4, every=2)                               # stdout is not a terminal under pytest
    assert auto.mode == "lines"
    _feed(auto, 0, 4)
    assert "epoch 1/1 batch 2/4: loss" in capsys.readouterr().out


def test_format_duration():
    assert format_duration(0) == "0:00:00" and format_duration(3725.4) == "1:02:05"
    assert format_duration(90061) == "25:01:01" and format_duration(float("nan")) == "unknown"
