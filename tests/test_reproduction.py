"""Reproduction machinery end to end: teachers and their cached pairs, distillation,
early stopping, and the quick variant of the TorchCFM 2D suite with its claims."""

from __future__ import annotations

import json

import pytest
import torch

from harness.errors import SpecError
from harness.leaderboard import claims_report
from harness.plan import make_plan
from harness.resolve import Resolver, load_suite
from harness.results import read_records
from harness.runner import Runner
from tests.conftest import SPECS, run_cli, write


def _run(suite, out):
    return Runner(out, progress=False).run(make_plan(suite))


def test_quick_torchcfm_suite_with_claims(tmp_path):
    suite = load_suite("torchcfm-2d-quick", root=SPECS)
    out = tmp_path / "tq"
    summary = _run(suite, out)
    assert summary.counts == {"ok": 5}
    records = {r["method"]: r for r in read_records(out)}
    assert set(records) == {"icfm", "otcfm", "sbcfm", "wcfm", "2-rectified-flow"}
    for r in records.values():
        m = r["metrics"]
        assert m["nfe"] == 100 and m["npe"] == pytest.approx(abs(m["rpe"]), rel=1e-12)
        # the normaliser W2²(N(0, I), 8 gaussians) is about 14.4 (exact OT on 3 000 points):
        # PE / (1 + rpe) recovers it from any record
        assert 12.0 < m["path_energy"] / (1 + m["rpe"]) < 17.0
        # two 256-point draws of the 8 gaussians are about 1 apart in W2 (a floor of 0 would
        # be a floor computed against itself); a model may land on either side of it
        assert 0.6 < m["w2_floor"] < 1.6 and m["w2"] < 3 * m["w2_floor"]
        es = r["train"]["early_stopping"]
        assert len(es["val_curve"]) == 2 and es["restored_best"]  # one check per epoch, two epochs
        assert r["train"]["stopped_by"] == "epochs" and r["train"]["steps"] == 40  # 2 x 10 000 / 512, rounded up
    pairs = records["2-rectified-flow"]["train"]["teacher_pairs"]
    assert pairs["num_pairs"] == 10000 and pairs["nfe"] == 100 and pairs["sampler"] == "euler-100"
    assert len(list((out / "pairs").glob("*.pt"))) == 2  # training pairs and held-out validation pairs
    text, results = claims_report(out)
    assert len(results) == 21  # 9 from Tong et al. (Table 2), 12 from the Explicit Flow Matching rerun
    # Only N->8gaussians is in the quick suite: 3 + 8 claims are about other datasets. One
    # seed carries no verdict: each claim on N->8gaussians needs 3 finished seeds.
    not_run = [r for r in results if r.verdict == "not run"]
    assert len(not_run) == 11 and all(r.claim.dataset != "tcfm-8gaussians" for r in not_run)
    on_8g = [r for r in results if r.claim.dataset == "tcfm-8gaussians"]
    assert len(on_8g) == 10 and all(r.verdict == "inconclusive" and "1 finished seed(s)" in r.reason for r in on_8g)
    assert "npe(icfm) / npe(otcfm) >= 10" in text
    # Rerun: everything cached, nothing retrained.
    assert _run(suite, out).counts == {"cached": 5}
    cli = run_cli("claims", str(out), "--strict")
    assert cli.returncode == 3 and "not run" in cli.stdout


def test_reflow_and_distillation_chain(tmp_path):
    overrides = ["budget.train.steps=30", "budget.eval.num_samples=200", "budget.eval.repeats=1", "seeds=[0]",
                 "methods.2-rectified-flow.teacher.num_pairs=300", "methods.1-rectified-flow.batch_size=64",
                 "methods.2-rectified-flow.batch_size=64", "methods.2-rectified-flow-distilled.batch_size=64",
                 "methods.2-rectified-flow-distilled.teacher.num_pairs=300"]
    suite = load_suite("rectified-flow-toy", overrides, root=SPECS)
    plan = make_plan(suite)
    assert [j.method.name for j in plan.trainings] == ["1-rectified-flow", "2-rectified-flow",
                                                       "2-rectified-flow-distilled"]
    out = tmp_path / "rf"
    assert _run(suite, out).counts == {"ok": 9}
    records = read_records(out)
    distilled = [r for r in records if r["method"] == "2-rectified-flow-distilled"]
    # a one-step map has no flow: straightness is not applicable, not 0 by construction
    assert all(r["metrics"]["nfe"] == 1 and r["metrics"]["straightness"] is None for r in distilled)
    flows = [r for r in records if r["method"] != "2-rectified-flow-distilled"]
    for method in ("1-rectified-flow", "2-rectified-flow"):  # one value per flow, whatever the sampler
        assert len({r["metrics"]["straightness"] for r in flows if r["method"] == method}) == 1
    assert distilled[0]["train"]["teacher_pairs"]["teacher"] == "2-rectified-flow"
    reflow = next(r for r in records if r["method"] == "2-rectified-flow")
    assert reflow["train"]["teacher_pairs"]["num_pairs"] == 300
    assert len(list((out / "pairs").glob("*.pt"))) == 2
    _, results = claims_report(out)
    assert len(results) == 4 and all(r.verdict != "not run" for r in results)


def test_a_student_reuses_cached_pairs_and_does_not_retrain_the_teacher(tmp_path):
    overrides = ["budget.train.steps=20", "budget.eval.num_samples=100", "budget.eval.repeats=1", "seeds=[0]",
                 "methods.2-rectified-flow.teacher.num_pairs=200", "samplers=[euler-1]",
                 "methods=[{name: 2-rectified-flow, extends: 2-rectified-flow, teacher: {num_pairs: 200}}]",
                 "datasets=[moons]"]
    suite = load_suite("quickstart", overrides, root=SPECS)
    out = tmp_path / "r"
    assert _run(suite, out).counts == {"ok": 1}
    for model in (out / "models").glob("*.pt"):
        if model.stem != make_plan(suite).trainings[0].key:
            model.unlink()  # drop the student, keep the teacher
    student = make_plan(suite).trainings[1]
    (out / "models" / f"{student.key}.pt").unlink(missing_ok=True)
    for record in (out / "records").glob("*.json"):
        record.unlink()
    assert _run(suite, out).counts == {"ok": 1}
    (record,) = read_records(out)
    assert record["train"]["teacher_pairs"]["reused"] is True


def test_early_stopping_stops_at_the_first_check_past_patience(tmp_path):
    text = """name: es
budget:
  train:
    steps: 400
    early_stopping: {every_steps: 10, patience: 1, restore_best: true, val_size: 256}
  eval: {num_samples: 100, repeats: 1, warmup: 0}
datasets: [moons]
methods: [{name: icfm-hot, extends: icfm, optimizer: {name: adam, lr: 0.05}}]
samplers: [euler-1]
metrics: [w2]
"""
    suite = load_suite(str(write(tmp_path / "es.yaml", text)), root=SPECS)
    _run(suite, tmp_path / "out")
    (record,) = read_records(tmp_path / "out")
    train = record["train"]
    curve = train["early_stopping"]["val_curve"]
    values = [v for _, v in curve]
    assert train["early_stopping"]["best_val_loss"] == min(values)
    if train["stopped_by"] == "early stopping":
        assert values[-1] >= min(values[:-1]) and train["steps"] == curve[-1][0]
    else:
        assert train["steps"] == 400 and all(b < a for a, b in zip(values, values[1:]))


def test_teacher_errors(spec_root):
    write(spec_root / "methods" / "a.yaml", "extends: rectified-flow\nteacher: {method: b}\n")
    write(spec_root / "methods" / "b.yaml", "extends: rectified-flow\nteacher: {method: a}\n")
    with pytest.raises(SpecError, match=r"the teacher chain loops \(a -> b -> a\)"):
        Resolver(spec_root).validate_file(spec_root / "methods" / "a.yaml")
    write(spec_root / "methods" / "d.yaml", "implementation: one_step_distillation\n")
    with pytest.raises(SpecError) as info:
        Resolver(spec_root).validate_file(spec_root / "methods" / "d.yaml")
    assert str(info.value).endswith("methods/d.yaml:1: method implementation 'one_step_distillation' trains on "
                                    "a teacher's pairs: add teacher: {method: ..., sampler: ...}")
    write(spec_root / "methods" / "e.yaml", "extends: rectified-flow\nteacher: {method: rectified-flow, sampler: eulr-100}\n")
    with pytest.raises(SpecError, match="methods/e.yaml:2: unknown sampler 'eulr-100'"):
        Resolver(spec_root).validate_file(spec_root / "methods" / "e.yaml")


def test_suite_json_records_the_resolved_claims(tmp_path):
    suite = load_suite("torchcfm-2d-quick", ["datasets=[tcfm-moons]", "methods=[icfm]"], root=SPECS)
    out = tmp_path / "s"
    _run(suite, out)
    stored = json.loads((out / "suite.json").read_text())["suite"]
    assert len(stored["claims"]) == 21 and stored["methods"][0]["name"] == "icfm"


def test_a_reflow_student_is_validated_on_held_out_teacher_pairs(tmp_path):
    """Early stopping of 2-RF scores the reflow objective: its validation set is teacher
    pairs from their own noise stream, so the loss falls as the student learns them and the
    restored weights are not the first check's. (Scored on independent pairs, the 1-RF
    objective, a straightening student looks worse and the first check was kept.)"""
    overrides = ["methods=[2-rectified-flow]", "budget.train.epochs=3",
                 "budget.train.early_stopping={every_steps: 10, patience: 100, restore_best: true, val_size: 512}"]
    suite = load_suite("torchcfm-2d-quick", overrides, root=SPECS)
    out = tmp_path / "reflow"
    assert _run(suite, out).counts == {"ok": 1}
    (record,) = read_records(out)
    train = record["train"]
    held_out = train["validation_pairs"]
    assert held_out["num_pairs"] == 512 and held_out["teacher"] == "rectified-flow" and held_out["nfe"] == 100
    assert train["teacher_pairs"]["num_pairs"] == 10000
    es = train["early_stopping"]
    steps = [s for s, _ in es["val_curve"]]
    values = [v for _, v in es["val_curve"]]
    assert steps[0] == 10 and len(values) == 11  # 3 epochs of 10 000 pairs in batches of 256
    assert es["best_step"] > steps[0] and values[-1] < 0.5 * values[0]
    # The held-out pairs are the teacher's ODE endpoints from noise that training never saw.
    pairs = {p.name: torch.load(p, weights_only=True) for p in (out / "pairs").glob("*.pt")}
    (val,) = [p for p in pairs.values() if len(p["z_0"]) == 512]
    (trn,) = [p for p in pairs.values() if len(p["z_0"]) == 10000]
    assert not (val["z_0"][:, None, :] == trn["z_0"][None, :, :]).all(-1).any()


def test_run_only_selected_runs_trains_their_teachers_and_keeps_the_others(tmp_path, capsys):
    """``--only`` reruns a subset of a suite under the suite's own keys: the records equal
    those of a full run, the teachers of selected students train without records of
    their own, and unselected records are neither redone nor called stale."""
    from harness.cli import main

    out = tmp_path / "rf"
    overrides = ["budget.train.steps=20", "budget.eval.num_samples=100", "budget.eval.repeats=1", "seeds=[0, 1]",
                 "methods.2-rectified-flow.teacher.num_pairs=200", "methods.2-rectified-flow-distilled.teacher.num_pairs=200",
                 "samplers=[euler-1]"]
    args = ["--specs", str(SPECS), "run", "rectified-flow-toy", "--results", str(out), "--no-progress"]
    sets = [x for o in overrides for x in ("--set", o)]
    assert main([*args, *sets, "--only", "*/2-rectified-flow/seed1"]) == 0
    records = read_records(out)
    assert [(r["method"], r["seed"]) for r in records] == [("2-rectified-flow", 1)]
    assert len(list((out / "models").glob("*.pt"))) == 2  # the teacher trained, without a record
    assert main([*args, *sets]) == 0
    err = capsys.readouterr().err
    assert "not produced by this suite" not in err
    full = {(r["method"], r["seed"]): r for r in read_records(out)}
    assert len(full) == 6
    assert full[("2-rectified-flow", 1)]["key"] == records[0]["key"]
    assert main([*args, *sets, "--only", "nothing/*"]) == 2
    assert "--only nothing/*: no run of the suite matches" in capsys.readouterr().err
