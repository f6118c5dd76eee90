"""A converted network run over a large batch a few images at a time, so each image's activations stay in cache.

A bitwise network spends little arithmetic per activation (a popcount covers 64 of them), so once a layer's input
and output no longer fit in the core's L2 cache it waits on memory. Layer by layer over a whole batch they do not:
the binary ResNet-18 at 224x224 writes 0.8 MB of float activations per image after every block of its first
stage, 13 MB for a batch of 16. Passing the batch through the whole network ``n`` images at a time keeps more of
them in cache (measured on a 2-core Zen 4, 1 thread, batch 16: 83 ms in one pass, 54 ms one image at a time, on an
earlier engine; the passes of eight below are faster still).

:class:`BatchChunks` replaces ``forward`` of the module :func:`~lsqbq.kernels.to_bitwise` returns: ``y =
cat(forward(x[i:i+n]) for i in 0, n, 2n, ...)`` (:func:`lsqbq.passes.run_in_passes`), with ``n`` images per pass
(``chunk="auto"``: as many as fit in :data:`lsqbq.passes.CHUNK_BYTES` of input, and at least
:data:`MIN_PASS_IMAGES`). The passes run one after another, each layer's work split over torch's threads as in a
single pass. (Running them as streams, one Python thread per core with one torch thread each, was measured too: on
par for the 224x224 ResNet-18 and up to 1.7x slower for the 28x28 models, whose many small ops then wait on each
other for the interpreter lock.) This assumes what an eval-mode network guarantees: each image's output depends on
that image alone. Per-image results can still differ in the last bits where a float layer's kernel (oneDNN) blocks
its sums differently for another batch size; the XNOR/popcount layers compute each output in a fixed order
whatever the batch.

Why a floor of :data:`MIN_PASS_IMAGES`: every pass reads all the network's weights again (the binary ResNet-18's
packed planes, its fp32 shortcuts and its 2 MB classifier) and pays each layer's call overhead once, which one
224x224 image per pass (what the byte budget alone gives) does not amortise. Measured on a 2-core Zen 4, binary
ResNet-18 at 224x224, batch 16, ms per image for passes of 1 / 4 / 8 / 16 images: 1 thread 6.86 / 6.04 / 5.90 /
7.48, 2 threads 4.06 / 3.33 / 3.22 / 4.01; with int8 float parts 4.84 / 4.24 / 4.05 / 5.66 and 3.35 / 2.44 / 2.31
/ 3.17. Inputs of up to 32x32 already get more images than the floor from the byte budget (21 at 32x32x3, 83 at
28x28x1), so their passes do not change.

A pass of a few small images (under :data:`SERIAL_PASS_BYTES` of input) runs on one thread when called from the main
thread (:func:`lsqbq.passes.run_with_threads`): its layers are too small to split, the XNOR/popcount ones stay on
one thread by their own work thresholds anyway, but torch's ops between them (pooling, the classifier) would still
wake the others. Measured on a 2-core Zen 4, batch 1, 2 threads against 1: LeNet-5 0.128 against 0.122 ms, the 28x28
ResNet 0.149 against 0.143 ms (single runs; the difference is within a few percent).
"""
from __future__ import annotations

from torch import Tensor, nn

from ..passes import CHUNK_BYTES, check_chunk, chunk_images, run_in_passes, run_with_threads

__all__ = ["CHUNK_BYTES", "MIN_PASS_IMAGES", "SERIAL_PASS_BYTES", "BatchChunks", "chunk_images", "check_chunk"]

#: ``chunk="auto"``: images per pass at least (module docstring), where the byte budget would give fewer.
MIN_PASS_IMAGES = 8

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

    def __call__(self, x, *args, **kwargs):
        forward = type(self.module).forward
        if args or kwargs or not isinstance(x, Tensor) or x.dim() < 2:
            return forward(self.module, x, *args, **kwargs)
        n = max(chunk_images(x, "auto"), MIN_PASS_IMAGES) if self.chunk == "auto" else self.chunk
        return run_in_passes(self._pass, x, n)

    def _pass(self, part: Tensor) -> Tensor:
        forward = type(self.module).forward
        if part.numel() * part.element_size() < SERIAL_PASS_BYTES:
            return run_with_threads(1, forward, self.module, part)
        return forward(self.module, part)

    def __repr__(self) -> str:
        return f"BatchChunks(chunk={self.chunk!r})"
