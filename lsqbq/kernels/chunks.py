"""A converted network run over a large batch a few images at a time, so each image's activations stay in cache.

A bitwise network spends little arithmetic per activation (a popcount covers 64 of them), so once a layer's input
and output no longer fit in the core's L2 cache it waits on memory. Layer by layer over a whole batch they do not:
the binary ResNet-18 at 224x224 writes 0.8 MB of float activations per image after every block of its first
stage, 13 MB for a batch of 16. Passing the batch through the whole network ``n`` images at a time keeps more of
them in cache (measured on a 2-core Zen 4, 1 thread, batch 16: 83 ms in one pass, 54 ms one image at a time, on an
earlier engine; the passes of eight below are faster still).

:class:`BatchChunks` replaces ``forward`` of the module :func:`~lsqbq.kernels.to_bitwise` returns: ``y =
cat(forward(x[i:i+n]) for i in 0, n, 2n, ...)`` (:func:`lsqbq.passes.run_in_passes`), with ``n`` images per pass
(``chunk="auto"``: below). The passes run one after another, each layer's work split over torch's threads as in a
single pass. (Running them as streams, one Python thread per core with one torch thread each, was measured too: on
par for the 224x224 ResNet-18 and up to 1.7x slower for the 28x28 models, whose many small ops then wait on each
other for the interpreter lock.) This assumes what an eval-mode network guarantees: each image's output depends on
that image alone. Per-image results can still differ in the last bits where a float layer's kernel (oneDNN) blocks
its sums differently for another batch size; the XNOR/popcount layers compute each output in a fixed order
whatever the batch.

``chunk="auto"`` sizes the passes by the network's largest activation: ``n = max(MIN_PASS_IMAGES,
PASS_ACTIVATION_BYTES // a)`` images, with ``a`` the bytes per image of the largest output of any of its leaf
modules, measured (forward hooks) during the first pass of the first batch of each input shape, which takes the
images that fit in :data:`lsqbq.passes.CHUNK_BYTES` of input (at least :data:`MIN_PASS_IMAGES`); the batch is then
split into passes of equal size (``ceil(B / ceil(B / n))`` images), so no short last pass pays a whole pass's
overhead. A batch of at most :data:`MIN_PASS_IMAGES` images is one pass, measured nothing.
Why the activation: a network's largest activation, not its input, is what must stay in cache, and the input
budget alone gave the 28x28 networks, whose first activations are small (the ResNet's 12,544 bytes per image),
passes of 83 images, each paying every layer's call and thread wake-up once more. Measured on a 2-core Zen 4,
ms per batch of 256, the 28x28 checkpoints converted with stored / fitted scales, passes of 83 / 128 / 256
images: the small ResNet ls-1 stored 8.55 / 7.39 / 7.31 on 1 thread and 5.87 / 4.62 / 4.07 on 2, ls-2 fitted
23.29 / 22.49 / 21.95 and 13.46 / 12.00 / 11.60; LeNet-5 (46,080 bytes per image) ls-1 fitted 11.25 / 11.09 /
12.21 and 6.57 / 6.31 / 6.76. A CIFAR ResNet-18 (32x32, 262,144 bytes per image) at batch 128 preferred small
passes: 158.3 / 163.8 / 165.1 ms for passes of 21 / 42 / 85 on 1 thread. The budget of 4 MiB gives 334 images of
the small ResNet, 91 of LeNet-5, 16 of the CIFAR ResNet-18 and the floor of 8 at 224x224.

Why a floor of :data:`MIN_PASS_IMAGES`: every pass reads all the network's weights again (the binary ResNet-18's
packed planes, its fp32 shortcuts and its 2 MB classifier) and pays each layer's call overhead once, which one
224x224 image per pass (what the budgets alone give) does not amortise. Measured on a 2-core Zen 4, binary
ResNet-18 at 224x224, batch 16, ms per image for passes of 1 / 4 / 8 / 16 images: 1 thread 6.86 / 6.04 / 5.90 /
7.48, 2 threads 4.06 / 3.33 / 3.22 / 4.01; with int8 float parts 4.84 / 4.24 / 4.05 / 5.66 and 3.35 / 2.44 / 2.31
/ 3.17.

A pass of a few small images (under :data:`SERIAL_PASS_BYTES` of input) runs on one thread when called from the main
thread (:func:`lsqbq.passes.run_with_threads`): its layers are too small to split, the XNOR/popcount ones stay on
one thread by their own work thresholds anyway, but torch's ops between them (pooling, the classifier) would still
wake the others. Measured on a 2-core Zen 4, batch 1, 2 threads against 1: LeNet-5 0.128 against 0.122 ms, the 28x28
ResNet 0.149 against 0.143 ms (single runs; the difference is within a few percent).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..passes import CHUNK_BYTES, check_chunk, chunk_images, run_in_passes, run_with_threads

__all__ = ["CHUNK_BYTES", "MIN_PASS_IMAGES", "PASS_ACTIVATION_BYTES", "SERIAL_PASS_BYTES", "BatchChunks",
           "auto_pass_images", "chunk_images", "check_chunk", "runs_serially"]

#: ``chunk="auto"``: images per pass at least (module docstring), where the budgets would give fewer.
MIN_PASS_IMAGES = 8

#: ``chunk="auto"``: bytes of the network's largest activation in one pass (module docstring).
PASS_ACTIVATION_BYTES = 4 << 20


def auto_pass_images(batch: int, activation_bytes: int) -> int:
    """Images per pass of a batch of ``batch`` whose largest activation takes ``activation_bytes`` per image: ``n =
    max(MIN_PASS_IMAGES, PASS_ACTIVATION_BYTES // activation_bytes)``, then evened out to ``ceil(batch / passes)``
    with ``passes = ceil(batch / n)``; the whole batch when it fits one pass."""
    n = max(MIN_PASS_IMAGES, PASS_ACTIVATION_BYTES // max(1, activation_bytes))
    if n >= batch:
        return batch
    return -(-batch // math.ceil(batch / n))

#: A pass with less input than this (four 28x28 or one 32x32 RGB float32 image) runs on one thread.
SERIAL_PASS_BYTES = 16 << 10


class BatchChunks:
    """``module.forward`` run over ``chunk`` images at a time (:func:`lsqbq.passes.run_in_passes`); a plain call
    of the class's ``forward`` when the input is not a batched tensor or other arguments are given. A pass of
    under :data:`SERIAL_PASS_BYTES` of input runs on one thread (module docstring).

    A top-level class holding its module (no closure), so the module still deep-copies and pickles."""

    def __init__(self, module: nn.Module, chunk: int | str | None = "auto"):
        self.module = module
        self.chunk = check_chunk(chunk)
        self.activation_bytes: dict[tuple, int] = {}  # per image shape and dtype: the largest activation's bytes

    def __call__(self, x, *args, **kwargs):
        forward = type(self.module).forward
        if args or kwargs or not isinstance(x, Tensor) or x.dim() < 2:
            return forward(self.module, x, *args, **kwargs)
        if self.chunk != "auto":
            return run_in_passes(self._pass, x, self.chunk)
        batch = x.shape[0]
        if batch <= MIN_PASS_IMAGES or x.device.type != "cpu":
            return run_in_passes(self._pass, x, None)
        key = (tuple(x.shape[1:]), x.dtype)
        measured = self.__dict__.setdefault("activation_bytes", {}).get(key)
        if measured is not None:
            return run_in_passes(self._pass, x, auto_pass_images(batch, measured))
        first = min(batch, max(chunk_images(x, "auto"), MIN_PASS_IMAGES))
        y, measured = self._measured_pass(x[:first])
        if not (isinstance(y, Tensor) and y.dim() > 0 and y.shape[0] == first):
            return forward(self.module, x)  # not one output row per image: the whole batch at once
        self.activation_bytes[key] = measured
        if first == batch:
            return y
        return torch.cat([y, run_in_passes(self._pass, x[first:], auto_pass_images(batch - first, measured))])

    def _measured_pass(self, part: Tensor) -> tuple[object, int]:
        """``(self._pass(part), bytes per image of the largest tensor output of any leaf module)`` (at least the
        input's), recorded by forward hooks removed afterwards."""
        largest = [part.numel() // part.shape[0] * part.element_size()]

        def record(module, args, out):
            if isinstance(out, Tensor) and out.dim() > 0 and out.shape[0] == part.shape[0]:
                largest[0] = max(largest[0], out.numel() // out.shape[0] * out.element_size())

        hooks = [m.register_forward_hook(record) for m in self.module.modules() if next(m.children(), None) is None]
        try:
            return self._pass(part), largest[0]
        finally:
            for h in hooks:
                h.remove()

    def _pass(self, part: Tensor) -> Tensor:
        forward = type(self.module).forward
        if part.numel() * part.element_size() < SERIAL_PASS_BYTES:
            return run_with_threads(1, forward, self.module, part)
        return forward(self.module, part)

    def __repr__(self) -> str:
        return f"BatchChunks(chunk={self.chunk!r})"


def runs_serially(module: nn.Module, x) -> bool:
    """Whether ``module`` (a :func:`~lsqbq.kernels.to_bitwise` network) runs all of ``x`` on one thread: its
    forward is a :class:`BatchChunks` and ``x``, a batch on the CPU, has less than :data:`SERIAL_PASS_BYTES` of
    input, so every pass has too (for a network with one output row per image, as a classifier has)."""
    return (isinstance(module.__dict__.get("forward"), BatchChunks) and isinstance(x, Tensor) and x.dim() >= 2
            and x.device.type == "cpu" and x.numel() * x.element_size() < SERIAL_PASS_BYTES)
