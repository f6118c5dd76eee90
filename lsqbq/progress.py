"""Training progress for people and logs: a tqdm bar on a terminal, plain lines otherwise.

``progress: auto`` shows the bar when both stdout and stderr are terminals and otherwise prints one line every
``progress_every`` batches (default: about ten per epoch) and one per epoch to stdout, e.g.::

    epoch 2/6 batch 100/469: loss 0.5421 top1 80.1 % 2345 img/s lr 2.00e-03 ETA epoch 0:00:42, run 0:05:10
    epoch 2/6: train_loss 0.4312 val_loss 0.4020 top1 85.31 top5 99.40 lr 1.50e-03 2290 img/s ETA 0:04:30

The ETA extrapolates the wall time per batch (evaluations included) of this invocation to the batches left.
Only the main distributed process reports.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (hours unbounded); ``unknown`` for a non-finite estimate."""
    if not math.isfinite(seconds):
        return "unknown"
    s = max(int(round(seconds)), 0)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _mode(setting: str, enabled: bool) -> str:
    if not enabled or setting == "off":
        return "off"
    if setting == "on":
        return "bar"
    if setting == "lines":
        return "lines"
    return "bar" if (sys.stdout.isatty() and sys.stderr.isatty()) else "lines"


class Progress:
    """Reports one training invocation: ``epochs`` epochs of ``steps_per_epoch`` batches from ``start_epoch``.

    ``setting`` is ``cfg.progress`` (auto | on | lines | off); ``every`` the batches between lines (None: about
    ten per epoch); ``enabled`` False silences everything (non-main ranks).
    """

    def __init__(self, setting: str, epochs: int, steps_per_epoch: int, start_epoch: int = 0,
                 every: int | None = None, enabled: bool = True, stream: TextIO | None = None):
        self.mode = _mode(setting, enabled)
        self.enabled = enabled
        self.epochs, self.steps, self.start_epoch = epochs, max(steps_per_epoch, 1), start_epoch
        self.every = every or max(self.steps // 10, 1)
        self.stream = stream
        self.t_start = time.perf_counter()
        self.done = 0            # batches iterated in this invocation (over all epochs)
        self.epoch = start_epoch
        self._bar = None

    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def say(self, text: str) -> None:
        """Print one line (main process only)."""
        if self.enabled:
            print(text, file=self._out(), flush=True)

    def eta(self, batches_left_in_epoch: int) -> tuple[float, float]:
        """Seconds left in the epoch and in the run, from the mean wall time per batch so far."""
        if self.done == 0:
            return float("nan"), float("nan")
        per_batch = (time.perf_counter() - self.t_start) / self.done
        run_left = batches_left_in_epoch + self.steps * (self.epochs - self.epoch - 1)
        return per_batch * batches_left_in_epoch, per_batch * run_left

    # ---------------------------------------------------------------------------------- epoch
    def wrap(self, loader, epoch: int):
        """Iterate ``loader`` for ``epoch`` (0-based), with a bar when the mode is ``bar``."""
        self.epoch = epoch
        self._t_epoch = time.perf_counter()
        if self.mode != "bar":
            self._bar = None
            return loader
        from tqdm import tqdm

        self._bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, dynamic_ncols=True)
        return self._bar

    def batch(self, index: int, loss_sum: float, correct: float, seen: int, lr: float) -> None:
        """After batch ``index`` (0-based) of the epoch: running mean loss, top-1 and throughput."""
        self.done += 1
        if self.mode == "off" or seen == 0:
            return
        ips = seen / max(time.perf_counter() - self._t_epoch, 1e-9)
        loss, top1 = loss_sum / seen, 100.0 * correct / seen
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.3f}", acc=f"{top1:.1f}", img_s=f"{ips:.0f}", lr=f"{lr:.2e}")
            return
        n = index + 1
        if self.mode == "lines" and (n % self.every == 0 or n == self.steps) and n < self.steps:
            ep_left, run_left = self.eta(self.steps - n)
            self.say(f"epoch {self.epoch + 1}/{self.epochs} batch {n}/{self.steps}: loss {loss:.4f} top1 {top1:.1f} % "
                     f"{ips:.0f} img/s lr {lr:.2e} ETA epoch {format_duration(ep_left)}, run {format_duration(run_left)}")

    def end_epoch(self, row: dict[str, Any]) -> None:
        """The per-epoch summary line (printed in every mode but off-rank)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        _, run_left = self.eta(0)
        eta = f" ETA {format_duration(run_left)}" if row["epoch"] < self.epochs and math.isfinite(run_left) else ""
        self.say(f"epoch {row['epoch']}/{self.epochs}: train_loss {row['train_loss']:.4f} "
                 f"val_loss {row['val_loss']:.4f} top1 {row['top1']:.2f} top5 {row['top5']:.2f} lr {row['lr']:.2e} "
                 f"{row['images_per_s']:.0f} img/s{eta}")
