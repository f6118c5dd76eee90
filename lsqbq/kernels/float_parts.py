"""The full-precision parts of a bitwise model (stem, projection shortcuts, classifier), folded at conversion time
and run in fp32 (the default, as in the paper) or in int8 (``float_parts="int8"``).

Folding, exact in real arithmetic (float rounding only):

* ``conv -> BN``: with the eval-mode affine ``BN(y) = a y + b`` (:func:`~lsqbq.kernels.bitwise.bn_affine`) and
  ``y = W * x + c``, ``BN(conv(x)) = (a W) * x + (a c + b)``: one convolution with weights ``a_j W_j`` and bias
  ``a_j c_j + b_j`` per output channel ``j``;
* ``-> ReLU -> max-pool``: ReLU is monotone, so it commutes with the maximum of a pooling window
  (``max_i relu(y_i) = relu(max_i y_i)``; every window holds at least one real element); the pool runs first and
  the ReLU in place on the pooled tensor, a quarter of the values for the 3x3/2 ImageNet stem pool.

Patterns ``[Conv2d, BatchNorm2d?, ReLU?, MaxPool2d?]`` are found in ``nn.Sequential`` containers (the ResNet stems
and the ``conv 1x1 -> BN`` shortcuts); a lone full-precision ``nn.Conv2d`` elsewhere (LeNet-5's ``conv1``) becomes
the same module without a BatchNorm. Weights are channels_last, as the bitwise ops read and write NHWC. A
full-precision ``nn.Linear`` (the classifier) keeps its weights and runs one row on them transposed
(:class:`Float32Linear`).

int8 (:class:`Int8Conv2d`, :class:`Int8Linear`; every full-precision conv and linear layer, so the classifier too):

* weights: symmetric, per output channel, ``s_j = max_k |w_jk| / 127``, ``q_jk = round(w_jk / s_j)`` in
  ``[-127, 127]`` (``|q_jk s_j - w_jk| <= s_j / 2``);
* activations: asymmetric uint8 over the range of the tensor each call receives, ``lo = min(min x, 0)``,
  ``hi = max(max x, 0)``, ``s_x = (hi - lo) / L``, zero point ``z = round(-lo / s_x)``, ``L = 255`` (127 on CPUs
  without VNNI, where the u8 x s8 pair sums of ``vpmaddubsw`` would saturate int16). Why the data range and not a
  calibration pass: :func:`~lsqbq.kernels.to_bitwise` has no data, and a range taken from the input itself never
  clips, so the error bound below holds for every input; it costs one min/max pass per layer (the stem's
  150k inputs: about 0.02 ms). At batch > 1 the range is the batch's, so a sample's output depends on the others
  within the bound;
* compute: oneDNN's int8 convolution / inner product (the kernels behind ``torch.backends.quantized.engine =
  "onednn"`` / ``"x86"``; VNNI where the CPU has it) with int32 accumulation, the scales, the bias and a ReLU applied
  in float32 on the way out (no output quantization). A strided 1x1 convolution (shortcut) reads every s-th pixel
  only, so that pixel grid is taken first and only it is quantized. On CPUs with AVX-512 VNNI a convolution of few
  input channels (the RGB stem: a kernel row of at most :data:`DIRECT_ROW_BYTES` bytes) or a 1x1 convolution runs on
  the engine's own direct convolution instead (``lsqbq/csrc/direct_conv.h``), with the max-pool after it fused in: the
  same int32 sums and the same float roundings as oneDNN's op on this CPU (:func:`onednn_folds_scales`: its AMX
  convolutions multiply the two scales first, its VNNI ones do not), so the same outputs bit for bit; the stem on 3
  channels instead of 4 and without writing the unpooled output (the ImageNet stem at batch 1 on one Zen 4 core: 0.76
  against 1.04 ms for oneDNN's convolution and the pool; the ResNet-18 shortcuts 44-54 against 91-143 us), and so does
  a linear layer of at most :data:`DIRECT_LINEAR_ROWS` rows (as 1x1 pixels; the classifier at batch 1: 14 against 34
  us).

Error bound (int8, per output ``j`` at position ``p``, receptive field ``R(p)``; integer products and sums exact):
``|y_hat - y| <= (s_j / 2) sum_{k in R(p)} (|x_k| + s_x / 2) + (s_x / 2) sum_k |w_jk|`` plus float32 rounding, from
``w_hat x_hat - w x = (w_hat - w) x_hat + w (x_hat - x)`` with ``|x_hat - x| <= s_x / 2``. ReLU and max-pool are
1-Lipschitz per value, so the bound after them is the pooled bound. Weights are the folded ones.

Threads per layer (:func:`conv_threads`): a small convolution runs on one thread whatever torch's thread count,
as oneDNN's second thread costs more than it saves there. Measured on a 2-core Zen 4, channels_last, 2 threads
against 1: 16x3x3 over 1x28x28 (12.5k outputs, 0.1M MACs) 21.2 against 5.9 us; 20->50 5x5 over 12x12 (3.2k outputs,
1.6M MACs) 60.7 against 40.7 us; but the CIFAR stem (65k outputs, 1.8M MACs) 1.4x faster on two, a 1x1/2 shortcut
at 28x28 (100k outputs) 1.24x. Such a layer then computes exactly what it computes with one thread
(:func:`lsqbq.passes.run_with_threads`).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, InputError
from ..layers import QuantConv2d, QuantLinear
from ..models.lenet import LeNet5
from ..passes import run_with_threads
from . import ops
from .bitwise import bn_affine

__all__ = ["DIRECT_F32_POOLED_CHANNELS", "DIRECT_F32_TAPS", "FLOAT_PARTS", "SERIAL_MACS", "SERIAL_OUTPUTS",
           "Float32Linear", "FoldedConv2d", "Int8Conv2d", "Int8Linear", "check_float_parts", "conv_threads",
           "fold_conv_bn", "fused_pool", "fuse_float_parts", "max_pool2d", "onednn_folds_scales",
           "packed_f32_direct_weight", "quantize_activations", "quantize_uint8", "weight_int8"]

FLOAT_PARTS = ("fp32", "int8")


def check_float_parts(value) -> str:
    """``value`` when it names a known mode (:data:`FLOAT_PARTS`), else a :class:`ConfigError` naming both."""
    if value not in FLOAT_PARTS:
        raise ConfigError(f"float_parts must be one of {', '.join(map(repr, FLOAT_PARTS))}, got {value!r}")
    return value


def _plain_conv(m: nn.Module) -> bool:
    """A full-precision ``nn.Conv2d`` (not a quantized layer) that :class:`FoldedConv2d` can take."""
    return (isinstance(m, nn.Conv2d) and not isinstance(m, QuantConv2d) and m.padding_mode == "zeros"
            and not isinstance(m.padding, str) and m.weight.dtype == torch.float32)


def _plain_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) and not isinstance(m, QuantLinear) and m.weight.dtype == torch.float32


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[Tensor, Tensor | None]:
    """``(a W, a c + b)`` (module docstring); ``(W, c)`` without ``bn``. None for the bias when there is none."""
    with torch.no_grad():
        w = conv.weight.detach().float().clone()
        c = None if conv.bias is None else conv.bias.detach().float().clone()
        if bn is None:
            return w, c
        a, b = bn_affine(bn)
        w = w * a.reshape(-1, 1, 1, 1)
        return w, b.clone() if c is None else torch.addcmul(b, a, c)


#: A float convolution with fewer outputs than this and fewer MACs than :data:`SERIAL_MACS` runs on one thread.
SERIAL_OUTPUTS = 32768
SERIAL_MACS = 4 << 20


def conv_threads(shape, weight: Tensor, stride, padding, dilation, groups: int) -> int:
    """Threads for ``conv2d(x, weight, ...)`` with ``x`` of ``shape``: 1 when the call has fewer than
    :data:`SERIAL_OUTPUTS` outputs and fewer than :data:`SERIAL_MACS` multiply-adds (module docstring), else
    torch's thread count. Output size per dim ``floor((H + 2 p - d (k - 1) - 1) / s) + 1``; MACs
    ``outputs * C_in / groups * kh * kw``."""
    threads = torch.get_num_threads()
    if threads == 1 or len(shape) != 4:
        return threads
    outputs = shape[0] * weight.shape[0]
    for i in (0, 1):
        k, st, p, d = weight.shape[2 + i], _pair(stride)[i], _pair(padding)[i], _pair(dilation)[i]
        outputs *= max(0, (shape[2 + i] + 2 * p - d * (k - 1) - 1) // st + 1)
    macs = outputs * weight.shape[1] * weight.shape[2] * weight.shape[3]
    return 1 if outputs < SERIAL_OUTPUTS and macs < SERIAL_MACS else threads


SEPARABLE_POOL_MAX = 4 * 2**20  # float32 elements (16 MB): larger inputs are pooled by torch (see max_pool2d)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _max_along(y: Tensor, dim: int, k: int, s: int, p: int) -> Tensor:
    """``out[o] = max_{0 <= t < k, 0 <= o s - p + t < L} y[o s - p + t]`` along ``dim`` (length ``L``), for
    ``2 p < k``: the window offset ``t = p`` lies inside for every output, so no window is empty. One strided view
    per offset ``t``, restricted to the outputs whose element ``o s - p + t`` exists; the first two whole views give
    the result tensor, the others are folded in in place."""
    size = y.shape[dim]
    n = (size + 2 * p - k) // s + 1
    whole, part = [], []
    for t in range(k):
        lo = max(0, -(-(p - t) // s))  # first o with o s - p + t >= 0
        hi = min(n - 1, (size - 1 + p - t) // s)  # last o with o s - p + t <= L - 1
        if hi >= lo:
            view = y.narrow(dim, lo * s - p + t, (hi - lo) * s + 1)
            view = view[(slice(None),) * dim + (slice(None, None, s),)] if s > 1 else view
            (whole if hi - lo + 1 == n else part).append((lo, view))
    out = torch.maximum(whole[0][1], whole[1][1]) if len(whole) > 1 else whole[0][1].clone()
    for lo, view in whole[2:] + part:
        dst = out.narrow(dim, lo, view.shape[dim])
        torch.maximum(dst, view, out=dst)
    return out


def max_pool2d(y: Tensor, kernel_size, stride, padding, dilation=1, ceil_mode: bool = False,
               relu: bool = False) -> Tensor:
    """``torch.max_pool2d(y, ...)``, followed by a ReLU when ``relu`` (windows clipped to the input: padding adds
    no value). The maximum is exact, associative and commutative, so every output is the same value torch's pool
    gives, and NaN propagates as there; only the sign of a zero may differ (``max(-0.0, 0.0)`` may take either),
    which changes no later value other than a zero's sign.

    * A channels_last float32 CPU input with a compiled back end: the engine's one-pass pool + ReLU
      (:func:`lsqbq.kernels.ops.max_pool2d_nhwc`, the channels of a pixel in vectors). Why: torch's CPU kernel also
      writes the int64 argmax of every output, and the ReLU is a second pass.
    * Else separably: the window maximum along H, then the window maximum of that along W, in strided
      ``maximum`` passes (about 0.17 ms instead of torch's 0.27 ms on the ImageNet stem at batch 1, 1 x 64 x 112 x
      112, 3x3/2, padding 1, channels_last). They read the input more than once, so once it outgrows the cache
      (batch 16 of the stem: 51 MB, 8.1 ms instead of 5.9 ms) torch's single pass wins: inputs over
      :data:`SEPARABLE_POOL_MAX` elements go to torch.

    Dilation, ``ceil_mode``, ``2 padding >= kernel`` and inputs that need a gradient (the passes write in place)
    go to torch's kernel."""
    k, s, p, d = _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation)
    if (ceil_mode or d != (1, 1) or min(s) < 1 or y.dim() != 4 or y.requires_grad
            or any(2 * p[i] >= k[i] or y.shape[2 + i] + 2 * p[i] < k[i] for i in (0, 1))):
        out = torch.max_pool2d(y, kernel_size, stride, padding, dilation, ceil_mode)
        return out.relu() if relu else out
    if (y.dtype == torch.float32 and y.device.type == "cpu" and y.numel() > 0
            and y.is_contiguous(memory_format=torch.channels_last)):
        out = ops.max_pool2d_nhwc(y, k, s, p, relu)
        if out is not None:
            return out
    if y.numel() > SEPARABLE_POOL_MAX:
        out = torch.max_pool2d(y, kernel_size, stride, padding, dilation, ceil_mode)
    else:
        out = _max_along(_max_along(y, 2, k[0], s[0], p[0]), 3, k[1], s[1], p[1])
    return out.relu_() if relu else out


#: A float convolution of at most this many taps per output (``C_in KH KW``), or a 1x1 one, runs on the engine's direct
#: convolution (:class:`FoldedConv2d`)
DIRECT_F32_TAPS = 32
#: ... and so does one of at most this many input channels with a max-pool after it that fuses (:func:`fused_pool`)
DIRECT_F32_POOLED_CHANNELS = 4


def fused_pool(pool: dict | None) -> list[int] | None:
    """The engine's direct convolutions' ``pool`` argument for a max-pool given as ``nn.MaxPool2d``'s arguments:
    ``[kernel, stride, padding]`` where they fuse it (square, at most 16 wide, no dilation, floor mode,
    ``2 padding <= kernel``), else None (no pool, or one that runs after the convolution)."""
    if not pool:
        return None
    k, st, p = (_pair(pool.get(key, 1)) for key in ("kernel_size", "stride", "padding"))
    if (k[0] == k[1] <= 16 and st[0] == st[1] and p[0] == p[1] and 2 * p[0] <= k[0]
            and _pair(pool.get("dilation", 1)) == (1, 1) and not pool.get("ceil_mode")):
        return [k[0], st[0], p[0]]
    return None


def packed_f32_direct_weight(w: Tensor) -> Tensor:
    """Weights ``w (N, C, KH, KW)`` as the direct float32 convolution reads them (``lsqbq/csrc/direct_conv_f32.h``):
    ``(KH, KW, C, Np)``, output channels last, zero-padded to ``Np``, a multiple of 16."""
    return F.pad(w.detach().float().permute(2, 3, 1, 0), (0, -w.shape[0] % 16)).contiguous()


def _drop_direct(module: nn.Module, incompatible_keys=None) -> None:
    """Forget a :class:`FoldedConv2d`'s packed weights (made again on next use): after a move, a conversion or a
    state dict load."""
    module._buffers["_direct_w"] = None


class FoldedConv2d(nn.Module):
    """``relu(maxpool(conv(x)))`` in float32 with a BatchNorm folded into the conv (module docstring); ``pool`` is
    the ``nn.MaxPool2d`` it replaces (or None) and ``relu`` says whether a ReLU follows.

    A convolution of few taps per output (``C_in KH KW <=`` :data:`DIRECT_F32_TAPS`: the one-channel and RGB 3x3
    stems, LeNet-5's ``conv1``), a 1x1 convolution (the projection shortcuts) or one of at most
    :data:`DIRECT_F32_POOLED_CHANNELS` input channels followed by a max-pool that fuses (:func:`fused_pool`: the
    ImageNet 7x7 stem), without groups or dilation and with ``2 p < k``, runs on the engine's direct convolution
    with the bias, ReLU and max-pool fused where the AVX-512 back end is active, the last two kinds also where the
    AVX2 one is (``torch.ops.lsqbq.f32_direct_conv2d``, ``lsqbq/csrc/direct_conv_f32.h``): oneDNN runs the first far
    below the CPU's multiply-add rate (LeNet-5's ``conv1`` at batch 256 on one Zen 4 core: 2.6 against 5.0 ms),
    reorders the second's weights on every call (the ResNet-18's 256 -> 512 shortcut at batch 1: 0.14 against
    0.21 ms), and writes the third's whole output before the pool reads it again (3.2 MB per image). On AVX2
    (8-wide vectors, 16 registers), against oneDNN capped at AVX2, the 1x1 and pooled ones are as fast or faster
    (shortcuts 1.1-1.2x on one thread, 1.4-2.2x on two; the stem with its pool 1.0x at batch 1, 1.6x at batch 16)
    but the few-tap ones are not (LeNet-5's ``conv1`` at batch 256 0.74x, the small ResNet's stem 0.9-1.0x), so
    those stay on oneDNN there. Its sum
    runs over the taps in a fixed order, ``(kh, kw, c)``, one fused multiply-add each, the bias after; oneDNN's
    order depends on the kernel it picks for the shape and the strides (``(kw, kh)`` in some), so outputs can
    differ from torch's convolution in the last bits, as the folding itself makes them differ from the eager
    model's.

    Shapes: ``x: (B, C, H, W) -> (B, N, OH, OW)`` (channels_last when ``x`` is)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, relu: bool = False,
                 pool: nn.MaxPool2d | None = None):
        super().__init__()
        w, b = fold_conv_bn(conv, bn)
        self.register_buffer("weight", w.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", b)
        self.stride, self.padding, self.dilation = tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation)
        self.groups, self.relu = conv.groups, relu
        self.pool = None if pool is None else dict(kernel_size=pool.kernel_size, stride=pool.stride,
                                                   padding=pool.padding, dilation=pool.dilation,
                                                   ceil_mode=pool.ceil_mode)
        self.folded = bn is not None
        k = self.weight.shape[2:]
        # the engine's direct convolution (class docstring), with its pool argument; packed weights on first use
        self._direct_pool = fused_pool(self.pool)
        plain = (self.groups == 1 and self.dilation == (1, 1)
                 and all(2 * p < kk for p, kk in zip(self.padding, k)))
        wide = tuple(k) == (1, 1) or (self._direct_pool is not None and w.shape[1] <= DIRECT_F32_POOLED_CHANNELS)
        self.direct = plain and (wide or w.shape[1] * k[0] * k[1] <= DIRECT_F32_TAPS)
        self.direct_avx2 = plain and wide  # (class docstring: the few-tap ones stay on oneDNN with AVX2)
        self.register_buffer("_direct_w", None, persistent=False)
        self.register_load_state_dict_post_hook(_drop_direct)

    def _apply(self, fn, recurse=True):
        _drop_direct(self)  # packed again on next use, from the weights as they are then
        return super()._apply(fn, recurse)

    def _direct(self, x: Tensor, threads: int, isa: int) -> Tensor:
        if self._buffers.get("_direct_w") is None:  # (a module pickled before this buffer existed has none)
            self._direct_w = packed_f32_direct_weight(self.weight)
        pool = self.__dict__.get("_direct_pool")  # (None in a module pickled before: the pool after the op)
        after = self.pool is not None and pool is None
        y = run_with_threads(threads, torch.ops.lsqbq.f32_direct_conv2d,
                             x.contiguous(memory_format=torch.channels_last), self._direct_w, self.bias,
                             self.weight.shape[0], list(self.weight.shape[2:]), list(self.stride), list(self.padding),
                             self.relu and not after, pool or [], isa)
        return max_pool2d(y, **self.pool, relu=self.relu) if after else y

    def forward(self, x: Tensor) -> Tensor:
        threads = conv_threads(x.shape, self.weight, self.stride, self.padding, self.dilation, self.groups)
        if (self.__dict__.get("direct") and x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4
                and x.numel() > 0 and x.shape[1] == self.weight.shape[1]):
            isa = ops.cached_isa(self.__dict__.get("backend"), x.device)  # (None in a module pickled before)
            if isa == ops.AVX512_ISA or (isa == ops.AVX2_ISA and self.__dict__.get("direct_avx2")):
                return self._direct(x, threads, isa)
        y = run_with_threads(threads, F.conv2d, x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                              self.groups)
        if self.pool is not None:
            return max_pool2d(y, **self.pool, relu=self.relu)
        return y.relu_() if self.relu else y

    def extra_repr(self) -> str:
        w = self.weight
        parts = [f"{w.shape[1] * self.groups}, {w.shape[0]}, kernel_size={tuple(w.shape[2:])}",
                 f"stride={self.stride}", f"padding={self.padding}"]
        parts += ["bn folded"] * self.folded + ["max-pool"] * (self.pool is not None) + ["relu"] * self.relu
        return ", ".join(parts)


class Float32Linear(nn.Module):
    """``nn.Linear`` in float32 that keeps its weight in both layouts, ``(out, in)`` and transposed ``(in, out)``,
    and runs one row on the second (``F.linear`` of a transposed view of it, which aten multiplies as stored:
    ``addmm(b, x, W^T)``; through ``torch.addmm`` itself a traced graph rounded differently from the eager call).
    Why: for one row MKL's matrix-vector product reads ``nn.Linear``'s layout far slower where the weights come
    from memory, as a classifier's do after the rest of the network (the ResNet-18 classifier 512 -> 1000 at batch
    1 on one Zen 4 core, cache flushed before each call: 144 against 206 us; 44 against 47 us in cache). More
    rows run ``nn.Linear``'s own product, as before the conversion: on the transposed layout MKL's row blocks round
    some rows differently with the batch's other rows (the last bits of a 128 -> 10 classifier's logits for batches
    split 21 + 9 against 6 x 5). Both are MKL's sums, so one row differs from the same row in a batch in the last
    bits, as with ``nn.Linear``.

    Shapes: ``x: (..., in) -> (..., out)``."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().float().clone())
        self.register_buffer("weight_t", self.weight.t().contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise InputError(f"{type(self).__name__}: expected input (..., {self.in_features}), got {tuple(x.shape)}")
        if x.numel() != self.in_features or x.dtype != torch.float32:
            return F.linear(x, self.weight, self.bias)
        # (W^T)^T: a view of the transposed copy, which aten::linear multiplies as it is stored
        return F.linear(x, self.weight_t.t(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, one row on (in, out)"


# ---------------------------------------------------------------------------------------------- int8


def _levels() -> int:
    """Activation levels: 255 with VNNI (int32 dot products), 127 without (int16 pair sums stay below 2^15)."""
    vnni = getattr(torch.cpu, "_is_vnni_supported", None)
    return 255 if vnni is not None and vnni() else 127


DIRECT_ROW_BYTES = 32  # the direct int8 convolution reads a kernel row (KW x C uint8) as at most 8 dwords
# Int8Linear runs on the direct convolution up to this many rows: as 1x1 pixels, one per row, it shares no weight
# load between rows (512 -> 1000 on one Zen 4 core: 14 / 19 / 30 / 51 us for 1 / 2 / 4 / 8 rows, oneDNN's
# inner product 34 / 34 / 38 / 48 us)
DIRECT_LINEAR_ROWS = 4


def packed_direct_weight(q: Tensor) -> tuple[Tensor, Tensor]:
    """int8 weights ``q (N, C, KH, KW)`` in the direct convolution's layout (``lsqbq/csrc/direct_conv.h``) and
    their sums ``sum_k q[n, k]`` (int32, ``(N,)``). Layout: a kernel row's ``KW C`` bytes in NHWC order (``k = kw C
    + c``), zero-padded to ``D = ceil(KW C / 4)`` dwords; output channels zero-padded to a multiple of 16 and cut
    into panels of up to 64, each ``(KH, D, channels, 4)``, so that one 64-byte load holds 16 channels' 4 bytes of
    one dword step."""
    n, c, kh, kw = q.shape
    dwords = -(-kw * c // 4)
    w = q.permute(2, 3, 1, 0).reshape(kh, kw * c, n)
    w = F.pad(w, (0, 0, 0, 4 * dwords - kw * c)).reshape(kh, dwords, 4, n)
    w = F.pad(w, (0, -n % 16))
    panels = [w[..., n0:n0 + 64].permute(0, 1, 3, 2).flatten() for n0 in range(0, w.shape[-1], 64)]
    return torch.cat(panels).contiguous(), q.sum((1, 2, 3), dtype=torch.int32)


def _drop_packed(module: nn.Module, incompatible_keys=None) -> None:
    """Forget an int8 layer's packed weight copies (made again from ``weight_q`` on next use): after a move, a
    conversion or a state dict load (a ``load_state_dict`` post hook)."""
    module._packed = module._direct_w = module._direct_sum = None


def quantize_uint8(x: Tensor, levels: int = 255) -> tuple[Tensor, float, int]:
    """``(q, s_x, z)``: uint8 ``q`` (same shape and memory format as ``x``) with ``x ~= s_x (q - z)`` over the
    range of ``x`` and 0 (module docstring): ``|s_x (q - z) - x| <= s_x / 2`` for every element. In torch: the
    reference of the engine's two-pass op (:func:`quantize_activations`).

    Raises:
        InputError: NaN or inf in ``x`` (no uint8 grid covers it), with the range found."""
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    lo, hi = torch.aminmax(x.permute(0, 2, 3, 1) if cl else x)  # a contiguous view reduces fastest
    _check_range(float(lo), float(hi), tuple(x.shape))
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / levels if hi > lo else 1.0
    zero = min(max(round(-lo / scale), 0), levels)
    # floor(x / s + z + 1/2), clamped: round half up; x within [lo, hi] is off by <= s / 2 even where clamped
    q = torch.mul(x, 1.0 / scale).add_(zero + 0.5).clamp_(0.0, levels).to(torch.uint8)
    return q, scale, zero


def _check_range(lo: float, hi: float, shape: tuple) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"int8 float parts: activations of shape {shape} are not finite (min {lo}, max {hi}); "
                         "no uint8 grid covers them: check the input, or convert with float_parts='fp32'")


def _channels_last_grid(x: Tensor, step: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
    """``(x, step)`` for a channels_last ``x`` (the engine reads the grid in place), else a channels_last copy of
    the grid ``x[:, :, ::sh, ::sw]`` and ``(1, 1)``."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return x, step
    grid = x[:, :, :: step[0], :: step[1]] if step != (1, 1) else x
    return grid.contiguous(memory_format=torch.channels_last), (1, 1)


def quantize_activations(x: Tensor, step: tuple[int, int] = (1, 1), levels: int = 255,
                         channels: int = 0) -> tuple[Tensor, float, int]:
    """:func:`quantize_uint8` of the pixel grid ``x[:, :, ::sh, ::sw]``, with zero channels appended up to
    ``channels`` (0: none), as a channels_last uint8 tensor: in the engine's two passes
    (:func:`lsqbq.kernels.ops.quantize_uint8_nhwc`, the same values) for a float32 CPU input with a compiled back
    end (another layout is first copied to a channels_last grid, as the torch path copies it), else in torch on
    the grid's copy."""
    if x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu" and x.numel() > 0:
        x, step = _channels_last_grid(x, step)
        out = ops.quantize_uint8_nhwc(x, step, levels, channels)
        if out is not None:
            q, scale, zero, lo, hi = out
            if q.numel() == 0:
                _check_range(lo, hi, tuple(x.shape))
            return q, scale, zero
    if step != (1, 1):
        x = x[:, :, :: step[0], :: step[1]]
    if channels > x.shape[1]:
        x = torch.cat([x, x.new_zeros(x.shape[0], channels - x.shape[1], *x.shape[2:])], 1)
    return quantize_uint8(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x, levels)


def weight_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel symmetric int8 weights ``(q, s)``: ``s_j = max |w_j| / 127``, ``q = round(w / s)``."""
    flat = w.detach().float().reshape(w.shape[0], -1)
    s = flat.abs().amax(1).clamp_min(torch.finfo(torch.float32).tiny) / 127
    q = torch.round(w.detach().float() / s.reshape(-1, *([1] * (w.dim() - 1)))).clamp_(-127, 127).to(torch.int8)
    return q, s


@functools.cache
def onednn_folds_scales(kind: str) -> bool:
    """Whether oneDNN's int8 ``kind`` on this CPU (``"conv"``: ``qconv2d_pointwise``, ``"linear"``:
    ``qlinear_pointwise``) rounds its float output as ``(float) acc * (s_x s_w) + b``, the two scales multiplied
    first (its AMX convolutions do), rather than ``((float) acc * s_x) * s_w + b`` (its VNNI kernels, its inner
    product). Found once per process from one small fixed problem, against both formulas computed here from exact
    integer sums; the engine's direct convolution then rounds as the op it replaces, so their outputs stay equal
    bit for bit. False where the op matches neither (the engine keeps the second order)."""
    g = torch.Generator().manual_seed(5)
    n, c = 16, 4
    q = torch.randint(0, 256, (1, c, 6, 6), generator=g, dtype=torch.uint8)
    w = torch.randint(-127, 128, (n, c, 3, 3) if kind == "conv" else (n, c * 36), generator=g, dtype=torch.int8)
    sx, z = 0.0123457, 113  # scales whose products round differently in the two orders
    sw = torch.rand(n, generator=g) * 0.02 + 1e-3
    bias = torch.randn(n, generator=g)
    with torch.inference_mode():
        if kind == "conv":
            packed = _onednn_op("qconv_prepack")(w.contiguous(memory_format=torch.channels_last), sw, 1.0, 0,
                                                 [1, 1], [0, 0], [1, 1], 1, list(q.shape))
            y = _onednn_op("qconv2d_pointwise")(q.contiguous(memory_format=torch.channels_last), sx, z, packed, sw,
                                               torch.zeros(n, dtype=torch.int32), bias, [1, 1], [0, 0], [1, 1], 1,
                                               1.0, 0, torch.float32, "none", [], "")
            acc = F.conv2d(q.double() - z, w.double()).permute(0, 2, 3, 1).reshape(-1, n)
            y = y.permute(0, 2, 3, 1).reshape(-1, n)
        else:
            packed = _onednn_op("qlinear_prepack")(w, None)
            y = _onednn_op("qlinear_pointwise")(q.reshape(1, -1), sx, z, packed, sw, torch.zeros(n, dtype=torch.int32),
                                               bias, 1.0, 0, torch.float32, "none", [], "")
            acc = (q.reshape(1, -1).double() - z) @ w.double().t()
    acc, sx32 = acc.float(), torch.tensor(sx, dtype=torch.float32)
    sequential, folded = (acc * sx32) * sw + bias, acc * (sx32 * sw) + bias
    return bool(torch.equal(y, folded) and not torch.equal(y, sequential))


def _probe_now(kind: str) -> None:
    """Run :func:`onednn_folds_scales` at conversion, outside any tracing or fake-tensor mode a first forward
    may run under; a failure is not cached (the direct path asks again when it runs)."""
    try:
        onednn_folds_scales(kind)
    except Exception:  # e.g. a CPU whose oneDNN has no int8 kernels: the direct path does not run there either
        pass


def _onednn_op(name: str):
    op = getattr(torch.ops.onednn, name, None) if hasattr(torch.ops, "onednn") else None
    if op is None:
        raise ConfigError(f"float_parts='int8' needs torch's oneDNN int8 ops (torch.ops.onednn.{name}), which this "
                          f"torch {torch.__version__} build lacks; use float_parts='fp32'")
    return op


class _Int8Base(nn.Module):
    """Holds ``q`` (int8) and ``s`` (float32 per channel) as buffers; oneDNN's packed copy is made on first use
    and never saved (:meth:`__getstate__`, not in the state dict) nor moved (:meth:`_apply` drops it: it is made
    again), so the module deep-copies, pickles and moves like any other. The packed copy is a (non-persistent)
    buffer so that :func:`~lsqbq.kernels.freeze` traces it as the module's attribute, not as a constant.

    With a compiled back end a layer is one op, ``torch.ops.lsqbq.int8_conv2d`` / ``int8_linear`` (the
    activations' quantization, then oneDNN's op), which a traced graph records; else the same steps in torch."""

    def _init_weight(self, w: Tensor, bias: Tensor | None, relu: bool) -> None:
        if w.device.type != "cpu":
            raise ConfigError(f"float_parts='int8' runs on the CPU only; the model is on {w.device}")
        q, s = weight_int8(w)
        self.register_buffer("weight_q", q)
        self.register_buffer("weight_scale", s)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.register_buffer("_zeros", torch.zeros(q.shape[0], dtype=torch.int32), persistent=False)
        self.register_buffer("_packed", None, persistent=False)
        # the direct convolution's weights and their sums (packed_direct_weight), made on first use like _packed
        self.register_buffer("_direct_w", None, persistent=False)
        self.register_buffer("_direct_sum", None, persistent=False)
        self.register_load_state_dict_post_hook(_drop_packed)  # new weights: pack them again
        self.relu, self.levels = relu, _levels()

    def __getstate__(self):
        state = super().__getstate__()
        state["_buffers"] = {**state["_buffers"], "_packed": None}
        return state

    def _apply(self, fn, recurse=True):
        _drop_packed(self)  # oneDNN's layout, not a tensor that moves or converts: packed again on next use
        return super()._apply(fn, recurse)

    def _isa(self, x: Tensor) -> int | None:
        """The compiled back end's isa for a float32 CPU input (:func:`~lsqbq.kernels.ops.cached_isa` of the
        conversion's back end), else None."""
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.numel() == 0:
            return None
        return ops.cached_isa(self.__dict__.get("backend"), x.device)

    @staticmethod
    def _input_error(exc: ValueError) -> InputError:
        return InputError(str(exc).splitlines()[0])

    def _direct(self, x: Tensor, weight: Tensor, step, kernel, stride, padding, pool: list[int], isa: int,
                kind: str = "conv") -> Tensor:
        """``torch.ops.lsqbq.int8_direct_conv2d`` of ``x`` with this layer's scales, bias and ReLU, the weights
        ``weight (N, C, KH, KW)`` packed on first use, rounding as oneDNN's ``kind`` op does here
        (:func:`onednn_folds_scales`); a range that is not finite is an :class:`InputError`."""
        if self._direct_w is None:
            self._direct_w, self._direct_sum = packed_direct_weight(weight)
        try:
            return torch.ops.lsqbq.int8_direct_conv2d(x, self._direct_w, self._direct_sum, self.weight_scale,
                                                      self.bias, self.levels, list(step), list(kernel), list(stride),
                                                      list(padding), self.relu, pool, isa, onednn_folds_scales(kind))
        except ValueError as exc:
            raise self._input_error(exc) from None


class Int8Conv2d(_Int8Base):
    """``relu(maxpool(conv(x)))`` (:class:`FoldedConv2d`) with int8 weights and per-call uint8 activations on
    oneDNN (module docstring: quantization and error bound); float32 in and out."""

    def __init__(self, folded: FoldedConv2d):
        super().__init__()
        _onednn_op("qconv2d_pointwise")  # a ConfigError now where torch lacks them (not kept: ops do not pickle)
        _onednn_op("qconv_prepack")
        w = folded.weight
        self.in_channels = w.shape[1] * folded.groups
        # an RGB stem runs on 4 channels, the 4th zero in the weights and the quantized 0 in the input: the same
        # int32 sums (the products of the zero weights are 0) and 1.5x faster in oneDNN's int8 kernel (measured on
        # a 2-core Zen 4, 64 7x7/2 filters over 224x224, 1 thread: 0.92 against 1.40 ms; fp32 is slower on 4)
        self.in_padded = 4 if self.in_channels == 3 and folded.groups == 1 else 0
        if self.in_padded:
            w = F.pad(w, (0, 0, 0, 0, 0, self.in_padded - self.in_channels))
        self._init_weight(w, folded.bias, folded.relu)
        self.stride, self.padding, self.dilation, self.groups = (folded.stride, folded.padding, folded.dilation,
                                                                folded.groups)
        self.pool = folded.pool
        # a strided 1x1 convolution without padding reads one pixel in s: take that grid, convolve with stride 1
        self.subsample = (tuple(self.weight_q.shape[2:]) == (1, 1) and self.padding == (0, 0)
                          and self.stride != (1, 1))
        self._conv_stride = (1, 1) if self.subsample else self.stride
        # the engine's direct convolution (module docstring): its pool argument, None where it does not apply
        self._direct_pool = None
        pool = fused_pool(self.pool)
        if (self.groups == 1 and self.dilation == (1, 1)
                and (self.in_channels * self.weight_q.shape[3] <= DIRECT_ROW_BYTES
                     or tuple(self.weight_q.shape[2:]) == (1, 1))
                and (self.pool is None or pool is not None)):
            self._direct_pool = pool or []
            _probe_now("conv")

    def _prepack(self, shape) -> Tensor:
        q = self.weight_q.contiguous(memory_format=torch.channels_last)
        return torch.ops.onednn.qconv_prepack(q, self.weight_scale, 1.0, 0, list(self._conv_stride),
                                              list(self.padding), list(self.dilation), self.groups, list(shape))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"{type(self).__name__}: expected input (B, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape)}")
        x = x.float()
        if x.shape[0] == 0:  # an empty batch: an empty output of the layer's shape (no range to quantize over)
            return self._empty_output(x)
        # a strided 1x1 convolution reads one pixel in s: only that grid is quantized
        x, step = _channels_last_grid(x, self.stride if self.subsample else (1, 1))
        q_shape = (x.shape[0], self.in_padded or self.in_channels, -(-x.shape[2] // step[0]),
                   -(-x.shape[3] // step[1]))
        threads = conv_threads(q_shape, self.weight_q, self._conv_stride, self.padding, self.dilation, self.groups)
        isa = self._isa(x)
        if self._direct_pool is not None and ops.direct_conv_supported(isa):
            return run_with_threads(threads, self._direct, x, self.weight_q[:, :self.in_channels], step,
                                    self.weight_q.shape[2:], self._conv_stride, self.padding, self._direct_pool, isa)
        if self._packed is None:
            self._packed = self._prepack(q_shape)
        geometry = (list(self._conv_stride), list(self.padding), list(self.dilation), self.groups)
        if isa is None:  # the same steps in torch calls
            q, scale, zero = quantize_activations(x, step, self.levels, self.in_padded)
            y = run_with_threads(threads, torch.ops.onednn.qconv2d_pointwise, q, scale, zero, self._packed,
                                 self.weight_scale, self._zeros, self.bias, *geometry, 1.0, 0, torch.float32,
                                 "relu" if self.relu else "none", [], "")
        else:
            try:
                y = run_with_threads(threads, torch.ops.lsqbq.int8_conv2d, x, self._packed, self.weight_scale,
                                     self._zeros, self.bias, list(step), self.levels, self.in_padded, *geometry,
                                     self.relu, isa)
            except ValueError as exc:  # a range that is not finite
                raise self._input_error(exc) from None
        # ReLU before the pool equals ReLU after it (module docstring)
        return y if self.pool is None else max_pool2d(y, **self.pool)

    def _empty_output(self, x: Tensor) -> Tensor:
        """The output of an empty batch, ``(0, N, OH, OW)`` channels_last: per dim ``OH = floor((H + 2 p - d (k - 1)
        - 1) / s) + 1`` for the conv, then the same for the pool (rounded up with ``ceil_mode``, a last window that
        would start in the right padding dropped, as torch's pooling does)."""
        size = [int(n) for n in x.shape[2:]]
        for i in (0, 1):
            k = self.weight_q.shape[2 + i]
            size[i] = (size[i] + 2 * self.padding[i] - self.dilation[i] * (k - 1) - 1) // self.stride[i] + 1
            if self.pool is not None:
                pk, ps, pp, pd = (_pair(self.pool[key])[i] for key in ("kernel_size", "stride", "padding", "dilation"))
                ceil = self.pool["ceil_mode"]
                out = (size[i] + 2 * pp - pd * (pk - 1) - 1 + (ps - 1 if ceil else 0)) // ps + 1
                size[i] = out - 1 if ceil and (out - 1) * ps >= size[i] + pp else out
        if min(size) < 1:
            raise InputError(f"{type(self).__name__}: input {tuple(x.shape)} is smaller than the kernel")
        return x.new_zeros(0, self.weight_q.shape[0], *size).contiguous(memory_format=torch.channels_last)

    def extra_repr(self) -> str:
        w = self.weight_q
        return (f"{self.in_channels}, {w.shape[0]}, kernel_size={tuple(w.shape[2:])}, stride={self.stride}, "
                f"padding={self.padding}, int8" + ", max-pool" * (self.pool is not None) + ", relu" * self.relu)


class Int8Linear(_Int8Base):
    """``nn.Linear`` (optionally followed by a ReLU) with int8 weights and per-call uint8 activations on oneDNN;
    ``x: (B, ..., F) -> (B, ..., N)`` float32."""

    def __init__(self, linear: nn.Linear, relu: bool = False):
        super().__init__()
        _onednn_op("qlinear_pointwise")
        _onednn_op("qlinear_prepack")
        self._init_weight(linear.weight, linear.bias, relu)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        _probe_now("linear")

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise InputError(f"{type(self).__name__}: expected input (..., {self.in_features}), got {tuple(x.shape)}")
        if x.numel() == 0:  # no rows: an empty output (no range to quantize over)
            return x.new_zeros(*x.shape[:-1], self.out_features, dtype=torch.float32)
        rows = x.float().reshape(-1, self.in_features).contiguous()
        isa = self._isa(rows)
        if rows.shape[0] <= DIRECT_LINEAR_ROWS and ops.direct_conv_supported(isa):  # as 1x1 pixels (module docs)
            y = self._direct(rows[:, :, None, None], self.weight_q[:, :, None, None], (1, 1), (1, 1), (1, 1), (0, 0),
                             [], isa, "linear")
            return y.reshape(*x.shape[:-1], self.out_features)
        if self._packed is None:
            self._packed = torch.ops.onednn.qlinear_prepack(self.weight_q, None)
        if isa is None:
            q, scale, zero = quantize_activations(rows.view(*rows.shape, 1, 1), levels=self.levels)
            y = torch.ops.onednn.qlinear_pointwise(q.view(rows.shape), scale, zero, self._packed, self.weight_scale,
                                                   self._zeros, self.bias, 1.0, 0, torch.float32,
                                                   "relu" if self.relu else "none", [], "")
        else:
            try:
                y = torch.ops.lsqbq.int8_linear(rows, self._packed, self.weight_scale, self._zeros, self.bias,
                                                self.levels, self.relu, isa)
            except ValueError as exc:  # a range that is not finite
                raise self._input_error(exc) from None
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8" + ", relu" * self.relu


# ---------------------------------------------------------------------------------------------- model pass


def _folded(conv: nn.Conv2d, bn, relu: bool, pool, float_parts: str) -> nn.Module:
    folded = FoldedConv2d(conv, bn, relu, pool)
    return Int8Conv2d(folded) if float_parts == "int8" else folded


def _fuse_sequential(seq: nn.Sequential, float_parts: str, prefix: str, done: dict[str, str]) -> None:
    """``[Conv2d, BN?, ReLU?, MaxPool2d?]`` runs -> one module in the conv's slot; the others are removed."""
    items = list(seq._modules.items())
    i = 0
    while i < len(items):
        name, m = items[i]
        if not _plain_conv(m):
            i += 1
            continue
        j, bn, relu, pool = i + 1, None, False, None
        if j < len(items) and isinstance(items[j][1], nn.BatchNorm2d) and bn_affine(items[j][1]) is not None \
                and items[j][1].num_features == m.out_channels:
            bn, j = items[j][1], j + 1
        if j < len(items) and isinstance(items[j][1], nn.ReLU):
            relu, j = True, j + 1
        if j < len(items) and isinstance(items[j][1], nn.MaxPool2d) and not items[j][1].return_indices:
            pool, j = items[j][1], j + 1
        seq._modules[name] = _folded(m, bn, relu, pool, float_parts)
        for gone, _ in items[i + 1: j]:
            del seq._modules[gone]
        done[f"{prefix}{name}"] = _describe(seq._modules[name], items[i + 1: j], float_parts)
        i = j


def _describe(module: nn.Module, absorbed, float_parts: str) -> str:
    kinds = ["conv"] + [type(m).__name__ for _, m in absorbed]
    return f"{float_parts}: " + " + ".join(kinds)


def fuse_float_parts(model: nn.Module, float_parts: str = "fp32", backend: str | None = None) -> dict[str, str]:
    """Fold the full-precision convs of ``model`` (in place) with their BatchNorm / ReLU / max-pool, and with
    ``float_parts="int8"`` run them and the full-precision linear layers in int8; the engine's ops among them run on
    the kernel back end ``backend`` (None: the switch ``LSQBQ_BACKEND`` at each call), the binary layers'.
    Returns ``{layer: what}``."""
    check_float_parts(float_parts)
    done: dict[str, str] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        if isinstance(module, nn.Sequential):
            _fuse_sequential(module, float_parts, prefix, done)
        # LeNet-5 applies its ReLU right after conv1 and fc1 (a second ReLU on the output changes nothing)
        relu_after = {"conv1", "fc1"} if isinstance(module, LeNet5) and isinstance(module.relu, nn.ReLU) else set()
        for name, child in list(module.named_children()):
            path = f"{prefix}{name}"
            if _plain_conv(child):  # not in a Sequential run: a lone conv (LeNet-5's conv1 is followed by a ReLU)
                setattr(module, name, _folded(child, None, name in relu_after, None, float_parts))
                done[path] = f"{float_parts}: conv" + " + ReLU" * (name in relu_after)
            elif float_parts == "int8" and _plain_linear(child):
                setattr(module, name, Int8Linear(child, relu=name in relu_after))
                done[path] = "int8: linear" + " + ReLU" * (name in relu_after)
            elif _plain_linear(child):
                setattr(module, name, Float32Linear(child))
                done[path] = "fp32: linear"
            elif not isinstance(child, (FoldedConv2d, Float32Linear, _Int8Base)):
                visit(child, f"{path}.")

    visit(model, "")
    for m in model.modules():
        if isinstance(m, (FoldedConv2d, _Int8Base)):
            m.backend = backend
    return done
