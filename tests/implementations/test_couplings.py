"""Minibatch couplings: exact OT, entropic OT (Sinkhorn), Gibbs weights, and how CFM uses them.

Exact OT is checked against a brute-force minimum over all permutations; Sinkhorn plans
against their marginals and their two limits (reg → ∞: the independent plan; reg → 0:
the OT permutation); Gibbs weights against the closed-form kernel.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import implementations  # noqa: F401  (fills the registries)
from harness.interfaces import Batch
from harness.registry import METHODS
from implementations.common.couplings import (
    ExactOT,
    Gibbs,
    Independent,
    Pairing,
    Sinkhorn,
    exact_ot_permutation,
    squared_cost,
)
from implementations.flow_matching import CFMParams, ConditionalFlowMatching


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clouds(n: int, d: int, seed: int, m: int | None = None, dtype=torch.float64):
    g = gen(seed)
    x_0 = torch.randn(n, d, generator=g, dtype=dtype)
    x_1 = 2 * torch.randn(m or n, d, generator=g, dtype=dtype) + 0.5
    return x_0, x_1


def brute_force_min(cost: np.ndarray) -> float:
    n = cost.shape[0]
    perms = np.array(list(itertools.permutations(range(n))))
    return float(cost[np.arange(n)[None, :], perms].sum(axis=1).min())


def row_indices(rows: torch.Tensor, source: torch.Tensor) -> list[int]:
    """For each row of ``rows``, the index of the identical row of ``source`` (exactly one)."""
    out = []
    for r in rows:
        hits = torch.nonzero((source == r).all(dim=1)).flatten().tolist()
        assert len(hits) == 1, f"row {r} found {len(hits)} times in the source"
        out.append(hits[0])
    return out


def assert_permutation(perm, n: int) -> None:
    perm = np.asarray(perm)
    assert perm.shape == (n,)
    assert sorted(perm.tolist()) == list(range(n))


# --------------------------------------------------------------------------------------
# exact OT
# --------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 7), d=st.integers(1, 3), seed=st.integers(0, 2**20))
def test_exact_ot_pairing_is_brute_force_optimal(n, d, seed):
    x_0, x_1 = clouds(n, d, seed)
    pairing = ExactOT().pair(x_0, x_1, gen(seed))
    assert isinstance(pairing, Pairing)
    assert pairing.weights is None
    # x_0 unchanged, x_1 a permutation of the input rows, each used once
    assert torch.equal(pairing.x_0, x_0)
    assert pairing.x_1.shape == x_1.shape
    perm = row_indices(pairing.x_1, x_1)
    assert_permutation(perm, n)
    total = float((pairing.x_0 - pairing.x_1).square().sum())
    best = brute_force_min(squared_cost(x_0, x_1))
    assert total == pytest.approx(best, abs=1e-9, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 6), seed=st.integers(0, 2**20))
def test_exact_ot_multidimensional_samples(n, seed):
    """Samples of shape (batch, 2, 2) are flattened for the cost; rows stay intact."""
    g = gen(seed)
    x_0 = torch.randn(n, 2, 2, generator=g, dtype=torch.float64)
    x_1 = torch.randn(n, 2, 2, generator=g, dtype=torch.float64) + 1
    pairing = ExactOT().pair(x_0, x_1, gen(0))
    assert torch.equal(pairing.x_0, x_0)
    perm = row_indices(pairing.x_1.reshape(n, -1), x_1.reshape(n, -1))
    assert_permutation(perm, n)
    total = float((pairing.x_0 - pairing.x_1).square().sum())
    assert total == pytest.approx(brute_force_min(squared_cost(x_0, x_1)), abs=1e-9, rel=1e-12)


def test_squared_cost_matches_definition():
    x_0, x_1 = clouds(4, 3, seed=1, m=5)
    cost = squared_cost(x_0, x_1)
    assert cost.shape == (4, 5) and cost.dtype == np.float64
    expected = ((x_0[:, None, :] - x_1[None, :, :]) ** 2).sum(-1).numpy()
    np.testing.assert_allclose(cost, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cost", [
    np.zeros((5, 5)),
    np.ones((4, 4)),
    np.array([[1.0, 1.0, 2.0], [1.0, 1.0, 2.0], [2.0, 2.0, 1.0]]),  # duplicated rows
    np.ones((2, 2)),
    # corners of a square against the same corners rotated by 90°: several optimal plans
    squared_cost(torch.tensor([[0.0, 0], [1, 0], [1, 1], [0, 1]], dtype=torch.float64),
                 torch.tensor([[1.0, 0], [1, 1], [0, 1], [0, 0]], dtype=torch.float64)),
    np.tile(np.arange(6.0), (6, 1)),  # every permutation has the same cost
])
def test_exact_ot_permutation_with_ties_is_valid_and_optimal(cost):
    perm = exact_ot_permutation(cost)
    n = cost.shape[0]
    assert_permutation(perm, n)
    assert float(cost[np.arange(n), perm].sum()) == pytest.approx(brute_force_min(cost), abs=1e-12)


def test_exact_ot_with_duplicate_points_uses_each_row_once():
    x_0 = torch.zeros(5, 2, dtype=torch.float64)
    x_1 = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1], [2, 2]], dtype=torch.float64)
    pairing = ExactOT().pair(x_0, x_1, gen(0))
    # multiset of rows preserved
    assert sorted(map(tuple, pairing.x_1.tolist())) == sorted(map(tuple, x_1.tolist()))


def test_exact_ot_requires_equal_sizes():
    x_0, x_1 = clouds(4, 2, seed=0, m=5)
    with pytest.raises(ValueError, match="equal batch sizes"):
        ExactOT().pair(x_0, x_1, gen(0))


def test_exact_ot_identity_when_already_optimal():
    """A cloud paired with a small translate of itself: the OT pairing is the identity."""
    x_0, _ = clouds(7, 2, seed=3)
    x_1 = x_0 + 1e-3
    shuffled = x_1[torch.randperm(7, generator=gen(1))]
    pairing = ExactOT().pair(x_0, shuffled, gen(0))
    assert torch.equal(pairing.x_1, x_1)


def test_exact_ot_float32_input_keeps_dtype():
    x_0, x_1 = clouds(6, 2, seed=5, dtype=torch.float32)
    pairing = ExactOT().pair(x_0, x_1, gen(0))
    assert pairing.x_1.dtype == torch.float32
    assert_permutation(row_indices(pairing.x_1, x_1), 6)


# --------------------------------------------------------------------------------------
# Sinkhorn
# --------------------------------------------------------------------------------------


SINKHORN_METHODS = ["sinkhorn", "sinkhorn_log"]


@pytest.mark.parametrize("method", SINKHORN_METHODS)
@pytest.mark.parametrize("n,m,reg", [(5, 5, 0.5), (5, 5, 5.0), (4, 7, 0.05), (4, 7, 0.5), (8, 3, 0.5), (8, 3, 5.0),
                                     (32, 32, 0.5)])
def test_sinkhorn_plan_marginals(method, n, m, reg):
    """Well-conditioned cases (reg not tiny against the cost spread): both marginals to 1e-6."""
    x_0, x_1 = clouds(n, 2, seed=1000 + n * 10 + m, m=m)
    cost = squared_cost(x_0, x_1)
    pi = Sinkhorn(reg=reg, method=method).plan(cost, reg)
    assert pi.shape == (n, m)
    assert np.all(pi >= 0)
    np.testing.assert_allclose(pi.sum(axis=1), np.full(n, 1 / n), atol=1e-6, rtol=0)
    np.testing.assert_allclose(pi.sum(axis=0), np.full(m, 1 / m), atol=1e-6, rtol=0)


def test_sinkhorn_methods_agree_where_both_are_stable():
    x_0, x_1 = clouds(6, 2, seed=5, m=6)
    cost = squared_cost(x_0, x_1)
    plain = Sinkhorn(reg=1.0, method="sinkhorn").plan(cost, 1.0)
    log = Sinkhorn(reg=1.0, method="sinkhorn_log").plan(cost, 1.0)
    np.testing.assert_allclose(plain, log, atol=1e-9, rtol=0)


def test_sinkhorn_plain_underflow_is_an_error():
    """reg = 1e-3 against costs of order 1–40: exp(−C/reg) underflows to 0 everywhere."""
    x_0, x_1 = clouds(4, 2, seed=1047, m=7)
    cost = squared_cost(x_0, x_1)
    with pytest.raises(ValueError, match="sinkhorn_log"):
        Sinkhorn(reg=1e-3, method="sinkhorn").plan(cost, 1e-3)


@pytest.mark.parametrize("method,reg", [("sinkhorn", 0.05), ("sinkhorn_log", 0.02)])
def test_sinkhorn_plan_never_silently_violates_marginals(method, reg):
    x_0, x_1 = clouds(8, 2, seed=1083, m=3)
    cost = squared_cost(x_0, x_1)
    try:
        pi = Sinkhorn(reg=reg, method=method).plan(cost, reg)
    except ValueError:
        return  # refusing is fine; a silently wrong plan is not
    np.testing.assert_allclose(pi.sum(axis=1), np.full(8, 1 / 8), atol=1e-3, rtol=0)
    np.testing.assert_allclose(pi.sum(axis=0), np.full(3, 1 / 3), atol=1e-3, rtol=0)


def test_sinkhorn_large_reg_approaches_independent_plan():
    x_0, x_1 = clouds(5, 2, seed=2, m=6)
    cost = squared_cost(x_0, x_1)
    errors = []
    for reg in (1e2, 1e4, 1e6):
        pi = Sinkhorn(reg=reg).plan(cost, reg)
        errors.append(np.abs(pi - 1 / 30).max())
    assert errors[-1] * 30 < 1e-4  # relative deviation ~ max cost / reg
    assert errors[0] > errors[1] > errors[2]


def test_sinkhorn_small_reg_concentrates_on_the_ot_permutation():
    # well-separated clusters: the OT permutation is unique with a large cost gap
    x_0 = torch.tensor([[0.0, 0], [3, 0], [0, 3], [3, 3], [6, 0]], dtype=torch.float64)
    order = torch.tensor([2, 4, 0, 3, 1])
    x_1 = (x_0 + 0.1)[order]
    cost = squared_cost(x_0, x_1)
    perm = exact_ot_permutation(cost)
    reg = 0.05
    pi = Sinkhorn(reg=reg, method="sinkhorn_log").plan(cost, reg)
    np.testing.assert_allclose(pi.sum(axis=0), np.full(5, 0.2), atol=1e-6, rtol=0)
    on_perm = pi[np.arange(5), perm].sum() / pi.sum()
    assert on_perm > 0.99
    # a larger reg spreads mass off the permutation
    wide = Sinkhorn(reg=20.0).plan(cost, 20.0)
    assert wide[np.arange(5), perm].sum() < 0.9


def test_sinkhorn_pairs_come_from_the_plan_support():
    """Small reg: off-permutation entries underflow to 0, so every drawn pair is an OT pair."""
    x_0 = torch.tensor([[0.0, 0], [5, 0], [0, 5], [5, 5]], dtype=torch.float64)
    x_1 = (x_0 + 0.2)[torch.tensor([3, 1, 0, 2])]
    coupling = Sinkhorn(reg=0.01, method="sinkhorn_log")
    pi = coupling.plan(squared_cost(x_0, x_1), 0.01)
    np.testing.assert_allclose(pi.sum(axis=0), np.full(4, 0.25), atol=1e-6, rtol=0)
    support = {(i, j) for i, j in zip(*np.nonzero(pi > 0))}
    for seed in range(5):
        pairing = coupling.pair(x_0, x_1, gen(seed))
        assert pairing.x_0.shape == x_0.shape and pairing.weights is None
        i = row_indices(pairing.x_0, x_0)
        j = row_indices(pairing.x_1, x_1)
        for pair in zip(i, j):
            assert pair in support
            # and here the support is the OT permutation itself (x_1[j] = x_0[i] + 0.2)
            assert torch.allclose(x_1[pair[1]], x_0[pair[0]] + 0.2)


def test_sinkhorn_pair_frequencies_follow_the_plan():
    n = 4
    x_0, x_1 = clouds(n, 2, seed=11)
    coupling = Sinkhorn(reg=1.0)
    pi = coupling.plan(squared_cost(x_0, x_1), 1.0)
    pi = pi / pi.sum()
    counts = np.zeros((n, n))
    draws = 0
    for seed in range(400):
        pairing = coupling.pair(x_0, x_1, gen(seed))
        for a, b in zip(row_indices(pairing.x_0, x_0), row_indices(pairing.x_1, x_1)):
            counts[a, b] += 1
            draws += 1
    freq = counts / draws
    tol = 5 * np.sqrt(pi * (1 - pi) / draws) + 1e-3
    assert np.all(np.abs(freq - pi) < tol)


def test_sinkhorn_pair_draws_n_pairs_for_unequal_sizes():
    x_0, x_1 = clouds(6, 2, seed=4, m=9)
    pairing = Sinkhorn(reg=0.5).pair(x_0, x_1, gen(0))
    assert pairing.x_0.shape == (6, 2) and pairing.x_1.shape == (6, 2)
    row_indices(pairing.x_0, x_0)
    row_indices(pairing.x_1, x_1)


def test_sinkhorn_pair_deterministic_given_generator():
    x_0, x_1 = clouds(16, 2, seed=8)
    coupling = Sinkhorn(reg=0.5)
    a = coupling.pair(x_0, x_1, gen(42))
    b = coupling.pair(x_0, x_1, gen(42))
    assert torch.equal(a.x_0, b.x_0) and torch.equal(a.x_1, b.x_1)
    # and the global RNG is not what drives it
    torch.manual_seed(0)
    c = coupling.pair(x_0, x_1, gen(42))
    torch.manual_seed(1)
    d = coupling.pair(x_0, x_1, gen(42))
    assert torch.equal(c.x_0, d.x_0) and torch.equal(c.x_1, d.x_1)
    assert torch.equal(a.x_0, c.x_0)


def test_sinkhorn_without_reg_raises():
    x_0, x_1 = clouds(4, 2, seed=0)
    with pytest.raises(ValueError, match="reg"):
        Sinkhorn().pair(x_0, x_1, gen(0))


# --------------------------------------------------------------------------------------
# Gibbs
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("dims", [(3,), (2, 2)])
def test_gibbs_weights_are_the_normalised_kernel(epsilon, dims):
    g = gen(7)
    x_0 = torch.randn(12, *dims, generator=g, dtype=torch.float64)
    x_1 = torch.randn(12, *dims, generator=g, dtype=torch.float64)
    pairing = Gibbs(epsilon=epsilon).pair(x_0, x_1, gen(0))
    assert torch.equal(pairing.x_0, x_0) and torch.equal(pairing.x_1, x_1)
    w = pairing.weights
    assert w.shape == (12,) and not w.requires_grad
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-12)
    kernel = torch.exp(-(x_0 - x_1).reshape(12, -1).square().sum(1) / epsilon)
    ratio = w / kernel  # one normalising constant for the whole batch
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0])), rtol=1e-10, atol=0)
    torch.testing.assert_close(w, kernel / kernel.mean(), rtol=1e-10, atol=0)


def test_gibbs_mean_cost_scale():
    """epsilon_scale: mean_cost uses ε·mean(c) as the temperature."""
    x_0, x_1 = clouds(10, 2, seed=4)
    cost = (x_0 - x_1).square().sum(1)
    w = Gibbs(epsilon=0.5, epsilon_scale="mean_cost").pair(x_0, x_1, gen(0)).weights
    kernel = torch.exp(-cost / (0.5 * cost.mean()))
    torch.testing.assert_close(w, kernel / kernel.mean(), rtol=1e-10, atol=0)
    # invariant to rescaling the data
    w_scaled = Gibbs(epsilon=0.5, epsilon_scale="mean_cost").pair(3 * x_0, 3 * x_1, gen(0)).weights
    torch.testing.assert_close(w_scaled, w, rtol=1e-10, atol=0)


def test_gibbs_mean_cost_scale_with_zero_costs():
    x_0, _ = clouds(5, 2, seed=6)
    w = Gibbs(epsilon_scale="mean_cost").pair(x_0, x_0.clone(), gen(0)).weights
    torch.testing.assert_close(w, torch.ones_like(w))


def test_gibbs_large_epsilon_approaches_ones():
    x_0, x_1 = clouds(10, 2, seed=3)
    deviations = [float((Gibbs(epsilon=eps).pair(x_0, x_1, gen(0)).weights - 1).abs().max())
                  for eps in (1.0, 1e2, 1e4, 1e8)]
    assert deviations == sorted(deviations, reverse=True)
    assert deviations[-1] < 1e-6


def test_gibbs_weights_finite_for_tiny_epsilon():
    """Self-normalisation in log space keeps the weights finite when every kernel underflows."""
    x_0, x_1 = clouds(8, 2, seed=9)
    w = Gibbs(epsilon=1e-4).pair(x_0, x_1, gen(0)).weights
    assert torch.isfinite(w).all()
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-9)


def test_gibbs_gradients_do_not_flow_through_weights():
    x_0, x_1 = clouds(6, 2, seed=1)
    x_0.requires_grad_(True)
    w = Gibbs().pair(x_0, x_1, gen(0)).weights
    assert not w.requires_grad


def test_independent_coupling_returns_inputs():
    x_0, x_1 = clouds(6, 2, seed=1)
    pairing = Independent().pair(x_0, x_1, gen(0))
    assert pairing.x_0 is x_0 and pairing.x_1 is x_1 and pairing.weights is None


# --------------------------------------------------------------------------------------
# CFMParams and ConditionalFlowMatching
# --------------------------------------------------------------------------------------


def test_cfm_sinkhorn_reg_defaults_to_two_sigma_squared():
    params = CFMParams(coupling={"name": "sinkhorn"}, path={"name": "linear", "sigma": 0.1})
    assert isinstance(params.coupling, Sinkhorn)
    assert params.coupling.reg == pytest.approx(0.02, rel=1e-12)


def test_cfm_sinkhorn_reg_from_brownian_bridge_sigma():
    params = CFMParams(coupling={"name": "sinkhorn"}, path={"name": "brownian_bridge", "sigma": 0.5})
    assert params.coupling.reg == pytest.approx(0.5, rel=1e-12)


def test_cfm_sinkhorn_explicit_reg_is_kept():
    params = CFMParams(coupling={"name": "sinkhorn", "reg": 0.3}, path={"name": "linear", "sigma": 0.1})
    assert params.coupling.reg == 0.3


@pytest.mark.parametrize("path", [{"name": "linear"}, {"name": "linear", "sigma": 0.0}, {"name": "lipman"},
                                  {"name": "trigonometric"}])
def test_cfm_sinkhorn_without_reg_or_sigma_is_rejected(path):
    with pytest.raises(ValidationError, match="reg"):
        CFMParams(coupling={"name": "sinkhorn"}, path=path)


def test_cfm_exact_ot_prefetches_and_prepares_ot_pairs():
    method = METHODS.get("cfm")(CFMParams(coupling={"name": "exact_ot"}))
    assert isinstance(method, ConditionalFlowMatching)
    assert method.prefetch is True
    x_0, x_1 = clouds(7, 2, seed=21)
    prepared = method.prepare(Batch(x_0=x_0, x_1=x_1), gen(0))
    assert isinstance(prepared, Batch)
    expected = ExactOT().pair(x_0, x_1, gen(0))
    assert torch.equal(prepared.x_0, expected.x_0)
    assert torch.equal(prepared.x_1, expected.x_1)
    assert prepared.weights is None
    total = float((prepared.x_0 - prepared.x_1).square().sum())
    assert total == pytest.approx(brute_force_min(squared_cost(x_0, x_1)), abs=1e-9)


@pytest.mark.parametrize("coupling,prefetch", [
    ({"name": "independent"}, False),
    ({"name": "gibbs"}, False),
    ({"name": "sinkhorn", "reg": 0.1}, True),
])
def test_cfm_prefetch_flag(coupling, prefetch):
    method = ConditionalFlowMatching(CFMParams(coupling=coupling))
    assert method.prefetch is prefetch


def test_cfm_independent_prepare_keeps_batch_and_gibbs_attaches_weights():
    x_0, x_1 = clouds(5, 2, seed=2)
    plain = ConditionalFlowMatching(CFMParams()).prepare(Batch(x_0=x_0, x_1=x_1), gen(0))
    assert torch.equal(plain.x_0, x_0) and torch.equal(plain.x_1, x_1) and plain.weights is None
    weighted = ConditionalFlowMatching(CFMParams(coupling={"name": "gibbs", "epsilon": 2.0})).prepare(
        Batch(x_0=x_0, x_1=x_1), gen(0))
    kernel = torch.exp(-(x_0 - x_1).square().sum(1) / 2.0)
    torch.testing.assert_close(weighted.weights, kernel / kernel.mean(), rtol=1e-10, atol=0)
    assert math.isclose(float(weighted.weights.mean()), 1.0, abs_tol=1e-12)
