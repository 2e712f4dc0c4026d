"""Faults a long suite meets that are not in its specs: a results folder that cannot be
written (read-only, a file, a full disk), a time budget, sizes that would never finish."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from harness import results as results_module
from harness.cli import main
from harness.errors import StorageError
from harness.plan import make_plan
from harness.resolve import load_suite
from harness.results import read_records, write_json_atomic
from harness.runner import Runner
from tests.conftest import SPECS, write

SUITE = """name: tiny
seeds: [0]
budget:
  train: {steps: 20, log_every: 10}
  eval: {num_samples: 128, warmup: 0, repeats: 1}
datasets: [moons]
methods: [icfm]
samplers: [euler-1, euler-8]
metrics: [w2, nfe, train_time]
"""


def _cli(tmp_path: Path, *args: str) -> int:
    suite = write(tmp_path / "suite.yaml", SUITE)
    return main(["--specs", str(SPECS), "run", str(suite), "--no-progress", *args])


def _read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The results folder behaves as on a read-only mount: creating or opening any file
    for writing there fails with EROFS (chmod would not stop root, which CI may be)."""
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(results_module, "_open_lock", refuse)
    monkeypatch.setattr(results_module.tempfile, "mkstemp", refuse)


def test_a_read_only_results_folder_serves_a_finished_suite_and_refuses_new_work(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert _cli(tmp_path, "--results", str(out)) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    _read_only(monkeypatch)
    assert _cli(tmp_path, "--results", str(out)) == 0  # everything cached: the tables print
    captured = capsys.readouterr()
    assert "| icfm" in captured.out and "2 cached" in captured.err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    assert _cli(tmp_path, "--results", str(out), "--set", "samplers=[heun-8]") == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 2, err  # the plan line, the error
    assert "cannot be written" in err.splitlines()[-1] and "1 evaluation(s)" in err, err


def test_results_naming_a_file_is_a_one_line_error(tmp_path, capsys):
    target = write(tmp_path / "taken", "not a folder\n")
    assert _cli(tmp_path, "--results", str(target)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: --results {target}: is a file, not a folder" and len(err) == 2, err
    assert target.read_text() == "not a folder\n"


def _full_disk(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Every write_atomic after the first ``after`` goes to /dev/full: a real ENOSPC from
    the kernel, raised by whatever writer (json, torch.save, numpy) is writing."""
    real = results_module.os.fdopen
    calls = {"n": 0}

    def fdopen(fd, mode="r", *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= after:
            return real(fd, mode, *args, **kwargs)
        os.close(fd)
        return open("/dev/full", mode)  # noqa: SIM115

    monkeypatch.setattr(results_module.os, "fdopen", fdopen)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("after", [0, 1, 3])  # suite.json; the model; a record
def test_a_full_disk_stops_the_suite_with_one_line_and_keeps_what_was_written(tmp_path, monkeypatch, capsys, after):
    out = tmp_path / "out"
    _full_disk(monkeypatch, after)
    assert _cli(tmp_path, "--results", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "No space left on device" in err[-1] and "rerun to resume" in err[-1], err
    assert not any("Traceback" in line for line in err)
    assert not list(out.rglob(".*.tmp"))  # no half-written file left behind
    # no run was recorded as failed for the disk's sake; the next run resumes and finishes
    assert all(r["status"] == "ok" for r in read_records(out))
    monkeypatch.undo()
    assert _cli(tmp_path, "--results", str(out)) == 0
    assert sorted(r["sampler"] for r in read_records(out)) == ["euler-1", "euler-8"]


def test_a_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    write_json_atomic(path, {"old": 1})
    _full_disk(monkeypatch, 0)
    with pytest.raises(StorageError, match=f"cannot write {path}: No space left on device"):
        write_json_atomic(path, {"new": 2})
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_the_seconds_budget_stops_before_a_step_would_overrun_it(tmp_path, monkeypatch):
    """On a clock that every read advances by 1 ms, every step takes the same time, so the
    stop (predicted from the mean step time) is exact: the last step ends within 0.4 s and
    one more would not have. (On a real, shared machine a slow last step may pass the
    budget by a fraction of a step; before, it always ran one step past.)"""
    import time as time_module

    suite = write(tmp_path / "suite.yaml", SUITE.replace("{steps: 20, log_every: 10}", "{seconds: 0.4}"))
    now = [1000.0]

    def clock() -> float:
        now[0] += 0.001
        return now[0]

    monkeypatch.setattr(time_module, "perf_counter", clock)
    Runner(tmp_path / "a", progress=False).run(make_plan(load_suite(str(suite), ["samplers=[euler-1]"], root=SPECS)))
    monkeypatch.undo()
    (record,) = read_records(tmp_path / "a")
    train = record["train"]
    assert train["stopped_by"] == "seconds" and train["steps"] > 10
    step = train["train_s"] / (train["steps"] - 1)
    # the last step ends by 0.4 s; the clock read that closes the timing adds 1 ms
    assert 0.4 - 2 * step < train["wall_s"] <= 0.4 + 0.001 + 1e-9, train
    # a budget shorter than the first step: that one step runs, and there is no
    # steady-state training time to report (not the 0.0002 s of bookkeeping left over)
    Runner(tmp_path / "b", progress=False).run(
        make_plan(load_suite(str(suite), ["samplers=[euler-1]", "budget.train.seconds=1e-6"], root=SPECS)))
    (record,) = read_records(tmp_path / "b")
    assert record["train"]["steps"] == 1 and record["train"]["train_s"] is None
    assert record["metrics"]["train_time"] is None


@pytest.mark.parametrize("override, message", [
    ("budget.eval.num_samples=20000000", "budget.eval.num_samples: must be <= 10000000"),
    ("budget.train.steps=10000000000", "budget.train.steps: must be <= 1000000000"),
    ("budget.train.seconds=1e9", "budget.train.seconds: must be <= 2592000"),
    ("budget.eval.repeats=100000", "budget.eval.repeats: must be <= 1000"),
    ("methods.icfm.batch_size=2000000", "batch_size: must be <= 1000000"),
    ("methods.icfm.network.width=1000000", "network.width: must be <= 65536"),
    ("samplers.euler-8.params.steps=1000000", "params.steps: must be <= 100000"),
    ("samplers=[{name: d, extends: dopri5, params: {atol: 1e-300}}]", "params.atol: must be >= 1e-12"),
    ("seeds=[-1]", "seeds[0]: must be >= 0"),
    ("seeds=[" + ", ".join(map(str, range(1001))) + "]", "seeds: "),
])
def test_every_size_a_spec_sets_is_bounded(tmp_path, capsys, override, message):
    assert _cli(tmp_path, "--set", override, "--results", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_too_many_evaluations_in_one_suite_are_refused(tmp_path, capsys):
    seeds = "[" + ", ".join(map(str, range(1000))) + "]"
    assert _cli(tmp_path, "--set", f"seeds={seeds}", "--set", "samplers=[euler-1, euler-2, euler-8, heun-8, "
                "midpoint-8, rk4-8, dopri5, euler-100]", "--set", "methods=[icfm, otcfm, rectified-flow, fm-lipman, "
                "sbcfm, si-trig, fm-vp, rf-improved, rf-logit-normal, wcfm, rectified-flow-distilled, "
                "2-rectified-flow]", "--set", "datasets=[moons, checkerboard]", "--dry-run") == 2
    err = capsys.readouterr().err.strip()
    assert "192000 evaluations (seeds x datasets x methods x samplers) is more than a suite may hold (100000)" \
        in err and len(err.splitlines()) == 1, err


def test_an_adaptive_solver_that_cannot_meet_its_tolerance_gives_up(tmp_path):
    import torch

    from harness.registry import SOLVERS

    cls = SOLVERS.get("dopri5")
    solver = cls(cls.Params(atol=1e-12, rtol=1e-12, max_steps=20))
    x_0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))

    def stiff(x, t):
        return torch.sin(200.0 * t) * x * 50.0

    with pytest.raises(RuntimeError, match=r"dopri5 \(atol=1e-12, rtol=1e-12\) gave up after 20 steps"):
        solver.solve(stiff, x_0)


def test_validate_applies_set_to_a_single_spec_file(capsys):
    assert main(["validate", str(SPECS / "samplers" / "dopri5.yaml"), "--set", "params.atol=1e-300"]) == 2
    assert "--set params.atol=1e-300: params.atol: must be >= 1e-12" in capsys.readouterr().err
    assert main(["validate", str(SPECS / "samplers" / "dopri5.yaml"), "--set", "params.atol=1e-3"]) == 0


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old weights")

    def half_then_crash(f):
        f.write(b"new wei")
        raise RuntimeError("killed midway")

    with pytest.raises(RuntimeError, match="killed midway"):
        results_module.write_atomic(path, half_then_crash)
    assert path.read_bytes() == b"old weights"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_run_clears_the_temporaries_an_interrupted_run_left(tmp_path):
    out = tmp_path / "out"
    leftovers = [out / "records" / ".a.json.x1.tmp", out / "models" / ".b.pt.x2.tmp", out / "samples" / ".c.npz.x3.tmp"]
    for path in leftovers:
        write(path, "half a file")
    assert _cli(tmp_path, "--results", str(out)) == 0
    assert not any(p.exists() for p in leftovers)
    assert not list(out.rglob("*.tmp"))


def test_one_run_at_a_time_holds_a_results_folder(tmp_path):
    from harness.errors import SpecError

    out = tmp_path / "out"
    with results_module.lock_results(out) as writable:
        assert writable
        with pytest.raises(SpecError, match=rf"another flowgauge run \(pid {os.getpid()}\) is using it"):
            with results_module.lock_results(out):
                pass
    with results_module.lock_results(out):  # released with its holder
        pass


def test_failed_runs_are_retried_by_the_next_run(tmp_path, monkeypatch):
    from harness import unit as runner

    real = runner.evaluate

    def broken(*args, **kwargs):
        raise RuntimeError("a transient fault")

    monkeypatch.setattr(runner, "evaluate", broken)
    assert _cli(tmp_path, "--results", str(tmp_path / "out")) == 1
    assert {r["status"] for r in read_records(tmp_path / "out")} == {"failed"}
    monkeypatch.setattr(runner, "evaluate", real)
    assert _cli(tmp_path, "--results", str(tmp_path / "out")) == 0
    records = read_records(tmp_path / "out")
    assert len(records) == 2 and {r["status"] for r in records} == {"ok"}
    assert all(r["train"]["reused"] for r in records)  # the model trained before the fault is kept
