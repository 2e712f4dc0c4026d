"""The runner's mechanisms, each checked on the tensors it produces: restoring the best
weights, divergence, dtypes, teacher pairs and weights, batch randomness, seed streams."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from harness.building import build
from harness.evaluation import samples_out_of_range
from harness.plan import make_plan
from harness.resolve import load_suite
from harness.runner import Runner
from harness.seeding import generator, stream_seed
from harness.training import BatchStream, Pairs, PreparedBatches, Validation
from tests.conftest import PROJECT, SPECS, write

SUITE = """name: unit
seeds: [0]
budget:
  train: {steps: 30, log_every: 10}
  eval: {num_samples: 128, warmup: 0, repeats: 1}
datasets: [moons]
methods: [icfm]
samplers: [euler-8]
metrics: [w2]
"""
CPU = torch.device("cpu")


def _job(tmp_path, text: str = SUITE, overrides: list[str] | None = None, index: int = 0):
    suite = load_suite(str(write(tmp_path / "suite.yaml", text)), overrides, root=SPECS)
    return make_plan(suite).trainings[index]


def test_early_stopping_restores_the_weights_of_the_best_check(tmp_path):
    job = _job(tmp_path, SUITE.replace("{steps: 30, log_every: 10}",
                                       "{steps: 30, early_stopping: {every_steps: 1, patience: 100, val_size: 256}}"))
    built = build(job, CPU)
    validation = Validation(job, built)
    network = built.network
    validation.check(network, 1)
    best = {k: v.clone() for k, v in network.state_dict().items()}
    with torch.no_grad():  # in place, as an optimiser step changes them
        for p in network.parameters():
            p.add_(0.5)
    validation.check(network, 2)
    assert validation.curve[1][1] > validation.curve[0][1]  # the moved weights are worse
    changed = {k: v.clone() for k, v in network.state_dict().items()}
    assert any(not torch.equal(changed[k], best[k]) for k in best)
    info = validation.finish()
    assert info["best_step"] == 1 and info["restored_best"]
    for k, v in network.state_dict().items():
        assert torch.equal(v, best[k]), k


def test_samples_beyond_a_thousand_times_the_data_or_not_finite_are_counted():
    reference = np.array([[1.0, -2.0], [0.5, 0.5]])  # largest |coordinate| 2: bound 3000
    samples = np.array([[0.0, 0.0], [2999.0, 0.0], [3001.0, 0.0], [0.0, -1e7], [np.nan, 0.0], [np.inf, 1.0]])
    assert samples_out_of_range(samples, reference) == 4


def test_hardware_dtype_reaches_the_network_and_the_loss(tmp_path):
    job = _job(tmp_path, SUITE + "hardware: {name: f64, dtype: float64}\n")
    built = build(job, CPU)
    assert built.dtype == torch.float64
    assert {p.dtype for p in built.network.parameters()} == {torch.float64}
    stream = BatchStream(built.dataset, 16, generator(0, "data"))
    from harness.building import to_device as _to

    batch = _to(stream.next(), built)
    loss = built.method.loss(built.network, batch, generator(0, "method"))
    assert batch.x_0.dtype == batch.x_1.dtype == loss.dtype == torch.float64


def test_a_student_trains_on_the_teachers_pairs_as_generated():
    """Every batch pairs z_0[i] with the z_1[i] the teacher generated from it."""
    z_0 = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    pairs = Pairs(z_0, 2 * z_0 + 1, {})
    stream = BatchStream(dataset=None, batch_size=32, gen=generator(0, "data"), pairs=pairs)
    seen = []
    for _ in range(7):  # more than two epochs: reshuffled between them
        batch = stream.next()
        torch.testing.assert_close(batch.x_1, 2 * batch.x_0 + 1, rtol=0, atol=0)
        seen.append(batch.x_0)
    assert not torch.equal(seen[0], z_0[:32])  # shuffled, not in order


STUDENT = SUITE.replace("methods: [icfm]", """methods:
  - name: student
    extends: 2-rectified-flow
    teacher: {method: rectified-flow, sampler: euler-8, num_pairs: 512, init: INIT}
    optimizer: {name: adam, lr: 1.0e-9}""")


@pytest.mark.parametrize("init", ["teacher", "scratch"])
def test_init_teacher_starts_the_student_from_the_teachers_weights(tmp_path, init):
    suite = load_suite(str(write(tmp_path / "suite.yaml", STUDENT.replace("INIT", init))), root=SPECS)
    plan = make_plan(suite)
    runner = Runner(tmp_path / "out", progress=False)
    runner.run(plan)
    teacher, student = plan.trainings  # the plan puts the teacher first
    assert student.teacher is not None and student.teacher.key == teacher.key
    w_teacher = torch.load(runner.model_path(teacher.key), weights_only=True)
    w_student = torch.load(runner.model_path(student.key), weights_only=True)
    gap = max(float((w_teacher[k] - w_student[k]).abs().max()) for k in w_teacher)
    if init == "teacher":  # 30 Adam steps of 1e-9 move no weight by more than 3e-8
        assert gap < 1e-6
    else:  # a fresh network is far from one trained for 30 steps at 1e-3
        assert gap > 1e-2


def test_prepared_batches_draw_the_same_randomness_inline_and_in_threads(tmp_path):
    """Sinkhorn pairs are sampled from the entropic plan with each batch's own generator:
    the same batches whether prepared inline or ahead in worker threads."""
    job = _job(tmp_path, SUITE.replace("methods: [icfm]", "methods: [sbcfm]"))
    built = build(job, CPU)

    def batches(workers: int) -> list:
        stream = BatchStream(built.dataset, 64, generator(0, "data"))
        prepared = PreparedBatches(stream, built.method, seed=0, workers=workers)
        out = [prepared.next() for _ in range(6)]
        prepared.close()
        return out

    inline, threaded = batches(0), batches(2)
    for a, b in zip(inline, threaded):
        assert torch.equal(a.x_0, b.x_0) and torch.equal(a.x_1, b.x_1)
    # and the pairing did resample (a plain stream would give the draws in order)
    plain = BatchStream(built.dataset, 64, generator(0, "data")).next()
    assert not torch.equal(inline[0].x_1, plain.x_1)


def test_each_seed_and_stream_has_its_own_numbers():
    draws = {(seed, stream): torch.randn(4, generator=generator(seed, stream))
             for seed in (0, 1) for stream in ("data", "init")}
    values = list(draws.values())
    assert all(not torch.equal(values[i], values[j]) for i in range(4) for j in range(i + 1, 4))
    assert torch.equal(torch.randn(4, generator=generator(1, "data")), draws[(1, "data")])


def test_streams_and_keys_are_the_same_in_another_process():
    """Seeds and plan keys come from hashes of their contents, never from Python's
    per-process hash salt: a fresh interpreter computes the same values."""
    code = ("import harness.metrics, implementations; from harness.seeding import stream_seed; "
            "from harness.plan import make_plan; from harness.resolve import load_suite; "
            "p = make_plan(load_suite('quickstart', root=__import__('pathlib').Path('specs'))); "
            "print(stream_seed(7, 'data'), p.trainings[0].key, p.evals[p.trainings[0].key][0].key)")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(PROJECT), "PYTHONHASHSEED": "12345"}).stdout.split()
    plan = make_plan(load_suite("quickstart", root=SPECS))
    here = [str(stream_seed(7, "data")), plan.trainings[0].key, plan.evals[plan.trainings[0].key][0].key]
    assert out == here
