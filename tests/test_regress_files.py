"""The regression gate's wiring: the make target, the CI suite, the committed baseline and
the GitHub Actions workflow agree with each other."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def test_workflow_runs_make_regress_with_timings_left_out():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "regress.yml").read_text())
    steps = workflow["jobs"]["regress"]["steps"]
    runs = [s.get("run", "") for s in steps]
    assert any(r.startswith("make regress") and "--timings skip" in r for r in runs)
    assert workflow[True]["pull_request"] is None or "pull_request" in workflow[True]  # `on:` parses as True


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_regress_runs_the_ci_suite_then_the_gate():
    plan = subprocess.run(["make", "-n", "regress"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "flowgauge run ci --results results/runs/regress" in plan
    assert "flowgauge compare results/baselines/ci results/runs/regress" in plan


def test_the_committed_baseline_is_the_ci_suite_with_its_noise():
    baseline = REPO / "results" / "baselines" / "ci"
    suite = json.loads((baseline / "suite.json").read_text())
    stored = suite.get("suite", suite)
    assert stored["name"] == "ci"
    current = yaml.safe_load((REPO / "specs" / "suites" / "ci.yaml").read_text())
    assert stored["seeds"] == current["seeds"]
    assert stored["gate"]["tolerances"].keys() == current["gate"]["tolerances"].keys()
    noise = json.loads((baseline / "noise.json").read_text())
    assert noise["format"] == "flowgauge.noise" and noise["repeats"] >= 3
    assert all(check["exit_status"] == 0 for check in noise["self_check"])
    records = list((baseline / "records").glob("*.json"))
    assert len(records) == noise["runs"] == len(current["seeds"]) * 3 * 3  # seeds × methods × samplers
