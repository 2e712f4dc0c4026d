"""Trajectory metrics on analytic trajectories: path energy, straightness and normalised
path energy (NPE) with the exact W2 between point clouds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from harness.metrics import (
    EvalContext,
    Trajectory,
    normalized_path_energy,
    path_energy,
    straightness,
    wasserstein,
)
from harness.registry import METRICS


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def straight(x_0: np.ndarray, d: np.ndarray, times) -> list[np.ndarray]:
    return [x_0 + t * d for t in times]


GRIDS = {
    "two-points": [0.0, 1.0],
    "uniform-10": list(np.linspace(0, 1, 11)),
    "uniform-100": list(np.linspace(0, 1, 101)),
    "nonuniform": [0.0, 0.01, 0.2, 0.25, 0.7, 0.9, 1.0],
    "quadratic": list(np.linspace(0, 1, 17) ** 2),
}


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
def test_straight_constant_speed_line(grid):
    r = rng(0)
    x_0 = r.normal(size=(64, 3))
    d = r.normal(size=(64, 3)) * 2
    traj = straight(x_0, d, grid)
    assert straightness(grid, traj) == pytest.approx(0.0, abs=1e-20)
    assert path_energy(grid, traj) == pytest.approx(float(np.mean(np.sum(d**2, axis=1))), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 30))
def test_straight_line_on_random_grids(seed, k):
    r = rng(seed)
    inner = np.sort(r.uniform(0, 1, size=k))
    grid = [0.0, *inner.tolist(), 1.0]
    x_0 = r.normal(size=(16, 2))
    d = r.normal(size=(16, 2))
    traj = straight(x_0, d, grid)
    assert straightness(grid, traj) == pytest.approx(0.0, abs=1e-18)
    assert path_energy(grid, traj) == pytest.approx(float(np.mean(np.sum(d**2, axis=1))), rel=1e-10)


def test_repeated_time_points_are_skipped():
    """Zero-length steps (dt = 0) contribute nothing instead of dividing by zero."""
    x_0 = np.zeros((4, 2))
    d = np.ones((4, 2))
    grid = [0.0, 0.5, 0.5, 1.0]
    traj = straight(x_0, d, grid)
    assert path_energy(grid, traj) == pytest.approx(2.0, rel=1e-12)
    assert straightness(grid, traj) == pytest.approx(0.0, abs=1e-20)


def kinked(x_0, a, b, times, kink=0.5):
    return [x_0 + (t * a if t <= kink else kink * a + (t - kink) * b) for t in times]


@pytest.mark.parametrize("grid", [[0.0, 0.5, 1.0], list(np.linspace(0, 1, 21)), [0.0, 0.1, 0.5, 0.55, 0.8, 1.0]])
def test_kinked_trajectory(grid):
    """Velocity a on [0, ½], b on [½, 1]: chord (a + b)/2, S = ‖b − a‖²/4, PE = (‖a‖² + ‖b‖²)/2."""
    x_0 = np.array([[0.0, 0.0], [1.0, -1.0]])
    a = np.array([[2.0, 0.0], [0.0, 1.0]])
    b = np.array([[0.0, 2.0], [3.0, 1.0]])
    traj = kinked(x_0, a, b, grid)
    expected_s = float(np.mean(np.sum((b - a) ** 2, axis=1))) / 4  # (8/4 + 9/4)/2 = 2.125
    assert expected_s == pytest.approx(2.125)
    assert straightness(grid, traj) == pytest.approx(expected_s, rel=1e-12)
    expected_pe = float(np.mean(np.sum(a**2, axis=1) + np.sum(b**2, axis=1))) / 2
    assert path_energy(grid, traj) == pytest.approx(expected_pe, rel=1e-12)
    assert straightness(grid, traj) > 0


def test_kink_between_grid_points_sees_the_chord_of_that_step():
    """A kink at t = ¼ on the grid {0, ½, 1}: the metric sees the secant velocities."""
    grid = [0.0, 0.5, 1.0]
    x_0 = np.zeros((1, 1))
    a, b = np.array([[4.0]]), np.array([[0.0]])
    traj = kinked(x_0, a, b, grid, kink=0.25)  # positions 0, 1, 1
    # step velocities 2 and 0, chord 1: S = ½·1 + ½·1 = 1, PE = ½·4 = 2
    assert straightness(grid, traj) == pytest.approx(1.0, rel=1e-12)
    assert path_energy(grid, traj) == pytest.approx(2.0, rel=1e-12)


def test_path_energy_is_at_least_chord_energy():
    """Jensen: ∫‖v‖² ≥ ‖∫v‖², with equality only for constant speed; PE − ‖chord‖² = S."""
    r = rng(3)
    grid = list(np.linspace(0, 1, 9))
    traj = [r.normal(size=(32, 2)) for _ in grid]
    chord = np.mean(np.sum((traj[-1] - traj[0]) ** 2, axis=1))
    pe, s = path_energy(grid, traj), straightness(grid, traj)
    assert pe >= chord
    assert pe - chord == pytest.approx(s, rel=1e-10)


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_npe_zero_for_the_ot_map_to_a_shifted_copy(dim):
    r = rng(dim)
    x_0 = r.normal(size=(256, dim))
    shift = r.normal(size=dim) * 3
    x_1 = x_0 + shift
    # W2 between a cloud and its translate: the identity pairing is optimal, W2² = ‖shift‖²
    w2_sq = wasserstein(x_0, x_1[r.permutation(256)], p=2) ** 2
    assert w2_sq == pytest.approx(float(shift @ shift), rel=1e-10)
    grid = list(np.linspace(0, 1, 11))
    pe = path_energy(grid, straight(x_0, np.broadcast_to(shift, x_0.shape), grid))
    assert pe == pytest.approx(float(shift @ shift), rel=1e-12)
    assert normalized_path_energy(pe, w2_sq) == pytest.approx(0.0, abs=1e-9)


def test_npe_positive_for_a_non_optimal_pairing():
    """Straight lines along a shuffled pairing: PE is the mean squared pair distance > W2²."""
    r = rng(7)
    x_0 = r.normal(size=(128, 2))
    x_1 = x_0 + np.array([2.0, 0.0])
    shuffled = x_1[r.permutation(128)]
    grid = [0.0, 0.5, 1.0]
    pe = path_energy(grid, straight(x_0, shuffled - x_0, grid))
    w2_sq = wasserstein(x_0, shuffled) ** 2
    assert pe == pytest.approx(float(np.mean(np.sum((shuffled - x_0) ** 2, axis=1))), rel=1e-12)
    npe = normalized_path_energy(pe, w2_sq)
    assert npe == pytest.approx((pe - 4.0) / 4.0, rel=1e-9)
    assert npe > 0.1


def test_normalized_path_energy_formula():
    assert normalized_path_energy(3.0, 2.0) == pytest.approx(0.5)
    assert normalized_path_energy(1.0, 2.0) == pytest.approx(0.5)
    assert normalized_path_energy(2.0, 2.0) == 0.0


def test_registered_npe_metric_uses_source_and_reference():
    r = rng(11)
    x_0 = r.normal(size=(64, 2))
    shift = np.array([1.0, -2.0])
    grid = [0.0, 0.25, 1.0]
    flow = Trajectory(grid, straight(x_0, np.broadcast_to(shift, x_0.shape), grid))
    ctx = EvalContext(source=x_0, reference=(x_0 + shift)[r.permutation(64)], flow=lambda steps: flow)
    npe = METRICS.get("npe")
    assert npe.fn(ctx, npe.Params()) == pytest.approx(0.0, abs=1e-9)
    pe = METRICS.get("path_energy")
    assert pe.fn(ctx, pe.Params()) == pytest.approx(5.0, rel=1e-12)
    s = METRICS.get("straightness")
    assert s.fn(ctx, s.Params()) == pytest.approx(0.0, abs=1e-20)
    rpe = METRICS.get("rpe")
    assert rpe.fn(ctx, rpe.Params()) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("speed, expected", [(0.5, -0.75), (2.0, 3.0)])
def test_rpe_keeps_the_sign_that_npe_folds(speed, expected):
    """A flow that moves each point only half way spends PE = W2²/4 (under-transport:
    rpe = −0.75); one that overshoots to twice the distance spends 4 W2² (rpe = +3). NPE
    scores both by the absolute value."""
    r = rng(12)
    x_0 = r.normal(size=(64, 2))
    shift = np.array([1.0, -2.0])
    grid = list(np.linspace(0, 1, 11))
    flow = Trajectory(grid, straight(x_0, speed * np.broadcast_to(shift, x_0.shape), grid))
    ctx = EvalContext(source=x_0, reference=x_0 + shift, flow=lambda steps: flow)
    rpe, npe = METRICS.get("rpe"), METRICS.get("npe")
    assert rpe.fn(ctx, rpe.Params()) == pytest.approx(expected, rel=1e-9)
    assert npe.fn(ctx, npe.Params()) == pytest.approx(abs(expected), rel=1e-9)
    assert rpe.label == "rpe →0" and rpe.badness(-0.75) == rpe.badness(0.75) == 0.75


def test_flow_metrics_are_not_applicable_without_a_flow():
    ctx = EvalContext(source=np.zeros((4, 2)), reference=np.ones((4, 2)), flow=lambda steps: None)
    for name in ("straightness", "path_energy", "npe", "rpe"):
        m = METRICS.get(name)
        assert m.fn(ctx, m.Params()) is None


class _Field(nn.Module):
    """An analytic velocity field: constant (straight paths) or a rotation (curved)."""

    def __init__(self, rotate: bool):
        super().__init__()
        self.rotate = rotate

    def forward(self, x, t):
        if self.rotate:
            return torch.stack([-x[:, 1], x[:, 0]], dim=1)
        return torch.tensor([1.0, -2.0], dtype=x.dtype).expand_as(x)


def _evaluate_all(model, samplers, method="rectified-flow", extra=()):
    from harness.building import build, configure
    from harness.evaluation import evaluate
    from harness.plan import make_plan
    from harness.resolve import load_suite
    from tests.conftest import SPECS, TINY

    overrides = [*TINY, "datasets=[moons]", f"methods=[{method}]", f"samplers=[{', '.join(samplers)}]",
                 "metrics=[w2, straightness, path_energy, rpe, nfe]", *extra]
    plan = make_plan(load_suite("quickstart", overrides, root=SPECS))
    job = plan.trainings[-1]
    built = build(job, configure(job.hardware))
    out = {}
    for e in plan.evals[job.key]:
        status, metrics, measurements, _ = evaluate(e, built, model, {})
        out[e.sampler.name] = (status, metrics, measurements)
    return out


def test_straightness_of_a_flow_is_the_same_on_every_sampler():
    """Straightness and path energy belong to the flow: computed on the fixed Euler-100 grid,
    never from the sampler's own steps (which would give any one-step sampler exactly 0)."""
    samplers = ["euler-1", "euler-2", "heun-8", "dopri5"]
    straight_field = _evaluate_all(_Field(rotate=False), samplers)
    for status, metrics, measurements in straight_field.values():
        assert status == "ok" and metrics["straightness"] == pytest.approx(0.0, abs=1e-10)
        assert metrics["path_energy"] == pytest.approx(5.0, rel=1e-6)  # ‖(1, −2)‖²
        assert measurements["flow_grid"] == {"solver": "euler", "steps": [100]}
    curved = _evaluate_all(_Field(rotate=True), samplers)
    values = {name: m["straightness"] for name, (_, m, _) in curved.items()}
    assert len(set(values.values())) == 1 and values["euler-1"] > 0.1
    assert {m["nfe"] for _, m, _ in curved.values()} != {1}  # the samplers themselves differ
    # the value is the Euler-100 straightness of the rotation from the evaluation's x_0
    from harness.seeding import generator
    from implementations.datasets.toy2d import Normal

    x = Normal().sample(256, generator(0, "eval-source")).double().numpy()
    h, states = 0.01, [x]
    for _ in range(100):
        states.append(states[-1] + h * np.stack([-states[-1][:, 1], states[-1][:, 0]], 1))
    assert values["euler-1"] == pytest.approx(straightness(list(np.linspace(0, 1, 101)), states), rel=1e-5)


def test_a_one_step_map_has_no_straightness():
    out = _evaluate_all(_Field(rotate=True), ["euler-1", "euler-100"], method="rectified-flow-distilled",
                        extra=["methods.rectified-flow-distilled.teacher.num_pairs=64"])
    for status, metrics, measurements in out.values():
        assert status == "ok" and metrics["straightness"] is None and metrics["path_energy"] is None
        assert metrics["nfe"] == 1 and measurements["flow_grid"] == "not applicable: a one-step map"


class _Exploded(nn.Module):
    def forward(self, x, t):
        return torch.full_like(x, 1e12)


def test_exploded_but_finite_samples_are_diverged_not_ranked():
    """A finite divergence (samples at 1e12 where the data lie within ±4) gets status
    diverged and no quality numbers, never an ok row with W2 = 1e12."""
    out = _evaluate_all(_Exploded(), ["euler-1"])
    status, metrics, measurements = out["euler-1"]
    assert status == "diverged" and metrics["w2"] is None and metrics["straightness"] is None
    assert measurements["samples_out_of_range"] == 256 and measurements["samples_finite"] is True
    ok = _evaluate_all(_Field(rotate=False), ["euler-1"])["euler-1"]
    assert ok[0] == "ok" and ok[2]["samples_out_of_range"] == 0
