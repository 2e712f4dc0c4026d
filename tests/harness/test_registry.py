from __future__ import annotations

import pytest

from harness.errors import Loc, SpecError, UnknownNameError
from harness.registry import Registry


def test_register_get_and_names():
    reg: Registry[type] = Registry("widget")

    @reg.register("alpha")
    class Alpha:
        pass

    assert reg.get("alpha") is Alpha
    assert reg.names() == ["alpha"]
    assert "alpha" in reg and len(reg) == 1


def test_duplicate_name_is_an_error_but_reregistering_the_same_entry_is_not():
    reg: Registry[object] = Registry("widget")
    entry = object()
    reg.add("a", entry)
    reg.add("a", entry)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.add("a", object())


def test_unknown_name_suggests_close_matches_and_carries_location():
    reg: Registry[int] = Registry("method")
    reg.add("otcfm", 1)
    reg.add("icfm", 2)
    with pytest.raises(UnknownNameError) as info:
        reg.get("icmf", Loc("specs/suites/x.yaml", 7))
    assert str(info.value) == "specs/suites/x.yaml:7: unknown method 'icmf'; did you mean 'icfm'?"
    assert isinstance(info.value, SpecError)


def test_unknown_name_without_close_match_lists_choices():
    reg: Registry[int] = Registry("solver")
    reg.add("euler", 1)
    with pytest.raises(UnknownNameError, match="choices are euler"):
        reg.get("zzzzzz")


def test_base_class_check_and_clear():
    class Base:
        pass

    reg: Registry[type] = Registry("thing", base=Base)
    with pytest.raises(TypeError, match="must subclass Base"):
        reg.add("x", int)
    reg.add("y", type("Y", (Base,), {}))
    reg.clear()
    assert reg.names() == []
