"""SplitMeanFlow distilled from a flow-matching teacher: training points and the boundary
velocity read off the teacher's recorded Euler trajectories; one-step sampling end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import implementations  # noqa: F401  (fills the registries)
from harness.errors import SpecError
from harness.interfaces import Batch
from harness.plan import make_plan
from harness.registry import METHODS, NETWORKS
from harness.resolve import load_suite
from harness.results import read_records
from harness.runner import Runner
from implementations.common.average_velocity import average_velocity
from implementations.split_meanflow_teacher import NEEDS_PATH, teacher_points
from tests.conftest import SPECS, write


def bent_batch(n: int = 6, k: int = 4) -> Batch:
    """Paths x(t) = x_0 + t² d on a grid of k intervals: Euler slopes differ per node."""
    gen = torch.Generator().manual_seed(0)
    x_0, d = torch.randn(n, 2, generator=gen, dtype=torch.float64), torch.randn(n, 2, generator=gen, dtype=torch.float64)
    times = torch.linspace(0, 1, k + 1, dtype=torch.float64)
    path = x_0[:, None] + times[None, :, None] ** 2 * d[:, None]
    return Batch(x_0=x_0, x_1=path[:, -1], path=path, times=times)


def test_points_are_the_teachers_states_at_the_node_at_or_before_a_with_its_euler_slope():
    batch = bent_batch()
    a = torch.tensor([0.0, 0.1, 0.25, 0.6, 0.99, 1.0], dtype=torch.float64)
    snapped, z_a, v = teacher_points(batch, a)
    nodes = [0, 0, 1, 2, 3, 3]  # a = 1 takes the last interval's start
    assert snapped.tolist() == [0.0, 0.0, 0.25, 0.5, 0.75, 0.75]
    for row, i in enumerate(nodes):
        assert torch.equal(z_a[row], batch.path[row, i])
        slope = (batch.path[row, i + 1] - batch.path[row, i]) / 0.25
        assert torch.allclose(v[row], slope, rtol=0, atol=1e-14)


def test_boundary_rows_train_on_the_teachers_velocity_at_the_snapped_time():
    cls = METHODS.get("split_meanflow_teacher")
    method = cls(cls.Params(boundary_share=1.0))
    batch = bent_batch()
    torch.manual_seed(0)
    net_cls = NETWORKS.get("interval-mlp")
    model = net_cls(net_cls.Params.model_validate({"width": 16, "depth": 2}), (2,)).double()

    loss = method.loss(model, batch, torch.Generator().manual_seed(3))
    a, _, _, _ = method.draw(batch, torch.Generator().manual_seed(3))
    snapped, z_a, v = teacher_points(batch, a)
    by_hand = method.params.loss(average_velocity(model)(z_a, snapped, snapped) - v)
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-12)


def test_a_batch_without_paths_is_refused_with_the_fix():
    cls = METHODS.get("split_meanflow_teacher")
    with pytest.raises(ValueError, match="add keep: path to teacher:"):
        cls(cls.Params()).loss(lambda z, a, b, y=None: z, Batch(torch.zeros(2, 2), torch.zeros(2, 2)),
                               torch.Generator())
    assert "keep: path" in NEEDS_PATH


SUITE = """\
name: smt
hardware: cpu
seeds: [0]
budget:
  train: {steps: 30}
  eval: {num_samples: 64, warmup: 0, repeats: 1}
datasets: [moons]
methods:
  - {name: smt, extends: split-meanflow-teacher, teacher: {method: rectified-flow, sampler: {name: euler-20, solver: euler, params: {steps: 20}}, num_pairs: 64, keep: path}}
samplers: [euler-1, euler-2]
metrics: [w2, nfe]
leaderboard: {rank_by: w2}
"""


def test_end_to_end_one_and_two_jumps(tmp_path: Path):
    plan = make_plan(load_suite(str(write(tmp_path / "suite.yaml", SUITE)), root=SPECS))
    Runner(tmp_path / "out", progress=False).run(plan)
    records = {r["sampler"]: r for r in read_records(tmp_path / "out") if r["method"] == "smt"}
    assert {s: r["status"] for s, r in records.items()} == {"euler-1": "ok", "euler-2": "ok"}
    assert records["euler-1"]["metrics"]["nfe"] == 1 and records["euler-2"]["metrics"]["nfe"] == 2
    assert records["euler-1"]["train"]["teacher_pairs"]["keep"] == "path"


def test_a_teacher_without_its_paths_is_a_spec_error(tmp_path: Path):
    text = SUITE.replace("keep: path", "keep: endpoints")
    with pytest.raises(SpecError, match="add keep: path to teacher:"):
        make_plan(load_suite(str(write(tmp_path / "suite.yaml", text)), root=SPECS))
