"""A null ``hardware.threads`` becomes the run's own choice (harness.threads)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from harness.threads import choose_threads


def hardware(threads=None, device="cpu", prefetch_workers=2):
    return SimpleNamespace(threads=threads, device=device, prefetch_workers=prefetch_workers)


PAIRING = SimpleNamespace(prepare=lambda batch, gen: batch, prefetch=True)  # exact OT, Sinkhorn
PLAIN = SimpleNamespace()  # independent pairs: nothing prepared beside the step


@pytest.mark.parametrize(("cores", "concurrency", "method", "expected"), [
    (2, 1, PLAIN, 2),     # alone, nothing beside it: every core
    (2, 1, PAIRING, 1),   # two pairing threads on two cores: one torch thread, never zero
    (8, 1, PAIRING, 6),
    (8, 2, PLAIN, 4),     # two runs share the machine: half each
    (2, 2, PLAIN, 1),
    (3, 4, PLAIN, 1),     # more runs than cores: still one
])
def test_threads_follow_cores_runs_and_pairing(cores, concurrency, method, expected, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads, why = choose_threads(hardware(), method, concurrency, cores=cores)
    assert threads == expected
    assert why.startswith("auto:") and why.endswith(f"-> {expected}")


def test_a_set_number_is_kept_and_cuda_keeps_torch_default():
    assert choose_threads(hardware(threads=3), PAIRING, 4, cores=2) == (3, "set by hardware.threads")
    assert choose_threads(hardware(device="cuda"), PAIRING, 1, cores=2)[0] is None


def test_pairing_without_prefetch_workers_costs_no_thread(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads(hardware(prefetch_workers=0), PAIRING, 1, cores=2)[0] == 2


def test_omp_num_threads_caps_the_choice(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads, why = choose_threads(hardware(), PLAIN, 1, cores=8)
    assert threads == 1 and "OMP_NUM_THREADS=1" in why
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert choose_threads(hardware(), PLAIN, 1, cores=8)[0] == 8


@pytest.mark.slow
def test_records_say_how_threads_were_chosen(tmp_path):
    from tests.conftest import run_cli

    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nhardware: cpu\nbudget: {train: {steps: 5}, eval: {num_samples: 50}}\n"
                     "datasets: [moons]\nmethods: [otcfm]\nsamplers: [euler-1]\nmetrics: [w2]\n")
    assert run_cli("run", str(suite), "--results", str(tmp_path / "r"), "--no-progress").returncode == 0
    import json

    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "r" / "records").glob("*.json")]
    assert record["environment"]["threads_choice"].startswith("auto:")
    assert "pairing" in record["environment"]["threads_choice"]


# the default executor ---------------------------------------------------------------------

SUITE = ("name: s\nhardware: cpu\nbudget: {train: {steps: 5}, eval: {num_samples: 50}}\n"
         "datasets: [moons]\nmethods: [icfm, rectified-flow, otcfm]\nsamplers: [euler-1]\nmetrics: [w2]\n")


@pytest.mark.parametrize(("cores", "expected"), [(2, "2 worker processes"), (8, "3 worker processes"),
                                                 (1, "(cpu), inline ->")])
def test_the_default_uses_the_cores_for_several_trainings(tmp_path, monkeypatch, cores, expected):
    from tests.conftest import run_cli

    monkeypatch.delenv("FLOWGAUGE_EXECUTOR")
    monkeypatch.setattr("harness.threads.available_cores", lambda: cores)
    (tmp_path / "s.yaml").write_text(SUITE)
    result = run_cli("run", str(tmp_path / "s.yaml"), "--results", str(tmp_path / "r"), "--dry-run")
    assert result.returncode == 0 and expected in result.stderr, result.stderr


def test_the_default_executor_can_be_set_and_is_checked(tmp_path, monkeypatch):
    from tests.conftest import run_cli

    (tmp_path / "s.yaml").write_text(SUITE)
    monkeypatch.setenv("FLOWGAUGE_EXECUTOR", "inline")
    assert "worker processes" not in run_cli("run", str(tmp_path / "s.yaml"), "--dry-run").stderr
    monkeypatch.setenv("FLOWGAUGE_EXECUTOR", "cluster")
    result = run_cli("run", str(tmp_path / "s.yaml"), "--dry-run")
    assert result.returncode == 2 and "$FLOWGAUGE_EXECUTOR='cluster'" in result.stderr


def test_auto_counts_only_trainings_with_work_and_stays_inline_off_cpu(tmp_path, monkeypatch):
    from harness.cli import auto_workers
    from harness.plan import make_plan
    from harness.resolve import load_suite

    monkeypatch.setattr("harness.threads.available_cores", lambda: 4)
    (tmp_path / "s.yaml").write_text(SUITE)
    suite = load_suite(str(tmp_path / "s.yaml"), [])
    plan = make_plan(suite)
    assert auto_workers(plan, suite.hardware, tmp_path / "none")[0] == 3
    cuda = suite.hardware.model_copy(update={"device": "cuda"})
    assert auto_workers(plan, cuda, tmp_path / "none") == (1, "inline, the default off a single CPU")
