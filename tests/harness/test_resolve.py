"""Spec resolution in-process: extends, inline specs, --set overrides, canonical keys."""

from __future__ import annotations

import pytest

from harness.errors import SpecError
from harness.plan import make_plan
from harness.resolve import Override, Resolver, load_suite
from harness.source import parse_yaml
from harness.spec import MethodSpec, validate
from tests.conftest import SPECS, write

SUITE = """name: s
budget: {train: {steps: 10}}
datasets: [moons]
methods: [icfm]
samplers: [euler-1]
metrics: [w2]
"""


def test_quickstart_resolves_with_defaults_filled_in():
    suite = load_suite("quickstart", root=SPECS)
    assert suite.hardware.device == "cpu"
    icfm = next(m for m in suite.methods if m.name == "icfm")
    assert icfm.params == {"coupling": {"name": "independent"}, "path": {"name": "linear", "sigma": 0.1},
                           "time_sampler": {"name": "uniform"}, "loss": {"name": "mse", "reduce": "mean"}}
    assert icfm.network["time_embedding"] == "concat"  # default filled in
    assert icfm.optimizer["betas"] == [0.9, 0.999]
    assert {s.name for s in suite.samplers} >= {"euler-1", "euler-8", "heun-8", "dopri5"}


def test_extends_merges_mappings_and_replaces_values(spec_root):
    write(spec_root / "methods" / "icfm-wide.yaml", "extends: icfm\nnetwork: {width: 128}\nparams: {path: {sigma: 0.0}}\n")
    spec = Resolver(spec_root).validate_file(spec_root / "methods" / "icfm-wide.yaml")
    assert spec.name == "icfm-wide"
    assert spec.network["width"] == 128 and spec.network["depth"] == 3 and spec.network["name"] == "mlp"
    assert spec.params["path"] == {"name": "linear", "sigma": 0.0}
    assert spec.params["coupling"] == {"name": "independent"}
    assert spec.paper is not None and "minibatch optimal transport" in spec.paper.title


def test_extends_cycle_is_reported(spec_root):
    write(spec_root / "methods" / "a.yaml", "extends: b\n")
    write(spec_root / "methods" / "b.yaml", "extends: a\n")
    with pytest.raises(SpecError, match="cycle"):
        Resolver(spec_root).validate_file(spec_root / "methods" / "a.yaml")


def test_inline_spec_in_a_suite(spec_root):
    text = SUITE.replace("methods: [icfm]", "methods:\n  - icfm\n  - {name: icfm-0, extends: icfm, params: {path: {sigma: 0.0}}}")
    write(spec_root / "suites" / "s.yaml", text)
    suite = Resolver(spec_root).suite("s")
    assert [m.name for m in suite.methods] == ["icfm", "icfm-0"]
    assert suite.methods[1].params["path"]["sigma"] == 0.0


def test_inline_spec_errors_point_into_the_suite(spec_root):
    text = SUITE.replace("methods: [icfm]", "methods:\n  - {name: x, implementation: cfm, params: {path: {name: linear, sigma: -1}}}")
    write(spec_root / "suites" / "s.yaml", text)
    with pytest.raises(SpecError) as info:
        Resolver(spec_root).suite("s")
    assert str(info.value).endswith("suites/s.yaml:5: params.path.sigma: must be >= 0, got -1")


def test_overrides_reach_suite_fields_and_referenced_specs(spec_root):
    write(spec_root / "suites" / "s.yaml", SUITE)
    overrides = [Override.parse(t) for t in (
        "budget.train.steps=77", "methods.icfm.params.path.sigma=0.25", "hardware.threads=1",
        "samplers.euler-1.params.steps=3", "seeds=[1, 2]")]
    suite = Resolver(spec_root, overrides).suite("s")
    assert suite.budget.train.steps == 77
    assert suite.methods[0].params["path"]["sigma"] == 0.25
    assert suite.hardware.threads == 1
    assert suite.samplers[0].params["steps"] == 3
    assert suite.seeds == [1, 2]


def test_override_parse_types_values_like_yaml():
    assert Override.parse("a.b=0.1").value == 0.1
    assert Override.parse("a=true").value is True
    assert Override.parse("a=[1, 2]").value == [1, 2]
    assert Override.parse("a=hello").value == "hello"
    with pytest.raises(SpecError, match="expected key.path=value"):
        Override.parse("novalue")


def test_validation_error_maps_to_line():
    source = parse_yaml("name: m\nimplementation: cfm\nbatch_size: many\n", "m.yaml")
    with pytest.raises(SpecError) as info:
        validate(MethodSpec, source)
    assert str(info.value) == "m.yaml:3: batch_size: expected an integer, got 'many'"


def test_training_key_ignores_samplers_metrics_and_descriptions(spec_root):
    write(spec_root / "suites" / "s.yaml", SUITE)
    base = make_plan(Resolver(spec_root).suite("s"))
    write(spec_root / "suites" / "s.yaml", SUITE.replace("[euler-1]", "[euler-1, heun-8]").replace("[w2]", "[w2, mmd]"))
    more = make_plan(Resolver(spec_root).suite("s"))
    assert [j.key for j in base.trainings] == [j.key for j in more.trainings]
    assert base.evals[base.trainings[0].key][0].key != more.evals[more.trainings[0].key][0].key
    desc = [Override.parse("methods.icfm.description=renamed")]
    assert make_plan(Resolver(spec_root, desc).suite("s")).trainings[0].key == base.trainings[0].key
    sigma = [Override.parse("methods.icfm.params.path.sigma=0.3")]
    assert make_plan(Resolver(spec_root, sigma).suite("s")).trainings[0].key != base.trainings[0].key


def test_keys_are_stable_across_processes():
    plan = make_plan(load_suite("quickstart", root=SPECS))
    again = make_plan(load_suite("quickstart", root=SPECS))
    assert [e.key for v in plan.evals.values() for e in v] == [e.key for v in again.evals.values() for e in v]
    assert len(plan.trainings) == 9 and plan.num_evals == 36  # 3 datasets x 3 methods, x 4 samplers


def test_added_field_at_its_default_leaves_the_key_unchanged(spec_root):
    """``angles`` came after committed moons runs: at its default it is not in the spec."""
    write(spec_root / "suites" / "s.yaml", SUITE)
    base = make_plan(Resolver(spec_root).suite("s"))
    target = base.trainings[0].dataset.params["target"]
    assert target["name"] == "moons" and "angles" not in target and "noise" in target
    same = [Override.parse("datasets.moons.params.target.angles=random")]
    assert make_plan(Resolver(spec_root, same).suite("s")).trainings[0].key == base.trainings[0].key
    grid = [Override.parse("datasets.moons.params.target.angles=grid")]
    plan = make_plan(Resolver(spec_root, grid).suite("s"))
    assert plan.trainings[0].dataset.params["target"]["angles"] == "grid"
    assert plan.trainings[0].key != base.trainings[0].key


@pytest.mark.parametrize("suite", ["rectified-flow-toy", "torchcfm-2d"])
def test_committed_results_keep_their_keys(suite):
    """Every committed record is still in its suite's plan under the same key, so a rerun
    resumes from it instead of retraining (a change to canonical specs breaks this)."""
    import json

    from tests.conftest import PROJECT

    from harness.codeversion import changed_modules

    records = sorted((PROJECT / "results" / suite / "records").glob("*.json"))
    assert records, f"no committed records for {suite}"
    plan = make_plan(load_suite(suite, root=SPECS))
    train_keys = {job.key for job in plan.trainings}
    record_keys = {e.key for evals in plan.evals.values() for e in evals}
    for path in records:
        record = json.loads(path.read_text())
        changed = changed_modules(record.get("code_modules"), record["spec"])
        assert not changed, (
            f"results/{suite}/records/{path.name} was made by other code: {', '.join(changed)} changed since. "
            f"If the change alters numbers, rerun the suite; if it cannot (check: rerun a slice and compare), "
            f"`flowgauge rekey --accept-code results/{suite}` and commit the re-keyed records")
        assert record["train_key"] in train_keys, path.name
        assert record["key"] in record_keys, path.name


def test_each_method_is_evaluated_with_the_samplers_that_apply_to_it(tmp_path):
    from harness.plan import make_plan
    from tests.conftest import run_cli, write

    text = """name: mixed
seeds: [0]
budget: {train: {steps: 2}}
datasets: [digits]
methods: [icfm, tarflow-digits]
samplers: [euler-1, ar-sequential]
metrics: [nfe]
leaderboard: {rank_by: nfe}
"""
    plan = make_plan(load_suite(str(write(tmp_path / "mixed.yaml", text)), root=SPECS))
    pairs = sorted((e.train.method.name, e.sampler.name) for evals in plan.evals.values() for e in evals)
    assert pairs == [("icfm", "euler-1"), ("tarflow-digits", "ar-sequential")]
    bad = write(tmp_path / "bad.yaml", text.replace("samplers: [euler-1, ar-sequential]", "samplers: [euler-1]"))
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"{bad}:5: methods[1]: 'tarflow-digits' is an autoregressive flow, inverted block by block, and none of the "
        "suite's samplers (euler-1) can sample it; add a sampler whose solver is one of ar-auto, ar-gs-jacobi, ar-jacobi, "
        "ar-sequential")
