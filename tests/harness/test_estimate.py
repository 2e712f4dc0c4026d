"""``flowgauge run SUITE --estimate``: the plan's size, what is already done, network
evaluations and expected time from earlier records of the same keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import harness.metrics  # noqa: F401
import implementations  # noqa: F401
from harness.estimate import estimate, fixed_nfe
from harness.plan import make_plan
from harness.resolve import load_suite
from tests.conftest import SPECS, run_cli

OVERRIDES = ["datasets=[moons]", "methods=[icfm]", "samplers=[euler-2, heun-8, dopri5]", "seeds=[0, 1]",
             "metrics=[w2, nfe]", "budget.eval.num_samples=100"]


def _record(folder: Path, key: str, train_key: str, status: str = "ok", **measurements) -> None:
    (folder / "records").mkdir(parents=True, exist_ok=True)
    record = {"key": key, "train_key": train_key, "status": status, "train": {"train_s": 10.0},
              "measurements": measurements}
    (folder / "records" / f"{key}.json").write_text(json.dumps(record))


def test_counts_nfe_and_time_from_earlier_records(tmp_path: Path):
    plan = make_plan(load_suite("quickstart", OVERRIDES, root=SPECS))
    seed0, seed1 = plan.trainings
    euler0, heun0, dopri0 = plan.evals[seed0.key]
    euler1, heun1, dopri1 = plan.evals[seed1.key]
    results, earlier = tmp_path / "results", tmp_path / "earlier"
    # another folder ran seed 0's dopri5 (its NFE and sampling time are known)
    _record(earlier, dopri0.key, seed0.key, nfe=50.0, batches={"count": 4, "median_s": 0.5})
    # this folder has seed 1 finished but for dopri5, which failed (a resumed run redoes it)
    _record(results, euler1.key, seed1.key, nfe=2.0)
    _record(results, heun1.key, seed1.key, nfe=16.0)
    _record(results, dopri1.key, seed1.key, status="failed")
    est = estimate(plan, results, [earlier])
    assert (est.trainings, est.trainings_done, est.evaluations, est.evaluations_done) == (2, 0, 6, 2)
    # euler-2 and heun-8 of seed 0 from their specs (2 and 16 per sample), dopri5 of seed 0
    # from the earlier record, dopri5 of seed 1 unknown
    assert est.nfe == (2 + 16 + 50) * 100 and est.nfe_unknown == 1
    # seed 0's training from the earlier record, seed 1's from this folder's; seed 0's dopri5 sampling
    assert est.seconds == pytest.approx(10 + 10 + 4 * 0.5)
    assert sorted(est.seconds_unknown) == sorted(f"evaluation {e.label}" for e in (euler0, heun0, dopri1))
    text = est.text()
    assert "trainings: 2 (0 already trained or not needed)" in text and "evaluations: 6 (2 already recorded)" in text
    assert "6,800 + 1 evaluation(s) of adaptive NFE" in text and "0.4 min + 3 step(s) with no earlier record" in text


def test_a_training_whose_evaluations_are_all_recorded_is_not_needed(tmp_path: Path):
    plan = make_plan(load_suite("quickstart", [*OVERRIDES, "seeds=[0]", "samplers=[euler-2]"], root=SPECS))
    (job,) = plan.trainings
    _record(tmp_path, plan.evals[job.key][0].key, job.key, status="diverged")
    est = estimate(plan, tmp_path)
    assert (est.trainings_done, est.evaluations_done, est.nfe, est.seconds) == (1, 1, 0, 0)


def test_fixed_nfe_follows_the_solver_and_adaptive_is_unknown():
    plan = make_plan(load_suite("quickstart", [*OVERRIDES, "seeds=[0]", "samplers=[euler-2, heun-8, dopri5, boss-4]"],
                                root=SPECS))
    assert [fixed_nfe(e.sampler) for e in plan.evals[plan.trainings[0].key]] == [2.0, 16.0, None, 4.0]


def test_cli_estimate_prints_and_runs_nothing(tmp_path: Path):
    result = run_cli("run", "quickstart", "--set", "datasets=[moons]", "--results", str(tmp_path / "r"), "--estimate")
    assert result.returncode == 0, result.stderr
    assert "trainings: 3 (0 already trained or not needed)" in result.stdout
    assert "evaluations: 12 (0 already recorded)" in result.stdout
    assert not (tmp_path / "r").exists()
