"""The slurm executor (harness.slurm) through submitit's local jobs: the same records as an
inline run, teachers before students, a task that dies recorded as failed, evaluations
whose shards run as tasks of their own equal to one-pass ones; its options refused at the
door when wrong, and the sbatch script a real cluster would get."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

submitit = pytest.importorskip("submitit", reason="the slurm executor needs submitit (pip install 'flowgauge[slurm]')")

from harness.artefacts import ArtefactStore
from harness.building import build, configure
from harness.evaluation import evaluate, evaluate_shards
from harness.plan import make_plan
from harness.resolve import load_suite
from harness.results import read_records
from harness.runner import Runner
from harness.slurm import SlurmExecutor
from harness.spec import HardwareSpec, SlurmSpec
from tests.conftest import SPECS, run_cli, write

SUITE = """name: tiny-slurm
hardware: {name: cpu-1thread, extends: cpu, threads: 1}
seeds: [0]
budget:
  train: {steps: 30, log_every: 10}
  eval: {num_samples: 256, warmup: 0, repeats: 1}
datasets: [moons]
methods: [icfm, rectified-flow]
samplers: [euler-1, heun-8]
metrics: [w2, mmd, nfe, latency]
"""
QUALITY = ("w2", "mmd", "nfe")
CHAIN = ["budget.train.steps=30", "budget.eval.num_samples=200", "budget.eval.repeats=1", "budget.eval.warmup=0",
         "seeds=[0]", "samplers=[euler-1, euler-100]", "methods.1-rectified-flow.batch_size=64",
         "methods.2-rectified-flow.batch_size=64", "methods.2-rectified-flow-distilled.batch_size=64",
         "methods.2-rectified-flow.teacher.num_pairs=300", "methods.2-rectified-flow-distilled.teacher.num_pairs=300"]


def _plan(tmp_path: Path, overrides: list[str] | None = None, text: str = SUITE):
    return make_plan(load_suite(str(write(tmp_path / "suite.yaml", text)), overrides or [], root=SPECS))


def _local(tmp_path: Path, shard_tasks: bool = False, **options) -> SlurmExecutor:
    options.setdefault("array_parallelism", 2)
    return SlurmExecutor(SlurmSpec(**options), tmp_path / "slurm", "local", shard_tasks)


def _by_key(folder: Path) -> dict[str, dict]:
    return {r["key"]: r for r in read_records(folder)}


def _same_quality(a: dict[str, dict], b: dict[str, dict], metrics: tuple[str, ...] = QUALITY) -> None:
    assert a.keys() == b.keys() and a
    for key, record in a.items():
        assert record["status"] == b[key]["status"] == "ok"
        for metric in metrics:
            assert record["metrics"][metric] == b[key]["metrics"][metric], (record["method"], record["sampler"], metric)


# --- options --------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "expected"), [
    (["--slurm-partition", "gpu"], "--slurm-partition goes with --executor slurm or slurm-local, not inline"),
    (["--eval-shards-as-tasks", "--workers", "2"], "--eval-shards-as-tasks goes with --executor slurm"),
    (["--executor", "inline", "--workers", "2"], "--workers goes with --executor process, not inline"),
    (["--executor", "slurm-local", "--slurm-time", "99999"], "--slurm-time: must be <= 43200, got 99999"),
    (["--executor", "slurm-local", "--slurm-partition", "gpu;rm"], "--slurm-partition: 'gpu;rm' is not a Slurm"),
    (["--executor", "slurm-local", "--slurm-option", "time=10"],
     "'time' is set by the slurm executor itself; use slurm.time_min"),
    (["--executor", "slurm-local", "--slurm-option", "=x"], "--slurm-option '=x': expected KEY=VALUE"),
    (["--executor", "slurm-local", "--slurm-option", "Bad Key=1"], "is not an sbatch option name"),
    (["--executor", "slurm-local", "--slurm-option", "comment=a\x07b"], "printable value"),
    (["--executor", "slurm-local", "--slurm-mem", "nan"], "expected a positive number"),
    (["--executor", "slurm-local", "--slurm-gpus", "-1"], "expected a whole number >= 0"),
    (["--executor", "slurm-local", "--slurm-parallelism", "1000000"], "--slurm-parallelism: must be <= 100000"),
])
def test_bad_executor_options_are_refused_with_one_line(tmp_path, args, expected):
    result = run_cli("run", str(write(tmp_path / "s.yaml", SUITE)), "--dry-run", "--results", str(tmp_path / "r"),
                     *args)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr.strip().splitlines()[-1], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "r").exists()


def test_executor_slurm_without_slurm_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    result = run_cli("run", str(write(tmp_path / "s.yaml", SUITE)), "--dry-run", "--executor", "slurm")
    assert result.returncode == 2
    assert "no Slurm here (sbatch and srun not on PATH)" in result.stderr and "--executor slurm-local" in result.stderr


def test_a_bad_slurm_section_of_a_hardware_spec_names_its_line(tmp_path, spec_root):
    write(spec_root / "hardware" / "gpu-cluster.yaml", """
extends: cuda
slurm:
  partition: gpu
  time_min: 0
""")
    result = run_cli("--specs", str(spec_root), "validate", str(spec_root / "hardware" / "gpu-cluster.yaml"))
    assert result.returncode == 2
    assert "gpu-cluster.yaml:4: slurm.time_min: must be >= 1, got 0" in result.stderr, result.stderr
    write(spec_root / "hardware" / "gpu-cluster.yaml", "extends: cuda\nslurm: {additional: {mem: 4G}}\n")
    result = run_cli("--specs", str(spec_root), "validate", str(spec_root / "hardware" / "gpu-cluster.yaml"))
    assert "gpu-cluster.yaml:2: slurm: additional: 'mem' is set by the slurm executor itself; use slurm.mem_gb" \
        in result.stderr, result.stderr


def test_a_slurm_section_changes_no_key(tmp_path):
    plain = _plan(tmp_path)
    text = SUITE.replace("threads: 1}", "threads: 1, slurm: {partition: gpu, time_min: 30, additional: {qos: hi}}}")
    with_slurm = _plan(tmp_path, text=text)
    assert with_slurm.suite.hardware.slurm.partition == "gpu"
    assert [j.key for j in with_slurm.trainings] == [j.key for j in plain.trainings]
    assert with_slurm.record_keys == plain.record_keys
    assert "slurm" not in HardwareSpec(name="x", slurm={"partition": "gpu"}).model_dump()


def test_command_line_options_override_the_hardware_spec_and_reach_sbatch(tmp_path, monkeypatch):
    """What a real cluster would be sent: the sbatch script submitit writes for a task."""
    from harness.cli import _parser, _slurm_options

    args = _parser().parse_args(["run", "x", "--executor", "slurm", "--slurm-time", "240", "--slurm-gpus", "1",
                                 "--slurm-option", "account=proj", "--slurm-option", "exclusive"])
    base = SlurmSpec(partition="gpu", time_min=30, cpus_per_task=8, mem_gb=32, additional={"qos": "high"})
    options = _slurm_options(args, base)
    assert options == SlurmSpec(partition="gpu", time_min=240, gpus_per_task=1, cpus_per_task=8, mem_gb=32,
                                additional={"qos": "high", "account": "proj", "exclusive": True})
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # as if on a cluster
    executor = SlurmExecutor(options, tmp_path / "slurm", "slurm").make()
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=240", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --qos=high", "#SBATCH --account=proj",
                 "#SBATCH --exclusive", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --job-name=flowgauge"):
        assert line in script.splitlines(), (line, script)
    assert SlurmExecutor(SlurmSpec(), tmp_path, "slurm").parallelism == 256
    assert SlurmExecutor(SlurmSpec(), tmp_path, "local").parallelism == (os.cpu_count() or 1)


# --- sharded evaluation, in this process ---------------------------------------------------


def _eval_job(overrides: list[str], suite: str = "quickstart"):
    plan = make_plan(load_suite(suite, overrides, root=SPECS))
    job = plan.trainings[0]
    return plan.evals[job.key][0], build(job, configure(job.hardware))


def test_shards_saved_apart_merge_into_the_one_pass_evaluation(tmp_path):
    """Each shard sampled as a separate task would (its own call, nothing else computed),
    then the normal evaluation merges them: points and tallies exactly (W2, MMD, NFE),
    feature statistics to float64 round-off (FD, KID on digits features)."""
    moons = ["datasets=[moons]", "methods=[icfm]", "samplers=[heun-8]", "metrics=[w2, mmd, nfe]",
             "budget.eval.num_samples=300", "budget.eval.warmup=0", "budget.eval.repeats=1",
             "budget.eval.shard_size=75", "budget.eval.batch_size=40"]
    digits = ["methods=[{extends: icfm, name: icfm-digits, network: {name: mlp, width: 32}}]", "samplers=[euler-1]",
              "metrics=[fd_digits, kid_digits, nfe]", "budget.eval.num_samples=300", "budget.eval.warmup=0",
              "budget.eval.repeats=1", "budget.eval.shard_size=100"]
    for name, suite, overrides, exact, close in [
            ("moons", "quickstart", moons, QUALITY, ()),
            ("digits", "digits-quick", digits, ("nfe",), ("fd_digits", "kid_digits"))]:
        job, built = _eval_job(overrides, suite)
        status, whole, _, _ = evaluate(job, built, built.network, {})  # one pass, nothing saved
        store = ArtefactStore(tmp_path / name)
        count = job.budget.num_samples // job.budget.shard_size
        for index in reversed(range(count)):  # in any order, one call (one task) each
            evaluate_shards(job, built, built.network, {}, store, [index])
        assert sorted(p.name for p in store.path("shards", job.key).iterdir()) == [f"{i:05d}.npz" for i in range(count)]
        status, merged, measurements, _ = evaluate(job, built, built.network, {}, store)
        assert status == "ok" and measurements["shards"] == {"count": count, "size": job.budget.shard_size,
                                                              "resumed": count}
        for metric in exact:
            assert merged[metric] == whole[metric], (name, metric)
        for metric in close:
            assert merged[metric] == pytest.approx(whole[metric], rel=1e-12, abs=1e-12), (name, metric)


def test_evaluate_shards_refuses_what_is_not_a_shard(tmp_path):
    job, built = _eval_job(["datasets=[moons]", "methods=[icfm]", "samplers=[euler-1]", "metrics=[w2]",
                            "budget.eval.num_samples=100", "budget.eval.shard_size=50"])
    with pytest.raises(ValueError, match=r"shard indices \[2\] are outside 0..1"):
        evaluate_shards(job, built, built.network, {}, ArtefactStore(tmp_path), [0, 2])
    whole, _ = _eval_job(["datasets=[moons]", "methods=[icfm]", "samplers=[euler-1]", "metrics=[w2]",
                          "budget.eval.num_samples=100"])
    with pytest.raises(ValueError, match="one shard"):
        evaluate_shards(whole, built, built.network, {}, ArtefactStore(tmp_path), [0])


# --- end to end through submitit's local jobs ---------------------------------------------


@pytest.mark.slow
def test_local_jobs_give_the_inline_records(tmp_path):
    plan = _plan(tmp_path)
    inline = Runner(tmp_path / "inline", progress=False).run(plan)
    local = Runner(tmp_path / "local", progress=False).run(plan, slurm=_local(tmp_path))
    assert inline.counts == local.counts == {"ok": 4}
    a, b = _by_key(tmp_path / "inline"), _by_key(tmp_path / "local")
    _same_quality(a, b)
    assert {r["environment"]["concurrent_runs"] for r in b.values()} == {2}
    assert list((tmp_path / "slurm").glob("*/*_result.pkl"))  # submitit's own files, beside the results
    assert Runner(tmp_path / "local", progress=False).run(plan, slurm=_local(tmp_path)).counts == {"cached": 4}


@pytest.mark.slow
def test_teachers_train_before_their_students_in_local_jobs(tmp_path, monkeypatch):
    import harness.slurm

    drivers = []
    real = harness.slurm.run_in_slurm
    monkeypatch.setattr(harness.slurm, "run_in_slurm", lambda *args: drivers.append(real(*args)) or drivers[-1])
    plan = make_plan(load_suite("rectified-flow-toy", CHAIN, root=SPECS))
    assert [j.method.name for j in plan.trainings] == ["1-rectified-flow", "2-rectified-flow",
                                                       "2-rectified-flow-distilled"]
    local = Runner(tmp_path / "local", progress=False).run(plan, slurm=_local(tmp_path))
    assert local.counts == {"ok": 6}
    # one array per generation: each student submitted after its teacher's task ended
    assert [[label.split("/")[1] for _, label in array] for array in drivers[0].submitted] == [
        ["1-rectified-flow"], ["2-rectified-flow"], ["2-rectified-flow-distilled"]]
    inline = Runner(tmp_path / "inline", progress=False).run(plan)
    assert inline.counts == {"ok": 6}
    _same_quality(_by_key(tmp_path / "inline"), _by_key(tmp_path / "local"), ("w2", "straightness", "nfe"))
    students = [r for r in read_records(tmp_path / "local") if r["method"] != "1-rectified-flow"]
    assert all(r["train"]["teacher_pairs"]["num_pairs"] == 300 for r in students)


def _kill_first_task(folder: Path, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first submitit task process that works for ``folder``: what the
    out-of-memory killer or a lost node does to a job."""
    while not stop.is_set() and not killed:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes()
            except OSError:
                continue
            if b"submitit.core._submit" in text and str(folder).encode() in text:
                pid = int(cmdline.parent.name)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_a_task_that_dies_fails_its_unit_and_the_suite_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 1)  # no result will come
    plan = _plan(tmp_path, ["samplers=[euler-1]"])
    killed: list[int] = []
    stop = threading.Event()
    folder = tmp_path / "slurm"
    watcher = threading.Thread(target=_kill_first_task, args=(folder, killed, stop), daemon=True)
    watcher.start()
    try:
        summary = Runner(tmp_path / "r", progress=False).run(plan, slurm=_local(tmp_path, array_parallelism=1))
    finally:
        stop.set()
        watcher.join()
    assert killed and summary.counts == {"failed": 1, "ok": 1}
    (failed,) = [r for r in read_records(tmp_path / "r") if r["status"] == "failed"]
    assert failed["error"].startswith("WorkerDied: unit task ") and "ended without a result" in failed["error"]
    assert str(folder) in failed["error"]  # where its logs are
    again = Runner(tmp_path / "r", progress=False).run(plan, slurm=_local(tmp_path))
    assert again.counts == {"cached": 1, "ok": 1}


@pytest.mark.slow
def test_shards_as_local_jobs_merge_into_the_inline_record(tmp_path, monkeypatch):
    """An evaluation of 4 shards: a training task, 4 shard tasks, a merge task; the record
    equals the inline one (W2, MMD, NFE exactly) and says its shards were all made apart.
    A training that diverges gets no shard tasks: its task records the evaluation so."""
    import harness.slurm

    kinds: list[tuple[str, str]] = []
    real = harness.slurm.SlurmDriver._ended

    def logged(self, task):
        kinds.append((task.kind, task.state.job.method.name))
        real(self, task)

    monkeypatch.setattr(harness.slurm.SlurmDriver, "_ended", logged)
    plan = _plan(tmp_path, ["samplers=[heun-8]", "budget.eval.shard_size=64",
                            "methods.rectified-flow.optimizer.lr=1e30"])
    inline = Runner(tmp_path / "inline", progress=False).run(plan)
    local = Runner(tmp_path / "local", progress=False).run(plan, slurm=_local(tmp_path, shard_tasks=True))
    assert inline.counts == local.counts == {"ok": 1, "diverged": 1}
    assert sorted(kinds) == sorted([("unit", "icfm"), *[("shard", "icfm")] * 4, ("merge", "icfm"),
                                    ("unit", "rectified-flow")])
    assert kinds.index(("unit", "icfm")) < kinds.index(("shard", "icfm"))
    assert kinds.index(("merge", "icfm")) > max(i for i, kind in enumerate(kinds) if kind == ("shard", "icfm"))
    a, b = _by_key(tmp_path / "inline"), _by_key(tmp_path / "local")
    assert {k: r["status"] for k, r in a.items()} == {k: r["status"] for k, r in b.items()}
    ok = {k for k, r in a.items() if r["status"] == "ok"}
    _same_quality({k: a[k] for k in ok}, {k: b[k] for k in ok})
    (record,) = (b[k] for k in ok)
    assert record["measurements"]["shards"] == {"count": 4, "size": 64, "resumed": 4}
    assert not list((tmp_path / "local" / "shards").rglob("*.npz"))  # dropped once the record is written
    with np.load(tmp_path / "local" / record["artefacts"]["points"]) as points:
        assert points["samples"].shape == (256, 2)

def _tasks(folder: Path) -> set[int]:
    """Live submitit task processes working for ``folder``."""
    from tests.processes import alive

    out = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes()
        except OSError:
            continue
        if b"submitit.core._submit" in text and str(folder).encode() in text and alive(int(cmdline.parent.name)):
            out.add(int(cmdline.parent.name))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_ctrl_c_cancels_the_jobs_in_flight(tmp_path):
    """SIGINT to the driver alone (not its process group): it cancels its jobs itself,
    says that finished records are kept, and exits 130; no task goes on running."""
    import subprocess
    import sys

    from tests.conftest import PROJECT

    out = tmp_path / "r"
    args = [sys.executable, "-m", "harness.cli", "run", str(write(tmp_path / "s.yaml", SUITE)), "--results", str(out),
            "--no-progress", "--executor", "slurm-local", "--slurm-parallelism", "2",
            "--set", "budget.train.steps=1000000"]
    proc = subprocess.Popen(args, cwd=PROJECT, env={**os.environ, "PYTHONPATH": str(PROJECT)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509
    deadline = time.monotonic() + 120
    while len(tasks := _tasks(out / "slurm")) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the tasks did not start"
        time.sleep(0.2)
    time.sleep(1)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted; finished records are kept" in stderr, stderr
    assert "Traceback" not in stderr
    deadline = time.monotonic() + 30
    while _tasks(out / "slurm") & tasks:
        assert time.monotonic() < deadline, f"tasks left running: {_tasks(out / 'slurm')}"
        time.sleep(0.2)
    assert not (records := read_records(out)), [(r["status"], r["error"]) for r in records]


# --- submitit's real Slurm path, against a stand-in for Slurm's commands --------------------


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    from tests.harness.fake_slurm import install

    root = tmp_path / "fake-slurm"
    monkeypatch.setenv("PATH", f"{install(root)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(root))
    return root


@pytest.mark.slow
def test_slurm_job_arrays_give_the_inline_records(tmp_path, fake_slurm):
    """sbatch scripts, a job array of both units, ids NNNN_i, results read back."""
    plan = _plan(tmp_path)
    options = SlurmSpec(partition="gpu", time_min=30, additional={"account": "proj"})
    slurm = Runner(tmp_path / "slurm-run", progress=False).run(
        plan, slurm=SlurmExecutor(options, tmp_path / "slurm", "slurm"))
    inline = Runner(tmp_path / "inline", progress=False).run(plan)
    assert slurm.counts == inline.counts == {"ok": 4}
    _same_quality(_by_key(tmp_path / "inline"), _by_key(tmp_path / "slurm-run"))
    assert {r["environment"]["concurrent_runs"] for r in read_records(tmp_path / "slurm-run")} == {1}
    (script,) = (fake_slurm / "scripts").glob("*.sh")  # one array for the two units
    lines = script.read_text().splitlines()
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --account=proj"):
        assert line in lines, (line, lines)
    assert {"1000_0", "1000_1"} <= {p.name for p in (tmp_path / "slurm").iterdir()}  # folder/%j: job NNNN, task i


@pytest.mark.slow
def test_ctrl_c_scancels_the_slurm_jobs_in_flight(tmp_path, fake_slurm):
    import _thread

    plan = _plan(tmp_path, ["budget.train.steps=1000000"])
    folder = tmp_path / "slurm"

    def interrupt_once_running() -> None:
        deadline = time.monotonic() + 120
        while len(_tasks(folder)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        _thread.interrupt_main()  # Ctrl-C, as the driver sees it

    threading.Thread(target=interrupt_once_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        Runner(tmp_path / "r", progress=False).run(plan, slurm=SlurmExecutor(SlurmSpec(), folder, "slurm"))
    assert sorted((fake_slurm / "cancelled").read_text().split()) == ["1000_0", "1000_1"]
    deadline = time.monotonic() + 30
    while _tasks(folder):
        assert time.monotonic() < deadline, "tasks left running"
        time.sleep(0.2)
    assert not read_records(tmp_path / "r")


def test_a_cancelled_task_writes_no_failed_record(tmp_path, monkeypatch):
    """A failure after the driver's SIGINT (an import it cut short fails on its next try)
    is the cancellation's doing: no failed record, so the next run redoes the run."""
    from types import SimpleNamespace

    import harness.errors
    from harness.unit import Unit

    monkeypatch.setattr(harness.errors, "_cancelled", True)
    job = SimpleNamespace(label="moons/icfm/seed0/euler-1")
    with pytest.raises(KeyboardInterrupt, match="left for the next run"):
        Unit(tmp_path).write(job, "failed", {}, {}, {}, error="ImportError: partially initialized module")
    assert not (tmp_path / "records").exists()
