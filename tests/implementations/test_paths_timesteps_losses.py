"""Probability paths (target = time derivative of the path, endpoints), time samplers
(support, normalisation, histogram against the density, determinism) and losses
(reductions, weights, pseudo-Huber asymptotics)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from implementations.common.losses import MSE, PseudoHuber
from implementations.common.paths import PATHS, VP, BrownianBridge, Linear, Lipman, Trigonometric
from implementations.common.timesteps import LogitNormal, Uniform, UShaped


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pair(batch: int = 8, dims: tuple[int, ...] = (3,), seed: int = 0):
    g = gen(seed)
    x_0 = torch.randn(batch, *dims, generator=g, dtype=torch.float64)
    x_1 = 2 * torch.randn(batch, *dims, generator=g, dtype=torch.float64) + 1
    return x_0, x_1


# --------------------------------------------------------------------------------------
# paths
# --------------------------------------------------------------------------------------

PATH_INSTANCES = [cls() for cls in PATHS] + [BrownianBridge(sigma=0.5), Linear(sigma=0.2), Lipman(sigma_min=0.01)]
PATH_IDS = [f"{p.name}-{'-'.join(f'{k}={v}' for k, v in p.model_dump().items() if k != 'name')}"
            for p in PATH_INSTANCES]


def test_every_path_class_is_covered():
    assert {type(p) for p in PATH_INSTANCES} == set(PATHS)


@pytest.mark.parametrize("path", PATH_INSTANCES, ids=PATH_IDS)
@pytest.mark.parametrize("dims", [(3,), (2, 2)])
def test_target_is_the_time_derivative_of_the_path(path, dims):
    """Central difference of x_t with the same ε (same generator seed) equals dx_t."""
    h = 1e-5
    x_0, x_1 = pair(16, dims, seed=3)
    t = torch.linspace(0.05, 0.95, 16, dtype=torch.float64)
    ps = path.sample(x_0, x_1, t, gen(99))
    ahead = path.sample(x_0, x_1, t + h, gen(99)).x_t
    behind = path.sample(x_0, x_1, t - h, gen(99)).x_t
    fd = (ahead - behind) / (2 * h)
    assert ps.dx_t.shape == ps.x_t.shape == x_0.shape
    assert torch.equal(ps.t, t)
    scale = float(ps.dx_t.abs().max())
    torch.testing.assert_close(fd, ps.dx_t, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("path", PATH_INSTANCES, ids=PATH_IDS)
def test_coefficients_match_the_sampled_path(path):
    """x_t = α_t x_1 + σ_t x_0 (+ s_t ε): recover the deterministic part with ε from the same seed."""
    x_0, x_1 = pair(8, (2,), seed=5)
    t = torch.linspace(0.1, 0.9, 8, dtype=torch.float64)
    alpha, sigma, _, _ = path.coefficients(t)
    ps = path.sample(x_0, x_1, t, gen(1))
    expected = alpha[:, None] * x_1 + sigma[:, None] * x_0
    noise = path.noise(t)
    if noise is not None:
        eps = torch.randn(x_0.shape, generator=gen(1), dtype=x_0.dtype)
        expected = expected + noise[0][:, None] * eps
    torch.testing.assert_close(ps.x_t, expected, rtol=1e-12, atol=1e-12)


def test_noise_depends_on_the_generator():
    x_0, x_1 = pair(8, (2,), seed=5)
    t = torch.full((8,), 0.5, dtype=torch.float64)
    path = BrownianBridge(sigma=0.5)
    a = path.sample(x_0, x_1, t, gen(1)).x_t
    assert torch.equal(a, path.sample(x_0, x_1, t, gen(1)).x_t)
    assert not torch.equal(a, path.sample(x_0, x_1, t, gen(2)).x_t)


@pytest.mark.parametrize("path", [Linear(), Lipman(), Lipman(sigma_min=0.01), Trigonometric(), BrownianBridge(),
                                  BrownianBridge(sigma=0.5)], ids=lambda p: p.name)
def test_path_starts_at_the_source(path):
    x_0, x_1 = pair(8, (3,), seed=1)
    t = torch.zeros(8, dtype=torch.float64)
    alpha, sigma, _, _ = path.coefficients(t)
    assert torch.all(alpha == 0) and torch.all(sigma == 1)
    torch.testing.assert_close(path.sample(x_0, x_1, t, gen(0)).x_t, x_0, rtol=0, atol=1e-15)


@pytest.mark.parametrize("path", [Linear(), BrownianBridge(), BrownianBridge(sigma=0.5), Trigonometric(), VP()],
                         ids=lambda p: p.name)
def test_path_ends_at_the_data(path):
    x_0, x_1 = pair(8, (3,), seed=1)
    t = torch.ones(8, dtype=torch.float64)
    torch.testing.assert_close(path.sample(x_0, x_1, t, gen(0)).x_t, x_1, rtol=0, atol=1e-15)


def test_vp_starts_nearly_pure_noise():
    alpha, sigma, _, _ = VP().coefficients(torch.zeros(1, dtype=torch.float64))
    # a(1) = exp(−½(β_min + ½(β_max − β_min))) = exp(−5.025)
    assert float(alpha) == pytest.approx(math.exp(-5.025), rel=1e-12)
    assert float(alpha) < 0.01
    assert float(sigma) == pytest.approx(math.sqrt(1 - math.exp(-10.05)), rel=1e-12)


def test_vp_is_variance_preserving():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    alpha, sigma, _, _ = VP().coefficients(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("sigma_min", [1e-4, 0.01])
def test_lipman_ends_at_data_plus_sigma_min_source(sigma_min):
    x_0, x_1 = pair(8, (3,), seed=2)
    path = Lipman(sigma_min=sigma_min)
    ps = path.sample(x_0, x_1, torch.ones(8, dtype=torch.float64))
    torch.testing.assert_close(ps.x_t, x_1 + sigma_min * x_0, rtol=0, atol=1e-14)
    torch.testing.assert_close(ps.dx_t, x_1 - (1 - sigma_min) * x_0, rtol=0, atol=1e-14)


def test_trigonometric_velocity_at_the_ends():
    x_0, x_1 = pair(4, (2,), seed=2)
    path = Trigonometric()
    at_0 = path.sample(x_0, x_1, torch.zeros(4, dtype=torch.float64))
    at_1 = path.sample(x_0, x_1, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(at_0.dx_t, 0.5 * math.pi * x_1, rtol=0, atol=1e-14)
    torch.testing.assert_close(at_1.dx_t, -0.5 * math.pi * x_0, rtol=0, atol=1e-14)


def test_brownian_bridge_target_stays_finite_at_the_ends():
    x_0, x_1 = pair(4, (2,), seed=2)
    for t in (0.0, 1.0):
        ps = BrownianBridge().sample(x_0, x_1, torch.full((4,), t, dtype=torch.float64), gen(0))
        assert torch.isfinite(ps.dx_t).all()


# --------------------------------------------------------------------------------------
# time samplers
# --------------------------------------------------------------------------------------

SAMPLERS = [Uniform(), LogitNormal(), LogitNormal(m=0.5, s=0.6), LogitNormal(m=-1.0, s=1.5), UShaped(a=1.0),
            UShaped(a=4.0)]
SAMPLER_IDS = [f"{s.name}-{'-'.join(f'{k}={v}' for k, v in s.model_dump().items() if k != 'name')}"
               for s in SAMPLERS]
GRID = torch.linspace(1e-7, 1 - 1e-7, 400_001, dtype=torch.float64)


@pytest.fixture(scope="module")
def draws():
    return {sid: s.sample(200_000, gen(2024)) for s, sid in zip(SAMPLERS, SAMPLER_IDS)}


@pytest.mark.parametrize("sampler,sid", list(zip(SAMPLERS, SAMPLER_IDS)), ids=SAMPLER_IDS)
def test_time_samples_in_unit_interval(sampler, sid, draws):
    t = draws[sid]
    assert t.shape == (200_000,) and t.dtype == torch.float32
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    assert torch.isfinite(t).all()


@pytest.mark.parametrize("sampler", SAMPLERS, ids=SAMPLER_IDS)
def test_density_integrates_to_one(sampler):
    d = sampler.density(GRID)
    assert torch.all(d >= 0) and torch.isfinite(d).all()
    assert float(torch.trapezoid(d, GRID)) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("sampler,sid", list(zip(SAMPLERS, SAMPLER_IDS)), ids=SAMPLER_IDS)
def test_histogram_matches_density(sampler, sid, draws):
    t = draws[sid].double()
    n, bins = t.numel(), 20
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    counts = torch.histc(t, bins=bins, min=0.0, max=1.0)
    empirical = counts / n
    expected = torch.empty(bins, dtype=torch.float64)
    for k in range(bins):
        lo, hi = float(edges[k]), float(edges[k + 1])
        grid = torch.linspace(max(lo, 1e-9), min(hi, 1 - 1e-9), 20_001, dtype=torch.float64)
        expected[k] = torch.trapezoid(sampler.density(grid), grid)
    assert float(expected.sum()) == pytest.approx(1.0, abs=1e-3)
    tol = 5 * torch.sqrt(expected * (1 - expected) / n) + 2e-4
    assert float((empirical - expected).abs().max()) < 0.01
    assert torch.all((empirical - expected).abs() < tol), (empirical - expected).abs().max()


@pytest.mark.parametrize("sampler", SAMPLERS, ids=SAMPLER_IDS)
def test_time_samples_deterministic_given_generator(sampler):
    a = sampler.sample(1000, gen(5))
    torch.manual_seed(0)
    b = sampler.sample(1000, gen(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, sampler.sample(1000, gen(6)))


def test_logit_normal_location_sign():
    """m > 0 moves mass towards t = 1 (data) in this project's convention."""
    t = LogitNormal(m=1.0, s=1.0).sample(50_000, gen(0))
    assert float(t.double().median()) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.01)


def test_u_shaped_is_symmetric_and_heavier_at_the_ends():
    s = UShaped(a=4.0)
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    d = s.density(t)
    torch.testing.assert_close(d, d.flip(0), rtol=1e-12, atol=0)
    assert float(d[0]) > float(d[1]) > float(d[2])


# --------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [(2,), (3, 4)])
def test_mse_mean_and_sum_differ_by_the_dimension(dims):
    r = torch.randn(10, *dims, generator=gen(0), dtype=torch.float64)
    d = math.prod(dims)
    mean, total = MSE(reduce="mean")(r), MSE(reduce="sum")(r)
    assert float(total) == pytest.approx(d * float(mean), rel=1e-12)
    assert float(total) == pytest.approx(float(r.square().sum() / 10), rel=1e-12)
    torch.testing.assert_close(MSE().per_sample(r), r.reshape(10, -1).square().mean(1), rtol=1e-12, atol=0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 12), reduce=st.sampled_from(["mean", "sum"]))
def test_weighted_reduction(seed, batch, reduce):
    g = gen(seed)
    r = torch.randn(batch, 3, generator=g, dtype=torch.float64)
    w = torch.rand(batch, generator=g, dtype=torch.float64) + 0.01
    for loss in (MSE(reduce=reduce), PseudoHuber(), PseudoHuber(c=0.3)):
        per = loss.per_sample(r)
        assert per.shape == (batch,)
        assert float(loss(r, w)) == pytest.approx(float((w * per).sum() / w.sum()), rel=1e-12)
        # uniform weights: the plain mean, whatever their scale
        assert float(loss(r, torch.full((batch,), 7.0, dtype=torch.float64))) == pytest.approx(float(loss(r)),
                                                                                              rel=1e-12)


def test_pseudo_huber_asymptotics():
    c = 0.5
    loss = PseudoHuber(c=c, c_scale="sqrt_d")
    tiny = torch.tensor([[1e-4, -2e-4, 3e-4]], dtype=torch.float64)
    sq = float(tiny.square().sum())
    assert float(loss.per_sample(tiny)) == pytest.approx(sq / (2 * c), rel=1e-6)
    huge = torch.tensor([[3e4, -4e4, 0.0]], dtype=torch.float64)  # ‖Δ‖ = 5e4
    assert float(loss.per_sample(huge)) == pytest.approx(5e4 - c, rel=1e-12, abs=1e-4)
    assert float(loss.per_sample(torch.zeros(1, 3, dtype=torch.float64))) == 0.0


@pytest.mark.parametrize("dims", [(2,), (3, 32, 32)])
def test_pseudo_huber_default_c_is_rfpp_code(dims):
    """rfpp's train.py: c = 0.00054·d and the loss divided by d; CIFAR-10 gives c ≈ 1.659."""
    d = math.prod(dims)
    c = 0.00054 * d
    r = torch.randn(4, *dims, generator=gen(1), dtype=torch.float64)
    expected = (torch.sqrt(r.reshape(4, -1).square().sum(1) + c**2) - c) / d
    torch.testing.assert_close(PseudoHuber().per_sample(r), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(PseudoHuber(c=c).per_sample(r), expected, rtol=1e-12, atol=0)
    assert PseudoHuber().c is None
    if d == 3072:
        assert c == pytest.approx(1.65888)


@pytest.mark.parametrize("dims", [(2,), (3, 32, 32)])
def test_pseudo_huber_sqrt_d_is_consistency_models_c(dims):
    d = math.prod(dims)
    c = 0.00054 * math.sqrt(d)
    r = torch.randn(4, *dims, generator=gen(1), dtype=torch.float64)
    expected = torch.sqrt(r.reshape(4, -1).square().sum(1) + c**2) - c
    torch.testing.assert_close(PseudoHuber(c_scale="sqrt_d").per_sample(r), expected, rtol=1e-12, atol=0)
