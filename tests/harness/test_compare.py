"""The regression gate (``flowgauge compare``) and A/A noise (``flowgauge calibrate``) on
crafted results folders: exit statuses, verdicts, directions, thresholds, provenance."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness.metrics  # noqa: F401  registers the metrics
from harness.cli import main
from harness.compare import compare, read_noise
from harness.measure import BUSY_CORES, OtherLoad
from harness.noise import measure_noise
from harness.spec import GateSpec, Tolerance

SEEDS = (0, 1, 2)
BASE_W2 = {0: 0.40, 1: 0.44, 2: 0.38}


def record(method: str, sampler: str, seed: int, w2: float, *, latency: float = 5.0, throughput: float = 1000.0,
           status: str = "ok", cpu: str = "Test CPU", busy: bool = False, provenance: str = "exact",
           eval_samples: int = 1000, steps: int = 1000) -> dict:
    load = {"other_cores": 1.0 if busy else 0.0, "window_s": 2.0, "cpu_count": 2, "busy": busy}
    return {
        "key": f"{method}-{sampler}-{seed}-{steps}", "train_key": f"{method}-{seed}-{steps}", "suite": "t",
        "dataset": "moons", "method": method,
        "sampler": sampler, "seed": seed, "status": status, "error": None if status == "ok" else "boom",
        "metrics": {"w2": w2, "latency": latency, "throughput": throughput} if status == "ok" else {},
        "measurements": {"provenance": {"w2": {"solver": provenance}}, "load": load},
        "train": {"load": load, "steps": steps},
        "spec": {"dataset": {"name": "moons", "params": {"noise": 0.05}},
                 "budget": {"eval": {"num_samples": eval_samples}, "train": {"steps": steps}},
                 "metrics": [{"name": "w2", "params": {}}, {"name": "latency", "params": {}}],
                 "hardware": {"device": "cpu", "threads": 1}, "method": {"name": method}, "sampler": {"name": sampler}},
        "environment": {"cpu": cpu, "cpu_count": 2, "device": "cpu", "git_commit": "abc", "git_dirty": False},
    }


def write(folder: Path, records: list[dict]) -> Path:
    (folder / "records").mkdir(parents=True)
    for i, r in enumerate(records):
        (folder / "records" / f"record{i}.json").write_text(json.dumps(r))
    return folder


def results(tmp_path: Path, name: str, w2: dict[int, float] | None = None, **kw) -> Path:
    w2 = w2 or BASE_W2
    return write(tmp_path / name, [record("fm", "euler-8", s, w2[s], **kw) for s in SEEDS])


def only(cmp, metric: str):
    (change,) = [c for c in cmp.changes if c.metric == metric]
    return change


GATE = GateSpec(tolerances={"w2": Tolerance(relative=0.05), "latency": Tolerance(relative=0.10)})


def test_an_identical_rerun_passes(tmp_path):
    result = compare(results(tmp_path, "a"), results(tmp_path, "b"), GATE)
    assert result.exit_status == 0 and result.problems == []
    assert {c.verdict for c in result.changes} == {"unchanged"}
    assert only(result, "w2").estimate == 0.0


def test_a_consistent_worsening_beyond_tolerance_regresses(tmp_path):
    worse = {s: v * 1.2 + 0.001 * s for s, v in BASE_W2.items()}  # +20 %, a little jitter
    result = compare(results(tmp_path, "a"), results(tmp_path, "b", worse), GATE)
    change = only(result, "w2")
    assert change.verdict == "regressed" and result.exit_status == 1
    assert change.estimate == pytest.approx(sum(worse[s] - BASE_W2[s] for s in SEEDS) / 3)
    assert change.interval.low > 0 and change.interval.test.startswith("paired t over 3 seeds")


def test_an_improvement_is_reported_and_passes(tmp_path):
    better = {s: v * 0.8 for s, v in BASE_W2.items()}
    result = compare(results(tmp_path, "a"), results(tmp_path, "b", better), GATE)
    assert only(result, "w2").verdict == "improved" and result.exit_status == 0


def test_noise_within_tolerance_is_unchanged(tmp_path):
    jitter = {0: 1.02, 1: 0.985, 2: 1.01}  # ±2 % against a 5 % tolerance
    result = compare(results(tmp_path, "a"), results(tmp_path, "b", {s: BASE_W2[s] * jitter[s] for s in SEEDS}), GATE)
    assert only(result, "w2").verdict == "unchanged" and result.exit_status == 0


def test_a_large_change_the_seeds_disagree_on_is_not_significant(tmp_path):
    swing = {0: 1.5, 1: 0.8, 2: 1.4}  # mean +23 %, but one seed improves
    result = compare(results(tmp_path, "a"), results(tmp_path, "b", {s: BASE_W2[s] * swing[s] for s in SEEDS}), GATE)
    change = only(result, "w2")
    assert change.verdict == "not significant" and change.interval.low < 0 < change.interval.high
    assert result.exit_status == 0


def test_one_seed_cannot_support_a_change(tmp_path):
    a = write(tmp_path / "a", [record("fm", "euler-8", 0, 0.4)])
    b = write(tmp_path / "b", [record("fm", "euler-8", 0, 0.8)])
    change = only(compare(a, b, GATE), "w2")
    assert change.interval is None and change.verdict == "not significant"


def test_the_a_a_noise_raises_the_threshold(tmp_path):
    worse = {s: v * 1.2 for s, v in BASE_W2.items()}
    noise = {"format": "flowgauge.noise", "metrics": {"w2": {"noise": 0.1}}}
    result = compare(results(tmp_path, "a"), results(tmp_path, "b", worse), GATE, noise)
    change = only(result, "w2")
    assert change.threshold == pytest.approx(3 * 0.1 * sum(BASE_W2.values()) / 3)  # k = 3 × 10 % of the mean
    assert change.verdict == "unchanged"


def test_a_missing_run_cannot_be_compared(tmp_path):
    a = results(tmp_path, "a")
    b = write(tmp_path / "b", [record("fm", "euler-8", s, BASE_W2[s]) for s in (0, 1)])
    result = compare(a, b, GATE)
    assert result.exit_status == 2
    assert any("moons/fm/euler-8/seed2" in p for p in result.problems)


def test_a_new_run_in_the_candidate_is_listed_not_an_error(tmp_path):
    a = results(tmp_path, "a")
    b = write(tmp_path / "b", [record("fm", "euler-8", s, BASE_W2[s]) for s in SEEDS]
              + [record("fm", "euler-1", 0, 2.0)])
    result = compare(a, b, GATE)
    assert result.exit_status == 0 and result.new_runs == ["moons/fm/euler-1/seed0"]


def test_mixed_provenance_cannot_be_compared(tmp_path):
    result = compare(results(tmp_path, "a"), results(tmp_path, "b", provenance="sinkhorn"), GATE)
    assert result.exit_status == 2
    assert any("pipeline of w2 differs" in p and "sinkhorn" in p for p in result.problems)


def test_another_evaluation_budget_cannot_be_compared(tmp_path):
    result = compare(results(tmp_path, "a"), results(tmp_path, "b", eval_samples=500), GATE)
    assert result.exit_status == 2 and any("evaluation budget differs" in p for p in result.problems)


def test_timings_from_other_hardware_cannot_be_compared_unless_skipped(tmp_path):
    a, b = results(tmp_path, "a"), results(tmp_path, "b", cpu="Other CPU")
    result = compare(a, b, GATE)
    assert result.exit_status == 2 and any("different hardware" in p for p in result.problems)
    skipped = compare(a, b, GATE.model_copy(update={"timings": "skip"}))
    assert skipped.exit_status == 0 and {c.metric for c in skipped.changes} == {"w2"}


def test_timings_are_ratios_in_their_own_direction(tmp_path):
    a = results(tmp_path, "a")
    b = results(tmp_path, "b", latency=10.0, throughput=2000.0)  # slower per batch, yet more samples/s
    result = compare(a, b, GATE)
    latency, throughput = only(result, "latency"), only(result, "throughput")
    assert latency.verdict == "regressed" and latency.change_text() == "×2"
    assert latency.estimate == pytest.approx(math.log(2))
    assert throughput.verdict == "improved" and throughput.estimate == pytest.approx(-math.log(2))


def test_a_timing_taken_under_load_is_not_judged(tmp_path):
    result = compare(results(tmp_path, "a"), results(tmp_path, "b", latency=20.0, busy=True), GATE)
    assert only(result, "latency").verdict == "under load" and result.exit_status == 0


def test_a_candidate_that_diverged_regresses(tmp_path):
    a = results(tmp_path, "a")
    b = write(tmp_path / "b", [record("fm", "euler-8", s, BASE_W2[s], status="diverged" if s == 1 else "ok")
                               for s in SEEDS])
    result = compare(a, b, GATE)
    assert result.exit_status == 1
    assert any(c.metric == "status" and c.verdict == "regressed" for c in result.changes)


def test_what_the_candidate_changed_is_listed(tmp_path):
    result = compare(results(tmp_path, "a"), results(tmp_path, "b", steps=500), GATE)
    assert any("spec.budget.train.steps: 1000 → 500" in d for d in result.differences)


# the command ------------------------------------------------------------------------------

def test_cli_exit_statuses_and_outputs(tmp_path, capsys):
    a = results(tmp_path, "a")
    assert main(["compare", str(a), str(results(tmp_path, "same"))]) == 0
    assert "## flowgauge compare: PASS (exit 0)" in capsys.readouterr().out
    worse = results(tmp_path, "worse", {s: v * 1.3 for s, v in BASE_W2.items()})
    assert main(["compare", str(a), str(worse), "--format", "json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["outcome"] == "REGRESSED" and document["counts"]["regressed"] == 1
    # a tolerance from the command line beats the default (1 % for quality)
    assert main(["compare", str(a), str(worse), "--tolerance", "w2=50%", "--timings", "skip"]) == 0
    capsys.readouterr()
    assert main(["compare", str(a), str(tmp_path / "nowhere")]) == 2
    assert "no records folder" in capsys.readouterr().err
    assert main(["compare", str(a), str(worse), "--tolerance", "w2=lots"]) == 2
    assert "--tolerance 'w2=lots'" in capsys.readouterr().err


def test_cli_html_escapes_spec_strings(tmp_path):
    evil = [record("<script>x</script>", "euler-8", s, BASE_W2[s] * 2) for s in SEEDS]
    b = write(tmp_path / "b", [record("fm", "euler-8", s, BASE_W2[s]) for s in SEEDS] + evil)
    a2 = write(tmp_path / "a2", [record("fm", "euler-8", s, BASE_W2[s]) for s in SEEDS] + copy.deepcopy(evil))
    out = tmp_path / "cmp.html"
    assert main(["compare", str(a2), str(b), "--html", str(out)]) == 0
    page = out.read_text()
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page


def test_noise_file_is_checked(tmp_path):
    bad = tmp_path / "noise.json"
    bad.write_text('{"format": "something else"}')
    from harness.errors import SpecError

    with pytest.raises(SpecError, match="not a flowgauge noise file"):
        read_noise(bad)


# A/A noise ---------------------------------------------------------------------------------

def test_noise_is_the_rms_of_differences_between_repeats(tmp_path):
    values = [0.40, 0.42, 0.41]
    latencies = [5.0, 10.0, 5.0]
    dirs = [write(tmp_path / f"r{i}", [record("fm", "euler-8", 0, v, latency=lat)])
            for i, (v, lat) in enumerate(zip(values, latencies))]
    document = measure_noise(dirs)
    pairs = [(0, 1), (0, 2), (1, 2)]
    rel = [(values[i] - values[j]) / ((values[i] + values[j]) / 2) for i, j in pairs]
    logs = [math.log(latencies[i] / latencies[j]) for i, j in pairs]
    assert document["metrics"]["w2"]["noise"] == pytest.approx(math.sqrt(sum(d * d for d in rel) / 3))
    assert document["metrics"]["latency"]["noise"] == pytest.approx(math.sqrt(sum(d * d for d in logs) / 3))
    assert document["metrics"]["latency"]["max"] == pytest.approx(math.log(2))
    assert document["runs"] == 1 and document["repeats"] == 3


# machine load -----------------------------------------------------------------------------

def test_other_load_subtracts_this_process(monkeypatch):
    ticks = iter([(1000, 50), (1000 + 150, 50 + 100)])  # the machine +150 ticks, this process +100
    monkeypatch.setattr(OtherLoad, "_read", staticmethod(lambda: next(ticks)))
    monkeypatch.setattr("harness.measure._TICK_S", 0.01)
    load = OtherLoad().start()
    load._t0 -= 1.0  # one second of wall time
    load.stop()
    assert load.cores == pytest.approx(0.5, rel=0.01)
    assert load.as_dict()["busy"] is (0.5 > BUSY_CORES)


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs /proc/stat (Linux)")
def test_other_load_sees_a_busy_process():
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.3)  # let it start
        with OtherLoad() as load:
            time.sleep(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    assert load.cores is not None and load.cores > 0.3, load.as_dict()
    assert load.window_s == pytest.approx(1.0, abs=0.2)


@pytest.mark.slow
def test_calibrate_runs_the_suite_again_and_an_unchanged_rerun_passes(tmp_path, capsys):
    suite = tmp_path / "tiny.yaml"
    suite.write_text("name: tiny\nhardware: {name: cpu-1thread, extends: cpu, threads: 1}\nseeds: [0, 1]\n"
                     "budget: {train: {steps: 30}, eval: {num_samples: 200, repeats: 3}}\n"
                     "datasets: [moons]\nmethods: [icfm]\nsamplers: [euler-2]\nmetrics: [w2, nfe, latency]\n")
    out = tmp_path / "base"
    assert main(["calibrate", str(suite), "--repeats", "2", "--results", str(out), "--no-progress"]) == 0
    noise = read_noise(out / "noise.json")
    assert noise["repeats"] == 2 and noise["runs"] == 2
    assert noise["metrics"]["w2"]["noise"] == 0.0  # same seeds, same numbers: the CPU run is deterministic
    assert noise["metrics"]["latency"]["kind"].startswith("timing")
    assert [c["exit_status"] for c in noise["self_check"]] == [0]
    assert (out / "calibration" / "repeat-2" / "records").is_dir()
    assert "A/A noise over 2 repeats of 2 runs" in capsys.readouterr().out
    # the repeat, compared with the baseline through the command, passes with the noise file found
    assert main(["compare", str(out), str(out / "calibration" / "repeat-2")]) == 0
    assert f"from `{out / 'noise.json'}`" in capsys.readouterr().out


def test_other_seeds_are_compared_unpaired_with_welch(tmp_path):
    """A candidate that ran seeds 3-5 where the baseline ran 0-2: nothing to pair, so the two
    means are compared with Welch's t; a timing is not compared without pairs."""
    import statistics

    from harness.statistics import mean_difference, summarize

    a = results(tmp_path, "a")
    worse = {3: 0.55, 4: 0.58, 5: 0.56}
    b = write(tmp_path / "b", [record("fm", "euler-8", s, v) for s, v in worse.items()])
    result = compare(a, b, GATE)
    assert result.problems == [] and result.new_runs == [] and result.exit_status == 1
    change = only(result, "w2")
    assert change.verdict == "regressed" and change.note == "unpaired seeds"
    assert change.estimate == pytest.approx(statistics.mean(worse.values()) - statistics.mean(BASE_W2.values()))
    base = summarize(list(BASE_W2.values()))
    expected = mean_difference(summarize(list(worse.values())), base.mean, base.std, base.n)
    assert (change.interval.low, change.interval.high) == pytest.approx((expected.low, expected.high))
    assert change.interval.test.startswith("Welch t")
    assert not [c for c in result.changes if c.metric == "latency"]
    same = write(tmp_path / "c", [record("fm", "euler-8", s + 3, BASE_W2[s]) for s in SEEDS])
    assert compare(a, same, GATE).exit_status == 0
