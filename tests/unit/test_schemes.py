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
    with pytest.raises(ValueError, match="name or a Scheme"):
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
