"""The README's "Add your own method" walkthrough, performed as written: its code and specs
are read out of README.md, written into a copy of the project, registered as step 2 says,
checked, run, rerun, edited and conformance-tested. If the README drifts from the code,
this fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import PROJECT

pytestmark = pytest.mark.slow

SECTION = "## Add your own method: a walkthrough"
IMPORT_LINE = "from implementations import distillation, flow_matching, "


def walkthrough_files() -> dict[str, str]:
    """``{path: text}`` of the fenced blocks of the walkthrough whose first line is ``# path``."""
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index(SECTION):]
    section = section[: section.index("\n## ", len(SECTION))]
    files = {}
    for block in re.findall(r"```(?:python|yaml)\n(.*?)```", section, re.DOTALL):
        first, _, rest = block.partition("\n")
        if first.startswith("# ") and "/" in first:
            files[first[2:].strip()] = rest if first.endswith(".yaml") else block
    return files


def test_the_readme_walkthrough_works_as_written(tmp_path):
    files = walkthrough_files()
    assert set(files) == {"implementations/my_fm.py", "specs/methods/my-fm.yaml",
                          "specs/datasets/four-blobs.yaml", "specs/suites/my-suite.yaml"}
    copy = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("harness", "implementations", "specs", "tests"):
        shutil.copytree(PROJECT / part, copy / part, ignore=ignore)
    for path, text in files.items():
        (copy / path).write_text(text, encoding="utf-8")
    init = copy / "implementations" / "__init__.py"  # step 2: register the module
    assert IMPORT_LINE in init.read_text()
    init.write_text(init.read_text().replace(IMPORT_LINE, IMPORT_LINE + "my_fm, "))

    env = {**os.environ, "PYTHONPATH": str(copy)}
    env.pop("FLOWGAUGE_SPECS", None)

    def flowgauge(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=copy, env=env,
                              capture_output=True, text=True, timeout=600)

    params = flowgauge("list", "params", "my_fm")
    assert params.returncode == 0, params.stderr
    assert re.search(r"\| sigma_min\s+\| number ≥ 0, < 1\s+\| 0.0001\s+\| width of the path at t = 1", params.stdout)
    shown = flowgauge("show", "my-fm")
    assert "width: 64" in shown.stdout and "lr: 0.001" in shown.stdout and "batch_size: 256" in shown.stdout
    assert flowgauge("validate", "specs/suites/my-suite.yaml").returncode == 0

    # Step 6, on a small budget: one seed, 30 steps (the README's suite trains 12 models).
    small = ["--no-progress", "--set", "seeds=[0]", "--set", "budget.train.steps=30",
             "--set", "budget.eval.num_samples=200", "--set", "budget.eval.repeats=1", "--set", "budget.eval.warmup=0"]
    run = flowgauge("run", "my-suite", "--results", "out", *small)
    assert run.returncode == 0, run.stderr
    assert "4 trainings, 8 evaluations" in run.stderr and "8 ok;" in run.stderr
    for dataset in ("four-blobs", "moons"):
        table = run.stdout.split(f"### {dataset}")[1].split("###")[0]
        rows = [line for line in table.splitlines() if line.startswith("| ") and "my-fm" in line]
        assert len(rows) == 2 and any("| dopri5 " in r for r in rows) and any("| euler-8 " in r for r in rows)
        euler = next(r for r in rows if "| euler-8 " in r).split("|")
        assert euler[4].strip() == "1" and float(euler[5].split("±")[0].strip("* ")) > 0  # 1 seed, a w2 value
        assert euler[7].strip() == "8"  # nfe (after w2 and mmd): 8 Euler steps
    assert "w2(my-fm@dopri5) < 2 * w2(icfm@dopri5)" in run.stdout and "inconclusive" in run.stdout  # 1 seed < 3

    again = flowgauge("run", "my-suite", "--results", "out", *small)
    assert "8 cached;" in again.stderr and again.stdout == run.stdout

    method = copy / "implementations" / "my_fm.py"  # edit the loss: its runs train again
    method.write_text(method.read_text().replace("** 2).mean()", "** 2).sum(dim=-1).mean()"))
    edited = flowgauge("run", "my-suite", "--results", "out", *small)
    assert edited.returncode == 0 and "4 cached" in edited.stderr and "4 ok" in edited.stderr
    assert "Left out: 4 record(s)" in edited.stdout

    conformance = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                                  "tests/implementations/test_conformance.py", "-k", "my_fm"],
                                 cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert conformance.returncode == 0, conformance.stdout[-2000:]
    passed = re.search(r"\b(\d+) passed\b", conformance.stdout)
    assert passed and int(passed.group(1)) >= 5 and "failed" not in conformance.stdout  # my_fm x datasets x solvers
