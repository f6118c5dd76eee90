"""Side-by-side timing shared by the benchmarks (the machine record is :mod:`lsqbq.bench.machine`)."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from .machine import load


def time_stats(fns: dict[str, Callable[[], object]], repeats: int = 7, min_time: float = 0.0,
               warmup: int = 2) -> dict[str, tuple[float, float]]:
    """``{name: (median, min)}`` seconds per call of each function, timed round-robin side by side.

    Every repeat runs each candidate once for at least ``min_time`` seconds (an inner loop sized from one timed
    call), so candidates share the machine's state and their ratios stay honest when the load changes.
    ``warmup`` untimed calls of each first.
    """
    inner = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        start = time.perf_counter()
        fn()
        inner[name] = max(1, int(min_time / max(time.perf_counter() - start, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            times[name].append((time.perf_counter() - start) / inner[name])
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def time_group(fns: dict[str, Callable[[], object]], repeats: int = 7, min_time: float = 0.0,
               warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function (:func:`time_stats`)."""
    return {name: med for name, (med, _) in time_stats(fns, repeats, min_time, warmup).items()}


def with_threads(n: int, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with ``torch.set_num_threads(n)`` (candidates of one group may use different thread counts)."""
    def call():
        torch.set_num_threads(n)
        return fn()
    return call


def time_threads(cands: dict[str, Callable[[], object]], threads: list[int], repeats: int = 7,
                 min_time: float = 0.0) -> tuple[dict[tuple[str, int], tuple[float, float]], float, float]:
    """Every candidate at every thread count, side by side in one :func:`time_stats` group under
    ``torch.inference_mode``. Returns ``({(name, threads): (median, min)}, load before, load after)``."""
    fns = {(name, t): with_threads(t, fn) for name, fn in cands.items() for t in threads}
    before = load()
    with torch.inference_mode():
        timed = time_stats(fns, repeats, min_time)
    return timed, before, load()


def median_time(fn: Callable[[], object], repeats: int = 7, min_time: float = 0.0, warmup: int = 2) -> float:
    """Median seconds per call of one function (:func:`time_group` with one candidate)."""
    return time_group({"fn": fn}, repeats, min_time, warmup)["fn"]
