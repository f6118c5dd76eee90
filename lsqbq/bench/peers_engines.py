"""The engines of ``lsqbq bench peers`` and how one side-by-side grid times them, for both of its tables: ResNet-18
(:mod:`lsqbq.bench.peers`) and trained checkpoints beside their teacher (:mod:`lsqbq.bench.peers_checkpoints`).

An :class:`Engine` makes, per (batch, threads), a timed call and the logits it computes: a torch network
(:func:`torch_engine`), OpenVINO's CPU plugin (:func:`openvino_engine`), or a float network's ONNX export in
OpenVINO fp32 / bf16 / int8 and ONNX Runtime fp32 / int8 (:func:`float_peer_engines`). :func:`run_grid` times every
engine of a grid round-robin per (batch, threads) and probes the torch fp32 baseline before and after for drift.
A peer whose package is missing raises :class:`PeerMissing` naming :data:`EXTRA`.
"""
from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .peers_report import AGREE_RTOL, BASELINE, CALIBRATION_BATCHES
from .timing import load, time_stats, with_threads

__all__ = ["COLUMNS", "EXTRA", "Engine", "PeerMissing", "Skips", "float_peer_engines", "missing_reason",
           "openvino_engine", "require", "run_grid", "torch_engine"]

EXTRA = "pip install 'lsqbq[peers]'"
COLUMNS = ("engine", "runtime", "precision", "method", "network", "size", "batch", "threads", "seconds",
           "seconds_min", "ms", "ratio_vs_torch_fp32", "reference", "max_abs_diff", "agrees", "drift",
           "load_start", "load_end")


class Skips(list):
    """The engines that cannot run here: ``skips(engine, reason)`` lists ``{"engine", "reason"}`` and prints it,
    each distinct entry once (the checkpoint table meets the same missing package once per model)."""

    def __call__(self, engine: str, reason: str) -> None:
        item = {"engine": engine, "reason": reason}
        if item not in self:
            self.append(item)
            print(f"  {engine}: skipped ({reason})", flush=True)


class PeerMissing(ImportError):
    """A peer engine's package is not installed; the message names it and the extra that installs it."""


def require(module: str):
    """Import ``module`` or raise :class:`PeerMissing` naming it and :data:`EXTRA`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PeerMissing(f"{module} is not installed ({EXTRA}): {exc}") from None


@dataclass
class Engine:
    """One row family: ``make(batch, threads) -> (call, output)`` gives a timed call on the batch's input and the
    logits it computes; ``reference``: the engine whose logits it is compared with (``check``: must agree)."""

    name: str
    runtime: str
    precision: str
    network: str
    make: Callable[[int, int], tuple[Callable[[], object], Callable[[], np.ndarray]]]
    method: str = ""
    reference: str = ""
    check: bool = False


def torch_engine(name: str, precision: str, network: str, net: nn.Module, inputs: dict[int, torch.Tensor],
                 method: str = "", reference: str = "") -> Engine:
    """``net`` in torch, fed ``inputs[batch]`` in channels_last memory (the baseline when ``name`` is it)."""
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)

    def make(batch: int, threads: int):
        x = inputs[batch].contiguous(memory_format=torch.channels_last)

        def output():
            torch.set_num_threads(threads)
            with torch.inference_mode():
                return net_cl(x).float().numpy()
        return with_threads(threads, lambda: net_cl(x)), output
    return Engine(name, "torch" if name == BASELINE else "lsqbq", precision, network, make, method, reference)


def openvino_engine(inputs: dict[int, torch.Tensor], name: str, precision: str, network: str, model_for_batch,
                    hint: str = "f32", method: str = "", reference: str = "", check: bool = False) -> Engine:
    """OpenVINO's CPU plugin running ``model_for_batch(batch)`` compiled for the batch and thread count."""
    from . import peers_openvino as pov

    def make(batch: int, threads: int):
        compiled = pov.compile_model(model_for_batch(batch), batch, threads, hint)
        return pov.infer_fn(compiled, inputs[batch].numpy())
    return Engine(name, "openvino", precision, network, make, method, reference, check)


def _openvino_float_engines(inputs: dict[int, torch.Tensor], network: str, onnx_fp32: Path | None,
                            onnx_qdq: Path | None, calibration: list[np.ndarray], skip) -> list[Engine]:
    """OpenVINO fp32, bf16 (where the CPU has it) and int8 (NNCF, else the QDQ model) of an ONNX export."""
    ov = require("openvino")
    from . import peers_openvino as pov

    if onnx_fp32 is None:
        skip("openvino fp32/bf16/int8", "no ONNX export of the float network (see the onnx rows)")
        return []
    fp32 = pov.onnx_model(onnx_fp32)
    engines = [openvino_engine(inputs, "openvino fp32", "fp32", network, lambda b: fp32, reference=BASELINE)]
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        engines.append(openvino_engine(inputs, "openvino bf16", "bf16", network, lambda b: fp32, hint="bf16",
                                       reference=BASELINE))
    else:
        skip("openvino bf16", "the CPU has no bf16 instructions (OpenVINO reports no BF16 capability)")
    int8, method = None, ""
    try:
        int8, method = pov.nncf_int8(fp32, calibration), "NNCF post-training quantization"
    except ImportError as exc:
        if onnx_qdq is not None:
            int8, method = pov.onnx_model(onnx_qdq), "QDQ ONNX model of onnxruntime.quantization"
            print(f"  openvino int8: nncf missing ({exc}); running the QDQ ONNX model instead", flush=True)
        else:
            skip("openvino int8", f"nncf is not installed and there is no QDQ model ({EXTRA})")
    if int8 is not None:
        engines.append(openvino_engine(inputs, "openvino int8", "int8", network, lambda b: int8, method=method,
                                       reference=BASELINE))
    return engines


def _onnxruntime_engines(inputs: dict[int, torch.Tensor], network: str, onnx_fp32: Path,
                         onnx_qdq: Path | None) -> list[Engine]:
    from . import peers_onnxruntime as port

    def ort_engine(name, precision, path, method=""):
        sessions: dict[int, object] = {}

        def make(batch: int, threads: int):
            if threads not in sessions:
                sessions[threads] = port.session(path, threads)
            return port.infer_fn(sessions[threads], inputs[batch].numpy())
        return Engine(name, "onnxruntime", precision, network, make, method, reference=BASELINE)

    engines = [ort_engine("onnxruntime fp32", "fp32", onnx_fp32)]
    if onnx_qdq is not None:
        engines.append(ort_engine("onnxruntime int8", "int8", onnx_qdq,
                                  "static QDQ (quantize_static: per-channel int8 weights, uint8 activations)"))
    return engines


def float_peer_engines(float_net: nn.Module, inputs: dict[int, torch.Tensor], network: str, workdir: Path, skip,
                       openvino: bool = True) -> tuple[list[Engine], list[Engine]]:
    """``(openvino, onnxruntime)`` engines of the float network ``float_net`` (eval mode) fed ``inputs``: its ONNX
    export (batch dynamic) in OpenVINO fp32 / bf16 / int8 (unless ``openvino`` is False) and in ONNX Runtime fp32 /
    static QDQ int8, int8 calibrated on :data:`CALIBRATION_BATCHES` synthetic batches of one image. A missing
    package is reported through ``skip(engine, reason)``."""
    rng = np.random.default_rng(0)
    shape = tuple(inputs[min(inputs)].shape[1:])
    calibration = [rng.standard_normal((1, *shape)).astype(np.float32) for _ in range(CALIBRATION_BATCHES)]
    onnx_fp32 = onnx_qdq = None
    try:
        require("onnx")
        require("onnxruntime")
        from . import peers_onnxruntime as port

        onnx_fp32 = port.export_onnx(float_net, inputs[min(inputs)], workdir / "float.onnx")
        onnx_qdq = port.qdq_int8(onnx_fp32, workdir / "float_qdq.onnx", calibration)
    except PeerMissing as exc:
        skip("onnxruntime fp32/int8", str(exc))
    ort = _onnxruntime_engines(inputs, network, onnx_fp32, onnx_qdq) if onnx_fp32 is not None else []
    ov = _openvino_float_engines(inputs, network, onnx_fp32, onnx_qdq, calibration, skip) if openvino else []
    return ov, ort


def missing_reason(module: str) -> str:
    """Why ``module`` cannot be imported (naming :data:`EXTRA`), or "" when it can."""
    try:
        require(module)
        return ""
    except PeerMissing as exc:
        return str(exc)


def _agrees(y: np.ndarray, ref: np.ndarray) -> bool:
    return bool(np.allclose(y, ref, rtol=AGREE_RTOL, atol=AGREE_RTOL * float(np.abs(ref).max())))


def run_grid(engines: list[Engine], batches: list[int], threads_list: list[int], repeats: int,
             min_time: float, size: int) -> tuple[list[dict], dict[tuple[int, int], tuple[float, float]]]:
    """Time every engine at every (batch, threads), one round-robin group each; returns the rows and the drift
    probe ``{(batch, threads): (baseline seconds before, after)}``."""
    groups = {}
    for batch in batches:
        for t in threads_list:
            calls, outputs = {}, {}
            for e in engines:
                calls[e.name], outputs[e.name] = e.make(batch, t)
            groups[(batch, t)] = (calls, outputs)
    before = {key: _baseline(calls, repeats, min_time) for key, (calls, _) in groups.items()}
    rows = []
    for (batch, t), (calls, outputs) in groups.items():
        l0 = load()
        with torch.inference_mode():
            timed = time_stats(calls, repeats, min_time)
        l1 = load()
        logits = {name: out() for name, out in outputs.items()}
        base = timed[BASELINE][0]
        for e in engines:
            med, mn = timed[e.name]
            ref = logits.get(e.reference)
            diff = float(np.abs(logits[e.name] - ref).max()) if ref is not None else float("nan")
            rows.append({"engine": e.name, "runtime": e.runtime, "precision": e.precision, "method": e.method,
                         "network": e.network, "size": size, "batch": batch, "threads": t, "seconds": med,
                         "seconds_min": mn, "ms": 1e3 * med, "ratio_vs_torch_fp32": base / med,
                         "reference": e.reference, "max_abs_diff": diff,
                         "agrees": _agrees(logits[e.name], ref) if e.check and ref is not None else None,
                         "load_start": l0, "load_end": l1})
        print(f"  batch {batch}, {t} thread(s) done (load {load():.1f})", flush=True)
    after = {key: _baseline(calls, repeats, min_time) for key, (calls, _) in groups.items()}
    return rows, {key: (before[key], after[key]) for key in groups}


def _baseline(calls: dict, repeats: int, min_time: float) -> float:
    with torch.inference_mode():
        return time_stats({BASELINE: calls[BASELINE]}, repeats, min_time)[BASELINE][0]
