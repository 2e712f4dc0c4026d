"""Property-based tests of the spec loader and ``--set``: any input either loads or is
refused with one located line (a SpecError naming the file and line, or the ``--set``),
never another exception, never a hang.

Settings: ``derandomize=True`` (the same examples on every run, so CI cannot flake) and no
per-example deadline (the machine is shared); the number of examples is set per test
(EXAMPLES, 1 450 in all).
"""

from __future__ import annotations

import contextlib
import io
import math
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.errors import SpecError
from harness.resolve import Override, Resolver
from harness.source import parse_yaml
from harness.spec import SuiteSpec
from tests.conftest import SPECS

EXAMPLES = {"text": 400, "bytes": 150, "suite": 400, "set": 400, "cli": 100}
PROPERTY = settings(derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

BASE = {
    "name": "prop",
    "seeds": [0],
    "budget": {"train": {"steps": 10}, "eval": {"num_samples": 64, "warmup": 0, "repeats": 1}},
    "datasets": ["moons"],
    "methods": ["icfm"],
    "samplers": ["euler-1"],
    "metrics": ["w2", "nfe"],
}
# Key paths a user is likely to touch, real and misspelt; values of every YAML type go there.
KEYS = [
    "name", "description", "hardware", "seeds", "seeds.0", "budget", "budget.train", "budget.train.steps",
    "budget.train.seconds", "budget.train.samples", "budget.train.epochs", "budget.train.log_every",
    "budget.train.early_stopping", "budget.train.early_stopping.every_steps", "budget.eval",
    "budget.eval.num_samples", "budget.eval.repeats", "budget.eval.warmup", "datasets", "datasets.0", "methods",
    "methods.0", "samplers", "samplers.0", "metrics", "metrics.1", "leaderboard", "leaderboard.rank_by",
    "leaderboard.precision", "leaderboard.columns", "claims", "budget.train.stepz", "bogus",
]
SET_KEYS = [*KEYS, "methods.icfm.optimizer.lr", "methods.icfm.batch_size", "methods.icfm.params.path.sigma",
            "methods.icfm.network.width", "samplers.euler-1.params.steps", "datasets.moons.params.train_size",
            "hardware.threads", "hardware.device", "methods.nope.x", "methods.icfm", "x..y", ""]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["moons", "icfm", "euler-1", "w2", "cpu", "cuda", "../x", "/etc/passwd", "a\x00b", "1e999",
                     ".inf", "-.nan", "~", "[", "{", "&a", "*a", "!!python/object:os.system"]),
)
# Values a spec could well hold, so that a good share of the edited suites load and the
# bounds are probed from the valid side too.
plausible = st.one_of(
    st.integers(min_value=0, max_value=200), st.floats(min_value=1e-6, max_value=1e3),
    st.sampled_from(["moons", "checkerboard", "icfm", "otcfm", "euler-8", "heun-8", "w2", "nfe", "mmd", "cpu",
                     ["moons"], ["icfm", "otcfm"], ["euler-1", "dopri5"], [0, 1, 2], ["w2", "nfe", "mmd"],
                     {"steps": 5}, {"seconds": 0.5}, {"num_samples": 32}, {"rank_by": "nfe"},
                     {"precision": 3}, {"every_steps": 5, "patience": 2}]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)
yaml_text = st.text(alphabet=st.sampled_from(string.printable + "\x00\x07\u00e9\u2028\ufeff&*!|>%@`-?:,[]{}#'\""),
                    max_size=300)


def _set(data: dict, path: str, value: object) -> None:
    parts = path.split(".")
    node: object = data
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            return
    if isinstance(node, dict):
        node[parts[-1]] = value
    elif isinstance(node, list) and parts[-1].isdigit() and int(parts[-1]) < len(node):
        node[int(parts[-1])] = value


def _located(err: SpecError, place: str) -> None:
    text = str(err)
    assert "\n" not in text and "\r" not in text, text  # one line
    assert err.loc is not None and (place in err.loc.file or err.loc.file.startswith("--set")), text


@settings(PROPERTY, max_examples=EXAMPLES["text"])
@given(text=yaml_text)
def test_any_text_parses_or_is_a_located_yaml_error(text):
    try:
        parse_yaml(text, "prop.yaml")
    except SpecError as err:
        event("refused")  # --hypothesis-show-statistics counts loaded and refused inputs
        _located(err, "prop.yaml")


@settings(PROPERTY, max_examples=EXAMPLES["bytes"])
@given(data=st.binary(max_size=300))
def test_any_bytes_load_or_are_refused_with_their_place(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "suite.yaml"
    path.write_bytes(data)
    try:
        Resolver(SPECS).suite(str(path))
        event("loaded")
    except SpecError as err:
        event("refused")
        _located(err, "suite.yaml")


@settings(PROPERTY, max_examples=EXAMPLES["suite"])
@given(edits=st.lists(st.tuples(st.sampled_from(KEYS), plausible | values), min_size=1, max_size=3))
def test_any_edit_of_a_good_suite_loads_or_is_a_located_error(tmp_path_factory, edits):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in edits:
        _set(data, key, value)
    path = tmp_path_factory.mktemp("suite") / "suite.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        suite = Resolver(SPECS).suite(str(path))
    except SpecError as err:
        event("refused")
        _located(err, "suite.yaml")
        return
    event("loaded")
    assert isinstance(suite, SuiteSpec)
    # what loads is bounded and finite: a run of it can start and end
    assert 1 <= len(suite.seeds) * len(suite.datasets) * len(suite.methods) * len(suite.samplers) <= 100_000
    assert suite.budget.eval.num_samples <= 10_000_000 and suite.leaderboard.precision <= 15
    seconds = suite.budget.train.seconds
    assert seconds is None or math.isfinite(seconds)


@settings(PROPERTY, max_examples=EXAMPLES["set"])
@given(sets=st.lists(st.tuples(st.sampled_from(SET_KEYS) | st.text(max_size=12),
                               st.text(max_size=40) | (plausible | values).map(lambda v: yaml.safe_dump(v, default_flow_style=True)
                                                                  .strip().removesuffix("..."))),
                     min_size=1, max_size=3))
def test_any_set_loads_or_is_a_located_error(tmp_path_factory, sets):
    path = tmp_path_factory.mktemp("set") / "suite.yaml"
    path.write_text(yaml.safe_dump(BASE))
    texts = [f"{key}={value}" for key, value in sets]
    try:
        overrides = [Override.parse(text) for text in texts]
        Resolver(SPECS, overrides).suite(str(path))
        event("loaded")
    except SpecError as err:
        event("refused")
        _located(err, "suite.yaml")


@settings(PROPERTY, max_examples=EXAMPLES["cli"])
@given(key=st.sampled_from(SET_KEYS), value=st.text(max_size=30) | values.map(str))
def test_validate_with_any_set_exits_0_or_2_with_located_lines(tmp_path_factory, key, value):
    """validate prints every error it finds, each one line that starts with its place."""
    path = tmp_path_factory.mktemp("cli") / "suite.yaml"
    path.write_text(yaml.safe_dump(BASE))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--specs", str(SPECS), "validate", str(path), "--set", f"{key}={value}"])
    lines = err.getvalue().splitlines()
    if code == 0:
        assert lines == [] and out.getvalue().endswith("ok (suite 'prop')\n")
    else:
        assert code == 2 and lines and "Traceback" not in err.getvalue(), err.getvalue()
        assert all(line.startswith(("--set ", str(path), "error: ")) for line in lines), lines


def test_the_good_suite_of_these_properties_loads(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert Resolver(SPECS).suite(str(path)).name == "prop"


@pytest.mark.parametrize("text", ["a: !!binary aGVsbG8=", "a: !!set {x, y}", "a: !!timestamp 2001-12-14",
                                  "? !!python/tuple [1, 2]\n: 3", "a: 0o17", "a: 1_000"])
def test_yaml_corners_load_or_are_located(text):
    try:
        parse_yaml(text, "corner.yaml")
    except SpecError as err:
        _located(err, "corner.yaml")
