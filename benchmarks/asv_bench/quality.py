"""The CI suite's quality metric and NFE, per dataset, method and sampler, as asv ``track_``
benchmarks: asv keeps one value per commit, so the history site plots how a change moved W2.

Where the records come from:

- ``$FLOWGAUGE_ASV_RESULTS``, when set: a results folder that ``flowgauge run`` wrote (e.g. a
  CI job's run of the suite on the same commit); its records are read, nothing is trained;
- otherwise ``setup_cache`` runs the suite itself (``flowgauge run SUITE --results <tmp>``
  with ``OVERRIDES``, in a subprocess, once per ``asv run``) and reads the records it wrote.

A value is the mean over the suite's seeds of the records that finished (status ``ok``); a
(dataset, method, sampler) that the suite does not run is skipped (asv shows n/a).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import ClassVar

from .common import SPECS, load

# The suite whose numbers are tracked and the --set overrides it runs with: the CI suite
# (specs/suites/ci.yaml, about 45 s on a 2-core machine) as it stands; in a checkout without
# it, quickstart with a 200-step budget (about 70 s). To track another suite, set SUITE and
# OVERRIDES here (and check that QUALITY_METRIC is one of its metrics).
CI_SUITE = "ci"
if (SPECS / "suites" / f"{CI_SUITE}.yaml").is_file():
    SUITE, OVERRIDES = CI_SUITE, []
else:
    SUITE, OVERRIDES = "quickstart", ["budget.train.steps=200"]
QUALITY_METRIC = "w2"  # the metric ``track_w2`` reports
RESULTS_ENV = "FLOWGAUGE_ASV_RESULTS"
RUN_TIMEOUT_S = 1800


def evaluations(suite: str = SUITE, overrides: list[str] | None = None) -> list[tuple[str, str, str]]:
    """The (dataset, method, sampler) triples the suite evaluates, in plan order."""
    from harness.plan import make_plan

    plan = make_plan(load(suite, OVERRIDES if overrides is None else overrides))
    seen: dict[tuple[str, str, str], None] = {}
    for train in plan.trainings:
        for job in plan.evals[train.key]:
            seen[(job.train.dataset.name, job.train.method.name, job.sampler.name)] = None
    return list(seen)


def _distinct(values) -> list[str]:
    return list(dict.fromkeys(values))


EVALUATIONS = evaluations()


def key(dataset: str, method: str, sampler: str) -> str:
    return f"{dataset}/{method}/{sampler}"


def summarise(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per ``key(dataset, method, sampler)``: the mean over seeds of every numeric metric of
    the records with status ``ok``, and ``seeds``, how many there were."""
    values: dict[str, dict[str, list[float]]] = {}
    for record in records:
        if record.get("status") != "ok":
            continue
        row = values.setdefault(key(record["dataset"], record["method"], record["sampler"]), {})
        row.setdefault("seeds", []).append(1.0)
        for name, value in record["metrics"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row.setdefault(name, []).append(float(value))
    return {k: {name: (float(len(v)) if name == "seeds" else statistics.fmean(v)) for name, v in row.items()}
            for k, row in values.items()}


def read(results_dir: Path) -> dict[str, dict[str, float]]:
    """``summarise`` of the records a results folder's suite, as last run there, produces."""
    from harness.results import suite_records

    records, _ = suite_records(Path(results_dir))
    return summarise(records)


def run_suite(results_dir: Path, suite: str = SUITE, overrides: list[str] | None = None) -> None:
    """``flowgauge run`` of ``suite`` into ``results_dir``, in a subprocess; raises with the
    end of its output when it wrote no records."""
    sets = [arg for o in (OVERRIDES if overrides is None else overrides) for arg in ("--set", o)]
    command = [sys.executable, "-m", "harness.cli", "--specs", str(SPECS), "run", suite,
               "--results", str(results_dir), "--no-progress", *sets]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if not list((Path(results_dir) / "records").glob("*.json")):
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode} without records:\n"
                           f"{(done.stdout + done.stderr)[-4000:]}")


class CISuite:
    params: ClassVar[list[list[str]]] = [_distinct(e[i] for e in EVALUATIONS) for i in range(3)]
    param_names: ClassVar[list[str]] = ["dataset", "method", "sampler"]
    timeout = 60

    def setup_cache(self) -> dict[str, dict[str, float]]:
        given = os.environ.get(RESULTS_ENV)
        if given:
            return read(Path(given))
        folder = Path(tempfile.mkdtemp(prefix="flowgauge-asv-"))
        try:
            run_suite(folder)
            return read(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    setup_cache.timeout = RUN_TIMEOUT_S

    def setup(self, cache: dict, dataset: str, method: str, sampler: str) -> None:
        if key(dataset, method, sampler) not in cache:
            raise NotImplementedError(f"{SUITE} has no finished record of {key(dataset, method, sampler)}")

    def track_w2(self, cache: dict, dataset: str, method: str, sampler: str) -> float:
        return cache[key(dataset, method, sampler)].get(QUALITY_METRIC, float("nan"))

    track_w2.unit = QUALITY_METRIC

    def track_nfe(self, cache: dict, dataset: str, method: str, sampler: str) -> float:
        return cache[key(dataset, method, sampler)].get("nfe", float("nan"))

    track_nfe.unit = "NFE"
