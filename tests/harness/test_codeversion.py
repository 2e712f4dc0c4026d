"""Code fingerprints: editing what an implementation computes changes its training key;
comments, docstrings and formatting do not; nothing is imported to compute them."""

from __future__ import annotations

import importlib
import sys

import pytest

import harness.metrics  # noqa: F401
import implementations  # noqa: F401
from harness import codeversion
from harness.plan import make_plan
from harness.resolve import load_suite
from tests.conftest import SPECS, write

A = '''"""Module a."""
from fgpkg import b


def velocity(x):
    return b.scale * x
'''
B = '''"""Module b."""
scale = 2.0  # the factor
'''


@pytest.fixture
def package(tmp_path, monkeypatch):
    write(tmp_path / "fgpkg" / "__init__.py", "")
    write(tmp_path / "fgpkg" / "a.py", A)
    write(tmp_path / "fgpkg" / "b.py", B)
    write(tmp_path / "fgpkg" / "unused.py", "x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    codeversion._module.cache_clear()
    yield tmp_path / "fgpkg"
    codeversion._module.cache_clear()
    for name in [m for m in sys.modules if m.startswith("fgpkg")]:
        del sys.modules[name]


def fingerprints(package) -> dict[str, str]:
    codeversion._module.cache_clear()
    return codeversion.modules_of("fgpkg.a")


def test_fingerprint_covers_the_modules_imported_and_only_those(package):
    before = fingerprints(package)
    assert set(before) == {"fgpkg", "fgpkg.a", "fgpkg.b"}  # unused.py is not imported by a
    assert "fgpkg.a" not in sys.modules  # parsed, not imported


def test_comments_docstrings_and_formatting_keep_the_fingerprint(package):
    before = fingerprints(package)
    (package / "b.py").write_text('"""Module b, now documented at length."""\n\n\nscale = 2.0    # a comment changed\n')
    (package / "a.py").write_text(A.replace("return b.scale * x", '"""The velocity."""\n    return (b.scale * x)'))
    assert fingerprints(package) == before


def test_a_changed_expression_changes_the_fingerprint_of_its_module_only(package):
    before = fingerprints(package)
    (package / "b.py").write_text(B.replace("2.0", "3.0"))
    after = fingerprints(package)
    assert after["fgpkg.b"] != before["fgpkg.b"] and after["fgpkg.a"] == before["fgpkg.a"]
    assert codeversion.fingerprint(after) != codeversion.fingerprint(before)


def test_training_keys_follow_the_code_and_records_say_which_modules_changed(monkeypatch):
    suite = load_suite("quickstart", ["methods=[icfm]", "datasets=[moons]", "seeds=[0]"], root=SPECS)
    (job,) = make_plan(suite).trainings
    modules = codeversion.training_modules(job.spec["dataset"], job.spec["method"])
    assert {"implementations.flow_matching", "implementations.common.paths", "implementations.networks.mlp",
            "implementations.optimizers", "implementations.datasets.toy2d"} <= set(modules)
    evaluation = make_plan(suite).evals[job.key][0].spec
    monkeypatch.setattr(codeversion, "HARNESS_CODE", codeversion.HARNESS_CODE + 1)  # a harness change that counts
    (bumped,) = make_plan(load_suite("quickstart", ["methods=[icfm]", "datasets=[moons]", "seeds=[0]"],
                                     root=SPECS)).trainings
    assert bumped.key != job.key and bumped.spec["code"] != job.spec["code"]
    monkeypatch.undo()
    stored = dict(codeversion.record_code(evaluation)[1])
    assert codeversion.changed_modules(stored, evaluation) == []
    stored["implementations.common.paths"] = "0" * 16
    assert codeversion.changed_modules(stored, evaluation) == ["implementations.common.paths"]
