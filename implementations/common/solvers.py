"""ODE solvers for sampling flows: integrate dx/dt = v(x, t) from t_0 to t_1.

Fixed-step solvers use a uniform grid of ``steps`` intervals. Their cost, counted by the
harness at the network call, follows these conventions (NFE per sample):

============  ===========  ====================================================
solver        NFE          convention
============  ===========  ====================================================
euler         N            one evaluation per step
midpoint      2N           explicit midpoint rule
heun          2N           Heun's (trapezoidal) method with the final corrector
                           kept; the EDM variant that skips the last correction
                           (2N - 1) applies only when the last step ends at a
                           singular noise level, which t_1 = 1 is not here
rk4           4N           classical fourth-order Runge-Kutta
dopri5        counted      torchdiffeq's adaptive Dormand-Prince 5(4): 2 calls to
                           pick the first step, then 6 per attempted step
                           (FSAL), rejected steps included
============  ===========  ====================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from harness.interfaces import Params, Solution, Velocity, added
from harness.lazy import lazy_import
from harness.limits import SolverSteps, Tolerance
from harness.registry import SOLVERS

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")


class FixedStepParams(Params):
    steps: SolverSteps = 8


class FixedStepSolver:
    """A uniform grid t_0 < t_1 < ... < t_N and one explicit update per interval."""

    Params: ClassVar[type[Params]] = FixedStepParams
    nfe_convention: ClassVar[str] = ""
    evals_per_step: ClassVar[int] = 1

    def __init__(self, params: FixedStepParams):
        self.params = params

    def step(self, velocity: Velocity, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
        raise NotImplementedError

    def solve(self, velocity: Velocity, x_0: Tensor, t_0: float = 0.0, t_1: float = 1.0,
              record: bool = False) -> Solution:
        n = self.params.steps
        grid = torch.linspace(t_0, t_1, n + 1, dtype=torch.float64)
        times = grid.tolist()
        grid = grid.to(device=x_0.device, dtype=x_0.dtype)
        x = x_0
        trajectory = [x] if record else []
        for i in range(n):
            x = self.step(velocity, x, grid[i], grid[i + 1] - grid[i])
            if record:
                trajectory.append(x)
        return Solution(x=x, steps=n, times=times if record else [], trajectory=trajectory)


@SOLVERS.register("euler")
class Euler(FixedStepSolver):
    """Forward Euler: x_{i+1} = x_i + h v(x_i, t_i)."""

    nfe_convention = "N"
    evals_per_step = 1

    def step(self, velocity: Velocity, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
        return x + h * velocity(x, t)


@SOLVERS.register("midpoint")
class Midpoint(FixedStepSolver):
    """Explicit midpoint: x_{i+1} = x_i + h v(x_i + h/2 v(x_i, t_i), t_i + h/2)."""

    nfe_convention = "2N"
    evals_per_step = 2

    def step(self, velocity: Velocity, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
        x_mid = x + 0.5 * h * velocity(x, t)
        return x + h * velocity(x_mid, t + 0.5 * h)


@SOLVERS.register("heun")
class Heun(FixedStepSolver):
    """Heun's method: an Euler predictor, then the trapezoidal corrector (2N NFE)."""

    nfe_convention = "2N"
    evals_per_step = 2

    def step(self, velocity: Velocity, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
        d_i = velocity(x, t)
        # Euler step.
        x_next = x + h * d_i
        # Apply 2nd order correction.
        d_next = velocity(x_next, t + h)
        return x + 0.5 * h * (d_i + d_next)


@SOLVERS.register("rk4")
class RK4(FixedStepSolver):
    """Classical fourth-order Runge-Kutta (4N NFE)."""

    nfe_convention = "4N"
    evals_per_step = 4

    def step(self, velocity: Velocity, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
        k1 = velocity(x, t)
        k2 = velocity(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = velocity(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = velocity(x + h * k3, t + h)
        return x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


class AdaptiveParams(Params):
    atol: Tolerance = 1e-5
    rtol: Tolerance = 1e-5
    # Accepted plus rejected steps allowed before the solve fails: a tolerance the field
    # cannot meet would otherwise step forever.
    max_steps: SolverSteps = added(10_000, added_in="issue 9")


class _Field:
    """Adapts ``velocity(x, t)`` to torchdiffeq's ``f(t, y)`` and counts its steps
    through torchdiffeq's step callbacks; more than ``max_steps`` attempted steps is an
    error (a tolerance the field cannot meet would otherwise step forever)."""

    def __init__(self, velocity: Velocity, record: bool, max_steps: int | None = None, what: str = ""):
        self.velocity = velocity
        self.record = record
        self.max_steps = max_steps
        self.what = what
        self.accepted = 0
        self.rejected = 0
        self.times: list[float] = []
        self.trajectory: list[Tensor] = []

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        return self.velocity(y, t)

    def _count(self) -> None:
        if self.max_steps is not None and self.accepted + self.rejected >= self.max_steps:
            raise RuntimeError(f"{self.what} gave up after {self.max_steps} steps (max_steps); "
                               "loosen atol/rtol or raise max_steps")

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self._count()
        self.accepted += 1
        if self.record:
            self.times.append(float(t0))
            self.trajectory.append(y0)

    def callback_reject_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self._count()
        self.rejected += 1


@SOLVERS.register("dopri5")
class Dopri5:
    """Adaptive Dormand-Prince 5(4) from torchdiffeq with the spec's atol and rtol.

    Its NFE is whatever the counter saw: 2 start-up calls plus 6 per attempted step.
    With ``record`` the trajectory holds the state at the start of every accepted step.
    """

    Params: ClassVar[type[Params]] = AdaptiveParams
    nfe_convention: ClassVar[str] = "counted"
    method: ClassVar[str] = "dopri5"

    def __init__(self, params: AdaptiveParams):
        self.params = params

    def solve(self, velocity: Velocity, x_0: Tensor, t_0: float = 0.0, t_1: float = 1.0,
              record: bool = False) -> Solution:
        from torchdiffeq import odeint

        p = self.params
        field = _Field(velocity, record, p.max_steps, f"{self.method} (atol={p.atol:g}, rtol={p.rtol:g})")
        t = torch.tensor([t_0, t_1], dtype=x_0.dtype, device=x_0.device)
        # By default torchdiffeq steps past t_1 and interpolates back, which would evaluate a
        # network trained on t in [0, 1] outside that range; step_t makes it land on t_1.
        options = {"step_t": t[1:]}
        x = odeint(field, x_0, t, method=self.method, atol=self.params.atol, rtol=self.params.rtol,
                   options=options)[-1]
        if record:
            field.times.append(t_1)
            field.trajectory.append(x)
        return Solution(x=x, steps=field.accepted, rejected_steps=field.rejected,
                        times=field.times, trajectory=field.trajectory)
