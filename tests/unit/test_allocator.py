"""lsqbq.allocator: freed large buffers are reused by the next allocation instead of being faulted in again."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_CHILD = r"""
import json, resource, sys
import torch
if sys.argv[1] == "keep":
    from lsqbq.allocator import keep_large_buffers
    assert keep_large_buffers()
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(8 << 20)  # 32 MiB, written in full: every page is touched
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def _faults(mode: str) -> list[int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_repeated_large_tensors_fault_their_pages_in_once():
    pages = (32 << 20) // os.sysconf("SC_PAGE_SIZE")
    default, kept = _faults("default"), _faults("keep")
    # glibc's default maps and unmaps a 32 MiB buffer every time: each allocation faults in every page again
    assert min(default[1:]) > pages // 2, default
    # kept in the heap, its pages are faulted in while the heap grows (the first few allocations), then never again
    assert max(kept[-10:]) < pages // 20 and sum(kept) < sum(default) / 2, (kept, default)


def test_the_users_own_malloc_setting_wins(monkeypatch):
    from lsqbq.allocator import keep_large_buffers

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert keep_large_buffers() is False
