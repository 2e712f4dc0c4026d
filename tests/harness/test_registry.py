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


def test_deferred_entry_gives_its_params_without_importing_its_code(tmp_path, monkeypatch):
    """``defer``: the spec layer reads Params; the module loads on the first ``get`` only."""
    (tmp_path / "widget_params.py").write_text("class WidgetParams:\n    pass\n")
    (tmp_path / "widget_impl.py").write_text(
        "import builtins\nbuiltins.WIDGET_IMPORTS = getattr(builtins, 'WIDGET_IMPORTS', 0) + 1\n"
        "from widget_params import WidgetParams\n"
        "class Widget:\n    Params = WidgetParams\n"
        "class Liar:\n    Params = dict\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import builtins
    import sys

    monkeypatch.delitem(sys.modules, "widget_impl", raising=False)
    monkeypatch.setattr(builtins, "WIDGET_IMPORTS", 0, raising=False)
    from widget_params import WidgetParams
    reg: Registry[type] = Registry("widget")
    reg.defer("w", "widget_impl:Widget", WidgetParams)
    reg.defer("liar", "widget_impl:Liar", WidgetParams)
    assert reg.params("w") is WidgetParams and "w" in reg and reg.names() == ["liar", "w"]
    assert builtins.WIDGET_IMPORTS == 0 and "widget_impl" not in sys.modules
    widget = reg.get("w")
    assert widget.__name__ == "Widget" and widget.Params is WidgetParams
    assert reg.get("w") is widget and builtins.WIDGET_IMPORTS == 1  # imported once, then cached
    with pytest.raises(TypeError, match="widget_impl:Liar declares Params <class 'dict'>"):
        reg.get("liar")
    with pytest.raises(UnknownNameError, match="unknown widget 'ww'; did you mean 'w'"):
        reg.params("ww")


def test_deferred_entry_is_checked_against_the_base_class_when_it_loads(tmp_path, monkeypatch):
    (tmp_path / "gadget_impl.py").write_text("class Gadget:\n    Params = dict\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class Base:
        pass

    reg: Registry[type] = Registry("thing", base=Base)
    reg.defer("g", "gadget_impl:Gadget", dict)
    with pytest.raises(TypeError, match="thing 'g' must subclass Base"):
        reg.get("g")
