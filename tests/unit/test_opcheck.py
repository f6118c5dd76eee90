"""``torch.library.opcheck`` on every op of the namespace ``torch.ops.lsqbq``, and the namespace is one library.

The op list is read from the dispatcher, so an op added in C++ without sample inputs here fails
``test_opcheck``.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

import lsqbq
from lsqbq import _native, _ops
from lsqbq.kernels import pack_weight

LOADED = _native.load() and _ops.active()  # library built and its Python side (fakes, autograd) registered
needs_library = pytest.mark.skipif(not LOADED, reason="the C++ library could not be built")
ISAS = [isa for isa in (0, 1) if LOADED and torch.ops.lsqbq.isa_supported(isa)]


def _pm1(*shape, gen):
    return torch.where(torch.randn(*shape, generator=gen) >= 0, 1.0, -1.0)


def _rows(dtype=torch.float32, grad=False, shape=(5, 70)):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return x.requires_grad_(grad)


def _samples(name: str) -> list[tuple]:
    """Argument tuples for op ``name``: float32 (C++ kernel) and float64 (portable kernel) for the quantizers,
    each available isa for the kernels; tensors require grad where the op is differentiable."""
    gen = torch.Generator().manual_seed(0)
    scales = torch.rand(5, 3, generator=gen)
    if name == "fit_greedy":
        return [(_rows(grad=True), 3), (_rows(torch.float64, grad=True), 2), (_rows(shape=(70, 5)).T, 1)]
    if name in ("fit_ls2", "fit_ternary"):
        return [(_rows(grad=True),), (_rows(torch.float64, grad=True),), (_rows(shape=(70, 5)).T,)]
    if name == "quant_encode":
        return [(_rows(), scales.clone().requires_grad_(), False), (_rows(), scales[:1].clone(), True),
                (_rows(torch.float64), scales.double().requires_grad_(), True), (_rows(grad=True), scales, True)]
    if name == "pack_signs":
        return [(torch.randn(4, 3, 131, generator=gen, requires_grad=True),)]
    if name == "isa_supported":
        return [(0,), (1,)]
    if name == "direct_conv_supported":
        return [()]
    if name == "int8_direct_conv2d":
        return _direct_samples(gen)
    if name == "f32_direct_conv2d":
        from lsqbq.kernels.float_parts import packed_f32_direct_weight

        x = torch.randn(2, 3, 9, 7, generator=gen).contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(20, 3, 3, 3, generator=gen), torch.randn(20, generator=gen)
        return [(x, packed_f32_direct_weight(w), b, 20, [3, 3], [2, 1], [1, 1], relu, pool, isa)
                for isa in ISAS for relu in (False, True) for pool in ([], [3, 2, 1])] + [
                (x, packed_f32_direct_weight(w[:5, :, :1, :1]), None, 5, [1, 1], [2, 2], [0, 0], False, [],
                 ISAS[-1])]
    if name == "popcount_peak":
        return [(100, isa) for isa in ISAS]
    if name == "memory_latency_ns":
        return [(4096, 1000)]
    if name in ("int8_conv2d", "int8_linear"):
        return _int8_samples(name, gen)
    out = []
    for isa in ISAS:
        x = torch.randn(2, 70, 5, 4, generator=gen)
        v = torch.rand(2, 2, generator=gen)
        a = torch.ops.lsqbq.pack_activations(x, v, 0.0, 2, False, 1, 1, isa)  # (2, 2, 7, 6, 2)
        w = pack_weight(_pm1(2, 9, 70, 3, 3, gen=gen), torch.rand(9, 2, generator=gen))
        rows = torch.ops.lsqbq.pack_activations(torch.randn(6, 130, generator=gen), v[:1].expand(6, 2).contiguous(),
                                                0.0, 2, True, 0, 0, isa)  # ternary (sign, mask)
        wl = pack_weight(_pm1(1, 40, 130, gen=gen))
        sa = torch.rand(2, 2, generator=gen, requires_grad=True)
        bias = torch.randn(9, generator=gen, requires_grad=True)
        conv = (a, w.panels, w.tapsum)
        geom = ([5, 4], [3, 3], [1, 1], [1, 1], [1, 1])
        bn = (torch.rand(70, generator=gen) + 0.5, 0.1 * torch.randn(70, generator=gen))
        xcl = torch.randn(2, 70, 5, 4, generator=gen).contiguous(memory_format=torch.channels_last)
        res = torch.randn(2, 9, 5, 4, generator=gen)
        out += {
            "encode_fused": [(x, *bn, None, 2.0, 1, 1, False, 1, 1, isa),  # ls-1 fit fused with the encode
                             (xcl, None, None, None, 0.0, 3, 1, False, 0, 0, isa),  # gf-3
                             (x, *bn, None, 2.0, 2, 2, False, 1, 1, isa),  # exact ls-2
                             (x, None, None, None, 0.0, 2, 3, True, 1, 0, isa),  # exact ternary (sign, mask)
                             (x[:, :, 0, 0].contiguous(), None, None, v, 0.0, 2, 0, False, 0, 0, isa)],
            "bitwise_conv2d": [(xcl, w.panels, w.tapsum, w.scales, bias, *bn, None, res, torch.rand(9, generator=gen),
                                2.0, 1, 1, False, 2, True, 9, 70, [3, 3], [1, 1], [1, 1], [1, 1], isa),
                               (x.requires_grad_(), w.panels, w.tapsum, w.scales, None, None, None, v[:1], None,
                                None, 0.0, 2, 0, False, 1, False, 9, 70, [3, 3], [2, 2], [1, 1], [1, 1], isa),
                               (x, w.panels, w.tapsum, w.scales, None, None, None, None, res, None, 0.0, 2, 3, True,
                                0, False, 9, 70, [3, 3], [1, 1], [1, 1], [1, 1], isa)],
            "pack_activations": [(x.requires_grad_(), v, 2.0, 2, False, 1, 1, isa),
                                 (x[:, :, 0, 0].contiguous(), v, 0.0, 2, True, 0, 0, isa)],
            "xnor_gemm": [(rows, wl.panels, 40, 130, True, isa)],
            "xnor_gemm_scaled": [(rows, wl.panels, torch.rand(6, 1, generator=gen, requires_grad=True), wl.scales,
                                  None, 40, 130, True, isa)],
            "xnor_conv2d": [(*conv, 9, 70, *geom, False, isa)],
            "xnor_conv2d_scaled": [(*conv, sa, w.scales, bias, 9, 70, *geom, False, isa),
                                   (*conv, sa, w.scales, None, 9, 70, *geom, False, isa)],
            "max_pool2d_nhwc": [(xcl, [3, 3], [2, 2], [1, 1], True, isa), (xcl, [2, 1], [1, 1], [0, 0], False, isa)],
            "quantize_uint8": [(xcl, [1, 1], 255, 0, isa), (xcl[:, :3].contiguous(memory_format=torch.channels_last),
                                                            [2, 1], 127, 4, isa)],
        }.get(name, [])
    return out


def _int8_samples(name: str, gen: torch.Generator) -> list[tuple]:
    """The int8 float parts' ops on their layers' own arguments (oneDNN's packed weights, scales, zero points)."""
    from lsqbq.kernels.float_parts import FoldedConv2d, Int8Conv2d, Int8Linear

    if not hasattr(torch.ops, "onednn"):
        return []
    torch.manual_seed(0)
    out = []
    for isa in ISAS:
        if name == "int8_linear":
            layer = Int8Linear(torch.nn.Linear(70, 9), relu=True)
            layer._packed = torch.ops.onednn.qlinear_prepack(layer.weight_q, None)  # oneDNN's packed weights
            x = torch.randn(5, 70, generator=gen, requires_grad=True)
            out.append((x, layer._packed, layer.weight_scale, layer._zeros, layer.bias, layer.levels, True, isa))
            continue
        for conv, relu in ((torch.nn.Conv2d(3, 8, 3, padding=1), True), (torch.nn.Conv2d(6, 8, 1, stride=2), False)):
            layer = Int8Conv2d(FoldedConv2d(conv, relu=relu))
            x = torch.randn(2, conv.in_channels, 9, 7, generator=gen).contiguous(memory_format=torch.channels_last)
            x.requires_grad_(relu)  # the op has no gradient (test_kernel_ops_run_below_autograd_in_cpp)
            step = list(layer.stride) if layer.subsample else [1, 1]
            # oneDNN's packed weights (the layer itself may run on the direct convolution and not pack them)
            layer._packed = layer._prepack((2, layer.in_padded or conv.in_channels, -(-9 // step[0]), -(-7 // step[1])))
            out.append((x, layer._packed, layer.weight_scale, layer._zeros, layer.bias, step, layer.levels,
                        layer.in_padded, list(layer._conv_stride), list(layer.padding), list(layer.dilation), 1,
                        relu, isa))
    return out


def _direct_samples(gen: torch.Generator) -> list[tuple]:
    """The direct int8 convolution (AVX-512 VNNI only): a stem with its pool fused, one without a pool, and a 1x1
    convolution on the pixel grid of step 2 (a strided shortcut)."""
    from lsqbq.kernels.float_parts import packed_direct_weight

    if 1 not in ISAS or not torch.ops.lsqbq.direct_conv_supported():
        return []
    out = []
    for c, n, k, step, stride, pad, pool in ((3, 24, 7, 1, 2, 3, [3, 2, 1]), (2, 16, 3, 1, 1, 1, []),
                                             (8, 32, 1, 2, 1, 0, [])):
        q = torch.randint(-127, 128, (n, c, k, k), generator=gen, dtype=torch.int8)
        w, wsum = packed_direct_weight(q)
        x = torch.randn(2, c, 13, 11, generator=gen).contiguous(memory_format=torch.channels_last)
        out.append((x.requires_grad_(bool(pool)), w, wsum, torch.rand(n, generator=gen), torch.randn(n, generator=gen),
                    255, [step, step], [k, k], [stride, stride], [pad, pad], bool(pool), pool, 1))
    return out


def _utils(name: str, args: tuple) -> tuple[str, ...]:
    """All of opcheck's checks, but tracing the backward pass of an exact fit (ls-2, ls-T): it re-runs the
    pure-torch code, whose finiteness check branches on data; and no traced call of the memory probe."""
    if name in ("fit_ls2", "fit_ternary") and args[0].requires_grad:
        return tuple(u for u in torch.library._OPCHECK_DEFAULT_UTILS if u != "test_aot_dispatch_dynamic")
    if name == "memory_latency_ns":  # a measurement: a traced call records no value, so no traced-vs-eager compare
        return tuple(u for u in torch.library._OPCHECK_DEFAULT_UTILS if not u.startswith("test_aot_dispatch"))
    return torch.library._OPCHECK_DEFAULT_UTILS


# The int8 float parts' ops take oneDNN's packed weights, opaque tensors that opcheck cannot copy (it copies every
# argument first): test_int8_fake_kernels_match_the_ops and test_kernel_ops_run_below_autograd_in_cpp cover them.
INT8_OPS = ("int8_conv2d", "int8_linear")


@needs_library
@pytest.mark.parametrize("name", [n for n in _ops.op_names() if n not in INT8_OPS])
def test_opcheck(name):
    samples = _samples(name)
    if not samples and name == "int8_direct_conv2d":
        pytest.skip("the direct int8 convolution needs a CPU with AVX-512 VNNI")
    assert samples, f"no opcheck samples for torch.ops.lsqbq.{name}: add them to _samples()"
    op = getattr(torch.ops.lsqbq, name).default
    for args in samples:
        torch.library.opcheck(op, args, test_utils=_utils(name, args))


@needs_library
@pytest.mark.parametrize("name", INT8_OPS)
def test_int8_fake_kernels_match_the_ops(name):
    """The fake kernel of an int8 op gives the op's output shape, dtype and strides (called on the real arguments:
    FakeTensor cannot hold oneDNN's packed weights)."""
    assert name in _ops.op_names()
    samples = _samples(name)
    if not samples:
        pytest.skip("no oneDNN int8 ops in this torch build")
    fake = _ops._fake_kernels()[name]
    for args in samples:
        real, meta = getattr(torch.ops.lsqbq, name)(*args), fake(*args)
        assert (real.shape, real.dtype, real.stride()) == (meta.shape, meta.dtype, meta.stride())


KERNEL_OPS = ("pack_signs", "pack_activations", "encode_fused", "bitwise_conv2d", "xnor_gemm", "xnor_gemm_scaled",
              "xnor_conv2d", "xnor_conv2d_scaled", "int8_direct_conv2d", "f32_direct_conv2d", *INT8_OPS)


@needs_library
@pytest.mark.parametrize("name", KERNEL_OPS)
def test_kernel_ops_run_below_autograd_in_cpp(name):
    """The kernel ops have no gradient: their Autograd kernel is the C++ one that runs them below autograd (a
    Python autograd formula cost about 14 us per call, most of a small layer at batch 1), and inputs that require
    grad give outputs without grad_fn, with no warning."""
    dump = torch._C._dispatch_dump(f"lsqbq::{name}")
    autograd = next(line for line in dump.splitlines() if line.startswith("Autograd[alias]"))
    assert "xnor.cpp" in autograd, autograd
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for args in _samples(name):
            if not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
                continue
            out = getattr(torch.ops.lsqbq, name)(*args)
            for t in out if isinstance(out, tuple) else (out,):
                assert not t.requires_grad and t.grad_fn is None


@needs_library
def test_every_op_has_a_fake_kernel():
    for name in _ops.op_names():
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lsqbq::{name}", "Meta"), name


_REG = re.compile(r"\bTORCH_LIBRARY(_FRAGMENT|_IMPL)?\s*\(\s*(\w+)")


def test_one_library_namespace():
    """One ``TORCH_LIBRARY(lsqbq, ...)`` in the sources; every other registration adds to ``lsqbq``; every C++
    source of the package is compiled into the one library."""
    package = Path(lsqbq.__file__).parent
    found = [(m.group(1) or "", m.group(2), path.name) for path in sorted(package.rglob("*.cpp"))
             for m in _REG.finditer(path.read_text())]
    assert [f for f in found if f[0] == ""] == [("", "lsqbq", "quant.cpp")], found
    assert {ns for _, ns, _ in found} == {"lsqbq"}, found
    assert sorted(package.rglob("*.cpp")) == sorted(_native.SOURCES)


@needs_library
def test_no_other_lsqbq_namespace_at_run_time():
    namespaces = {n.split("::")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith("lsqbq")}
    assert namespaces == {"lsqbq"}
