"""Average-velocity models, shared by MeanFlow and SplitMeanFlow: calling the network
u_θ(z, a, b), drawing the training intervals (a, b), and few-step sampling.

Convention (the project's): t = 0 is the source x_0, t = 1 is the data x_1, and the flow
solves dz/dt = v(z, t) forward in t. The *average velocity* from a start time a to an end
time b ≥ a along the flow's trajectory through z_a is

    U(z_a, a, b) = 1/(b − a) ∫_a^b v(z_τ, τ) dτ,        U(z_a, a, a) = v(z_a, a),

so one step z_b = z_a + (b − a)·U(z_a, a, b) lands exactly on the trajectory. MeanFlow's
u(z_t, r, t) in its own convention (t = 0 data, r ≤ t) is U = −u with a = 1 − t and
b = 1 − r (methods-next §1.9).

A network that takes the interval (``interval_conditioned = True``: ``interval-mlp``,
``interval-unet``) is called as ``model(z, a, b, y=labels)``. Any other velocity network
v(x, t) is called as ``model(z, a)``: it cannot see b, so U(z, a, b) ≈ v(z, a), the Euler
step. That keeps every network trainable and samplable (the conformance test pairs every
method with every network), but it is not MeanFlow; a warning says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.interfaces import Solution, Solver
from harness.lazy import lazy_import
from implementations.common.solvers import Euler

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from implementations.common.timesteps import TimeSampler
else:
    torch = lazy_import("torch")

AverageVelocity = Callable[["Tensor", "Tensor", "Tensor"], "Tensor"]
"""``u(z, a, b)``: z of shape (batch, *dims); a and b 0-d tensors or shape (batch,)."""

NULL_LABEL = -1
"""The class label that asks an interval network for its null (unconditional) class."""


def unwrap(model: Callable) -> Callable:
    """The network behind ``model``: the network itself, or it inside the harness's NFE
    counter (``.model``) or DistributedDataParallel (``.module``); torch.compile's wrapper
    delegates attribute reads, so it needs no unwrapping."""
    inner = model
    while not getattr(inner, "interval_conditioned", False):
        wrapped = getattr(inner, "model", None)
        wrapped = wrapped if wrapped is not None else getattr(inner, "module", None)
        if wrapped is None:
            break
        inner = wrapped
    return inner


def takes_interval(model: Callable) -> bool:
    """Whether the network behind ``model`` is conditioned on an interval (a, b)."""
    return bool(getattr(unwrap(model), "interval_conditioned", False))


def average_velocity(model: Callable, labels: Tensor | None = None) -> AverageVelocity:
    """u_θ(z, a, b) from ``model`` (see the module docstring); ``labels`` (batch,) int64,
    with :data:`NULL_LABEL` for the null class, condition an interval network."""
    if takes_interval(model):
        def u(z: Tensor, a: Tensor, b: Tensor) -> Tensor:
            return model(z, a, b, y=labels)

        return u
    name = type(unwrap(model)).__name__
    if labels is not None:
        raise ValueError(f"class labels need an interval network with num_classes (interval-mlp, interval-unet), "
                         f"got {name}")
    warnings.warn(f"{name} takes one time, not an interval (a, b): it is used as "
                  "u(z, a, b) = v(z, a), which cannot learn average velocities; use interval-mlp or "
                  "interval-unet", stacklevel=2)

    def v(z: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return model(z, a)

    return v


def draw_interval(sampler: TimeSampler, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(a, b), each (batch,) in x's dtype and device: two independent draws of ``sampler``,
    ordered so that a ≤ b (MeanFlow's ``sample_tr``: two draws, sorted)."""
    n = x.shape[0]
    t_1 = sampler.sample(n, generator).to(dtype=x.dtype, device=x.device)
    t_2 = sampler.sample(n, generator).to(dtype=x.dtype, device=x.device)
    return torch.minimum(t_1, t_2), torch.maximum(t_1, t_2)


def leading_rows(batch_size: int, share: float) -> int:
    """How many of the batch's first rows get a special role when ``share`` of them should
    (the official JAX code's fixed position mask: ``int(batch_size · share)``)."""
    return int(batch_size * share)


def expand_as(t: Tensor, x: Tensor) -> Tensor:
    """Per-sample times (batch,) shaped (batch, 1, ..., 1) to broadcast against x."""
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def sample_average_velocity(u: AverageVelocity, x_0: Tensor, solver: Solver, record: bool = False) -> Solution:
    """Generate from x_0 with an average-velocity model (MeanFlow §1.6 in this convention).

    With the ``euler`` sampler of K steps: K jumps on the uniform grid 0 = t_0 < ... < t_K = 1
    (with ``euler-grid``, on its grid),
    z_{t_{i+1}} = z_{t_i} + (t_{i+1} − t_i)·u(z_{t_i}, t_i, t_{i+1}), one network call each;
    K = 1 is the one-step sample x = x_0 + u(x_0, 0, 1). Any other solver integrates the
    instantaneous field v(z, t) = u(z, t, t) as a plain ODE, at that solver's cost.
    """
    if isinstance(solver, Euler):
        times = torch.linspace(0.0, 1.0, solver.params.steps + 1, dtype=torch.float64).tolist()
    elif hasattr(solver, "grid"):  # Euler on another time grid (euler-grid): the same jumps on its times
        times = list(solver.grid())
    else:
        def velocity(x: Tensor, t: Tensor) -> Tensor:
            return u(x, t, t)

        return solver.solve(velocity, x_0, 0.0, 1.0, record=record)
    steps = len(times) - 1
    grid = torch.tensor(times, dtype=torch.float64).to(device=x_0.device, dtype=x_0.dtype)
    z = x_0
    trajectory = [z] if record else []
    for i in range(steps):
        a, b = grid[i], grid[i + 1]
        # Average-velocity jump from a to b (one network call).
        z = z + (b - a) * u(z, a, b)
        if record:
            trajectory.append(z)
    return Solution(x=z, steps=steps, times=times if record else [], trajectory=trajectory)
