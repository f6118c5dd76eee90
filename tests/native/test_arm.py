"""The engine's vector paths equal its portable path bit for bit, checked by a torch-free C++ program.

``engine_check.cpp`` links the engine's core sources (every ``lsqbq/csrc`` file but the torch op registration
``ops_xnor.cpp`` and the quantizers ``quant.cpp``) and compares, on random cases, the activation encode (given
scales, greedy and exact ls-2 / ls-T fits, BatchNorm prologue, clamp), the integer and scaled GEMMs and
convolutions (1-bit, k-bit and ternary planes, padding, channel tails, batch 1 and 3) and the fused layer (bias,
residual, ReLU / PReLU) of each vector path against the portable path with memcmp.

* aarch64: the program is cross-compiled with Debian's ``aarch64-linux-gnu-g++`` and run under
  ``qemu-aarch64-static``, so the NEON path is tested on x86 machines (emulated: correctness only, never speed).
* x86-64: the same program built natively compares AVX2 and AVX-512 (integers and encode bit for bit; the AVX-512
  epilogue fuses multiply-adds, so its floats to 1e-5), and shows that the core builds without torch. Where the
  CPU has AVX-512 VNNI it also checks the direct uint8 x int8 convolution of the int8 float parts (fused max-pool
  included) against a scalar evaluation of its definition, bit for bit.
"""
from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from lsqbq import _native

HERE = Path(__file__).parent
CSRC = Path(_native.__file__).parent / "csrc"
NOT_CORE = {"ops_xnor.cpp", "quant.cpp"}  # need torch headers
CROSS_CXX = "aarch64-linux-gnu-g++"
QEMU = ("qemu-aarch64-static", "qemu-aarch64")
INSTALL = "apt-get install -y g++-aarch64-linux-gnu qemu-user-static"


def core_sources() -> list[Path]:
    """The engine's torch-free sources."""
    return sorted(p for p in CSRC.glob("*.cpp") if p.name not in NOT_CORE)


def build(cxx: str, out: Path, extra: tuple[str, ...] = ()) -> None:
    """Compile engine_check.cpp with the core sources and the library's float flags (no contraction into FMA)."""
    cmd = [cxx, "-std=c++17", "-O2", *_native._CFLAGS, "-pthread", *extra, f"-I{CSRC}",
           str(HERE / "engine_check.cpp"), *map(str, core_sources()), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"build failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}"


def test_core_sources_have_no_torch_headers():
    for src in [*core_sources(), *CSRC.glob("*.h")]:
        text = src.read_text()
        assert "torch/" not in text and "ATen/" not in text, f"{src.name} includes torch"


def test_neon_equals_portable_under_qemu(tmp_path):
    if shutil.which(CROSS_CXX) is None:
        pytest.skip(f"no aarch64 cross compiler ({CROSS_CXX}); install it with: {INSTALL}")
    qemu = next((q for q in QEMU if shutil.which(q)), None)
    if qemu is None:
        pytest.skip(f"no aarch64 emulator ({' or '.join(QEMU)}); install it with: {INSTALL}")
    exe = tmp_path / "engine_check_aarch64"
    build(CROSS_CXX, exe, ("-static",))  # static: runs under qemu without an aarch64 sysroot
    proc = subprocess.run([qemu, str(exe)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "NEON (aarch64) vs portable" in proc.stdout and " 0 mismatches" in proc.stdout, proc.stdout


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the x86-64 vector paths")
def test_x86_vector_paths_equal_portable(tmp_path):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++)")
    exe = tmp_path / "engine_check"
    build(cxx, exe)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    if proc.returncode == 2:
        pytest.skip(f"no vector path on this CPU: {proc.stdout.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "NEON" not in proc.stdout and "AVX" in proc.stdout and "vs portable" in proc.stdout, proc.stdout
    if _native.load():  # run exactly where the library says the CPU can run it
        direct = "direct int8 conv (VNNI) vs scalar reference"
        assert (direct in proc.stdout) == torch.ops.lsqbq.direct_conv_supported(), proc.stdout
