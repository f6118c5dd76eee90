"""The one switch ``LSQBQ_BACKEND``: each value selects its back end (``reference`` is the pure-torch path, the
quantizers included), a bad value is a ConfigError naming the variable, every error about a back end names the
switch, and the names of the previous release still work with a DeprecationWarning."""
from __future__ import annotations

import platform
import warnings

import pytest
import torch

import lsqbq
from lsqbq import _native, _ops, quantizers
from lsqbq.bench.machine import cpu_flags
from lsqbq.errors import ConfigError
from lsqbq.kernels import available_backends, isa_path, resolve_backend

OLD = ("LSQBQ_NATIVE", "LSQBQ_KERNELS", "LSQBQ_POPCNT")


@pytest.fixture(autouse=True)
def _clean_switches(monkeypatch):
    for name in ("LSQBQ_BACKEND", *OLD):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_native, "_warned", set())  # each test sees its own deprecation warnings


def _compiled() -> list[str]:
    return [b for b in available_backends() if b != "reference"]


def test_reference_is_the_pure_torch_path_everywhere(monkeypatch):
    monkeypatch.setenv("LSQBQ_BACKEND", "reference")
    assert not _native.enabled() and not _ops.active()
    assert resolve_backend() == "reference" == isa_path() and available_backends() == ["reference"]
    x = torch.randn(3, 50)
    assert torch.equal(lsqbq.fit(x, "ls-2"), quantizers.fit_ls2(x))  # the torch code itself ran


@pytest.mark.parametrize("value", ["portable", "avx2", "avx512", "neon", "auto", "AUTO", ""])
def test_each_value_selects_its_back_end(monkeypatch, value):
    if not _compiled():
        pytest.skip("no compiled back end")
    monkeypatch.setenv("LSQBQ_BACKEND", value)
    want = value.lower() if value.lower() in ("portable", "avx2", "avx512", "neon") else available_backends()[-1]
    if want not in available_backends():
        with pytest.raises(ConfigError, match=f"kernel backend '{want}' is not available on this machine .*"
                                              f"set LSQBQ_BACKEND=auto, or LSQBQ_BACKEND={available_backends()[-1]}"):
            resolve_backend()
        return
    assert resolve_backend() == want
    path = isa_path()
    assert path == {"avx512": "avx512-vpopcntdq", "avx2": "avx2", "neon": "neon"}[want] if want != "portable" else \
        path.startswith("portable-")
    if want == "portable" and "popcnt" in cpu_flags():
        assert path == "portable-popcnt"
    assert resolve_backend("reference") == "reference"  # a backend= argument wins over the switch


def test_generic_is_the_portable_back_end_in_its_software_popcount_build(monkeypatch):
    if "portable" not in available_backends():
        pytest.skip("no compiled back end")
    monkeypatch.setenv("LSQBQ_POPCNT", "0")  # what LSQBQ_BACKEND=generic sets for the C++ code (restored after)
    monkeypatch.setenv("LSQBQ_BACKEND", "generic")
    assert resolve_backend() == "portable" and isa_path() == "portable-generic"


@pytest.mark.parametrize("value", ["nonsense", "avx2x", "native"])
def test_bad_value_is_an_error_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("LSQBQ_BACKEND", value)
    msg = (f"LSQBQ_BACKEND={value!r} is not a kernel back end; set LSQBQ_BACKEND to one of auto, reference, "
           "portable, generic, avx512, avx2, neon (or unset it for auto)")
    with pytest.raises(ConfigError) as e:
        resolve_backend()
    assert str(e.value) == msg and e.value.exit_code == 2
    with pytest.raises(ConfigError, match="LSQBQ_BACKEND="):
        lsqbq.fit(torch.randn(2, 8), "ls-2")  # the quantizers read the switch too


def test_unavailable_back_end_names_the_switch(monkeypatch):
    monkeypatch.setenv("LSQBQ_BACKEND", "reference")
    with pytest.raises(ConfigError, match=r"kernel backend 'portable' is not available on this machine "
                                          r"\(LSQBQ_BACKEND=reference keeps the C\+\+ library unloaded; available: "
                                          r"reference\); set LSQBQ_BACKEND=auto"):
        resolve_backend("portable")
    with pytest.raises(ConfigError, match="unknown kernel backend 'fast'.*LSQBQ_BACKEND"):
        resolve_backend("fast")


@pytest.mark.parametrize("old,value,means", [("LSQBQ_NATIVE", "0", "reference"),
                                              ("LSQBQ_KERNELS", "portable", "portable")])
def test_previous_names_still_work_with_a_deprecation_warning(monkeypatch, old, value, means):
    if means != "reference" and means not in available_backends():
        pytest.skip("no compiled back end")
    monkeypatch.setenv(old, value)
    with pytest.warns(DeprecationWarning, match=f"{old}={value} is deprecated .* set LSQBQ_BACKEND={means} instead"):
        assert resolve_backend() == means
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend() == means  # warned once per process, not on every kernel call
    monkeypatch.setenv("LSQBQ_BACKEND", "auto")  # the new name wins
    assert resolve_backend() == available_backends()[-1]


def test_previous_popcount_switch_means_generic(monkeypatch):
    monkeypatch.setenv("LSQBQ_POPCNT", "0")
    with pytest.warns(DeprecationWarning, match="LSQBQ_POPCNT=0 is deprecated .* LSQBQ_BACKEND=generic"):
        assert _native.requested_backend() == "generic"


def test_auto_takes_the_fastest_path_the_cpu_has(monkeypatch):
    """``auto``: avx512 where the CPU has AVX-512 VPOPCNTDQ, else avx2 where it has AVX2 (+ FMA, POPCNT), else
    portable; the C++ library's own detection agrees with the CPU flags the benchmarks record."""
    if not _compiled():
        pytest.skip("no compiled back end")
    flags = set(cpu_flags())  # the recorded flags (no avx512dq / fma there: every CPU with the others has them)
    if not flags:
        pytest.skip("the CPU flags cannot be read here")
    has512 = {"avx512f", "avx512bw", "avx512vl", "avx512_vpopcntdq"} <= flags
    has2 = {"avx2", "popcnt"} <= flags
    assert ("avx512" in available_backends()) == has512
    assert ("avx2" in available_backends()) == has2
    assert resolve_backend() == ("avx512" if has512 else "avx2" if has2 else "portable")


def test_neon_exists_on_aarch64_only(monkeypatch):
    """NEON is part of every aarch64 CPU: there ``auto`` takes it; elsewhere asking for it is an error that names
    the switch and the architecture."""
    if not _compiled():
        pytest.skip("no compiled back end")
    arm = platform.machine().lower() in ("aarch64", "arm64")
    assert ("neon" in available_backends()) == arm
    if arm:
        assert resolve_backend() == "neon" and isa_path() == "neon"
        return
    monkeypatch.setenv("LSQBQ_BACKEND", "neon")
    with pytest.raises(ConfigError, match=r"kernel backend 'neon' is not available on this machine \(NEON kernels "
                                          r"exist only on aarch64, this CPU is .*\); set LSQBQ_BACKEND=auto"):
        resolve_backend()
