"""BOSS phase 2, the straightening fine-tune: the teacher's recorded trajectories kept with
its pairs (``keep: path``) and carried by the batches row for row, the Bellman schedule
made from them once before training (``bind_teacher``), the chord-slope loss against a
hand computation and zero at the chord slopes, and a tiny suite end to end, where the
straightened model is sampled on the schedule it was fine-tuned on, also once reloaded."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import implementations  # noqa: F401  (fills the registries)
from harness.building import build, configure, for_evaluation, to_device
from harness.errors import SpecError
from harness.evaluation import evaluate
from harness.interfaces import Batch
from harness.limits import MAX_PATH_STATES, MAX_PATH_VALUES
from harness.plan import canonical, make_plan, spec_hash
from harness.registry import METHODS
from harness.resolve import Resolver, load_suite
from harness.results import read_records
from harness.runner import Runner
from harness.seeding import generator
from harness.training import BatchStream, Pairs, Validation, bind_teacher
from harness.unit import Unit, check_path_size
from implementations.boss import NEEDS_PATH
from implementations.common.solvers import Euler, FixedStepParams
from implementations.common.time_grids import bellman_costs, bellman_path
from tests.conftest import SPECS, write

CPU = torch.device("cpu")


def boss(**params):
    cls = METHODS.get("boss_straighten")
    return cls(cls.Params(**params))


def curved_pairs(n: int = 40, k_max: int = 20, dims: tuple[int, ...] = (2,), seed: int = 0,
                 dtype=torch.float64) -> Pairs:
    """Trajectories that bend where t is large (so the Bellman schedule is not uniform),
    with path[:, 0] = z_0 and path[:, -1] = z_1, at t_k = k / k_max."""
    g = torch.Generator().manual_seed(seed)
    z_0 = torch.randn(n, *dims, generator=g, dtype=dtype)
    bend = torch.randn(n, *dims, generator=g, dtype=dtype)
    times = torch.linspace(0, 1, k_max + 1, dtype=torch.float64)
    t = times.to(dtype).reshape(1, -1, *[1] * len(dims))
    path = z_0.unsqueeze(1) + t * 1.5 + t**6 * bend.unsqueeze(1)  # (n, k_max + 1, *dims)
    return Pairs(z_0, path[:, -1].clone(), {}, path, times)


# --- the schedule ----------------------------------------------------------------------


def test_bind_teacher_makes_the_bellman_schedule_of_the_first_trajectories():
    pairs = curved_pairs(n=40, k_max=20)
    method = boss(steps=3, reference_samples=25)
    stats = method.bind_teacher(pairs)
    cost = bellman_costs(pairs.path[:25].numpy(), pairs.times.numpy())
    nodes, total = bellman_path(cost, 3)
    schedule = stats["boss_schedules"]["3"]
    assert list(stats) == ["boss_schedules"] and list(stats["boss_schedules"]) == ["3"]
    assert schedule["nodes"] == nodes == method.nodes
    assert schedule["times"] == [float(pairs.times[i]) for i in nodes]
    assert schedule["k_max"] == 20 and schedule["reference_samples"] == 25
    assert schedule["summed_cost"] == total
    assert schedule["uniform_summed_cost"] is None  # 3 does not divide 20
    assert nodes[0] == 0 and nodes[1] > 10 and nodes[-1] == 20  # the bend draws the steps towards t = 1
    # only the first reference_samples trajectories count
    pairs.path[25:] += 10 * torch.randn_like(pairs.path[25:])
    assert boss(steps=3, reference_samples=25).bind_teacher(pairs) == stats
    json.dumps(stats)  # saved with the model


def test_bind_teacher_through_the_harness_hook_and_its_refusals():
    assert bind_teacher(boss(), None) == {}
    assert bind_teacher(METHODS.get("cfm")(METHODS.get("cfm").Params()), curved_pairs()) == {}
    assert "boss_schedules" in bind_teacher(boss(steps=2, reference_samples=8), curved_pairs())
    with pytest.raises(ValueError, match="add keep: path to teacher:"):
        boss().bind_teacher(Pairs(torch.zeros(4, 2), torch.ones(4, 2), {}))
    with pytest.raises(ValueError, match="params.steps = 30 does not fit the teacher's fine grid of 20 steps"):
        boss(steps=30, reference_samples=8).bind_teacher(curved_pairs())
    with pytest.raises(ValueError, match="reference_samples = 100 is more than the teacher's 40 pairs"):
        boss(steps=2).bind_teacher(curved_pairs(n=40))


def test_training_before_the_schedule_or_without_paths_is_refused():
    pairs = curved_pairs(n=8)
    with pytest.raises(RuntimeError, match="bind_teacher"):
        boss(steps=2).loss(lambda x, t: x, pairs.batch(slice(0, 8)), torch.Generator())
    method = boss(steps=2, reference_samples=8)
    method.bind_teacher(pairs)
    with pytest.raises(ValueError, match="add keep: path to teacher:"):
        method.loss(lambda x, t: x, Batch(x_0=pairs.z_0, x_1=pairs.z_1), torch.Generator())


# --- the loss ------------------------------------------------------------------------------


class ChordSlopes:
    """The 'network' that returns each segment's chord slope: it finds its row by x and its
    segment by t in the teacher's paths."""

    def __init__(self, pairs: Pairs, nodes: list[int]):
        self.pairs, self.nodes = pairs, nodes
        self.seen_t: list[float] = []

    def __call__(self, x, t):
        out = []
        for row, t_row in zip(x, t):
            n = int(torch.nonzero((self.pairs.path == row.unsqueeze(0).unsqueeze(0)).flatten(2).all(2))[0, 0])
            k = [float(self.pairs.times[i]) for i in self.nodes].index(float(t_row))
            i, j = self.nodes[k], self.nodes[k + 1]
            out.append((self.pairs.path[n, j] - self.pairs.path[n, i]) / (self.pairs.times[j] - self.pairs.times[i]))
            self.seen_t.append(float(t_row))
        return torch.stack(out)


def test_the_loss_is_zero_at_the_chord_slopes_of_every_segment():
    pairs = curved_pairs(n=64, k_max=20, dims=(3,))
    method = boss(steps=4, reference_samples=32)
    method.bind_teacher(pairs)
    slopes = ChordSlopes(pairs, method.nodes)
    loss = method.loss(slopes, pairs.batch(torch.arange(64)), torch.Generator().manual_seed(1))
    assert loss.dtype == torch.float64 and float(loss) <= 1e-24
    tau = [float(pairs.times[i]) for i in method.nodes]
    assert set(slopes.seen_t) == set(tau[:-1])  # 64 rows draw every one of the 4 segments


def test_the_loss_by_hand():
    """mean over rows and pixels of (v(x_{τ_k}, τ_k) − (x_{τ_{k+1}} − x_{τ_k}) / (τ_{k+1} − τ_k))²,
    k ~ U{0..K−1} per row, drawn from the generator the loss is given."""
    pairs = curved_pairs(n=6, k_max=10, dims=(2, 2), seed=3)
    method = boss(steps=3, reference_samples=6)
    method.bind_teacher(pairs)

    def net(x, t):
        return 0.5 * x + t.reshape(-1, 1, 1)

    loss = method.loss(net, pairs.batch(torch.arange(6)), torch.Generator().manual_seed(7))
    k = torch.randint(3, (6,), generator=torch.Generator().manual_seed(7))
    expected = 0.0
    for row in range(6):
        i, j = method.nodes[int(k[row])], method.nodes[int(k[row]) + 1]
        t_i, t_j = float(pairs.times[i]), float(pairs.times[j])
        x_i, x_j = pairs.path[row, i], pairs.path[row, j]
        expected += float(((0.5 * x_i + t_i - (x_j - x_i) / (t_j - t_i)) ** 2).mean()) / 6
    assert float(loss) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_the_loss_trains_every_weight():
    pairs = curved_pairs(n=16, k_max=8, dims=(2,), dtype=torch.float32)
    method = boss(steps=2, reference_samples=16)
    method.bind_teacher(pairs)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    loss = method.loss(lambda x, t: net(x) * t.unsqueeze(1), pairs.batch(torch.arange(16)), torch.Generator())
    loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in net.parameters())


# --- pairs and batches --------------------------------------------------------------------


def test_batches_carry_path_rows_aligned_with_their_pairs():
    pairs = curved_pairs(n=50, k_max=6, dtype=torch.float32)
    pairs.path[:, 3] = torch.arange(50, dtype=torch.float32).unsqueeze(1)  # the row's index, mid-path
    stream = BatchStream(dataset=None, batch_size=16, gen=generator(0, "data"), pairs=pairs)
    for _ in range(8):  # more than two epochs
        batch = stream.next()
        assert batch.path.shape == (16, 7, 2) and torch.equal(batch.times, pairs.times)
        assert torch.equal(batch.path[:, 0], batch.x_0) and torch.equal(batch.path[:, -1], batch.x_1)
        rows = batch.path[:, 3, 0].long()
        assert torch.equal(batch.x_0, pairs.z_0[rows]) and torch.equal(batch.path, pairs.path[rows])
    built = SimpleNamespace(device=CPU, dtype=torch.float64)
    moved = to_device(batch, built)
    assert moved.path.dtype == moved.times.dtype == torch.float64
    assert torch.equal(moved.path, batch.path.double()) and torch.equal(moved.times, pairs.times)
    plain = to_device(Batch(x_0=batch.x_0, x_1=batch.x_1), built)
    assert plain.path is None and plain.times is None


# --- specs ----------------------------------------------------------------------------------

STUDENT = """implementation: boss_straighten
params: {steps: 2, reference_samples: 16}
teacher:
  method: rectified-flow
  sampler: SAMPLER
  num_pairs: PAIRS
KEEP
"""


def _validate(spec_root: Path, sampler: str = "euler-100", pairs: int = 64, keep: str = "  keep: path"):
    path = write(spec_root / "methods" / "student.yaml",
                 STUDENT.replace("SAMPLER", sampler).replace("PAIRS", str(pairs)).replace("KEEP", keep))
    return Resolver(spec_root).validate_file(path)


def test_a_teacher_without_keep_path_is_refused_with_the_fix(spec_root):
    with pytest.raises(SpecError) as err:
        _validate(spec_root, keep="")
    assert str(err.value).split(": ")[0].endswith("methods/student.yaml:3")  # the teacher: line
    assert str(err.value).endswith("'boss_straighten' trains on the teacher's recorded trajectories: add keep: path "
                                   "to teacher:")
    with pytest.raises(SpecError) as err:
        _validate(spec_root, keep="  keep: endpoints")
    assert str(err.value).split(": ")[0].endswith("methods/student.yaml:7") and "add keep: path" in str(err.value)
    assert _validate(spec_root).teacher.keep == "path"
    assert NEEDS_PATH.endswith("add keep: path to teacher:")


def test_keep_path_needs_a_fixed_step_sampler_and_is_bounded(spec_root):
    with pytest.raises(SpecError) as err:
        _validate(spec_root, sampler="dopri5")
    assert str(err.value).split(": ")[0].endswith("methods/student.yaml:5")
    assert "'dopri5' (dopri5) has no fixed number of steps; use a fixed-step sampler such as euler-100" in str(err.value)
    too_many = MAX_PATH_STATES // 101 + 1
    with pytest.raises(SpecError) as err:
        _validate(spec_root, pairs=too_many)
    assert str(err.value).split(": ")[0].endswith("methods/student.yaml:6")
    assert f"= {too_many} x 101 = {too_many * 101} recorded states, more than {MAX_PATH_STATES}" in str(err.value)
    # the dims are checked before the teacher runs, once the data's shape is known
    check_path_size(5000, 100, (2,))
    with pytest.raises(ValueError, match=r"5000 x 101 x 3072 = 1551360000 float32 values, more than 640000000"):
        check_path_size(5000, 100, (3, 32, 32))
    assert MAX_PATH_VALUES == 640_000_000


def test_keep_is_left_out_of_dumps_and_keys_at_its_default():
    resolver = Resolver(SPECS)
    distilled = canonical(resolver.validate_file(SPECS / "methods" / "rectified-flow-distilled.yaml"))
    assert "keep" not in distilled["teacher"]
    straightened = canonical(resolver.validate_file(SPECS / "methods" / "boss-straighten.yaml"))
    assert straightened["teacher"]["keep"] == "path" and straightened["teacher"]["init"] == "teacher"


def test_the_shipped_spec_is_the_papers_setting():
    spec = Resolver(SPECS).validate_file(SPECS / "methods" / "boss-straighten.yaml")
    assert spec.implementation == "boss_straighten"
    assert spec.params == {"steps": 4, "reference_samples": 100, "loss": {"name": "mse", "reduce": "mean"}}
    assert spec.teacher.sampler.name == "euler-100" and spec.teacher.num_pairs == 5000
    assert spec.optimizer["name"] == "adam" and spec.optimizer["lr"] == 2e-4
    assert spec.network == spec.teacher.method.network  # init: teacher loads its weights
    boss_4 = Resolver(SPECS).validate_file(SPECS / "samplers" / "boss-4.yaml")
    assert boss_4.params["steps"] == spec.params["steps"] and boss_4.params["k_max"] == 100  # its schedule is found


# --- through the harness --------------------------------------------------------------------

SUITE = """name: boss-tiny
seeds: [0]
budget:
  train: {steps: 30, log_every: 10}
  eval: {num_samples: 128, warmup: 0, repeats: 1}
datasets: [moons]
methods:
  - name: boss-tiny
    extends: boss-straighten
    params: {steps: 2, reference_samples: 16}
    teacher: {sampler: {name: euler-20, solver: euler, params: {steps: 20}}, num_pairs: 64}
samplers:
  - {name: boss-2-k20, solver: euler-grid, params: {grid: boss, steps: 2, k_max: 20, reference_samples: 16}}
  - euler-4
metrics: [w2, nfe]
"""


def _plan(tmp_path: Path, text: str = SUITE):
    return make_plan(load_suite(str(write(tmp_path / "suite.yaml", text)), root=SPECS))


def test_keep_path_stores_the_teachers_recorded_euler_states(tmp_path):
    plan = _plan(tmp_path)
    teacher, student = plan.trainings
    unit = Unit(tmp_path / "out", progress=False)
    built_teacher = build(teacher, configure(teacher.hardware))
    assert unit.train_or_load(teacher, built_teacher).status == "ok"
    pairs = unit.teacher_pairs(student, CPU)
    assert pairs.path.shape == (64, 21, 2) and pairs.path.dtype == torch.float32
    assert pairs.stats["keep"] == "path" and pairs.stats["path_shape"] == [64, 21, 2]
    assert torch.equal(pairs.times, torch.linspace(0, 1, 21, dtype=torch.float64))
    assert torch.equal(pairs.path[:, 0], pairs.z_0) and torch.equal(pairs.path[:, -1], pairs.z_1)
    # the teacher's own 20-step Euler from the same noise, recorded
    unit.load_weights(teacher, built_teacher.network, CPU)
    built_teacher.network.eval()
    with torch.no_grad():
        euler = Euler(FixedStepParams(steps=20)).solve(built_teacher.network, pairs.z_0, record=True)
    assert torch.equal(pairs.path, torch.stack(euler.trajectory, dim=1))
    # cached: the same arrays back, under a key that names keep only because it is not the default
    again = unit.teacher_pairs(student, CPU)
    assert again.stats["reused"] and torch.equal(again.path, pairs.path) and torch.equal(again.times, pairs.times)
    spec = student.method.teacher
    parts = {"teacher": teacher.key, "sampler": canonical(spec.sampler), "num_pairs": 64}
    files = sorted(p.name for p in (tmp_path / "out" / "pairs").iterdir())
    assert files == [f"{teacher.key}__{spec_hash({**parts, 'keep': 'path'})}.pt"]
    # endpoint pairs of the same teacher keep the key they had before keep existed
    endpoints = student.__class__(student.seed, student.dataset, student.method.model_copy(
        update={"teacher": spec.model_copy(update={"keep": "endpoints"})}), student.hardware, student.budget)
    plain = unit.teacher_pairs(endpoints, CPU)
    assert plain.path is None and plain.times is None and torch.equal(plain.z_1, pairs.z_1)
    assert (tmp_path / "out" / "pairs" / f"{teacher.key}__{spec_hash(parts)}.pt").is_file()


def test_a_straightened_model_is_sampled_on_its_schedule_also_when_reloaded(tmp_path):
    plan = _plan(tmp_path)
    out = tmp_path / "out"
    Runner(out, progress=False).run(plan)
    records = {r["sampler"]: r for r in read_records(out) if r["method"] == "boss-tiny"}
    assert set(records) == {"boss-2-k20", "euler-4"} and all(r["status"] == "ok" for r in records.values())
    boss_record = records["boss-2-k20"]
    schedule = boss_record["train"]["boss_schedules"]["2"]
    assert schedule["k_max"] == 20 and schedule["reference_samples"] == 16 and len(schedule["nodes"]) == 3
    calibration = boss_record["measurements"]["sampler_calibration"]
    assert calibration["source"] == "the schedule the model was straightened on"
    assert calibration["times"] == schedule["times"] and boss_record["metrics"]["nfe"] == 2
    assert records["euler-4"]["metrics"]["nfe"] == 4 and math.isfinite(records["euler-4"]["metrics"]["w2"])
    assert boss_record["train"]["teacher_pairs"]["keep"] == "path"

    # reloaded from the store: the statistics come back with the weights, and a method
    # object that never saw the teacher's pairs samples on the same schedule
    student = next(j for j in plan.trainings if j.method.name == "boss-tiny")
    saved = json.loads((out / "models" / f"{student.key}.json").read_text())["train"]
    assert saved["boss_schedules"] == boss_record["train"]["boss_schedules"]
    unit = Unit(out, progress=False)
    built = build(student, configure(student.hardware))
    result = unit.train_or_load(student, built)
    assert result.stats["reused"] and result.stats["boss_schedules"] == saved["boss_schedules"]
    assert built.method.nodes is None  # no bind_teacher on reload
    job = next(e for e in plan.evals[student.key] if e.sampler.name == "boss-2-k20")
    status, metrics, measurements, _ = evaluate(job, for_evaluation(built, job.train.method), result.model,
                                                result.stats, unit.store)
    assert status == "ok" and measurements["sampler_calibration"] == calibration
    assert metrics["w2"] == pytest.approx(boss_record["metrics"]["w2"], rel=1e-12)


def test_validation_scores_the_straightening_loss_on_held_out_paths(tmp_path):
    plan = _plan(tmp_path, SUITE.replace("{steps: 30, log_every: 10}",
                                         "{steps: 30, log_every: 10, early_stopping: {every_steps: 10, patience: 5, "
                                         "val_size: 32}}"))
    out = tmp_path / "out"
    Runner(out, progress=False).run(plan)
    _, student = plan.trainings
    record = next(r for r in read_records(out) if r["method"] == "boss-tiny")
    assert record["status"] == "ok", record["error"]
    stats = record["train"]
    assert stats["validation_pairs"]["keep"] == "path" and stats["validation_pairs"]["num_pairs"] == 32
    assert len(stats["early_stopping"]["val_curve"]) == 3

    # Validation's batches carry the held-out paths, and its score is the method's own loss
    unit = Unit(out, progress=False)
    built = build(student, configure(student.hardware))
    train_pairs = unit.teacher_pairs(student, CPU)
    val_pairs = unit.teacher_pairs(student, CPU, "validation", 32)
    assert not torch.equal(val_pairs.z_0, train_pairs.z_0[:32])  # held out: noise of its own stream
    bind_teacher(built.method, train_pairs)
    validation = Validation(student, built, val_pairs)
    assert all(b.path is not None for b in validation.batches)
    assert torch.equal(torch.cat([b.path for b in validation.batches]), val_pairs.path)
    value = validation.check(built.network, 1)
    gen = generator(student.seed, "validation-loss")
    with torch.no_grad():
        by_hand = sum(float(built.method.loss(built.network, b, gen)) * len(b.x_0) for b in validation.batches) / 32
    assert validation.curve[-1][1] == pytest.approx(by_hand, rel=1e-12) and value is False
    # a straight-line (reflow) objective would score these pairs otherwise
    rf = METHODS.get("rectified_flow")(METHODS.get("rectified_flow").Params())
    with torch.no_grad():
        other = float(rf.loss(built.network, validation.batches[0], generator(0, "x")))
    assert not np.isclose(other, by_hand)
