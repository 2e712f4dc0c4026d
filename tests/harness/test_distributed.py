"""Multi-device runs (hardware.devices > 1) on the CPU with the gloo backend and two
processes: the spec checks, the batch split, the gradient averaging proved on the
parameters it produces, the sharded evaluation's exact equality with one process, and a
suite trained and evaluated end to end."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness.building import build, configure
from harness.distributed import Group, check_devices, start
from harness.errors import SpecError
from harness.evaluation import evaluate
from harness.interfaces import Batch
from harness.plan import canonical, make_plan
from harness.resolve import load_suite
from harness.training import train
from tests.conftest import PROJECT, SPECS, run_cli, write

SUITE = """name: ddp
hardware: {name: cpu-ddp, extends: cpu, devices: DEVICES}
seeds: [0]
budget:
  train: {steps: 6, log_every: 3}
  eval: {num_samples: 300, shard_size: 100, warmup: 0, repeats: 1}
datasets: [moons]
methods: [{name: icfm-64, extends: icfm, batch_size: 64}]
samplers: [euler-8]
metrics: [w2, mmd, nfe]
"""


def _plan(tmp_path: Path, devices: int = 1, text: str = SUITE, overrides: list[str] | None = None):
    path = write(tmp_path / f"suite-{devices}.yaml", text.replace("DEVICES", str(devices)))
    return make_plan(load_suite(str(path), overrides, root=SPECS))


def _spawn(fn, hardware, *args) -> None:
    """Run ``fn(group, *args)`` in ``hardware.devices`` gloo ranks (spawned processes)."""
    rendezvous = Path(tempfile.mkdtemp(prefix="flowgauge-test-ddp-"))
    world = hardware.devices
    try:
        torch.multiprocessing.start_processes(_rank, args=(world, f"file://{rendezvous / 'store'}", hardware, fn,
                                                           args),
                                              nprocs=world, join=True, start_method="spawn")
    finally:
        shutil.rmtree(rendezvous, ignore_errors=True)


def _rank(rank: int, world: int, init_method: str, hardware, fn, args) -> None:
    import harness.metrics  # noqa: F401  registers the metrics
    import implementations  # noqa: F401  registers the methods, datasets, ...

    group = start(hardware, rank, world, init_method)
    torch.set_num_threads(1)  # as the one-process run in the test (conftest): the same float maths
    try:
        fn(group, *args)
    finally:
        torch.distributed.destroy_process_group()


# --- specs ------------------------------------------------------------------------------


def test_devices_default_leaves_every_key_unchanged(tmp_path):
    plan = _plan(tmp_path, 1, SUITE.replace(", devices: DEVICES", ""))
    assert "devices" not in canonical(plan.suite.hardware) and "backend" not in canonical(plan.suite.hardware)
    assert plan.trainings[0].key == _plan(tmp_path, 1).trainings[0].key  # devices: 1 is the default
    assert plan.trainings[0].key != _plan(tmp_path, 2).trainings[0].key  # another run: another key


def test_a_batch_the_devices_do_not_divide_is_refused_at_spec_time(tmp_path):
    with pytest.raises(SpecError) as err:
        _plan(tmp_path, 3)
    message = str(err.value)
    assert "methods[0]" in message and "batch_size 64" in message and "hardware.devices = 3" in message
    assert "suite-3.yaml" in message  # the place


def test_a_teachers_batch_is_checked_too(tmp_path):
    text = SUITE.replace("methods: [{name: icfm-64, extends: icfm, batch_size: 64}]", """methods:
  - name: student
    extends: 2-rectified-flow
    batch_size: 64
    teacher: {method: {name: teacher-30, extends: rectified-flow, batch_size: 30}, sampler: euler-8, num_pairs: 256}""")
    with pytest.raises(SpecError, match="its teacher 'teacher-30'.*batch_size 30"):
        _plan(tmp_path, 4, text)


@pytest.mark.parametrize("value, expected", [("0", r"suite-0.yaml:2: devices: must be >= 1, got 0"),
                                             ("65", r"devices: must be <= 64, got 65"), ("two", r"devices: .*'two'")])
def test_devices_is_a_bounded_integer(tmp_path, value, expected):
    with pytest.raises(SpecError, match=expected):
        _plan(tmp_path, value)  # type: ignore[arg-type]


def test_nccl_needs_cuda(tmp_path):
    with pytest.raises(SpecError, match="nccl needs device: cuda"):
        _plan(tmp_path, 2, SUITE.replace("devices: DEVICES", "devices: DEVICES, backend: nccl"))


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has two CUDA devices")
def test_cuda_devices_this_machine_lacks_are_refused_before_any_process_starts(tmp_path):
    hardware = _plan(tmp_path, 2).suite.hardware.model_copy(update={"device": "cuda"})
    with pytest.raises(RuntimeError, match=r"hardware.devices is 2 on cuda, but this machine has \d CUDA device"):
        check_devices(hardware)


def test_a_unit_on_missing_cuda_devices_fails_its_records_with_the_cause(tmp_path):
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has two CUDA devices")
    from harness.unit import Summary, Unit

    out = tmp_path / "out"
    plan = _plan(tmp_path, 2, SUITE.replace("extends: cpu,", "extends: cuda,"))
    job = plan.trainings[0]
    summary = Summary()
    Unit(out, progress=False).run(job, plan.evals[job.key], summary)  # (the CLI refuses cuda without any)
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert summary.counts == {"failed": 1} and len(records) == 1 and records[0]["status"] == "failed"
    assert "hardware.devices is 2 on cuda, but this machine has" in records[0]["error"]


# --- the batch split ----------------------------------------------------------------------


def test_each_rank_takes_an_equal_contiguous_slice_of_the_global_batch():
    x_0 = torch.arange(12.0).reshape(6, 2)
    batch = Batch(x_0=x_0, x_1=-x_0, weights=torch.arange(6.0), labels=torch.arange(6), times=torch.tensor([0.0, 1.0]))
    parts = [Group(r, 3, "gloo", torch.device("cpu")).rows(batch) for r in range(3)]
    torch.testing.assert_close(torch.cat([p.x_0 for p in parts]), x_0, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([p.weights for p in parts]), batch.weights, rtol=0, atol=0)
    assert [p.labels.tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert all(p.times is batch.times for p in parts)
    with pytest.raises(ValueError, match="7 rows does not split into 3"):
        Group(0, 3, "gloo", torch.device("cpu")).rows(Batch(x_0=torch.zeros(7, 2), x_1=torch.zeros(7, 2)))


def test_rank_0_keeps_the_one_device_method_stream():
    assert Group(0, 2, "gloo", torch.device("cpu")).method_stream == "method"
    assert Group(1, 2, "gloo", torch.device("cpu")).method_stream == "method/rank1"


# --- the gradient averaging --------------------------------------------------------------------


class Regression:
    """A method whose loss has no randomness of its own: the mean over rows of
    |v(x_0, t = 1/2) − (x_1 − x_0)|². Its update depends on the batch alone, so W ranks
    that average their slices' gradients must take the one-device step."""

    def loss(self, model, batch, generator):
        t = torch.full((len(batch.x_0),), 0.5, dtype=batch.x_0.dtype, device=batch.x_0.device)
        return ((model(batch.x_0, t) - (batch.x_1 - batch.x_0)) ** 2).sum(dim=1).mean()


def _trained(job, group=None) -> dict[str, torch.Tensor]:
    built = build(job, torch.device("cpu"))
    built = replace(built, method=Regression())
    result = train(job, built, False, group=group)
    assert result.status == "ok" and result.stats["steps"] == job.budget.steps
    return {k: v.detach().clone() for k, v in built.network.state_dict().items()}, result.stats


def _train_rank(group: Group, job, out: str) -> None:
    state, stats = _trained(job, group)
    if group.leader:
        torch.save({"state": state, "stats": stats}, out)
    else:
        torch.save({"state": state}, out + ".rank1")


@pytest.mark.slow
def test_two_ranks_take_the_one_device_steps_on_the_same_global_batches(tmp_path):
    """Adam, gradient clipping and a weight average on top, 6 steps of batch 64: the two
    ranks' weights agree with each other bitwise and with one process's to round-off."""
    overrides = ["methods=[{name: icfm-64, extends: icfm, batch_size: 64, grad_clip: 0.05, ema: 0.9}]"]
    job = _plan(tmp_path, 2, overrides=overrides).trainings[0]
    out = str(tmp_path / "ranks.pt")
    _spawn(_train_rank, job.hardware, job, out)
    ranks = torch.load(out, weights_only=False)
    other = torch.load(out + ".rank1", weights_only=False)
    one_job = _plan(tmp_path, 1, overrides=overrides).trainings[0]
    torch.manual_seed(0)
    configure(one_job.hardware)
    one, one_stats = _trained(one_job)
    assert ranks["stats"]["distributed"]["world_size"] == 2
    assert ranks["stats"]["grad_clip"]["clipped_steps"] == one_stats["grad_clip"]["clipped_steps"] > 0
    for name, value in one.items():
        torch.testing.assert_close(other["state"][name], ranks["state"][name], rtol=0, atol=0)
        torch.testing.assert_close(ranks["state"][name], value, rtol=1e-5, atol=1e-6)
        assert not torch.equal(value, build(one_job, torch.device("cpu")).network.state_dict()[name])  # it trained
    # the logged loss is the global batch's: the mean of the ranks' slice means
    for (s2, l2), (s1, l1) in zip(ranks["stats"]["loss_curve"], one_stats["loss_curve"]):
        assert s2 == s1 and l2 == pytest.approx(l1, rel=1e-5)


def _average_rank(group: Group, hardware, out: str) -> None:
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(3)]
    params[0].grad = torch.full((3,), float(group.rank + 1))  # every rank: the mean
    if group.leader:
        params[1].grad = torch.full((3,), 4.0)  # one rank: counted zero on the other
    group.average_gradients(params)  # params[2]: no rank, stays None
    if group.leader:
        torch.save([None if p.grad is None else p.grad.clone() for p in params], out)


@pytest.mark.slow
def test_gradients_are_averaged_and_one_no_rank_computed_stays_none(tmp_path):
    hardware = _plan(tmp_path, 2).suite.hardware
    out = str(tmp_path / "grads.pt")
    _spawn(_average_rank, hardware, hardware, out)
    grads = torch.load(out)
    torch.testing.assert_close(grads[0], torch.full((3,), 1.5))
    torch.testing.assert_close(grads[1], torch.full((3,), 2.0))
    assert grads[2] is None


# --- the sharded evaluation ------------------------------------------------------------


def _evaluate_rank(group: Group, evaluation, state: dict, out: str) -> None:
    built = build(evaluation.train, group.device)
    built.network.load_state_dict(state)
    got = evaluate(evaluation, built, built.network, {}, None, group=group)
    assert (got is None) == (not group.leader)
    if group.leader:
        status, metrics, measurements, files = got
        buffer = __import__("io").BytesIO()
        files["points"][1](buffer)
        with open(out, "wb") as f:
            pickle.dump({"status": status, "metrics": metrics, "measurements": measurements,
                         "points": buffer.getvalue()}, f)


@pytest.mark.slow
def test_two_ranks_sample_what_one_process_samples_exactly(tmp_path):
    """Three shards of 100 (rank 0: blocks 0 and 2, rank 1: block 1), merged in order on
    rank 0: w2, mmd, nfe and every sampled point equal the one-process evaluation's."""
    import io

    import numpy as np

    plan = _plan(tmp_path, 2)
    job = plan.trainings[0]
    evaluation = plan.evals[job.key][0]
    built = build(job, torch.device("cpu"))
    trained = train(job, built, False)  # a one-device training; both evaluations sample its weights
    state = {k: v.detach().clone() for k, v in built.network.state_dict().items()}
    status, metrics, measurements, files = evaluate(evaluation, built, trained.model, {}, None)
    out = str(tmp_path / "eval.pkl")
    _spawn(_evaluate_rank, job.hardware, evaluation, state, out)
    with open(out, "rb") as f:
        ranks = pickle.load(f)
    assert status == ranks["status"] == "ok"
    assert ranks["metrics"] == metrics  # exactly: the same points, merged in the same order
    assert ranks["measurements"]["shards"] == measurements["shards"] == {"count": 3, "size": 100, "resumed": 0}
    assert ranks["measurements"]["batches"]["count"] == measurements["batches"]["count"] == 3
    buffer = io.BytesIO()
    files["points"][1](buffer)
    one = np.load(io.BytesIO(buffer.getvalue()))
    two = np.load(io.BytesIO(ranks["points"]))
    for name in ("source", "samples", "reference"):
        np.testing.assert_array_equal(one[name], two[name])


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_suite_trains_on_two_gloo_ranks_and_rank_0_writes_its_records(tmp_path):
    """I-CFM, and MeanFlow, whose loss sends torch.func.jvp's dual tensors through the
    network (which the DistributedDataParallel wrapper refuses); spawned by the harness,
    then launched by torchrun."""
    text = SUITE.replace("DEVICES", "2").replace(
        "methods: [{name: icfm-64, extends: icfm, batch_size: 64}]",
        "methods: [{name: icfm-64, extends: icfm, batch_size: 64}, {name: mf-64, extends: meanflow, batch_size: 64}]")
    path = write(tmp_path / "suite.yaml", text)
    out = tmp_path / "out"
    result = run_cli("run", str(path), "--results", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in (out / "records").glob("*.json"))}
    assert sorted(records) == ["icfm-64", "mf-64"]
    assert records["mf-64"]["status"] == "ok", records["mf-64"]["error"]
    record = records["icfm-64"]
    assert record["status"] == "ok", record["error"]
    assert record["spec"]["hardware"]["devices"] == 2
    assert record["train"]["distributed"]["world_size"] == 2 and record["train"]["steps"] == 6
    assert record["measurements"]["shards"]["count"] == 3 and record["metrics"]["nfe"] == 8.0
    assert record["metrics"]["w2"] > 0
    assert len(list((out / "models").glob("*.pt"))) == 2
    # nothing of an unfinished evaluation is left behind
    assert not any((out / "shards").glob("*/*.npz")) if (out / "shards").exists() else True
    # a second run reuses everything
    again = run_cli("run", str(path), "--results", str(out), "--no-progress")
    assert again.returncode == 0, again.stderr
    again_records = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}
    assert again_records["icfm-64"]["created"] == record["created"]
    # the same suite under torchrun (rank 0 runs the suite, rank 1 follows it): the same records
    launched = tmp_path / "torchrun"
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "1"}
    env.pop("FLOWGAUGE_SPECS", None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "harness.cli", "run", str(path), "--results", str(launched), "--no-progress"],
                          check=False, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("(ranked by") == 1, done.stdout  # rank 0 alone prints the table
    theirs = {r["method"]: r for r in (json.loads(p.read_text()) for p in (launched / "records").glob("*.json"))}
    for method, ours in records.items():
        assert theirs[method]["key"] == ours["key"] and theirs[method]["metrics"] == ours["metrics"]
        assert theirs[method]["train"]["loss_curve"] == ours["train"]["loss_curve"]


@pytest.mark.slow
def test_a_rank_that_fails_fails_the_unit_with_its_cause(tmp_path):
    """Rank 0 raises before training (a student whose teacher has no model): the other
    rank, waiting for it, is stopped, and the records say which rank failed and why."""
    from harness.unit import Summary, Unit

    text = SUITE.replace("methods: [{name: icfm-64, extends: icfm, batch_size: 64}]", """methods:
  - name: student
    extends: 2-rectified-flow
    batch_size: 64
    teacher: {method: {name: teacher-64, extends: rectified-flow, batch_size: 64}, sampler: euler-8, num_pairs: 256}""")
    plan = _plan(tmp_path, 2, text)
    student = plan.trainings[-1]
    summary = Summary()
    Unit(tmp_path / "out", progress=False).run(student, plan.evals[student.key], summary)
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "records").glob("*.json")]
    assert summary.counts == {"failed": 1} and [r["status"] for r in records] == ["failed"]
    assert records[0]["error"].startswith("RankFailed: rank 0 of 2")
    assert "has no trained model" in records[0]["error"]


@pytest.mark.slow
def test_ranks_agree_on_when_a_time_budget_ends(tmp_path):
    """Each rank's clock differs; they stop at the slowest one's, at the same step (a rank
    that stopped alone would leave the others waiting in a collective: the timeout says)."""
    from tests.conftest import run_cli_process

    text = SUITE.replace("DEVICES", "2").replace("train: {steps: 6, log_every: 3}", "train: {seconds: 1, log_every: 7}")
    path = write(tmp_path / "suite.yaml", text)
    done = run_cli_process("run", str(path), "--results", str(tmp_path / "out"), "--no-progress", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(next((tmp_path / "out" / "records").glob("*.json")).read_text())
    assert record["status"] == "ok" and record["train"]["stopped_by"] == "seconds"
    assert record["train"]["wall_s"] < 2.0 and record["train"]["steps"] > 1


def test_under_torchrun_the_suite_runs_inline(tmp_path, monkeypatch):
    """Worker processes or Slurm tasks under torchrun would break its ranks' lockstep: refused
    with one line; the default (auto) becomes inline."""
    path = write(tmp_path / "suite.yaml", SUITE.replace("DEVICES", "2"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for flags, named in ((["--workers", "2"], "--workers 2"), (["--executor", "process"], "--executor process")):
        result = run_cli("run", str(path), "--dry-run", *flags)
        assert result.returncode == 2 and f"{named}: under torchrun the suite runs inline" in result.stderr
    monkeypatch.delenv("FLOWGAUGE_EXECUTOR")  # auto
    result = run_cli("run", str(path), "--dry-run")
    assert result.returncode == 0 and "worker processes" not in result.stderr
