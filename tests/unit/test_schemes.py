import re

import pytest
import torch

import lsqbq
from lsqbq.schemes import SCHEME_PATTERN, get_scheme, list_schemes


@pytest.mark.parametrize("name,k,label", [("fp", 0, "32"), ("ls-1", 1, "1"), ("ls-2", 2, "2"), ("ls-T", 2, "T"),
                                          ("gf-1", 1, "1"), ("gf-3", 3, "3"), ("gf-12", 12, "12")])
def test_get_scheme_fields(name, k, label):
    s = get_scheme(name)
    assert (s.name, s.k, s.label) == (name, k, label)
    assert s.is_fp == (name == "fp")
    assert s.ternary == (name == "ls-T")
    assert re.match(SCHEME_PATTERN, name)


@pytest.mark.parametrize("bad", ["ls-3", "gf-0", "gf-", "LS-1", "gf-01", "binary", ""])
def test_unknown_scheme_lists_valid_ones(bad):
    with pytest.raises(ValueError) as e:
        get_scheme(bad)
    msg = str(e.value)
    assert repr(bad) in msg
    for name in list_schemes():
        assert name in msg
    assert not re.match(SCHEME_PATTERN, bad)


def test_non_string_scheme_is_rejected():
    with pytest.raises(SchemeError, match="name or a Scheme"):
        get_scheme(3)


def test_scheme_objects_pass_through_and_compare_by_name():
    s = get_scheme("gf-2")
    assert get_scheme(s) is s
    assert get_scheme("gf-2") == s
    assert get_scheme(None).is_fp


def test_gf1_equals_ls1():
    x = torch.randn(7, 33)
    torch.testing.assert_close(lsqbq.fit(x, "gf-1"), lsqbq.fit(x, "ls-1"), rtol=0, atol=0)
    torch.testing.assert_close(lsqbq.quantize(x, "gf-1"), lsqbq.quantize(x, "ls-1"), rtol=0, atol=0)


def test_levels():
    assert [get_scheme(n).levels for n in ("fp", "ls-1", "ls-T", "ls-2", "gf-3")] == [0, 2, 3, 4, 8]


# ------------------------------------------------------------------ the registry owns names and facts
import ast  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from lsqbq.errors import InputError, SchemeError  # noqa: E402
from lsqbq.schemes import Scheme, is_scheme_name, kernel_name, register_scheme, scheme_pattern  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "lsqbq"


def test_workflow_schema_accepts_exactly_the_registry_names():
    """The schema's copy of the grammar must be the registry's: a new registration fails here until copied."""
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    student = schema["properties"]["students"]["items"]["properties"]
    assert student["x_quant"]["pattern"] == SCHEME_PATTERN
    assert student["w_quant"]["pattern"] == SCHEME_PATTERN
    for name in [*list_schemes(examples=True, trainable_only=True), "gf-17", "ls-3", "gf-0", "ls-2-official", "x"]:
        assert bool(re.match(student["x_quant"]["pattern"], name)) == is_scheme_name(name)


def test_reference_schemes_resolve_but_are_not_trainable():
    s = get_scheme("ls-2-official")
    assert (s.family, s.label, s.levels, s.display) == ("official", "2", 4, "ls-2 (official skip-3)")
    assert not s.trainable and not is_scheme_name("ls-2-official")
    assert is_scheme_name("ls-2-official", trainable_only=False)
    assert "ls-2-official" not in list_schemes(trainable_only=True)


@pytest.mark.parametrize("name", list_schemes(examples=True))
def test_every_listed_scheme_resolves_and_quantizes_to_its_levels(name):
    s = get_scheme(name)
    x = torch.randn(5, 301, dtype=torch.float64)
    if s.is_fp:
        assert lsqbq.quantize(x, s) is x
        return
    q = lsqbq.quantize(x, s)
    assert q.shape == x.shape
    for row in q:  # each row holds at most `levels` distinct values, symmetric in sign
        vals = torch.unique(row)
        assert len(vals) <= s.levels
        assert s.planes == s.k and s.encoding == ("sign+mask" if s.ternary else "sign")


def test_display_order_is_by_bits_then_greedy_before_least_squares():
    names = ["fp", "ls-2", "gf-3", "ls-T", "gf-2", "ls-1", "ls-2-official"]
    ordered = sorted(names, key=lambda n: get_scheme(n).sort_key)
    assert ordered == ["ls-1", "ls-T", "gf-2", "ls-2", "ls-2-official", "gf-3", "fp"]


@pytest.mark.parametrize("x,w,name", [("ls-1", "ls-1", "1x1"), ("gf-2", "ls-1", "2x1"), ("gf-2", "gf-2", "2x2"),
                                      ("ls-T", "ls-1", "Tx1"), ("gf-3", "ls-1", "3x1"), ("fp", "ls-1", "fp32"),
                                      ("ls-1", "ls-T", None)])
def test_kernel_names_come_from_labels(x, w, name):
    assert kernel_name(x, w) == name


def test_adding_a_scheme_is_one_registration():
    from lsqbq import schemes as S

    s = Scheme("ls-1-test", 1, "1", "ls", S._quantizer("fit_ls1"), rank=5)
    try:
        register_scheme(s)
        assert get_scheme("ls-1-test") is s and is_scheme_name("ls-1-test")
        assert "ls-1-test" in S.SCHEME_PATTERN and "ls-1-test" in list_schemes()
        x = torch.randn(3, 40)
        torch.testing.assert_close(lsqbq.quantize(x, "ls-1-test"), lsqbq.quantize(x, "ls-1"), rtol=0, atol=0)
        with pytest.raises(SchemeError, match="already registered"):
            register_scheme(s)
    finally:
        S._REGISTRY.pop("ls-1-test", None)
        S._refresh_pattern()
    assert not is_scheme_name("ls-1-test")


@pytest.mark.parametrize("bad", ["gf-5", "a b", "ls_1", "-x"])
def test_registration_rejects_clashing_or_unsafe_names(bad):
    from lsqbq import schemes as S

    with pytest.raises(SchemeError):
        register_scheme(Scheme(bad, 1, "1", "ls", S._quantizer("fit_ls1")))


@pytest.mark.parametrize("name,scales,why", [
    ("ls-1", [[-0.5]], "negative"),
    ("ls-2", [[0.2, 0.5]], "non-increasing"),
    ("ls-T", [[0.5, 0.4]], "unequal"),
    ("gf-2", [[0.5, float("nan")]], "NaN"),
])
def test_given_scales_that_break_the_scheme_are_refused_naming_the_row(name, scales, why):
    x = torch.randn(3, 10)
    v = torch.tensor([[1.0] * len(scales[0])] * 2 + scales)  # rows 0 and 1 valid, row 2 broken
    with pytest.raises(InputError, match=rf"row 2 .*{why}"):
        lsqbq.quantize(x, name, v)


def test_valid_given_scales_are_used_as_given():
    x = torch.randn(4, 50)
    v = lsqbq.fit(x, "ls-2")
    torch.testing.assert_close(lsqbq.quantize(x, "ls-2", v), lsqbq.quantize(x, "ls-2"), rtol=0, atol=0)


def _module_imports(path: Path) -> set[str]:
    """Absolute names of the lsqbq modules ``path`` imports anywhere (top level or inside functions)."""
    mod = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if mod.endswith(".__init__"):
        mod = mod[: -len(".__init__")]
        pkg = mod
    else:
        pkg = mod.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        else:
            continue
        found.update(n for n in names if n.startswith("lsqbq"))
    return found


def test_no_import_cycle_among_lsqbq_modules():
    """Imports inside functions count: a module that needs another lazily still depends on it."""
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        deps = set()
        for name in _module_imports(path):
            while name and name not in files:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != mod and not mod.startswith(name + "."):  # a package's own __init__ is no edge
                deps.add(name)
        graph[mod] = deps
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


_NAME_LITERAL = r"""["'](fp|ls-1|ls-2|ls-T|gf-\d+|gf)["']"""
_FORBIDDEN = [
    re.compile(rf"(==|!=)\s*{_NAME_LITERAL}"),
    re.compile(rf"{_NAME_LITERAL}\s*(==|!=)"),
    re.compile(rf"startswith\(\s*{_NAME_LITERAL}"),
    re.compile(r"""["'](1x1|2x1|2x2|Tx1)["']\s*:"""),  # hand-made kernel tables keyed by label
]


def test_downstream_code_reads_scheme_facts_from_the_registry():
    """No string comparisons on scheme names outside the registry: tables, bench, analysis, models, kernels,
    training and the workflow ask ``get_scheme`` for facts."""
    offenders = []
    paths = [p for p in PACKAGE.rglob("*.py") if p.name != "schemes.py"]
    paths += list((ROOT / "workflow").rglob("*.smk")) + [ROOT / "Snakefile"]
    for p in paths:
        for i, line in enumerate(p.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(rx.search(code) for rx in _FORBIDDEN):
                offenders.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "scheme facts typed outside the registry:\n" + "\n".join(offenders)


def test_importing_the_registry_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, lsqbq.schemes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_schemes_pickle_by_name_and_copies_share_them():
    """A pickled scheme loads as the registry's scheme of its name (its fit function is a closure pickle cannot
    hold): registered and gf-<k> schemes round-trip to equal schemes that fit the same scales; an unregistered one
    is a SchemeError naming it on load; copies share the (immutable) scheme."""
    import copy
    import pickle

    x = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    for name in ("ls-1", "ls-2", "ls-T", "gf-3", "fp"):
        s = get_scheme(name)
        back = pickle.loads(pickle.dumps(s))
        assert back == s and back.name == name
        if not s.is_fp:
            assert torch.equal(back.fit(x), s.fit(x))
    custom = Scheme("my-unregistered", 1, "1", "ls", get_scheme("ls-1").fit_fn)
    assert copy.deepcopy(custom) is custom and copy.copy(custom) is custom
    blob = pickle.dumps(custom)
    with pytest.raises(SchemeError, match="my-unregistered"):
        pickle.loads(blob)
