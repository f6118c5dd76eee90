"""ONNX export of the float baseline and its ONNX Runtime sessions, fp32 and static int8, for the peers benchmark
(:mod:`lsqbq.bench.peers`).

* :func:`export_onnx`: ``torch.onnx.export`` (the ``torch.export`` exporter, which needs ``onnxscript``; the
  TorchScript exporter where that fails), batch dimension dynamic;
* :func:`qdq_int8`: ``onnxruntime.quantization.quantize_static`` in QDQ format: weights int8 per output channel
  (symmetric), activations uint8 per tensor with min/max ranges from the calibration batches (synthetic: the
  networks are untrained, so any input is as representative as another);
* :func:`session`: a CPU session with ``intra_op_num_threads = threads``, ``inter_op_num_threads = 1``,
  sequential execution, all graph optimisations, and no busy-waiting of its threads between runs.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["export_onnx", "infer_fn", "qdq_int8", "session"]


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Write ``model`` (eval mode) as ONNX to ``path``, input ``x`` with a dynamic batch, output ``logits``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["x"],
                              output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                              verbose=False)
    except Exception:  # noqa: BLE001 -- no onnxscript, or an exporter failure: the TorchScript exporter
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "batch"}}, opset_version=17)
    return path


def qdq_int8(fp32_path: Path, out_path: Path, calibration: list[np.ndarray]) -> Path:
    """Static int8 quantization of an ONNX model in QDQ format (module docstring); returns ``out_path``."""
    import logging

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Batches(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{"x": b} for b in calibration])

        def get_next(self):
            return next(self._it, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process the model first, printed on every call
    try:
        quantize_static(str(fp32_path), str(out_path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        root.setLevel(level)
    return Path(out_path)


def session(path: Path, threads: int):
    """A CPU ``onnxruntime.InferenceSession`` of ``path`` running ``threads`` intra-op threads, one inter-op."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # no busy-waiting after a run: the benchmark interleaves engines, and spinning pool threads would take the
    # cores from the next engine's threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def infer_fn(sess, x: np.ndarray) -> tuple[Callable[[], object], Callable[[], np.ndarray]]:
    """``(call, output)``: ``call()`` runs ``sess`` on ``x``; ``output()`` returns the logits of a fresh call."""
    feed = {sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    return (lambda: sess.run(None, feed)), (lambda: sess.run(None, feed)[0])
