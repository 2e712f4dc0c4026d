"""The asv suite under benchmarks/asv_bench: asv's discovery finds the ``time_``,
``peakmem_`` and ``track_`` benchmarks of every method family, each family's setup and
call work (on tiny batches), the quality benchmarks read a results folder, and, where asv is
installed, ``asv check --python=same`` imports the suite as asv does. No benchmark is timed."""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT

BENCHMARKS = PROJECT / "benchmarks"
SUITE_DIR = BENCHMARKS / "asv_bench"
if str(BENCHMARKS) not in sys.path:  # asv imports benchmark_dir's parent's child: asv_bench
    sys.path.insert(0, str(BENCHMARKS))

from asv_bench import common, quality, sampling, training

# The method families the issue names: flow matching, an OT coupling, MeanFlow, TARFlow.
FAMILIES = {"icfm", "rectified-flow", "otcfm", "meanflow", "split-meanflow", "tarflow"}
PREFIXES = ("time_", "peakmem_", "track_", "mem_", "timeraw_")


def _names(cls: type) -> set[str]:
    return {name for name in dir(cls) if name.startswith(PREFIXES)}


def test_config_points_asv_at_the_package_and_keeps_its_output_ignored():
    text = (BENCHMARKS / "asv.conf.json").read_text()
    conf = json.loads("\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//")))
    assert (BENCHMARKS / conf["repo"]).resolve() == PROJECT.resolve()
    assert (BENCHMARKS / conf["benchmark_dir"]).resolve() == SUITE_DIR.resolve()
    for name in ("results_dir", "html_dir", "env_dir"):
        path = (BENCHMARKS / conf[name] / "x").relative_to(PROJECT)
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], check=False, cwd=PROJECT)
        assert ignored.returncode == 0, f"{name} ({conf[name]}) is not git-ignored"


def test_every_family_has_its_benchmarks():
    assert FAMILIES <= set(common.FAMILIES)
    assert training.TrainStep.params == sampling.Sample.params == list(common.FAMILIES)
    assert _names(training.TrainStep) == {"time_train_step"}
    assert _names(sampling.Sample) == {"time_sample", "peakmem_sample"}
    assert _names(quality.CISuite) == {"track_w2", "track_nfe"}
    assert quality.CISuite.track_w2.unit == quality.QUALITY_METRIC
    assert quality.CISuite.track_nfe.unit == "NFE"
    datasets, methods, samplers = quality.CISuite.params
    assert {(d, m, s) for d in datasets for m in methods for s in samplers} >= set(quality.EVALUATIONS)
    assert quality.EVALUATIONS, f"{quality.SUITE} evaluates nothing"


def test_asv_discovery_finds_the_benchmarks():
    discovery = pytest.importorskip("asv_runner.discovery", reason="asv is not installed (pip install asv)")
    found = {b.name: b for b in discovery.disc_benchmarks(str(SUITE_DIR))}
    assert set(found) == {"training.TrainStep.time_train_step", "sampling.Sample.time_sample",
                          "sampling.Sample.peakmem_sample", "quality.CISuite.track_w2",
                          "quality.CISuite.track_nfe"}
    assert found["quality.CISuite.track_w2"].unit == quality.QUALITY_METRIC
    for name in ("training.TrainStep.time_train_step", "sampling.Sample.time_sample"):
        assert found[name].param_names == ["method"]
        assert FAMILIES <= {ast.literal_eval(p) for p in found[name].params[0]}  # asv keeps the reprs


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every family at a batch of 8, for both training and sampling."""
    for name, family in list(common.FAMILIES.items()):
        monkeypatch.setitem(common.FAMILIES, name, dataclasses.replace(family, train_batch=8, sample_batch=8))


@pytest.mark.parametrize("method", sorted(FAMILIES))
def test_each_family_sets_up_and_runs(method: str, tiny: None):
    import torch

    step = training.TrainStep()
    step.setup(method)
    before = [p.detach().clone() for p in step.network.parameters()]
    step.time_train_step(method)
    assert any(not torch.equal(a, b) for a, b in zip(before, step.network.parameters())), "no optimiser step"

    sample = sampling.Sample()
    sample.setup(method)
    sample.time_sample(method)
    sample.peakmem_sample(method)
    x = sample.sample().x
    assert x.shape == (8, *sample.built.space.shape) and torch.isfinite(x).all()


def _record(dataset: str, method: str, sampler: str, seed: int, status: str = "ok", **metrics: float) -> dict:
    return {"key": f"{method}{sampler}{seed}", "train_key": f"{method}{seed}", "dataset": dataset, "method": method,
            "sampler": sampler, "seed": seed, "status": status, "metrics": metrics}


def test_track_benchmarks_read_a_results_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    records = tmp_path / "records"
    records.mkdir()
    rows = [_record("moons", "icfm", "euler-8", 0, w2=0.5, nfe=8.0),
            _record("moons", "icfm", "euler-8", 1, w2=0.7, nfe=8.0),
            _record("moons", "icfm", "euler-8", 2, status="failed", w2=9.0, nfe=8.0),
            _record("moons", "otcfm", "dopri5", 0, nfe=20.0)]
    for i, row in enumerate(rows):
        (records / f"r{i}.json").write_text(json.dumps(row))
    monkeypatch.setenv(quality.RESULTS_ENV, str(tmp_path))
    bench = quality.CISuite()
    cache = bench.setup_cache()
    bench.setup(cache, "moons", "icfm", "euler-8")
    assert bench.track_w2(cache, "moons", "icfm", "euler-8") == pytest.approx(0.6)  # the failed seed is left out
    assert bench.track_nfe(cache, "moons", "icfm", "euler-8") == 8.0
    assert cache[quality.key("moons", "icfm", "euler-8")]["seeds"] == 2
    assert bench.track_nfe(cache, "moons", "otcfm", "dopri5") == 20.0
    assert bench.track_w2(cache, "moons", "otcfm", "dopri5") != bench.track_w2(cache, "moons", "otcfm", "dopri5")
    with pytest.raises(NotImplementedError):  # asv skips a combination the suite does not run
        bench.setup(cache, "checkerboard", "icfm", "euler-8")


@pytest.mark.slow
def test_track_benchmarks_run_the_suite_when_no_folder_is_given(tmp_path: Path):
    overrides = ["datasets=[moons]", "methods=[icfm]", "samplers=[euler-8]", "metrics=[w2, nfe]",
                 "budget.train.steps=20", "budget.eval.num_samples=128", "budget.eval.repeats=1",
                 "budget.eval.warmup=0"]
    quality.run_suite(tmp_path, "quickstart", overrides)
    values = quality.read(tmp_path)[quality.key("moons", "icfm", "euler-8")]
    assert values["nfe"] == 8.0 and 0 < values["w2"] < 10


def _asv() -> str | None:
    local = Path(sys.executable).with_name("asv")
    return str(local) if local.is_file() else shutil.which("asv")


@pytest.mark.skipif(_asv() is None, reason="asv is not installed (pip install -e '.[bench]')")
def test_asv_check_discovers_the_suite():
    done = subprocess.run([_asv(), "check", "--python=same"], check=False, cwd=BENCHMARKS, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No problems found" in done.stdout + done.stderr
