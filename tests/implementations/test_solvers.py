"""ODE solvers: exact answers for fields whose integral is known, convergence orders,
NFE counted at the call against the documented conventions, recorded trajectories.

Every numeric check runs in float64 with an explicit tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import implementations  # noqa: F401  (fills the registries)
from harness.interfaces import Solution, Solver
from harness.measure import NFECounter
from harness.registry import SOLVERS
from tests.conftest import expected_calls

# Evaluations per step, as documented in implementations/common/solvers.py.
FIXED_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
ORDER = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
ATOL = 1e-12  # float64 round-off over at most a few hundred steps




def fixed(name: str, steps: int) -> Solver:
    cls = SOLVERS.get(name)
    return cls(cls.Params(steps=steps))


def dopri5(tol: float = 1e-10) -> Solver:
    cls = SOLVERS.get("dopri5")
    return cls(cls.Params(atol=tol, rtol=tol))


def x0_f64(batch: int = 5, dim: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def constant(c: torch.Tensor):
    return lambda x, t: c.expand_as(x).clone()


def three_t_squared(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 3 * t**2 * torch.ones_like(x)  # ∫₀¹ 3t² dt = 1


def identity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return x  # x(1) = e·x(0)


def skip_autoregressive(cls) -> None:
    """The ar-* samplers invert autoregressive flows and solve no ODE (test_tarflow.py)."""
    if getattr(cls, "autoregressive", False):
        pytest.skip("an autoregressive-flow sampler")


def test_registered_solvers_satisfy_the_protocol():
    for name in SOLVERS.names():
        cls = SOLVERS.get(name)
        assert isinstance(cls(cls.Params()), Solver), name
        expected_calls(cls.nfe_convention, 1)  # a convention this suite understands


@pytest.mark.parametrize("name", sorted(FIXED_STEP))
def test_documented_nfe_convention(name):
    cls = SOLVERS.get(name)
    k = FIXED_STEP[name]
    assert cls.evals_per_step == k
    assert cls.nfe_convention == ("N" if k == 1 else f"{k}N")
    assert SOLVERS.get("dopri5").nfe_convention == "counted"


# --------------------------------------------------------------------------------------
# Exact answers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXED_STEP))
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_constant_velocity_is_exact(name, steps):
    x0 = x0_f64()
    c = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64)
    sol = fixed(name, steps).solve(constant(c), x0)
    assert isinstance(sol, Solution)
    assert sol.steps == steps and sol.rejected_steps == 0
    assert sol.times == [] and sol.trajectory == []
    torch.testing.assert_close(sol.x, x0 + c, atol=ATOL, rtol=0)


def test_constant_velocity_dopri5():
    x0 = x0_f64()
    c = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64)
    sol = dopri5().solve(constant(c), x0)
    torch.testing.assert_close(sol.x, x0 + c, atol=ATOL, rtol=0)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(FIXED_STEP)),
    steps=st.integers(1, 64),
    c=st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_constant_velocity_is_exact_property(name, steps, c, seed):
    x0 = x0_f64(batch=4, dim=2, seed=seed)
    c_ = torch.tensor(c, dtype=torch.float64)
    sol = fixed(name, steps).solve(constant(c_), x0)
    torch.testing.assert_close(sol.x, x0 + c_, atol=ATOL, rtol=0)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.integers(1, 32),
    coeffs=st.lists(st.floats(-5, 5, allow_nan=False), min_size=4, max_size=4),
    t_0=st.floats(-1, 1),
    length=st.floats(0.1, 2),
)
def test_rk4_is_exact_for_cubics_in_t(steps, coeffs, t_0, length):
    """With v independent of x, an RK4 step is Simpson's rule, exact for cubics."""
    a, b, c, d = coeffs
    t_1 = t_0 + length

    def v(x, t):
        return (a * t**3 + b * t**2 + c * t + d) * torch.ones_like(x)

    def antiderivative(t):
        return a * t**4 / 4 + b * t**3 / 3 + c * t**2 / 2 + d * t

    x0 = x0_f64(batch=2, dim=2)
    sol = fixed("rk4", steps).solve(v, x0, t_0, t_1)
    expected = x0 + (antiderivative(t_1) - antiderivative(t_0))
    torch.testing.assert_close(sol.x, expected, atol=1e-10, rtol=0)


# v = 3t² has f'' constant, so each rule's quadrature error is exact:
# left Riemann (Euler): 1 - 3/(2N) + 1/(2N²); midpoint rule: 1 - 1/(4N²);
# trapezoid (Heun): 1 + 1/(2N²); Simpson (RK4): 1.
QUADRATURE_3T2 = {
    "euler": lambda n: 1 - 3 / (2 * n) + 1 / (2 * n**2),
    "midpoint": lambda n: 1 - 1 / (4 * n**2),
    "heun": lambda n: 1 + 1 / (2 * n**2),
    "rk4": lambda n: 1.0,
}


@pytest.mark.parametrize("name", sorted(FIXED_STEP))
@pytest.mark.parametrize("steps", [1, 2, 5, 16])
def test_three_t_squared_quadrature_error_is_exact(name, steps):
    x0 = x0_f64()
    sol = fixed(name, steps).solve(three_t_squared, x0)
    torch.testing.assert_close(sol.x, x0 + QUADRATURE_3T2[name](steps), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(FIXED_STEP))
def test_three_t_squared_convergence_order(name):
    x0 = torch.zeros(1, 1, dtype=torch.float64)

    def error(n):
        return abs(fixed(name, n).solve(three_t_squared, x0).x.item() - 1.0)

    if name == "rk4":
        assert error(4) < ATOL and error(8) < ATOL
        return
    ratio = error(16) / error(32)
    assert ratio == pytest.approx(2 ** ORDER[name], rel=0.10)


def test_dopri5_three_t_squared():
    x0 = x0_f64()
    sol = dopri5(1e-10).solve(three_t_squared, x0)
    torch.testing.assert_close(sol.x, x0 + 1, atol=1e-8, rtol=0)


# For v = x each step multiplies by the method's stability polynomial R(h).
STABILITY = {
    "euler": lambda h: 1 + h,
    "midpoint": lambda h: 1 + h + h**2 / 2,
    "heun": lambda h: 1 + h + h**2 / 2,
    "rk4": lambda h: 1 + h + h**2 / 2 + h**3 / 6 + h**4 / 24,
}


@pytest.mark.parametrize("name", sorted(FIXED_STEP))
@pytest.mark.parametrize("steps", [1, 4, 10])
def test_linear_field_matches_stability_polynomial(name, steps):
    x0 = x0_f64()
    sol = fixed(name, steps).solve(identity, x0)
    factor = STABILITY[name](1.0 / steps) ** steps
    torch.testing.assert_close(sol.x, x0 * factor, atol=ATOL, rtol=1e-13)


@pytest.mark.parametrize("name", sorted(FIXED_STEP))
def test_linear_field_convergence_order(name):
    x0 = torch.ones(1, 1, dtype=torch.float64)

    def error(n):
        return abs(fixed(name, n).solve(identity, x0).x.item() - math.e)

    ratio = error(16) / error(32)
    assert ratio == pytest.approx(2 ** ORDER[name], rel=0.10)


def test_dopri5_linear_field():
    x0 = x0_f64()
    sol = dopri5(1e-10).solve(identity, x0)
    torch.testing.assert_close(sol.x, x0 * math.e, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", [*sorted(FIXED_STEP), "dopri5"])
def test_integrates_over_other_intervals_and_backwards(name):
    """x(t_1) = x(t_0) + t_1³ - t_0³ for v = 3t², forwards and backwards in time."""
    x0 = x0_f64()
    solver = dopri5(1e-10) if name == "dopri5" else fixed(name, 64)
    # 64 steps: rk4 is exact, midpoint/heun err by |Δt|·h²/2 at most (< 1e-2 here),
    # Euler by about 3/(2·64) of the increment.
    atol = {"dopri5": 1e-8, "rk4": 1e-10, "midpoint": 1e-2, "heun": 1e-2}.get(name)
    for t_0, t_1 in [(0.0, 1.0), (1.0, 0.0), (0.5, 2.0), (2.0, -1.0)]:
        sol = solver.solve(three_t_squared, x0, t_0, t_1)
        increment = t_1**3 - t_0**3
        tol = 0.05 * abs(increment) if atol is None else atol
        torch.testing.assert_close(sol.x, x0 + increment, atol=tol, rtol=0)
    c = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    sol = solver.solve(constant(c), x0, 1.0, 0.0)
    torch.testing.assert_close(sol.x, x0 - c, atol=1e-10, rtol=0)


# --------------------------------------------------------------------------------------
# NFE counted at the call
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXED_STEP))
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_fixed_step_nfe(name, steps):
    batch = 7
    counter = NFECounter(identity)
    sol = fixed(name, steps).solve(counter, x0_f64(batch=batch))
    assert sol.steps == steps
    assert counter.calls == steps * FIXED_STEP[name]
    assert counter.evaluations == batch * steps * FIXED_STEP[name]
    assert counter.nfe(batch) == steps * FIXED_STEP[name]


@pytest.mark.parametrize("name", SOLVERS.names())
def test_nfe_follows_declared_convention_for_every_solver(name):
    """Generic: a solver declaring ``kN`` costs k calls per step; ``counted`` ones are
    checked against their own formula elsewhere."""
    cls = SOLVERS.get(name)
    skip_autoregressive(cls)
    counter = NFECounter(identity)
    sol = cls(cls.Params()).solve(counter, x0_f64())
    expected = expected_calls(cls.nfe_convention, sol.steps)
    if expected is None:
        assert counter.calls > sol.steps
    else:
        assert counter.calls == expected


FIELDS = {
    "constant": lambda x, t: torch.ones_like(x),
    "linear": identity,
    "decay": lambda x, t: -50 * x,
    "oscillation": lambda x, t: torch.cos(40 * t) * torch.ones_like(x),
}


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize("tol", [1e-5, 1e-9])
def test_dopri5_nfe_is_two_plus_six_per_attempted_step(field, tol):
    counter = NFECounter(FIELDS[field])
    sol = dopri5(tol).solve(counter, x0_f64())
    assert sol.steps >= 1 and sol.rejected_steps >= 0
    assert counter.calls == 2 + 6 * (sol.steps + sol.rejected_steps)


def test_dopri5_works_harder_on_fast_fields():
    x0 = x0_f64()
    easy = dopri5(1e-5).solve(FIELDS["constant"], x0)
    for field in ("decay", "oscillation"):
        hard = dopri5(1e-5).solve(FIELDS[field], x0)
        assert hard.steps > easy.steps
        assert hard.rejected_steps > 0, field


# --------------------------------------------------------------------------------------
# Recording and the time argument
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXED_STEP))
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_fixed_step_record(name, steps):
    x0 = x0_f64()
    c = torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64)
    sol = fixed(name, steps).solve(constant(c), x0, record=True)
    assert len(sol.trajectory) == steps + 1
    assert len(sol.times) == steps + 1
    assert all(isinstance(t, float) for t in sol.times)
    assert sol.times[0] == 0.0 and sol.times[-1] == 1.0
    for i, t in enumerate(sol.times):
        assert t == pytest.approx(i / steps, abs=1e-15)
    assert torch.equal(sol.trajectory[0], x0)
    assert torch.equal(sol.trajectory[-1], sol.x)
    for t, state in zip(sol.times, sol.trajectory):
        torch.testing.assert_close(state, x0 + c * t, atol=ATOL, rtol=0)


def test_fixed_step_record_on_other_interval():
    sol = fixed("heun", 4).solve(identity, x0_f64(), 1.0, 3.0, record=True)
    assert sol.times == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0], abs=1e-15)
    assert sol.times[0] == 1.0 and sol.times[-1] == 3.0


@pytest.mark.parametrize("tol", [1e-5, 1e-10])
def test_dopri5_record(tol):
    x0 = x0_f64()
    c = torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64)
    sol = dopri5(tol).solve(constant(c), x0, record=True)
    assert len(sol.times) == len(sol.trajectory) == sol.steps + 1
    assert sol.times[0] == 0.0
    assert sol.times[-1] == 1.0
    assert all(a < b for a, b in zip(sol.times, sol.times[1:]))
    assert torch.equal(sol.trajectory[0], x0)
    assert torch.equal(sol.trajectory[-1], sol.x)
    for t, state in zip(sol.times, sol.trajectory):  # each state belongs to its time
        torch.testing.assert_close(state, x0 + c * t, atol=1e-10, rtol=0)


def test_dopri5_no_record():
    sol = dopri5().solve(identity, x0_f64())
    assert sol.times == [] and sol.trajectory == []


@pytest.mark.parametrize("name", SOLVERS.names())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_velocity_receives_0d_time(name, dtype):
    seen = []

    def v(x, t):
        seen.append(t)
        assert x.shape == (5, 3) and x.dtype == dtype
        return -x

    cls = SOLVERS.get(name)
    skip_autoregressive(cls)
    x0 = torch.ones(5, 3, dtype=dtype)
    sol = cls(cls.Params()).solve(v, x0)
    assert seen
    assert all(isinstance(t, torch.Tensor) and t.ndim == 0 for t in seen)
    assert sol.x.shape == x0.shape and sol.x.dtype == dtype
    if name in FIXED_STEP:
        assert all(t.dtype == dtype for t in seen)
        assert all(0.0 <= float(t) <= 1.0 for t in seen)


def test_dopri5_evaluates_velocity_only_inside_the_interval():
    seen = []

    def v(x, t):
        seen.append(float(t))
        return -x

    dopri5(1e-5).solve(v, torch.ones(5, 3, dtype=torch.float64))
    assert max(seen) <= 1.0
