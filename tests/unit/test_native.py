"""The native ops compute the same values and gradients as the pure-torch code, and ``LSQBQ_BACKEND=reference`` turns
them off everywhere."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import lsqbq
from lsqbq import _native, kernels
from lsqbq import quantizers as Q
from lsqbq.ste import foldable_ste

pytestmark = pytest.mark.skipif(not _native.load(), reason="the C++ library could not be built")

SCHEMES = ["ls-1", "gf-2", "gf-3", "ls-T", "ls-2"]


def rows():
    gen = np.random.default_rng(0)
    out = [gen.standard_normal((9, 301)), gen.laplace(size=(5, 1000)), gen.standard_cauchy((4, 64)),
           gen.choice([-2.0, -1.0, 0.0, 1.0, 3.0], size=(6, 50)), np.zeros((2, 17)), gen.standard_normal((3, 1)),
           gen.standard_normal((2, 2)) * 1e-38, gen.standard_normal((2, 70000))]
    return [torch.tensor(r, dtype=torch.float32) for r in out]


def _fit_and_quantize_match(x, scheme):
    v_native, q_native = lsqbq.fit(x, scheme), lsqbq.quantize(x, scheme)
    with _native.disabled():
        v_torch, q_torch = lsqbq.fit(x, scheme), lsqbq.quantize(x, scheme)
    if scheme.startswith("gf") or scheme == "ls-1":
        # the mean is summed in float64 in a different order: equal after rounding up to 1 ulp
        torch.testing.assert_close(v_native, v_torch, rtol=2e-7, atol=0)
        torch.testing.assert_close(lsqbq.quantize(x, scheme, v_torch), q_torch, rtol=0, atol=0)
    else:
        assert torch.equal(v_native, v_torch)
        assert torch.equal(q_native, q_torch)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fit_and_quantize_match_torch(scheme):
    for x in rows():
        _fit_and_quantize_match(x, scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_float64_takes_the_portable_kernel(scheme):
    """float64 reaches the ops' portable kernel through the C++ CPU kernel: the torch results exactly."""
    x = torch.randn(7, 123, dtype=torch.float64)
    v_native, q_native = lsqbq.fit(x, scheme), lsqbq.quantize(x, scheme)
    with _native.disabled():
        assert torch.equal(v_native, lsqbq.fit(x, scheme))
        assert torch.equal(q_native, lsqbq.quantize(x, scheme))
    x[2, 1] = float("inf")
    with pytest.raises(ValueError, match=f"{scheme}: row 2 of the input holds Inf"):
        lsqbq.fit(x, scheme)


def test_ops_on_half_take_the_portable_kernel():
    x = torch.randn(4, 50).half()
    s = torch.rand(4, 2).half()
    with _native.disabled():
        want = [Q.fit_greedy(x, 2), Q.fit_ls2(x), Q.fit_ternary(x), Q.foldable_quantize(x, s)]
    got = [torch.ops.lsqbq.fit_greedy(x, 2), torch.ops.lsqbq.fit_ls2(x), torch.ops.lsqbq.fit_ternary(x),
           torch.ops.lsqbq.quant_encode(x, s, False)[0]]
    for a, b in zip(got, want):
        assert a.dtype == torch.float16 and torch.equal(a, b)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_ste_forward_and_gradient_match_torch(scheme):
    x = (torch.randn(6, 500) * 1.3).requires_grad_()
    v = lsqbq.fit(x.detach(), scheme)
    g = torch.randn(6, 500)
    y = foldable_ste(x, v)
    (gx,) = torch.autograd.grad(y, x, g)
    with _native.disabled():
        y_ref = foldable_ste(x, v)
        (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    assert torch.equal(y, y_ref)
    assert torch.equal(gx, gx_ref)


def _grads(fn, inputs, g):
    """``fn(*inputs)``, whether it carries a gradient, and the gradients of ``<g, fn>`` w.r.t. the inputs."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    if not out.requires_grad:
        return out, False, [None] * len(inputs)
    grads = torch.autograd.grad(out, inputs, g(out), allow_unused=True)
    return out, True, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scheme", ["ls-1", "ls-2", "ls-T", "gf-3"])
def test_gradients_match_torch(scheme, dtype):
    """Gradients through the native ops equal the pure-torch path's: of the fitted scales w.r.t. ``x``, of
    ``quantize`` w.r.t. ``x`` (the straight-through rule; given scales are constants); no autograd warning."""
    x = torch.randn(5, 301, dtype=dtype) * 1.5
    v = lsqbq.fit(x, scheme)
    gen = torch.Generator().manual_seed(3)

    def g(out):
        return torch.randn(out.shape, generator=gen, dtype=out.dtype)

    cases = [(lambda x: lsqbq.fit(x, scheme), [x]), (lambda x: lsqbq.quantize(x, scheme), [x]),
             (lambda x, v: lsqbq.quantize(x, scheme, v), [x, v])]
    seen = []
    for fn, inputs in cases:
        gen.manual_seed(3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out, differentiable, grads = _grads(fn, inputs, g)
        gen.manual_seed(3)
        with _native.disabled():
            out_t, differentiable_t, grads_t = _grads(fn, inputs, g)
        torch.testing.assert_close(out, out_t, rtol=2e-7, atol=0)
        assert differentiable == differentiable_t
        seen.append(differentiable)
        for a, b in zip(grads, grads_t):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.equal(a, b)
    # every fit passes its derivative to x (the discrete choices held fixed); quantize passes the straight-through
    # one (lsqbq.ste) whether its scales are fitted or given
    assert seen == [True, True, True]


def test_shared_scales_broadcast():
    x = torch.randn(5, 40)
    s = torch.tensor([[0.9, 0.4]])
    y = lsqbq.quantize(x, "ls-2", s)
    with _native.disabled():
        assert torch.equal(y, lsqbq.quantize(x, "ls-2", s))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_non_finite_rows_reported_by_the_native_path(scheme):
    x = torch.randn(3, 10)
    x[1, 4] = float("nan")
    with pytest.raises(ValueError, match=f"{scheme}: row 1 of the input holds NaN"):
        lsqbq.fit(x, scheme)


def test_non_contiguous_input():
    x = torch.randn(40, 6).T  # (6, 40), not contiguous
    for scheme in SCHEMES:
        assert torch.equal(lsqbq.quantize(x, scheme), lsqbq.quantize(x.contiguous(), scheme))


# ------------------------------------------------------------------------------------------ the switch

_SWITCHED_OFF = """
import json, sys, torch
import lsqbq
from lsqbq import _native, _ops, kernels
from lsqbq.ste import foldable_ste
x = torch.load(sys.argv[1])
out = {f"q/{s}": lsqbq.quantize(x, s) for s in ("ls-1", "gf-3", "ls-T", "ls-2")}
out.update({f"v/{s}": lsqbq.fit(x, s) for s in ("ls-1", "gf-3", "ls-T", "ls-2")})
out["ste"] = foldable_ste(x, lsqbq.fit(x, "gf-2"))
out["acts"] = kernels.encode(x, lsqbq.fit(x, "ls-2"))
w = kernels.pack_weight(torch.where(x[:4] >= 0, 1.0, -1.0)[None])
out["gemm"] = kernels.xnor_gemm(out["acts"], w)
torch.save(out, sys.argv[2])
print(json.dumps({"loaded": _native.load(), "ops": _ops.op_names(), "backends": kernels.available_backends(),
                  "auto": kernels.resolve_backend()}))
"""


def test_switch_off_uses_pure_torch_everywhere(tmp_path):
    """``LSQBQ_BACKEND=reference``: nothing is built or loaded, quantizers run the torch code, kernels the reference back
    end, and the results are those of the native path."""
    x = torch.randn(6, 200)
    torch.save(x, tmp_path / "x.pt")
    build = tmp_path / "build"
    env = {**os.environ, "LSQBQ_BACKEND": "reference", "LSQBQ_BUILD_DIR": str(build)}
    run = subprocess.run([sys.executable, "-c", _SWITCHED_OFF, str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    state = json.loads(run.stdout.strip().splitlines()[-1])
    assert state == {"loaded": False, "ops": [], "backends": ["reference"], "auto": "reference"}
    assert not build.exists()
    off = torch.load(tmp_path / "out.pt")
    assert kernels.resolve_backend() != "reference"  # this process: the C++ kernels
    for s in ("ls-T", "ls-2"):
        assert torch.equal(off[f"v/{s}"], lsqbq.fit(x, s))
        assert torch.equal(off[f"q/{s}"], lsqbq.quantize(x, s))
    for s in ("ls-1", "gf-3"):  # float64 sums in another order: up to 1 ulp in the scales
        torch.testing.assert_close(off[f"v/{s}"], lsqbq.fit(x, s), rtol=2e-7, atol=0)
        assert torch.equal(off[f"q/{s}"], lsqbq.quantize(x, s, off[f"v/{s}"]))
    assert torch.equal(off["ste"], foldable_ste(x, lsqbq.fit(x, "gf-2")))
    acts = kernels.encode(x, off["v/ls-2"])
    assert torch.equal(off["acts"], acts)
    w = kernels.pack_weight(torch.where(x[:4] >= 0, 1.0, -1.0)[None])
    assert torch.equal(off["gemm"], kernels.xnor_gemm(acts, w))


def test_build_directory_is_keyed_on_source_content_not_path(tmp_path, monkeypatch):
    """Two checkouts of the same code share one build; changed code or flags get their own."""
    monkeypatch.setenv("LSQBQ_BUILD_DIR", str(tmp_path / "cache"))
    trees = []
    for checkout in ("a", "b"):
        copies = []
        for src in _native.SOURCES:
            dst = tmp_path / checkout / src.parent.name / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
            copies.append(dst)
        monkeypatch.setattr(_native, "SOURCES", copies)
        trees.append(_native._build_tree(["-O3"]))
    (build_a, src_a), (build_b, src_b) = trees
    assert build_a == build_b and src_a == src_b and all(p.parent == build_a / "src" for p in src_a)
    assert [p.read_bytes() for p in src_a] == [p.read_bytes() for p in copies]
    assert _native._build_tree(["-O0"])[0] != build_a
    copies[0].write_bytes(copies[0].read_bytes() + b"\n// changed\n")
    assert _native._build_tree(["-O3"])[0] != build_a


def test_build_directory_is_keyed_on_the_headers_too(tmp_path, monkeypatch):
    """The sources include headers of the same folder: a changed header gets its own build, and the headers are
    copied beside the sources (which alone are compiled)."""
    monkeypatch.setenv("LSQBQ_BUILD_DIR", str(tmp_path / "cache"))
    assert _native.HEADERS and all(h.suffix == ".h" for h in _native.HEADERS)
    build, sources = _native._build_tree(["-O3"])
    assert [p.name for p in sources] == [s.name for s in _native.SOURCES]
    assert all((build / "src" / h.name).read_bytes() == h.read_bytes() for h in _native.HEADERS)
    copies = []
    for h in _native.HEADERS:
        dst = tmp_path / "headers" / h.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(h.read_bytes())
        copies.append(dst)
    monkeypatch.setattr(_native, "HEADERS", copies)
    assert _native._build_tree(["-O3"])[0] == build  # same bytes, another path: the same build
    copies[0].write_bytes(copies[0].read_bytes() + b"\n// changed\n")
    assert _native._build_tree(["-O3"])[0] != build


def test_the_build_runs_the_environments_own_ninja(tmp_path, monkeypatch):
    """Another ninja first on PATH (a system one, whose build log the package's version reads as foreign and
    rebuilds everything over) is not the one the build runs; PATH is restored afterwards."""
    ninja = pytest.importorskip("ninja")
    import shutil

    from torch.utils import cpp_extension

    other = tmp_path / "bin"
    other.mkdir()
    (other / "ninja").write_text("#!/bin/sh\nexit 1\n")
    (other / "ninja").chmod(0o755)
    path = f"{other}{os.pathsep}{os.environ.get('PATH', '')}"
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv("LSQBQ_BUILD_DIR", str(tmp_path / "cache"))
    seen = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: seen.append(shutil.which("ninja")))
    assert _native._build_and_register()
    assert len(seen) == 1 and Path(seen[0]).parent == Path(ninja.BIN_DIR)
    assert os.environ["PATH"] == path
