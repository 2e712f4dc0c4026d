"""Metric formulas against closed forms and hand-worked values (not against themselves)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.metrics import (
    EvalContext,
    median_bandwidth,
    mmd_rbf,
    normalized_path_energy,
    path_energy,
    straightness,
    wasserstein,
)
from harness.registry import METRICS


def _mmd2_gaussians(mu: np.ndarray, s: float, h: float, n: int) -> float:
    """E[biased MMD²] for X ~ N(0, s²I_d), Y ~ N(μ, s²I_d), n points each, kernel
    exp(−‖a − b‖²/(2h²)). With c = (h²/(h² + 2s²))^{d/2}: E k(X, X') = c, E k(X, Y) =
    c·exp(−‖μ‖²/(2(h² + 2s²))); the V-statistic's diagonal adds (1 − c)/n to each of the two
    within-sample terms."""
    d = len(mu)
    c = (h**2 / (h**2 + 2 * s**2)) ** (d / 2)
    cross = c * math.exp(-float(mu @ mu) / (2 * (h**2 + 2 * s**2)))
    return 2 * c - 2 * cross + 2 * (1 - c) / n


# Tolerances are about four standard deviations of the estimate at n = 3000 (measured over
# 8 seeds: 0.006, 0.0002, 0.007, 0.005); a wrong coefficient moves it by 0.3 or more.
@pytest.mark.parametrize("mu, s, h, tol", [((1.0, 0.0), 1.0, 1.0, 0.025), ((0.0, 0.0), 1.0, 1.0, 0.001),
                                           ((2.0, 1.0), 0.5, 2.0, 0.03), ((0.5, 0.5, 0.5), 1.0, 1.5, 0.02)])
def test_mmd_matches_its_closed_form_on_gaussians(mu, s, h, tol):
    rng = np.random.default_rng(0)
    mu = np.asarray(mu)
    n = 3000
    x = s * rng.standard_normal((n, len(mu)))
    y = mu + s * rng.standard_normal((n, len(mu)))
    expected = _mmd2_gaussians(mu, s, h, n)
    assert mmd_rbf(x, y, h) ** 2 == pytest.approx(expected, abs=tol)


def test_mmd_of_a_sample_with_itself_is_zero_and_is_symmetric():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((200, 2)), rng.standard_normal((200, 2)) + 1
    assert mmd_rbf(x, x, 1.0) == 0.0
    assert mmd_rbf(x, y, 1.0) == pytest.approx(mmd_rbf(y, x, 1.0), rel=1e-12)


def test_median_bandwidth_is_the_median_pooled_distance():
    x = np.array([[0.0, 0.0]])
    y = np.array([[3.0, 4.0]])
    assert median_bandwidth(x, y) == 5.0  # one pair, at distance 5
    x = np.array([[0.0, 0.0], [0.0, 1.0]])
    y = np.array([[0.0, 3.0]])
    assert median_bandwidth(x, y) == 2.0  # distances 1, 2, 3


def test_wasserstein_on_hand_worked_clouds():
    x = np.array([[0.0, 0.0], [1.0, 0.0]])
    y = np.array([[1.0, 2.0], [0.0, 2.0]])  # the optimal plan moves each point up by 2
    assert wasserstein(x, y, p=2) == pytest.approx(2.0, abs=1e-12)
    assert wasserstein(x, y, p=1) == pytest.approx(2.0, abs=1e-12)
    z = np.array([[0.0, 0.0], [3.0, 4.0]])  # one point stays, one moves by 5 (from (1, 0): √20)
    assert wasserstein(x, z, p=2) == pytest.approx(math.sqrt(20 / 2), abs=1e-12)
    assert wasserstein(x, z, p=1) == pytest.approx(math.sqrt(20) / 2, abs=1e-12)


def test_w2_floor_compares_two_independent_reference_samples():
    rng = np.random.default_rng(2)
    reference, reference_2 = rng.standard_normal((300, 2)), rng.standard_normal((300, 2))
    ctx = EvalContext(samples=reference_2 + 5, reference=reference, reference_2=reference_2, num_samples=300)
    floor = METRICS.get("w2_floor").fn(ctx, METRICS.get("w2_floor").Params())
    assert floor == pytest.approx(wasserstein(reference_2, reference), rel=1e-12)
    # two draws of 300 from N(0, I) are about 0.3 apart in W2; a floor of 0 would be a bug
    assert 0.15 < floor < 0.6
    w2 = METRICS.get("w2").fn(ctx, METRICS.get("w2").Params())
    assert w2 == pytest.approx(wasserstein(reference_2 + 5, reference), rel=1e-12) and w2 > 4


def test_straightness_and_path_energy_on_a_hand_worked_path():
    """Z: (0, 0) → (1, 1) → (2, 0) at t = 0, ½, 1. Chord (2, 0); step velocities (2, ±2).
    S = ½·‖(0, ∓2)‖² + ½·‖(0, ±2)‖² = 4; PE = ½·8 + ½·8 = 8."""
    times = [0.0, 0.5, 1.0]
    trajectory = [np.array([[0.0, 0.0]]), np.array([[1.0, 1.0]]), np.array([[2.0, 0.0]])]
    assert straightness(times, trajectory) == pytest.approx(4.0)
    assert path_energy(times, trajectory) == pytest.approx(8.0)
    straight = [np.array([[0.0, 0.0]]), np.array([[1.0, 0.0]]), np.array([[2.0, 0.0]])]
    assert straightness(times, straight) == 0.0
    assert path_energy(times, straight) == pytest.approx(4.0)


def test_normalized_path_energy():
    assert normalized_path_energy(3.0, 2.0) == pytest.approx(0.5)
    assert normalized_path_energy(1.0, 2.0) == pytest.approx(0.5)
    assert normalized_path_energy(2.0, 2.0) == 0.0


@pytest.mark.parametrize("name, better, worse", [("w2", 0.1, 0.2), ("throughput", 200.0, 100.0),
                                                 ("train_steps_per_s", 30.0, 10.0), ("latency", 1.0, 2.0)])
def test_badness_ranks_each_metric_in_its_own_direction(name, better, worse):
    metric = METRICS.get(name)
    assert metric.badness(better) < metric.badness(worse)
