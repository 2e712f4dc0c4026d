"""Trajectory metrics on analytic trajectories: path energy, straightness and normalised
path energy (NPE) with the exact W2 between point clouds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.metrics import (
    EvalContext,
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
    ctx = EvalContext(source=x_0, reference=(x_0 + shift)[r.permutation(64)], times=grid,
                      trajectory=straight(x_0, np.broadcast_to(shift, x_0.shape), grid))
    npe = METRICS.get("npe")
    assert npe.fn(ctx, npe.Params()) == pytest.approx(0.0, abs=1e-9)
    pe = METRICS.get("path_energy")
    assert pe.fn(ctx, pe.Params()) == pytest.approx(5.0, rel=1e-12)
    s = METRICS.get("straightness")
    assert s.fn(ctx, s.Params()) == pytest.approx(0.0, abs=1e-20)
