"""SplitMeanFlow distilled from a flow-matching teacher: the boundary from the teacher's
velocity, the points on the teacher's own trajectories.

Paper: Guo, Wang, Yuan, Cao, Chen, et al. (2025). "SplitMeanFlow: Interval Splitting
Consistency in Few-Step Generative Modeling". https://arxiv.org/abs/2507.16884
The from-scratch variant and the interval-splitting target are
:mod:`implementations.split_meanflow`; this module changes where the training points and the
boundary target come from. No official code exists.

The paper trains the boundary u(z_t, t, t) = v(z_t, t) on a pretrained flow-matching
teacher's velocity. Here the teacher is the harness's ``teacher:`` with ``keep: path``: its
``num_pairs`` trajectories on a fixed grid t_0 = 0 < ... < t_K = 1 (``euler-100``: K = 100)
arrive with every batch, and the teacher's velocity along them is known exactly without
evaluating it again: on an Euler grid, v(x_{t_i}, t_i) = (x_{t_{i+1}} − x_{t_i})/(t_{i+1} − t_i).

Algorithm (per batch):
    1. a ≤ b, λ and the boundary rows as :class:`~implementations.split_meanflow.SplitMeanFlow`
       draws them; each a is rounded down to its grid node i (a ← t_i); b ← a on the boundary rows,
       max(b, a) on the others;
    2. z_a = x_{t_i}, a state of the teacher's trajectory, and v = its Euler slope at node i;
    3. boundary rows regress U_θ(z_a, a, a) onto v; the other rows onto the interval-splitting
       target of the model itself (no gradient), as from scratch.

What is ours: the points are the teacher's ODE states rather than interpolations of data
and noise, and its velocity is read off the recorded Euler polygon at the grid node at or
before a (piecewise constant in a, exact at the nodes); the other choices are
:mod:`implementations.split_meanflow`'s. Sampling is MeanFlow's (one network call per jump).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from harness.interfaces import Batch
from harness.lazy import lazy_import
from harness.registry import METHODS
from implementations.common.average_velocity import average_velocity
from implementations.split_meanflow import SplitMeanFlow

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
else:
    torch = lazy_import("torch")

NEEDS_PATH = "split_meanflow_teacher trains on the teacher's recorded trajectories: add keep: path to teacher:"


def teacher_points(batch: Batch, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(a snapped down to the teacher's grid, z_a = x_{t_i}, v = the Euler slope at t_i) for
    each row; a = 1 takes the last interval's node."""
    if batch.path is None or batch.times is None:
        raise ValueError(NEEDS_PATH)
    path, times = batch.path, batch.times.to(device=a.device)
    last = len(times) - 2  # the last node with a slope
    i = (torch.searchsorted(times.to(a.dtype), a, right=True) - 1).clamp(0, last)
    rows = torch.arange(len(a), device=a.device)
    z_a, z_next = path[rows, i], path[rows, i + 1]
    h = (times[i + 1] - times[i]).to(path.dtype).reshape(-1, *[1] * (z_a.ndim - 1))
    return times[i].to(a.dtype), z_a, (z_next - z_a) / h


@METHODS.register("split_meanflow_teacher")
class SplitMeanFlowFromTeacher(SplitMeanFlow):
    """SplitMeanFlow whose boundary is a flow-matching teacher's velocity along its own
    trajectories (see the module docstring)."""

    requires_teacher: ClassVar[bool] = True
    teacher_keep: ClassVar[str] = "path"

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        a, b, lam, n_boundary = self.draw(batch, generator)
        a, z_a, v = teacher_points(batch, a)
        k = n_boundary  # boundary rows keep b = a, the others b ≥ the snapped a
        b = torch.cat([a[:k], torch.maximum(b[k:], a[k:])])
        target = self.target(model, z_a, a, b, lam, v, n_boundary)
        return self.params.loss(average_velocity(model)(z_a, a, b) - target)
