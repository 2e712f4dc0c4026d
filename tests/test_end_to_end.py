"""Tiny suites end to end: records, leaderboard, determinism, resume, budgets, divergence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.leaderboard import leaderboard
from harness.plan import make_plan
from harness.resolve import load_suite
from harness.results import read_records
from harness.runner import Runner
from tests.conftest import SPECS, TINY, run_cli, run_cli_process, write

TINY_SUITE = """name: tiny
hardware: cpu
seeds: [0]
budget:
  train: {steps: 40, log_every: 10}
  eval: {num_samples: 256, warmup: 0, repeats: 2}
datasets: [moons]
methods: [icfm, rectified-flow]
samplers: [euler-1, heun-8, dopri5]
metrics: [w2, mmd, nfe, steps, latency, throughput, peak_memory, memory_added, train_time]
"""


def _run(tmp_path: Path, suite_text: str = TINY_SUITE, overrides: list[str] | None = None, name: str = "out"):
    suite_path = write(tmp_path / "suite.yaml", suite_text)
    suite = load_suite(str(suite_path), overrides, root=SPECS)
    out = tmp_path / name
    summary = Runner(out, progress=False).run(make_plan(suite))
    return out, summary


def test_cli_tiny_suite_writes_records_and_prints_the_leaderboard(tmp_path):
    out = tmp_path / "results"  # as a user runs it: a process of its own
    result = run_cli_process("run", "quickstart", "--results", str(out), "--no-progress",
                             "--set", "datasets=[moons]", *sum((["--set", t] for t in TINY), []))
    assert result.returncode == 0, result.stderr
    records = read_records(out)
    assert len(records) == 3 * 4  # methods x samplers
    assert {r["status"] for r in records} == {"ok"}
    assert "### moons" in result.stdout and "w2 ↓" in result.stdout and "latency (ms) ↓" in result.stdout
    assert "rectified-flow" in result.stdout and "dopri5" in result.stdout
    record = records[0]
    for field in ("key", "train_key", "spec", "environment", "seed", "metrics", "measurements", "train", "status"):
        assert field in record
    env = record["environment"]
    for field in ("torch", "python", "device", "cpu", "threads", "git_commit", "git_dirty"):
        assert field in env
    assert record["spec"]["budget"]["train"]["steps"] == 40
    # 2-D data: a subset of the source points, their samples and reference points is kept
    import numpy as np

    with np.load(out / record["artefacts"]["points"]) as points:
        assert {k: points[k].shape for k in points} == {k: (256, 2) for k in ("source", "samples", "reference")}
        assert points["samples"].dtype == np.float32 and np.isfinite(points["samples"]).all()
    # leaderboard command on the same directory renders every format
    for fmt, marker in (("markdown", "| method "), ("latex", r"\toprule"), ("html", "<table>"), ("csv", "dataset,rank")):
        board = run_cli("leaderboard", str(out), "--format", fmt)
        assert board.returncode == 0 and marker in board.stdout, board.stderr


def test_same_spec_and_seed_give_identical_metrics(tmp_path):
    a, _ = _run(tmp_path, name="a")
    b, _ = _run(tmp_path, name="b")
    ra = {r["key"]: r for r in read_records(a)}
    rb = {r["key"]: r for r in read_records(b)}
    assert ra.keys() == rb.keys()
    for key in ra:
        for metric in ("w2", "mmd", "nfe", "steps"):
            assert ra[key]["metrics"][metric] == rb[key]["metrics"][metric], (key, metric)
        assert ra[key]["train"]["loss_curve"] == rb[key]["train"]["loss_curve"]


def test_nfe_and_steps_per_sampler_are_counted(tmp_path):
    out, _ = _run(tmp_path)
    by_sampler = {r["sampler"]: r for r in read_records(out) if r["method"] == "icfm"}
    assert by_sampler["euler-1"]["metrics"]["nfe"] == 1 and by_sampler["euler-1"]["metrics"]["steps"] == 1
    assert by_sampler["heun-8"]["metrics"]["nfe"] == 16 and by_sampler["heun-8"]["metrics"]["steps"] == 8
    m = by_sampler["dopri5"]["measurements"]
    assert m["nfe"] == 2 + 6 * (m["steps"] + m["rejected_steps"])
    lat = by_sampler["heun-8"]["measurements"]["latency"]
    assert lat["repeats"] == 2 and lat["min"] <= lat["median"] <= lat["max"]
    for record in by_sampler.values():  # sampling 256 points adds little to a process holding torch
        metrics = record["metrics"]
        assert 0 <= metrics["memory_added"] < 0.25 * metrics["peak_memory"], metrics
        assert metrics["memory_added"] == record["measurements"]["memory"]["peak_above_start_mib"]


def test_resume_keeps_finished_records_and_reuses_the_model(tmp_path):
    out, first = _run(tmp_path)
    assert first.counts == {"ok": 6}
    _, again = _run(tmp_path)
    assert again.counts == {"cached": 6}
    victim = next(p for p in (out / "records").glob("*heun-8*"))
    victim.unlink()
    _, third = _run(tmp_path)
    assert third.counts == {"cached": 5, "ok": 1}
    redone = json.loads(victim.read_text())
    assert redone["train"]["reused"] is True


def test_adding_a_sampler_reuses_trained_models(tmp_path):
    out, _ = _run(tmp_path)
    _, more = _run(tmp_path, TINY_SUITE.replace("dopri5]", "dopri5, euler-8]"))
    assert more.counts == {"cached": 6, "ok": 2}
    new = [r for r in read_records(out) if r["sampler"] == "euler-8"]
    assert all(r["train"]["reused"] for r in new)


@pytest.mark.parametrize("train, stopped_by, steps", [
    ("{samples: 1000}", "samples", 4),      # batch 256: ceil(1000 / 256)
    ("{steps: 7, samples: 100000}", "steps", 7),
    ("{seconds: 0.3, steps: 100000000}", "seconds", None),
])
def test_budget_stops_at_the_first_limit(tmp_path, monkeypatch, train, stopped_by, steps):
    if stopped_by == "seconds":
        # The training loop's clock advances 1 ms per reading: a step costs a steady few
        # ms of that time, whatever this shared machine is doing (it once stalled 0.5 s
        # inside a step, and a test on the real clock then failed).
        import types

        import harness.training

        ticks = iter(range(10**9))
        monkeypatch.setattr(harness.training, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks) * 1e-3))
    out, _ = _run(tmp_path, TINY_SUITE.replace("{steps: 40, log_every: 10}", train)
                  .replace("[icfm, rectified-flow]", "[icfm]").replace("[euler-1, heun-8, dopri5]", "[euler-1]"))
    (record,) = read_records(out)
    assert record["train"]["stopped_by"] == stopped_by
    if steps is not None:
        assert record["train"]["steps"] == steps
    else:
        train = record["train"]  # stops before a step that the mean step time says would overrun
        step_s = train["train_s"] / (train["steps"] - 1)
        assert 0.3 - 2 * step_s <= train["wall_s"] <= 0.3 and train["steps"] > 50


def test_epoch_budget_over_a_fixed_train_split(tmp_path):
    text = TINY_SUITE.replace("datasets: [moons]", "datasets:\n  - {name: moons-512, extends: moons, params: {train_size: 512}}")
    out, _ = _run(tmp_path, text.replace("{steps: 40, log_every: 10}", "{epochs: 2}")
                  .replace("[icfm, rectified-flow]", "[icfm]").replace("[euler-1, heun-8, dopri5]", "[euler-1]"))
    (record,) = read_records(out)
    assert record["train"]["stopped_by"] == "epochs" and record["train"]["steps"] == 4  # 2 * 512 / 256


def test_diverged_run_is_recorded_and_the_suite_goes_on(tmp_path):
    out, summary = _run(tmp_path, overrides=["methods.icfm.optimizer.lr=1e30"])
    assert summary.counts == {"diverged": 3, "ok": 3}
    records = read_records(out)
    diverged = [r for r in records if r["status"] == "diverged"]
    assert {r["method"] for r in diverged} == {"icfm"}
    assert diverged[0]["train"]["stopped_by"] == "non-finite loss"
    board = leaderboard(out)
    assert "diverged" in board


def test_a_cuda_suite_on_a_machine_without_cuda_is_refused_before_running(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "results"
    result = run_cli("run", "quickstart", "--results", str(out), "--no-progress", "--set", "hardware=cuda")
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.strip().splitlines()[-1] == (
        "error: quickstart: hardware 'cuda' asks for device cuda, and this machine has none "
        "(torch.cuda.is_available() is False); use --set hardware=cpu")


def test_a_failed_run_is_recorded_and_shown_on_the_terminal(tmp_path, monkeypatch):
    from harness import unit as runner

    def broken(*args, **kwargs):
        raise RuntimeError("boom in the evaluation")

    monkeypatch.setattr(runner, "evaluate", broken)
    out = tmp_path / "results"
    result = run_cli("run", "quickstart", "--results", str(out), "--no-progress", "--set", "datasets=[moons]",
                     "--set", "methods=[icfm]", "--set", "samplers=[euler-1]", *sum((["--set", t] for t in TINY), []))
    assert result.returncode == 1
    (record,) = read_records(out)
    assert record["status"] == "failed" and "RuntimeError: boom in the evaluation" in record["error"]
    lines = result.stderr.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("failed: moons/icfm/euler-1/seed0: "))
    assert "RuntimeError: boom in the evaluation at " in lines[i] and "test_end_to_end.py:" in lines[i]
    assert lines[i + 1].strip() == f"record: {out / 'records' / ('moons__icfm__euler-1__seed0__' + record['key'] + '.json')}"


def test_the_set_example_of_run_help_works(tmp_path):
    import re

    from harness.cli import _parser

    text = _parser()._subparsers._group_actions[0].choices["run"].format_help()
    examples = re.findall(r"(\S+\.\S+=\S+)", " ".join(text.split()))
    assert len(examples) >= 2
    for example in examples:
        result = run_cli("run", "quickstart", "--set", example, "--dry-run", "--results", str(tmp_path / "x"))
        assert result.returncode == 0, (example, result.stderr)


def test_hardware_fields_are_honoured_and_recorded(tmp_path):
    text = (TINY_SUITE.replace("hardware: cpu", "hardware: {name: cpu64, extends: cpu, dtype: float64, threads: 1}")
            .replace("[icfm, rectified-flow]", "[icfm]").replace("[euler-1, heun-8, dopri5]", "[heun-8]"))
    import torch

    threads = torch.get_num_threads()
    try:
        out, summary = _run(tmp_path, text)
    finally:
        torch.set_num_threads(threads)
    assert summary.counts == {"ok": 1}
    (record,) = read_records(out)
    assert record["environment"]["threads"] == 1
    assert record["spec"]["hardware"]["dtype"] == "float64"
    assert record["environment"]["deterministic_algorithms"] is True
    assert record["metrics"]["w2"] > 0


def test_torch_compile_path_on_cpu(tmp_path):
    text = (TINY_SUITE.replace("hardware: cpu", "hardware: {name: cpu-compiled, extends: cpu, compile: true}")
            .replace("{steps: 40, log_every: 10}", "{steps: 5}")
            .replace("[icfm, rectified-flow]", "[icfm]").replace("[euler-1, heun-8, dopri5]", "[euler-8]"))
    out, summary = _run(tmp_path, text)
    assert summary.counts == {"ok": 1}
    (record,) = read_records(out)
    assert record["spec"]["hardware"]["compile"] is True
    # compilation lands in the first step and the first sampling call, not in the timings
    assert record["train"]["first_step_s"] > record["train"]["train_s"] / 4
    assert record["measurements"]["first_call_s"] > record["measurements"]["latency"]["median"]


def test_record_keys_ignore_descriptions_and_rekey_restores_old_records(tmp_path):
    out, _ = _run(tmp_path)
    described = ["methods.icfm.description=reworded", "samplers.heun-8.description=reworded"]
    _, again = _run(tmp_path, overrides=described)
    assert again.counts == {"cached": 6}  # descriptions are not part of any key
    # Records written under an older key scheme: rekey finds them again from their contents.
    for path in (out / "records").glob("*.json"):
        record = json.loads(path.read_text())
        path.unlink()
        old = record["key"][::-1]
        (out / "records" / path.name.replace(record["key"], old)).write_text(json.dumps({**record, "key": old}))
    result = run_cli("rekey", str(out))
    assert result.returncode == 0 and "6 record(s) re-keyed" in result.stdout, result.stderr
    _, resumed = _run(tmp_path)
    assert resumed.counts == {"cached": 6}
    assert len(list((out / "records").glob("*.json"))) == 6
    assert run_cli("rekey", str(tmp_path / "nowhere")).returncode == 2


def test_records_the_suite_no_longer_produces_are_left_out_shown_apart_and_pruned(tmp_path):
    """A rerun with other settings into the same folder: the table shows the suite as it was
    last run (one configuration, its own seed count), notes what it left out, ``--all``
    shows the older configuration in a row of its own, labelled by what differs."""
    out = tmp_path / "r"
    base = ["run", "quickstart", "--results", str(out), "--no-progress", "--set", "datasets=[moons]",
            "--set", "methods=[icfm]", "--set", "samplers=[euler-1]", "--set", "metrics=[w2]",
            *sum((["--set", t] for t in TINY), [])]
    first = run_cli(*base)
    assert first.returncode == 0
    changed = run_cli(*base, "--set", "methods.icfm.optimizer.lr=0.02")  # a new training, a new record
    assert changed.returncode == 0
    assert len(list((out / "records").glob("*.json"))) == 2
    (old_row,) = [line for line in first.stdout.splitlines() if "| icfm " in line]
    (new_row,) = [line for line in changed.stdout.splitlines() if "| icfm " in line]
    assert new_row != old_row and new_row.split("|")[4].strip() == "1"  # one seed, one lr: not a mean over both
    assert "Left out: 1 record(s)" in changed.stdout and "--all" in changed.stdout and "--prune" in changed.stdout
    fresh = run_cli(*[a if a != str(out) else str(tmp_path / "fresh") for a in base],
                    "--set", "methods.icfm.optimizer.lr=0.02")
    assert [line for line in fresh.stdout.splitlines() if "| icfm " in line] == [new_row]
    both = run_cli("leaderboard", str(out), "--all", "--format", "csv").stdout.splitlines()
    assert [line.split(",")[2] for line in both[1:]] == sorted(
        ["icfm [method.optimizer.lr=0.001]", "icfm [method.optimizer.lr=0.02]"],
        key=lambda label: [line for line in both if label in line][0].split(",")[1])
    assert all(line.split(",")[4] == "1" for line in both[1:])  # each row one seed
    pruned = run_cli(*base, "--set", "methods.icfm.optimizer.lr=0.02", "--prune")
    assert pruned.returncode == 0 and "pruned 1 record(s)" in pruned.stderr
    (record,) = read_records(out)
    assert record["spec"]["method"]["optimizer"]["lr"] == 0.02

def _tamper_code(out: Path) -> Path:
    """Make the one record of ``out`` look made by other code (flow_matching.py differed)."""
    from harness.plan import record_key, training_key_of

    (path,) = (out / "records").glob("*.json")
    record = json.loads(path.read_text())
    record["spec"]["code"]["train"] = "0" * 16
    record["code_modules"]["implementations.flow_matching"] = "0" * 16
    record["train_key"] = training_key_of(record["spec"], "0" * 16)
    record["key"] = record_key(record["train_key"], record["spec"])
    path.unlink()
    new = path.with_name(path.name.rsplit("__", 1)[0] + f"__{record['key']}.json")
    new.write_text(json.dumps(record))
    return new


def test_changed_code_retrains_rerun_forces_it_and_accept_code_keeps_a_refactor(tmp_path):
    out = tmp_path / "r"
    base = ["run", "quickstart", "--results", str(out), "--no-progress", "--set", "datasets=[moons]",
            "--set", "methods=[icfm]", "--set", "samplers=[euler-1]", "--set", "metrics=[w2]",
            *sum((["--set", t] for t in TINY), [])]
    first = run_cli(*base)
    assert first.returncode == 0 and "1 ok;" in first.stderr
    assert "1 cached;" in run_cli(*base).stderr
    rerun = run_cli(*base, "--rerun")  # forced: trains and evaluates again, to the same numbers
    assert rerun.returncode == 0 and "1 ok;" in rerun.stderr and rerun.stdout == first.stdout
    (record,) = read_records(out)
    assert record["spec"]["code"]["train"] and "implementations.flow_matching" in record["code_modules"]

    _tamper_code(out)  # records of other code are not served as this code's numbers
    retrained = run_cli(*base)
    assert "1 ok;" in retrained.stderr and "Left out: 1 record(s)" in retrained.stdout
    both = run_cli("leaderboard", str(out), "--all", "--format", "csv").stdout
    assert "icfm [code.train=0000000000000000]" in both

    run_cli(*base, "--prune")
    _tamper_code(out)  # ... unless the change is declared not to alter numbers
    accepted = run_cli("rekey", str(out), "--accept-code")
    assert accepted.returncode == 0 and "1 record(s) re-keyed" in accepted.stdout
    assert "1 cached;" in run_cli(*base).stderr
    (record,) = read_records(out)
    (note,) = record["code_accepted"]
    assert note["from"]["train"] == "0" * 16 and note["modules"] == ["implementations.flow_matching"]
    assert note["note"] is None
