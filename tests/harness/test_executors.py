"""Executors: worker processes give the same records as the inline runner, respect the
teacher -> student order, and stop cleanly on Ctrl-C so that a rerun resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.leaderboard import leaderboard
from harness.plan import make_plan
from harness.resolve import load_suite
from harness.results import read_records
from harness.runner import Runner
from tests.conftest import PROJECT, SPECS
from tests.processes import alive, workers

CHAIN = ["budget.train.steps=30", "budget.eval.num_samples=200", "budget.eval.repeats=1", "seeds=[0, 1]",
         "methods.1-rectified-flow.batch_size=64", "methods.2-rectified-flow.batch_size=64",
         "methods.2-rectified-flow-distilled.batch_size=64", "methods.2-rectified-flow.teacher.num_pairs=300",
         "methods.2-rectified-flow-distilled.teacher.num_pairs=300", "samplers=[euler-1, euler-100]"]


def test_a_student_waits_for_its_teacher_and_only_for_it():
    """The scheduling rule on its own (the process test below would see a wrong order only
    when timing lets a student reach a free worker before its teacher ends)."""
    from harness.executors import ready

    plan = make_plan(load_suite("rectified-flow-toy", CHAIN, root=SPECS))
    keys = {job.key for job in plan.trainings}
    distilled = next(j for j in plan.trainings if j.teacher is not None and j.teacher.teacher is not None)
    reflow, first = distilled.teacher, distilled.teacher.teacher
    assert ready(first, keys, set())
    assert not ready(reflow, keys, set()) and not ready(reflow, keys, {distilled.key})
    assert ready(reflow, keys, {first.key})
    assert not ready(distilled, keys, {first.key}) and ready(distilled, keys, {first.key, reflow.key})
    assert ready(distilled, keys - {reflow.key}, set())  # a teacher trained earlier, not in this run


def test_worker_processes_match_the_inline_runner_and_keep_teachers_first(tmp_path):
    plan = make_plan(load_suite("rectified-flow-toy", CHAIN, root=SPECS))
    assert len(plan.trainings) == 6  # a 1-RF -> 2-RF -> distilled chain per seed
    inline = Runner(tmp_path / "inline", progress=False).run(plan)
    parallel = Runner(tmp_path / "parallel", progress=False).run(plan, workers=3)
    assert inline.counts == parallel.counts == {"ok": 12}
    a = {r["key"]: r for r in read_records(tmp_path / "inline")}
    b = {r["key"]: r for r in read_records(tmp_path / "parallel")}
    assert a.keys() == b.keys()
    for key, record in a.items():
        for metric in ("w2", "straightness", "nfe"):
            assert record["metrics"][metric] == b[key]["metrics"][metric], (record["method"], metric)
        assert record["environment"]["concurrent_runs"] == 1
        assert b[key]["environment"]["concurrent_runs"] == 3
    # Every student found its teacher's model: the pairs it trained on were generated, once.
    students = [r for r in b.values() if r["method"] != "1-rectified-flow"]
    assert students and all(r["train"]["teacher_pairs"]["num_pairs"] == 300 for r in students)
    assert len(list((tmp_path / "parallel" / "pairs").glob("*.pt"))) == 4  # 2 teachers x 2 seeds
    # Tables warn that timings were taken side by side.
    assert "sharing the machine" in leaderboard(tmp_path / "parallel")
    assert "sharing the machine" not in leaderboard(tmp_path / "inline")
    # A rerun with workers finds everything done.
    assert Runner(tmp_path / "parallel", progress=False).run(plan, workers=3).counts == {"cached": 12}


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_stops_the_suite_and_a_rerun_resumes(tmp_path, workers):
    # 400 steps a run: the other runs are still going when the first record appears
    out = tmp_path / "r"
    args = [sys.executable, "-m", "harness.cli", "run", "quickstart", "--results", str(out), "--no-progress",
            "--workers", workers, "--set", "budget.train.steps=400", "--set", "budget.eval.num_samples=256",
            "--set", "budget.eval.repeats=1", "--set", "samplers=[euler-1]", "--set", "datasets=[moons]",
            "--set", "methods=[icfm, rectified-flow, fm-vp]", "--set", "metrics=[w2]"]  # three cheap runs
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    # SIGINT as a terminal delivers it, even when pytest itself runs as a background job
    # (which starts with SIGINT ignored, an ignore its children inherit)
    proc = subprocess.Popen(args, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while not list(out.glob("records/*.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no record written in time"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: to the whole group
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "finished records are kept" in stderr and "Traceback" not in stderr
    records = read_records(out)  # every final file is whole (a partial one would not parse)
    assert 1 <= len(records) < 3 and all(r["status"] == "ok" for r in records)
    for model in out.glob("models/*.pt"):
        torch.load(model, weights_only=True)
    rerun = subprocess.run(args, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(records)} cached" in rerun.stderr and f"{3 - len(records)} ok" in rerun.stderr
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def _start_with_two_workers(args: list[str], env: dict) -> subprocess.Popen:
    """Start a ``--workers 2`` run and return once both of its workers are alive."""
    proc = subprocess.Popen(args, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(workers(proc.pid)) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.2)
    return proc


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_their_driver(tmp_path, how):
    """A driver killed (SIGKILL: no chance to clean up) or terminated leaves no worker
    behind to race a resumed run; SIGTERM stops the run like Ctrl-C, with a message."""
    out = tmp_path / "r"
    args = [sys.executable, "-m", "harness.cli", "run", "quickstart", "--results", str(out), "--no-progress",
            "--workers", "2", "--set", "budget.train.steps=100000", "--set", "samplers=[euler-1]"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    proc = _start_with_two_workers(args, env)
    time.sleep(3)  # let them import torch and start training
    live = workers(proc.pid)
    assert len(live) == 2
    proc.send_signal(how)
    _, stderr = proc.communicate(timeout=60)
    if how == signal.SIGTERM:
        assert proc.returncode == 143 and "terminated (SIGTERM); finished records are kept" in stderr, stderr
        assert "Traceback" not in stderr
    deadline = time.monotonic() + 20
    while any(alive(w) for w in live):
        assert time.monotonic() < deadline, f"orphaned workers: {[w for w in live if alive(w)]}"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_worker_killed_by_the_system_fails_its_unit_and_the_suite_goes_on(tmp_path):
    """What the OOM killer does: SIGKILL one worker. Its unit is recorded failed with the
    cause, the other units finish ok, the run exits 1, and a rerun redoes only that unit."""
    out = tmp_path / "r"
    args = [sys.executable, "-m", "harness.cli", "run", "quickstart", "--results", str(out), "--no-progress",
            "--workers", "2", "--set", "budget.train.steps=1500", "--set", "budget.eval.num_samples=256",
            "--set", "budget.eval.repeats=1", "--set", "samplers=[euler-1]", "--set", "datasets=[moons]",
            "--set", "methods=[icfm, rectified-flow, fm-vp]", "--set", "metrics=[w2]"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    proc = _start_with_two_workers(args, env)
    time.sleep(2)
    victim = min(workers(proc.pid))
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    records = read_records(out)
    failed = [r for r in records if r["status"] == "failed"]
    assert len(records) == 3 and len(failed) == 1, [(r["method"], r["status"]) for r in records]
    assert "killed by SIGKILL (the system may have run out of memory)" in failed[0]["error"]
    rerun = subprocess.run(args, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "2 cached, 1 ok" in rerun.stderr, rerun.stderr
