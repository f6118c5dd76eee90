"""A batch run through a network a few images at a time, so that each pass's activations stay in cache.

On a CPU a layer over a large batch writes activations far larger than the core's caches (a LeNet-5 over 1,000
Fashion-MNIST images: 46 MB after its first convolution), and the next layer reads them back from memory. In
passes of ``n`` images,

    y = cat(f(x[i : i + n]) for i = 0, n, 2n, ...),

more of them stay in cache. This is what an eval-mode network allows: each image's output depends on that image
alone. Per-image results can differ in the last bits from one pass over the whole batch, where a float layer's
kernel (oneDNN) blocks its sums differently for another batch size. Training and BatchNorm statistics (which mix
the images of a batch) never use it.

``chunk="auto"`` takes as many images per pass as fit in :data:`CHUNK_BYTES` of input (at least one). Measured
on a 2-core Zen 4, 1 thread, full-precision models over loader batches of 1,000 Fashion-MNIST images (the ``lsqbq``
command's heap settings, :mod:`lsqbq.allocator`): the small ResNet 42.6 ms per batch in one pass, 36.9 ms in
passes of 83 images; LeNet-5 114 ms and 110 ms. (Sizing the passes by the network's largest activation instead
was measured too: up to 1.5x faster for a 32x32 ResNet-18 at 1 thread, but up to 1.4x slower for the 28x28
networks at 2 threads, whose small layers need large passes to keep two threads busy.)
"""
from __future__ import annotations

import math
import threading
from typing import Callable

import torch
from torch import Tensor

__all__ = ["CHUNK_BYTES", "check_chunk", "chunk_images", "run_in_passes", "run_with_threads", "thread_switches"]

#: ``chunk="auto"``: the input bytes of one pass (ImageNet 224x224 float32: 1 image; 32x32: 21; 28x28x1: 83).
CHUNK_BYTES = 256 << 10


_switches = 0  # calls of run_with_threads that set another thread count (thread_switches)


def thread_switches() -> int:
    """How many calls of :func:`run_with_threads` so far set a thread count other than torch's (a traced graph
    does not replay such a setting: :mod:`lsqbq.kernels.frozen` checks that none happened while tracing)."""
    return _switches


def run_with_threads(threads: int, fn: Callable, *args):
    """``fn(*args)`` with torch's intra-op thread count set to ``threads`` for the call and restored after (also
    on an error); a plain call when it already is, or when the caller is not the main thread: the count is
    process-wide in torch, and two threads setting and restoring it at once could leave it changed."""
    global _switches
    before = torch.get_num_threads()
    if threads == before or threading.current_thread() is not threading.main_thread():
        return fn(*args)
    _switches += 1
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def check_chunk(chunk) -> int | str | None:
    """``chunk`` if it is ``"auto"``, None or an int >= 1; else ValueError naming it."""
    if chunk is None or chunk == "auto" or (isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1):
        return chunk
    raise ValueError(f"chunk must be 'auto', None (one pass) or a number of images >= 1, got {chunk!r}")


def chunk_images(x: Tensor, chunk: int | str | None) -> int:
    """Images per pass for input ``x`` of shape ``(B, ...)``: ``B`` for None, ``chunk`` for a number, else as many
    as fit in :data:`CHUNK_BYTES` (at least 1)."""
    batch = x.shape[0]
    if chunk is None:
        return batch
    if chunk == "auto":
        per_image = max(1, math.prod(x.shape[1:]) * x.element_size())
        return max(1, min(batch, CHUNK_BYTES // per_image))
    return min(batch, chunk)


def run_in_passes(fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int | str | None = "auto") -> Tensor:
    """``fn(x)`` for a batch ``x`` of shape ``(B, ...)`` computed over ``chunk_images(x, chunk)`` images at a time
    and concatenated along dim 0 (module docstring). One call of ``fn(x)`` when the batch fits one pass, when ``x``
    is not on the CPU (a GPU wants the whole batch), or when ``fn`` does not return one row per image (then it is
    called on the whole batch)."""
    if x.dim() < 1 or x.device.type != "cpu":
        return fn(x)
    n = chunk_images(x, chunk)
    if n >= x.shape[0]:
        return fn(x)
    outs = []
    for part in x.split(n):
        y = fn(part)
        if not isinstance(y, Tensor) or y.dim() == 0 or y.shape[0] != part.shape[0]:
            return fn(x)
        outs.append(y)
    return torch.cat(outs)
