"""The machine a benchmark ran on, recorded beside every number it writes.

:func:`machine_record` gives the CPU model, core count, the SIMD flags that matter to the kernels, torch's version,
default thread count, CPU capability and int8 engines, the kernel back end and the instruction path it runs
(:func:`lsqbq.kernels.isa_path`, chosen by ``--backend`` or the switch ``LSQBQ_BACKEND``), and whether the
quantizers run the C++ library or their torch code. :func:`load` is the 1-minute load average, taken before and
after each group of timings; :func:`steal_percent` the share of CPU time a virtual machine's host took from it
(steal) between two :func:`cpu_ticks` readings, over a whole run; :func:`memory_latency` the time of one
dependent random load over :data:`PROBE_BYTES`, before and after a run: on a shared host, other tenants' use of the
last-level cache shows there (neither in the load nor in the steal) and moves the timings of cache-bound kernels.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess

import torch

__all__ = ["FLAGS", "PROBE_BYTES", "PROBE_LOADS", "cpu_flags", "cpu_model", "cpu_ticks", "load", "machine_record",
           "memory_latency", "steal_percent"]

# SIMD flags that decide which kernels can run and how fast the baselines are
FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vpopcntdq", "avx512_bitalg", "avx512_vnni", "avx_vnni",
         "amx_tile", "amx_int8", "amx_bf16", "popcnt", "neon", "asimd")


def _cpuinfo_field(*keys: str) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line starting with one of ``keys`` (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(keys):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _lscpu_field(key: str) -> str | None:
    """The value of ``lscpu``'s ``key:`` line (None without ``lscpu``)."""
    if shutil.which("lscpu") is None:
        return None
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> list[str]:
    """The :data:`FLAGS` this CPU has (``/proc/cpuinfo``, else ``lscpu``; empty where neither says)."""
    line = _cpuinfo_field("flags", "Features") or _lscpu_field("Flags") or ""
    have = set(line.split())
    return [f for f in FLAGS if f in have]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``lscpu``, else the platform's processor or machine name)."""
    return (_cpuinfo_field("model name") or _lscpu_field("Model name") or platform.processor()
            or platform.machine())


def load() -> float:
    """1-minute load average (NaN where the OS has none), recorded beside every timing."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


#: The probe's working set: half the 32 MB L3 of the reference machine (a 2-core share of an AMD EPYC Zen 4), so an
#: undisturbed cache holds it and other tenants' use of it shows as longer loads.
PROBE_BYTES = 16 << 20
PROBE_LOADS = 1 << 20  # about 0.2 s at DRAM latency


def memory_latency(nbytes: int = PROBE_BYTES, loads: int = PROBE_LOADS) -> float:
    """Nanoseconds per dependent random load over ``nbytes`` (``torch.ops.lsqbq.memory_latency_ns``: a pointer
    chase through one random cycle of 64-byte lines, ``lsqbq/csrc/memprobe.h``); NaN without the compiled
    library. Recorded before and after each benchmark run: a rise from one run to another at the same size says
    that less of the shared cache was this machine's, and the cache-bound rows are slower for it."""
    from .. import _native

    if not _native.active():
        return float("nan")
    return float(torch.ops.lsqbq.memory_latency_ns(int(nbytes), int(loads)))


def cpu_ticks(stat: str = "/proc/stat") -> tuple[int, int] | None:
    """``(steal, total)`` CPU time since boot, in clock ticks summed over all CPUs, from the aggregate ``cpu``
    line of ``stat`` (user nice system idle iowait irq softirq steal ...; guest time is already in user/nice);
    None where the file or the steal field is missing (not Linux, very old kernels)."""
    try:
        with open(stat, encoding="ascii") as f:
            first = f.readline().split()
    except OSError:
        return None
    if len(first) < 9 or first[0] != "cpu":
        return None
    try:
        ticks = [int(v) for v in first[1:9]]
    except ValueError:
        return None
    return ticks[7], sum(ticks)


def steal_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float:
    """Steal time between two :func:`cpu_ticks` readings as a percentage of all CPU time then (NaN if either is
    missing or no tick passed). On a virtual machine, a high value means the timings of that stretch lost CPU
    time to other guests and should be rerun."""
    if before is None or after is None or after[1] <= before[1]:
        return float("nan")
    return 100.0 * max(after[0] - before[0], 0) / (after[1] - before[1])


def machine_record(backend: str | None = None) -> dict:
    """What the numbers of one benchmark run depend on, as flat CSV columns.

    ``kernels`` is the back end ``backend`` resolves to (None: the switch ``LSQBQ_BACKEND``, else the fastest
    available) and ``isa`` its instruction path; a bad ``--backend`` or switch value raises here, before any
    timing (:class:`~lsqbq.errors.ConfigError` naming ``LSQBQ_BACKEND``).
    """
    from .. import _ops
    from ..kernels import isa_path, resolve_backend

    kernels = resolve_backend(backend)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "flags": " ".join(cpu_flags()),
        "torch": torch.__version__,
        "default_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "quantized_engines": ",".join(torch.backends.quantized.supported_engines),
        "kernels": kernels,
        "isa": isa_path(kernels),
        "quantizers": "c++" if _ops.active() else "torch",
    }
