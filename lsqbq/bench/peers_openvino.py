"""The project's binary ResNet-18 rebuilt as an OpenVINO graph on OpenVINO's own ``BinaryConvolution`` op, and
OpenVINO's compiled models for the peers benchmark (:mod:`lsqbq.bench.peers`).

Binary layer (``ls-1`` activations and weights, the paper's XNOR block ``BN -> quantize -> conv -> ReLU``): with
``h = clamp(BN(x))`` per sample ``v = mean|h|`` (the ``ls-1`` fit over ``C*H*W``), ``b = sign(h)``
(``sign(0) = +1``), per output channel ``u_n`` and ``c_n = sign`` planes of the quantized weight, the project's
layer computes ``y = bias + v u_n conv_0(b, c_n)``, where ``conv_0`` pads ``b`` with zeros. The graph computes

    ``y = bias + u_n * v * (BinaryConvolution_{+1}(b, c) - E)``

* ``BinaryConvolution`` (opset1, mode ``xnor-popcount``) reads the signs of ``h`` through a two-level
  ``FakeQuantize`` whose threshold is the most negative subnormal float, so that ``h = 0`` gives ``+1`` as in the
  project (OpenVINO's own input binarization maps ``0`` to ``-1``), and ``c`` as a ``u1`` constant (bit 1 = ``+1``);
* its padding value is ``+1`` (OpenVINO pads with ``pad_value`` binarized: ``+1`` or ``-1``, never 0), so the
  pad taps add ``E[n, oh, ow] = sum of c[n, c, kh, kw] over the taps that fall in the padding``: a constant of the
  input size, subtracted; ``pad_correction=False`` leaves it out (the network OpenVINO's own binary models run,
  trained with ``+1`` padding: timing only, its outputs differ);
* the per-channel scale, the per-sample scale, the bias, ReLU and the residual adds follow as float ops.

Everything else (the 7x7 stem with BatchNorm, ReLU and max-pool, the 1x1 shortcut convs with BatchNorm, global
average pool, the classifier) is float32, with the weights of the project's model, so the outputs equal the
project's ``to_bitwise`` model within float rounding (:func:`max_abs_diff` checks it).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.resnet import ResNet, XnorBlock

__all__ = ["NEG_SUBNORMAL", "binary_resnet_model", "compile_model", "infer_fn", "nncf_int8", "onnx_model"]

# the most negative subnormal float32: FakeQuantize(levels=2) maps x > threshold to the high level, so x = 0 -> +1
NEG_SUBNORMAL = -float(np.nextafter(np.float32(0), np.float32(1)))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _check_model(model: nn.Module) -> None:
    """The layout this builder knows: a :class:`~lsqbq.models.resnet.ResNet` of ImageNet stem and XNOR blocks with
    ReLU, 1-bit ``ls-1`` activations and weights (the paper's topology)."""
    if not isinstance(model, ResNet) or model.block_type != "xnor" or model.stem_type != "imagenet":
        raise ConfigError(f"OpenVINO binary graph: expected an xnor-block ResNet with the imagenet stem, got "
                          f"{type(model).__name__} (block {getattr(model, 'block_type', None)!r}, stem "
                          f"{getattr(model, 'stem_type', None)!r})")
    for name, m in model.named_modules():
        if isinstance(m, XnorBlock):
            for conv in (m.conv1, m.conv2):
                xs, ws = conv.x_scheme, conv.w_scheme
                if (xs.name, ws.name) != ("ls-1", "ls-1"):
                    raise ConfigError(f"OpenVINO binary graph: {name} quantizes with {xs.name}/{ws.name}; "
                                      "BinaryConvolution runs 1-bit ls-1/ls-1 layers only")
                if conv.act_stats not in ("off", "train_only"):
                    raise ConfigError(f"OpenVINO binary graph: {name} evaluates with stored activation scales "
                                      f"(act_stats={conv.act_stats!r}); the graph fits them per sample")
            if not (isinstance(m.act1, nn.ReLU) and isinstance(m.act2, nn.ReLU)):
                raise ConfigError(f"OpenVINO binary graph: {name} must use ReLU")


class _Builder:
    """Emits OpenVINO nodes for the modules of one :class:`ResNet` (``ops``: ``openvino.opset13``)."""

    def __init__(self, ops, opset1, pad_correction: bool):
        self.ops, self.opset1, self.pad_correction = ops, opset1, pad_correction

    def const(self, a) -> Any:
        return self.ops.constant(np.ascontiguousarray(a, dtype=np.float32))

    def bn(self, x, bn: nn.BatchNorm2d):
        from ..kernels.bitwise import bn_affine

        a, b = bn_affine(bn)
        return self.ops.add(self.ops.multiply(x, self.const(_np(a).reshape(1, -1, 1, 1))),
                            self.const(_np(b).reshape(1, -1, 1, 1)))

    def conv(self, x, conv: nn.Conv2d):
        y = self.ops.convolution(x, self.const(_np(conv.weight)), list(conv.stride), list(conv.padding),
                                 list(conv.padding), list(conv.dilation))
        if conv.bias is not None:
            y = self.ops.add(y, self.const(_np(conv.bias).reshape(1, -1, 1, 1)))
        return y

    def shortcut(self, x, sc: nn.Module):
        if isinstance(sc, nn.Identity):
            return x
        conv, bn = sc[0], sc[1]
        return self.bn(self.conv(x, conv), bn)

    def binary_conv(self, x, bn: nn.BatchNorm2d, conv, hw: tuple[int, int]):
        """``bias + u v (BinaryConvolution_{+1}(sign h) - E)`` with ``h = clamp(BN(x))`` (module docstring)."""
        import openvino as ov

        from ..quantizers import foldable_bits

        ops = self.ops
        h = self.bn(x, bn)
        if conv.clamp is not None:
            h = ops.clamp(h, -conv.clamp, conv.clamp)
        v = ops.reduce_mean(ops.abs(h), np.array([1, 2, 3], dtype=np.int64), True)  # (B, 1, 1, 1): ls-1 fit
        with torch.no_grad():
            _, u = conv.quantized_weight()  # (N, 1) per-channel scales
            rows = conv.weight.detach().reshape(conv.weight.shape[0], -1).float()
            c = foldable_bits(rows, u.float())[0].reshape(conv.weight.shape)  # (N, C, kh, kw) of +-1
        kernel = ov.op.Constant(ov.Type.u1, ov.Shape(list(c.shape)), _cpu_bit_order(c > 0).tolist())
        c_in = conv.weight.shape[1]
        thr = np.full((1, c_in, 1, 1), NEG_SUBNORMAL, np.float32)
        signs = ops.fake_quantize(h, thr, thr, np.zeros_like(thr), np.ones_like(thr), 2)
        pads = list(conv.padding)
        y = self.opset1.binary_convolution(signs, kernel, list(conv.stride), pads, pads, list(conv.dilation),
                                           "xnor-popcount", 1.0)
        if self.pad_correction and any(pads):
            y = ops.subtract(y, self.const(_pad_excess(c, hw, conv)))
        y = ops.multiply(ops.multiply(y, self.const(_np(u).reshape(1, -1, 1, 1))), v)
        if conv.bias is not None:
            y = ops.add(y, self.const(_np(conv.bias).reshape(1, -1, 1, 1)))
        return y

    def block(self, x, blk: XnorBlock, hw: tuple[int, int]):
        ops = self.ops
        sc = self.shortcut(x, blk.shortcut)
        out1 = ops.relu(self.binary_conv(x, blk.bn1, blk.conv1, hw))
        hw1 = tuple((n + 2 * p - (k - 1) - 1) // s + 1 for n, p, k, s in
                    zip(hw, blk.conv1.padding, blk.conv1.kernel_size, blk.conv1.stride))
        if blk.double_shortcut:
            out1 = ops.add(out1, sc)
            return ops.add(ops.relu(self.binary_conv(out1, blk.bn2, blk.conv2, hw1)), out1), hw1
        return ops.relu(ops.add(self.binary_conv(out1, blk.bn2, blk.conv2, hw1), sc)), hw1


def _cpu_bit_order(bits: torch.Tensor) -> np.ndarray:
    """The 0/1 values to give ``Constant(u1, shape, values)`` so that the CPU plugin reads ``bits`` (any shape,
    flattened row-major): the constructor packs each 8 values into a byte most significant bit first, the CPU
    plugin's binary convolution reads the bytes least significant bit first, so every group of 8 is reversed
    (the equality check of :mod:`lsqbq.bench.peers` catches any other reading)."""
    flat = bits.reshape(-1).numpy().astype(np.uint8)
    if flat.size % 8:
        raise ConfigError(f"OpenVINO binary graph: a kernel of {flat.size} weights is not a whole number of bytes")
    return flat.reshape(-1, 8)[:, ::-1].reshape(-1)


def _pad_excess(c: torch.Tensor, hw: tuple[int, int], conv) -> np.ndarray:
    """``E[0, n, oh, ow]``: what ``+1`` padding adds to the dot products over zero padding, i.e. the sum of the
    weight signs ``c`` over the taps of output ``(oh, ow)`` that fall in the padding; shape ``(1, N, OH, OW)``."""
    ph, pw = conv.padding
    mask = torch.ones(1, c.shape[1], hw[0] + 2 * ph, hw[1] + 2 * pw)
    mask[:, :, ph:ph + hw[0], pw:pw + hw[1]] = 0
    return _np(F.conv2d(mask, c.float(), stride=conv.stride, dilation=conv.dilation))


def binary_resnet_model(model: nn.Module, batch: int, size: int, pad_correction: bool = True):
    """The OpenVINO model (``openvino.Model``, input ``(batch, 3, size, size)`` float32 NCHW, output logits) of a
    binary :class:`ResNet` (eval mode): the graph of the module docstring with the model's weights.

    Raises:
        ConfigError: a model other than the paper's topology (ImageNet stem, XNOR blocks, ls-1/ls-1, ReLU).
    """
    import openvino as ov
    import openvino.opset1 as opset1
    import openvino.opset13 as ops

    _check_model(model)
    model = model.eval()
    b = _Builder(ops, opset1, pad_correction)
    inp = ops.parameter([batch, model.stem[0].in_channels, size, size], ov.Type.f32, name="x")
    conv, bn, pool = model.stem[0], model.stem[1], model.stem[3]
    x = ops.relu(b.bn(b.conv(inp, conv), bn))
    k, s, p = pool.kernel_size, pool.stride, pool.padding
    x = ops.max_pool(x, [s, s], [1, 1], [p, p], [p, p], [k, k], "floor").output(0)
    hw = tuple((((size + 2 * 3 - 7) // 2 + 1) + 2 * p - k) // s + 1 for _ in range(2))
    for stage in model.stages:
        for blk in stage:
            x, hw = b.block(x, blk, hw)
    x = ops.reduce_mean(x, np.array([2, 3], dtype=np.int64), False)  # (B, C)
    logits = ops.add(ops.matmul(x, b.const(_np(model.fc.weight)), False, True), b.const(_np(model.fc.bias)))
    return ov.Model([logits], [inp], "lsqbq_binary_resnet18")


def onnx_model(path) -> Any:
    """An ONNX file read by OpenVINO (``openvino.Model``)."""
    import openvino as ov

    return ov.Core().read_model(str(path))


def nncf_int8(ov_model, calibration: list[np.ndarray]):
    """Post-training int8 quantization of an OpenVINO model by NNCF (default preset: symmetric per-channel weights,
    activations per tensor), statistics from ``calibration`` (synthetic batches). NNCF's usage telemetry is
    switched off first (``NNCF_CI``, the only variable it reads for that)."""
    import os

    os.environ.setdefault("NNCF_CI", "1")
    import nncf

    return nncf.quantize(ov_model, nncf.Dataset(calibration), subset_size=len(calibration))


def compile_model(ov_model, batch: int, threads: int, precision: str = "f32", perf_count: bool = False):
    """``ov_model`` reshaped to ``batch`` and compiled for the CPU with ``threads`` inference threads, one stream,
    latency hint and inference precision ``precision`` (``f32`` or ``bf16``; OpenVINO's default on CPUs with
    bf16 would be bf16, so it is always stated); ``perf_count``: with per-node timing (``PERF_COUNT``)."""
    import openvino as ov

    model = ov_model.clone()
    dims = list(model.input(0).get_partial_shape())  # (batch: dynamic in the ONNX export, C, H, W)
    if dims[0].is_dynamic or dims[0].get_length() != batch:
        model.reshape([batch, *[d.get_length() for d in dims[1:]]])
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": precision, "PERF_COUNT": perf_count}
    return ov.Core().compile_model(model, "CPU", config)


def infer_fn(compiled, x: np.ndarray) -> tuple[Callable[[], object], Callable[[], np.ndarray]]:
    """``(call, output)``: ``call()`` runs one synchronous inference on ``x`` (bound once, no copies per call),
    ``output()`` the first output of the last call."""
    import openvino as ov

    req = compiled.create_infer_request()
    req.set_input_tensor(ov.Tensor(np.ascontiguousarray(x, dtype=np.float32)))
    return req.infer, lambda: np.array(req.get_output_tensor(0).data, copy=True)


def runtime_layer_types(compiled) -> list[str]:
    """The CPU plugin's layer types in the compiled graph (``BinaryConvolution``, ``Convolution``, ...)."""
    return [str(n.get_rt_info()["layerType"].astype(str)) for n in compiled.get_runtime_model().get_ordered_ops()]
