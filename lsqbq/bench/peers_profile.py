"""Where one inference of the binary ResNet-18 goes in lsqbq and in OpenVINO, part by part: ``peers_profile.md`` of
``lsqbq bench peers`` (:mod:`lsqbq.bench.peers`).

Both engines run the same network (fp32 stem, shortcuts and classifier; 1-bit ``ls-1`` 3x3 body) at the first batch
size and thread count of the run. Per inference, averaged over ``calls`` inferences after a warm-up:

* lsqbq: ``torch.profiler``'s self CPU time of every op of the :func:`~lsqbq.kernels.to_bitwise` model;
* OpenVINO: the CPU plugin's real time of every executed node (``PERF_COUNT``, a compilation of its own: counting
  may slow the timed one), the node's type and output shape read from the compiled runtime model;
* ``outside the ops``: the wall time of the profiled inferences minus the sum of their ops: Python and dispatch
  between torch ops (and the profiler's own cost), or the runtime's work between OpenVINO nodes; the parts and it
  add up to ``total, profiled``. OpenVINO counts each node in whole microseconds, so its figure is uncertain by
  about 1 us per executed node (about 0.1 ms for this network) and may come out slightly negative.
  ``total, not profiled``: the median wall time of as many inferences without counters (the ``peers.md`` rows
  time the same calls in a round-robin of all engines).

Each op falls in one part of the network (:func:`torch_part`, :func:`openvino_part`):

==========================  ===========================================  ==============================================
part                        lsqbq ops                                    OpenVINO nodes
==========================  ===========================================  ==============================================
binary layers               ``lsqbq::bitwise_conv2d`` (encode with the   ``BinaryConvolution``, its ``FakeQuantize``
                            fit, BN, scales, residual and ReLU fused)    (signs), the per-sample ``ReduceMean`` (the
                                                                         fit) and the element-wise nodes (BN, scales,
                                                                         residual, ReLU; ``Subgraph`` / ``Eltwise``)
fp32 convolutions           the engine's ``lsqbq::f32_direct_conv2d``    ``Convolution`` (stem with its BN and ReLU,
                            (stem with BN folded and its max-pool        shortcuts)
                            fused, shortcuts), else
                            ``aten::mkldnn_convolution`` (or
                            ``_slow_conv2d_forward``) and its wrappers
max-pool                    ``lsqbq::max_pool2d_nhwc`` / ``aten::        ``MaxPool``
                            maximum`` / ``max_pool2d`` (not fused)
global average pool         ``aten::mean`` / ``sum`` / ``div_``          ``ReduceMean`` to ``(B, C)``
classifier                  ``aten::addmm`` / ``linear`` / ``mm``        ``FullyConnected`` / ``MatMul``
other                       every other op (allocation, views)           every other node (``Reorder``: layouts)
==========================  ===========================================  ==============================================
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..passes import run_with_threads
from .peers_report import _group
from .timing import median_time

__all__ = ["OUTSIDE", "PARTS", "PROFILED", "UNPROFILED", "openvino_op_times", "openvino_part", "profile_binary",
           "profile_markdown", "torch_op_times", "torch_part"]

PARTS = ("binary layers", "fp32 convolutions", "max-pool", "global average pool", "classifier", "other")
OUTSIDE = "outside the ops"
PROFILED = "total, profiled"
UNPROFILED = "total, not profiled"

_TORCH = {
    "lsqbq::bitwise_conv2d": "binary layers",
    "aten::mkldnn_convolution": "fp32 convolutions", "aten::convolution": "fp32 convolutions",
    "aten::_convolution": "fp32 convolutions", "aten::conv2d": "fp32 convolutions",
    "aten::_slow_conv2d_forward": "fp32 convolutions", "lsqbq::f32_direct_conv2d": "fp32 convolutions",
    "aten::maximum": "max-pool", "lsqbq::max_pool2d_nhwc": "max-pool", "aten::max_pool2d": "max-pool",
    "aten::max_pool2d_with_indices": "max-pool",
    "aten::mean": "global average pool", "aten::sum": "global average pool", "aten::div_": "global average pool",
    "aten::adaptive_avg_pool2d": "global average pool",
    "aten::addmm": "classifier", "aten::linear": "classifier", "aten::mm": "classifier",
}
_OPENVINO = {
    "BinaryConvolution": "binary layers", "FakeQuantize": "binary layers", "Subgraph": "binary layers",
    "Eltwise": "binary layers", "Multiply": "binary layers", "Add": "binary layers", "Subtract": "binary layers",
    "Relu": "binary layers", "Abs": "binary layers", "Clamp": "binary layers",
    "Convolution": "fp32 convolutions", "MaxPool": "max-pool",
    "FullyConnected": "classifier", "MatMul": "classifier",
}


def torch_part(op: str) -> str:
    """The part of the network (:data:`PARTS`) a torch op of the bitwise model belongs to (module docstring)."""
    return _TORCH.get(op, "other")


def openvino_part(node_type: str, output_rank: int | None = None) -> str:
    """The part of the network an executed OpenVINO node belongs to; a ``ReduceMean`` by its output rank: 4 (the
    per-sample ``ls-1`` fit, ``(B, 1, 1, 1)``) or 2 (the global average pool, ``(B, C)``)."""
    if node_type == "ReduceMean":
        return "global average pool" if output_rank == 2 else "binary layers"
    return _OPENVINO.get(node_type, "other")


def torch_op_times(call: Callable[[], object], calls: int = 20, warmup: int = 5) -> tuple[pd.DataFrame, float]:
    """``(ops, ms)``: ``op, part, ms, calls`` per inference (self CPU time of each torch op, averaged over ``calls``
    calls of ``call``), slowest first, and the wall time per call of those profiled calls."""
    for _ in range(warmup):
        call()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            call()
        wall = (time.perf_counter() - start) / calls
    rows = [{"op": e.key, "part": torch_part(e.key), "ms": e.self_cpu_time_total / 1e3 / calls,
             "calls": e.count // calls} for e in prof.key_averages() if e.self_cpu_time_total > 0]
    return _sorted(rows), 1e3 * wall


def openvino_op_times(compiled, x: np.ndarray, calls: int = 20, warmup: int = 5) -> tuple[pd.DataFrame, float]:
    """``(ops, ms)``: ``op`` (node type / kernel), ``part``, ``ms``, ``calls`` per inference of an OpenVINO model
    compiled with ``PERF_COUNT`` (every executed node's real time, averaged over ``calls`` inferences on ``x``),
    slowest first, and the wall time per inference of those inferences."""
    import openvino as ov

    ranks = {n.get_friendly_name(): len(n.get_output_partial_shape(0)) if n.get_output_size() else None
             for n in compiled.get_runtime_model().get_ordered_ops()}
    req = compiled.create_infer_request()
    req.set_input_tensor(ov.Tensor(np.ascontiguousarray(x, dtype=np.float32)))
    for _ in range(warmup):
        req.infer()
    total: dict[tuple[str, str], list[float]] = {}
    wall = 0.0
    for _ in range(calls):
        start = time.perf_counter()
        req.infer()
        wall += time.perf_counter() - start
        for p in req.get_profiling_info():
            if p.status != p.Status.EXECUTED:
                continue
            key = (f"{p.node_type} ({p.exec_type})", openvino_part(p.node_type, ranks.get(p.node_name)))
            entry = total.setdefault(key, [0.0, 0])
            entry[0] += p.real_time.total_seconds() * 1e3
            entry[1] += 1
    rows = [{"op": op, "part": part, "ms": ms / calls, "calls": n // calls} for (op, part), (ms, n) in total.items()]
    return _sorted(rows), 1e3 * wall / calls


def _sorted(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["op", "part", "ms", "calls"]).sort_values("ms", ascending=False,
                                                                                 ignore_index=True)


def _by_part(ops: pd.DataFrame, profiled: float, unprofiled: float) -> dict[str, float]:
    parts = ops.groupby("part")["ms"].sum().to_dict()
    out = {p: float(parts.get(p, 0.0)) for p in PARTS}
    out[OUTSIDE] = profiled - sum(out.values())
    out[PROFILED], out[UNPROFILED] = profiled, unprofiled
    return out


def profile_markdown(title: str, lsqbq: tuple[pd.DataFrame, float, float],
                     openvino: tuple[pd.DataFrame, float, float] | None, missing: str = "", top: int = 12) -> str:
    """The report: ms per inference by part for both engines (and their ratio), then each engine's slowest ops.
    Each engine: ``(ops, profiled ms, unprofiled ms)``; ``openvino`` None: its column stays empty and ``missing``
    says why."""
    ours, theirs = _by_part(*lsqbq), _by_part(*openvino) if openvino is not None else {}
    table = pd.DataFrame({"part": list(ours)})
    table["lsqbq ms"] = [f"{ours[p]:.3f}" for p in ours]
    table["openvino ms"] = [f"{theirs[p]:.3f}" if p in theirs else "" for p in ours]
    table["openvino / lsqbq"] = [f"{theirs[p] / ours[p]:.2f}x" if p in theirs and ours[p] > 1e-3 and theirs[p] > 0
                                 else "" for p in ours]  # no ratio of a rounding error
    parts = [f"# {title}", "Per inference, ms; `openvino / lsqbq` above 1x: lsqbq spends less there. Parts: "
             "lsqbq/bench/peers_profile.py. `outside the ops`: the profiled inferences' wall time minus their ops "
             "(Python, dispatch and the profiler in lsqbq, the runtime between nodes in OpenVINO); "
             f"`{UNPROFILED}`: the median of as many inferences without counters.", table.to_markdown(index=False)]
    for name, ops in (("lsqbq", lsqbq[0]), ("openvino", openvino[0] if openvino else None)):
        if ops is None:
            parts.append(f"## openvino\n\n{missing or 'not run'}")
            continue
        head = ops.head(top).assign(ms=lambda d: d.ms.map(lambda v: f"{v:.3f}"))
        parts.append(f"## {name}: slowest ops\n\n" + head.to_markdown(index=False))
    return "\n\n".join(parts) + "\n"


def profile_binary(fast: torch.nn.Module, sim: torch.nn.Module, x: torch.Tensor, threads: int, calls: int = 20,
                   note: str = "", openvino_missing: str = "") -> str:
    """:func:`profile_markdown` of the :func:`~lsqbq.kernels.to_bitwise` model ``fast`` and of OpenVINO's binary
    graph of ``sim`` (:func:`lsqbq.bench.peers_openvino.binary_resnet_model`, same weights) on input ``x`` (NCHW;
    lsqbq gets it channels_last, as in the timed rows) with ``threads`` threads; ``note``: a line under the title
    (machine, commit). ``openvino_missing``: why OpenVINO cannot run (the report says it; lsqbq's side only)."""
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def lsqbq_side():
        with torch.inference_mode():
            ops, profiled = torch_op_times(lambda: fast(x_cl), calls)
            return ops, profiled, 1e3 * median_time(lambda: fast(x_cl), calls)

    ours = run_with_threads(threads, lsqbq_side)
    theirs = None
    if not openvino_missing:
        from . import peers_openvino as pov

        batch = x.shape[0]
        graph = pov.binary_resnet_model(sim, batch, x.shape[-1])
        ops, profiled = openvino_op_times(pov.compile_model(graph, batch, threads, perf_count=True), x.numpy(), calls)
        call, _ = pov.infer_fn(pov.compile_model(graph, batch, threads), x.numpy())  # compile_model clones the graph
        call()
        theirs = (ops, profiled, 1e3 * median_time(call, calls))
    title = (f"Where one inference goes: binary ResNet-18 in lsqbq and in OpenVINO ({_group(x.shape[0], threads)}, "
             f"{x.shape[-2]}x{x.shape[-1]})")
    text = profile_markdown(title, ours, theirs, openvino_missing)
    return text.replace("\n\n", f"\n\n{note}\n\n", 1) if note else text
