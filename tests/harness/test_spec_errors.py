"""Every error a user can cause names its file and line, exits 2, prints no traceback
and writes nothing. These run the real CLI in a subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli, run_cli_process, write

SUITE = """
name: bad
hardware: cpu
seeds: [0]
budget:
  train: {steps: 10}
  eval: {num_samples: 100}
datasets: [moons]
methods: [icfm]
samplers: [euler-1]
metrics: [w2]
"""


def _expect_error(result, where: str, text: str, out: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    loc = lines[0].partition(": ")[0]
    assert (loc + ":").endswith(where), lines[0]
    assert text in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists(), "a failed spec must not write results"


def _run(spec_root: Path, suite_text: str, *extra: str):
    write(spec_root / "suites" / "bad.yaml", suite_text)
    out = spec_root.parent / "out"
    return run_cli("--specs", str(spec_root), "run", "bad", "--results", str(out), *extra), out


def test_yaml_syntax_error(spec_root):
    result, out = _run(spec_root, SUITE.replace("train: {steps: 10}", "train: {steps: 10"))
    _expect_error(result, "suites/bad.yaml:6:", "YAML syntax error", out)


def test_unknown_key_suggests_the_right_one(spec_root):
    result, out = _run(spec_root, SUITE + "leaderbord: {rank_by: w2}\n")
    _expect_error(result, "suites/bad.yaml:11:", "unknown key 'leaderbord'; did you mean 'leaderboard'?", out)


def test_nested_unknown_key(spec_root):
    result, out = _run(spec_root, SUITE.replace("train: {steps: 10}", "train: {stepz: 10}"))
    _expect_error(result, "suites/bad.yaml:5:", "budget.train.stepz: unknown key 'stepz'; did you mean 'steps'?", out)


def test_wrong_type_in_method_params(spec_root):
    write(spec_root / "methods" / "broken.yaml", """
implementation: cfm
params:
  coupling: independent
  path: {name: linear, sigma: abc}
""")
    result, out = _run(spec_root, SUITE.replace("methods: [icfm]", "methods: [broken]"))
    _expect_error(result, "methods/broken.yaml:4:", "params.path.sigma: expected a number, got 'abc'", out)


def test_unknown_param_of_an_implementation(spec_root):
    write(spec_root / "methods" / "broken.yaml", "implementation: cfm\nparams:\n  couplng: exact_ot\n")
    result, out = _run(spec_root, SUITE.replace("methods: [icfm]", "methods: [broken]"))
    _expect_error(result, "methods/broken.yaml:3:", "params.couplng: unknown key 'couplng'; did you mean 'coupling'?", out)


def test_unknown_method_name(spec_root):
    result, out = _run(spec_root, SUITE.replace("methods: [icfm]", "methods: [icmf]"))
    _expect_error(result, "suites/bad.yaml:8:", "unknown method 'icmf'", out)
    assert "did you mean 'icfm'" in result.stderr


def test_unknown_implementation(spec_root):
    write(spec_root / "methods" / "broken.yaml", "implementation: cmf\n")
    result, out = _run(spec_root, SUITE.replace("methods: [icfm]", "methods: [broken]"))
    _expect_error(result, "methods/broken.yaml:1:", "unknown method 'cmf'; did you mean 'cfm'?", out)


def test_unknown_dataset_name(spec_root):
    result, out = _run(spec_root, SUITE.replace("datasets: [moons]", "datasets: [mons]"))
    _expect_error(result, "suites/bad.yaml:7:", "unknown dataset 'mons'", out)
    assert "did you mean 'moons'" in result.stderr


def test_unknown_toy_distribution(spec_root):
    write(spec_root / "datasets" / "broken.yaml", "implementation: toy2d\nparams:\n  target: moonz\n")
    result, out = _run(spec_root, SUITE.replace("datasets: [moons]", "datasets: [broken]"))
    _expect_error(result, "datasets/broken.yaml:3:", "unknown name 'moonz'; did you mean 'moons'?", out)


def test_unknown_sampler_and_solver(spec_root):
    result, out = _run(spec_root, SUITE.replace("samplers: [euler-1]", "samplers: [euler-7]"))
    _expect_error(result, "suites/bad.yaml:9:", "unknown sampler 'euler-7'", out)
    write(spec_root / "samplers" / "broken.yaml", "solver: eulr\nparams: {steps: 3}\n")
    result, out = _run(spec_root, SUITE.replace("samplers: [euler-1]", "samplers: [broken]"))
    _expect_error(result, "samplers/broken.yaml:1:", "unknown solver 'eulr'; did you mean 'euler'", out)


def test_unknown_metric(spec_root):
    result, out = _run(spec_root, SUITE.replace("metrics: [w2]", "metrics: [w3]"))
    _expect_error(result, "suites/bad.yaml:10:", "unknown metric 'w3'", out)


def test_missing_suite_file(tmp_path):
    out = tmp_path / "out"
    result = run_cli("run", str(tmp_path / "nope.yaml"), "--results", str(out))
    _expect_error(result, "nope.yaml:", "file not found", out)


def test_missing_suite_name_suggests(spec_root):
    out = spec_root.parent / "out"
    result = run_cli("--specs", str(spec_root), "run", "quickstrat", "--results", str(out))
    _expect_error(result, "error:", "unknown suite 'quickstrat'", out)
    assert "did you mean 'quickstart'" in result.stderr


@pytest.mark.parametrize("budget, message", [
    ("{steps: -5}", "budget.train.steps: must be >= 1, got -5"),
    ("{steps: 0}", "budget.train.steps: must be >= 1, got 0"),
    ("{}", "the training budget is empty"),
    ("{seconds: -1.5}", "budget.train.seconds: must be > 0, got -1.5"),
])
def test_negative_or_empty_budget(spec_root, budget, message):
    result, out = _run(spec_root, SUITE.replace("train: {steps: 10}", f"train: {budget}"))
    _expect_error(result, "suites/bad.yaml:5:", message, out)


def test_empty_method_list(spec_root):
    result, out = _run(spec_root, SUITE.replace("methods: [icfm]", "methods: []"))
    _expect_error(result, "suites/bad.yaml:8:", "methods: must not be empty", out)


def test_rank_by_must_be_a_suite_metric(spec_root):
    result, out = _run(spec_root, SUITE + "leaderboard: {rank_by: mmd}\n")
    _expect_error(result, "suites/bad.yaml:11:", "leaderboard.rank_by: 'mmd' is not one of the suite's metrics", out)


def test_duplicate_key(spec_root):
    result, out = _run(spec_root, SUITE + "seeds: [1]\n")
    _expect_error(result, "suites/bad.yaml:11:", "duplicate key 'seeds' (first given on line 3)", out)


def test_bad_override_names_the_command_line(spec_root):
    result, out = _run(spec_root, SUITE, "--set", "methods.icfm.params.path.sigma=abc")
    _expect_error(result, "--set methods.icfm.params.path.sigma=abc:", "params.path.sigma: expected a number, got 'abc'",
                  out)
    result, out = _run(spec_root, SUITE, "--set", "methods.icfn.params.path.sigma=0.2")
    _expect_error(result, "--set methods.icfn.params.path.sigma=0.2:", "the suite has no method 'icfn'; did you mean 'icfm'?",
                  out)


def test_bad_extends(spec_root):
    write(spec_root / "methods" / "child.yaml", "extends: icfn\nparams: {path: {sigma: 0.0}}\n")
    result, out = _run(spec_root, SUITE.replace("methods: [icfm]", "methods: [child]"))
    _expect_error(result, "methods/child.yaml:1:", "unknown method 'icfn'", out)


def test_validate_reports_the_same_errors(spec_root):
    path = write(spec_root / "methods" / "broken.yaml", "implementation: cfm\nbatch_size: -3\n")
    result = run_cli_process("validate", str(path))  # the exit status as the shell sees it
    assert result.returncode == 2
    assert "methods/broken.yaml:2: batch_size: must be >= 1, got -3" in result.stderr
    assert "Traceback" not in result.stderr


def _in_process(spec_root: Path, suite_text: str, *extra: str, capsys=None):
    """The CLI's main() in this process: the same exit status and message, without the
    start-up of a subprocess."""
    from harness.cli import main

    write(spec_root / "suites" / "bad.yaml", suite_text)
    out = spec_root.parent / "out"
    code = main(["--specs", str(spec_root), "run", "bad", "--results", str(out), *extra])
    return code, out


@pytest.mark.parametrize("name, line", [
    ("../../../x", 1), ("/tmp/abs", 1), ("a" * 300, 1), ("with space", 1), ("nul\\0byte", 1),
])
def test_a_suite_name_is_an_identifier_not_a_path(spec_root, capsys, name, line):
    text = SUITE.replace("name: bad", f'name: "{name}"')
    code, out = _in_process(spec_root, text)
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert err.startswith(f"{spec_root.name}/suites/bad.yaml:{line}: name: ") or f"suites/bad.yaml:{line}: name: " in err
    assert "is not a name: use letters, digits" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("field, ref", [("methods", "/tmp/x/evil"), ("methods", "../methods/icfm"),
                                        ("datasets", "../../etc/passwd")])
def test_spec_references_resolve_only_inside_the_specs_root(spec_root, capsys, field, ref):
    text = SUITE.replace(f"{field}: [", f"{field}: [{ref}, ")
    code, out = _in_process(spec_root, text)
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert "is not a name" in err and f"a spec is named by its file under {field}/" in err
    write(spec_root / "methods" / "ext.yaml", f"extends: {ref}\n")
    code, _ = _in_process(spec_root, SUITE.replace("methods: [icfm]", "methods: [ext]"))
    assert code == 2 and "methods/ext.yaml:1: method" in capsys.readouterr().err


@pytest.mark.parametrize("override, where", [
    ("methods.icfm.optimizer.lr=.inf", "optimizer.lr"), ("budget.train.seconds=.inf", "budget.train.seconds"),
    ("budget.train.seconds=.nan", "budget.train.seconds"), ("leaderboard.precision=1000000000", "leaderboard.precision"),
])
def test_infinite_values_and_unbounded_sizes_are_refused(spec_root, capsys, override, where):
    code, out = _in_process(spec_root, SUITE, "--set", override)
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists() and where in err and len(err.splitlines()) == 1, err


def test_a_folder_or_a_non_utf8_file_is_named_with_its_line(tmp_path, capsys):
    from harness.cli import main

    (tmp_path / "specs").mkdir()
    assert main(["validate", str(tmp_path / "specs")]) == 2
    assert capsys.readouterr().err.strip().endswith("specs: is a folder; give spec files (e.g. "
                                                    f"{tmp_path / 'specs'}/*.yaml)")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: x\nbudget: {train: {steps: 1}}\ndescription: caf\xe9\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("bad.yaml:3: not UTF-8 text (byte 0xe9); save the spec as UTF-8"), err


def _bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, message, line", [
    (_bomb(9), "too large: more than 100000 values once its aliases are expanded", None),
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply", None),
    ("x:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(70)) + "  " * 71 + "v: 1\n", "nested too deeply", 66),
])
def test_alias_bombs_and_deep_nesting_are_refused_before_they_expand(tmp_path, capsys, text, message, line):
    """A 600-byte alias bomb stands for 9^9 strings; it is refused while its nodes are
    counted, in a fraction of a second, as is nesting past 64 levels."""
    import time

    from harness.cli import main

    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    start = time.perf_counter()
    assert main(["validate", str(path)]) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    if line is not None:
        assert f"bomb.yaml:{line}: " in err


CLAIM = "claims:\n  - {source: {paper: P}, dataset: moons, %s}\n"


def test_a_claim_without_sampler_in_a_suite_of_several_samplers_is_ambiguous(spec_root):
    two = SUITE.replace("samplers: [euler-1]", "samplers: [euler-1, heun-8]")
    result, out = _run(spec_root, two + CLAIM % "method: icfm, metric: w2, value: 0.1, tolerance: {rel: 0.5}")
    _expect_error(result, "bad.yaml:12:", "the suite samples with 2 samplers (euler-1, heun-8); say which one", out)
    result, out = _run(spec_root, two + CLAIM % 'relation: "w2(icfm@heun-8) < w2(icfm)"')
    _expect_error(result, "bad.yaml:12:", "or icfm@NAME in a relation", out)
    named = two + CLAIM % 'relation: "w2(icfm@heun-8) < w2(icfm@euler-1)"'
    assert run_cli("--specs", str(spec_root), "validate", str(spec_root / "suites" / "bad.yaml"),
                   ).returncode == 2  # the file still holds the last bad suite
    write(spec_root / "suites" / "bad.yaml", named)
    assert run_cli("--specs", str(spec_root), "validate", str(spec_root / "suites" / "bad.yaml")).returncode == 0
    one = SUITE + CLAIM % "method: icfm, metric: w2, value: 0.1, tolerance: {rel: 0.5}"  # one sampler: no doubt
    write(spec_root / "suites" / "bad.yaml", one)
    assert run_cli("--specs", str(spec_root), "validate", str(spec_root / "suites" / "bad.yaml")).returncode == 0


def test_a_claim_naming_an_unknown_sampler(spec_root):
    result, out = _run(spec_root, SUITE + CLAIM % 'relation: "w2(icfm@euler-11) < w2(icfm@euler-1)"')
    _expect_error(result, "bad.yaml:12:", "no sampler 'euler-11' in the suite or in specs/samplers; did you mean", out)


def test_a_method_specs_claim_is_checked_against_the_suite_and_located_in_its_file(spec_root):
    write(spec_root / "methods" / "claimy.yaml", "implementation: cfm\nclaims:\n"
          "  - {source: {paper: P}, dataset: moons, metric: w2, value: 0.1, tolerance: {rel: 0.5}}\n")
    two = SUITE.replace("samplers: [euler-1]", "samplers: [euler-1, heun-8]").replace("[icfm]", "[claimy]")
    result, out = _run(spec_root, two)
    _expect_error(result, "claimy.yaml:3:", "method claimy: claims[0]: the suite samples with 2 samplers", out)


def test_set_inside_a_named_shorthand_keeps_its_name():
    """``coupling: sinkhorn`` is ``{name: sinkhorn}``: a --set of one of its keys adds to it
    instead of dropping the name; a mapping without a name says that it needs one."""
    suite = "specs/suites/quickstart.yaml"
    ok = run_cli("validate", suite, "--set", "methods.otcfm.params.coupling=sinkhorn",
                 "--set", "methods.otcfm.params.coupling.reg=1e-6")
    assert ok.returncode == 0, ok.stderr
    wrong = run_cli("validate", suite, "--set", "methods.otcfm.params.coupling.reg=1e-6")  # otcfm: exact_ot
    assert "params.coupling.reg: unknown key 'reg'" in wrong.stderr
    nameless = run_cli("validate", suite, "--set", "methods.otcfm.params.coupling={reg: 1}")
    assert "params.coupling: needs a name: key that says which kind it is, got a mapping" in nameless.stderr
