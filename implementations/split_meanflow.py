"""SplitMeanFlow: average velocities trained by interval splitting, without a JVP.

Paper: Guo, Wang, Yuan, Cao, Chen, et al. (2025). "SplitMeanFlow: Interval Splitting
Consistency in Few-Step Generative Modeling". https://arxiv.org/abs/2507.16884. No official
code exists; the training step below is the one the three unofficial implementations
agree on (methods-next §2), rewritten in the project's convention.

The identity (additivity of the integral of v along one trajectory): for a ≤ s ≤ b,

    (b − a)·U(z_a, a, b) = (s − a)·U(z_a, a, s) + (b − s)·U(z_s, s, b),
    z_s = z_a + (s − a)·U(z_a, a, s).

With s = (1 − λ)·a + λ·b that is U(z_a, a, b) = λ·U(z_a, a, s) + (1 − λ)·U(z_s, s, b);
s → a recovers the MeanFlow identity.

Training step, in the project's convention (t = 0 source x_0, t = 1 data x_1; the paper's
(r, s, t) with t = 0 data map to a = 1 − t, s ↦ 1 − s, b = 1 − r):
    1. a ≤ b: two draws of ``time_sampler``, ordered; λ ~ U(0, 1); s = (1 − λ)·a + λ·b;
       z_a = (1 − a)·x_0 + a·x_1;
    2. first leg U_1 = U_θ(z_a, a, s); z_s = z_a + (s − a)·U_1; second leg U_2 = U_θ(z_s, s, b)
       (both without gradient);
    3. target = λ·U_1 + (1 − λ)·U_2 = ((s − a)·U_1 + (b − s)·U_2)/(b − a);
    4. loss of U_θ(z_a, a, b) − sg(target) (squared norm summed over dimensions, batch mean).
The first ⌊boundary_share·B⌋ rows of the batch instead train the boundary U(z_a, a, a) = v:
with b = a and target ṽ = x_1 − x_0, plain flow matching (from scratch).
Three network evaluations per split row, one with gradient. Sampling is MeanFlow's
(:func:`~implementations.common.average_velocity.sample_average_velocity`).

What is ours rather than the paper's (which we have not read in full):
- the boundary target is the conditional velocity x_1 − x_0 (as clcarwin's from-scratch
  code), not a pretrained flow-matching teacher's v(z_a, a) as in the paper: this harness
  gives a method its teacher's (x_0, endpoint) pairs, not the teacher's velocity;
- boundary_share 0.5 per batch, the rows chosen by position (clcarwin: 50 % per batch;
  the paper reports collapse below about 0.5);
- the time sampler: MeanFlow's logit-normal (JAX (−0.4, 1) in its convention, m = +0.4
  here); the paper's parameters are unknown;
- stop-gradient on the whole target (all unofficial implementations do this), plain L2
  (no adaptive weight), no pure flow-matching warm-up phase (clcarwin has 10k steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from harness.interfaces import Batch, Params, Solution, Solver
from harness.lazy import lazy_import
from harness.registry import METHODS
from implementations.common.average_velocity import (
    AverageVelocity,
    average_velocity,
    draw_interval,
    expand_as,
    leading_rows,
    sample_average_velocity,
)
from implementations.common.losses import MSE, AnyLoss
from implementations.common.timesteps import AnyTimeSampler, LogitNormal

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
else:
    torch = lazy_import("torch")


class SplitMeanFlowParams(Params):
    boundary_share: float = Field(0.5, ge=0.0, le=1.0, description="share of the batch that trains the boundary "
                                                                   "U(z, a, a) = x_1 − x_0 (flow matching)")
    time_sampler: AnyTimeSampler = Field(LogitNormal(m=0.4, s=1.0), description="a and b: two draws, ordered "
                                         "(default logit_normal m = 0.4, s = 1, ours: MeanFlow's)")
    loss: AnyLoss = MSE(reduce="sum")


def split_target(u: AverageVelocity, z_a: Tensor, a: Tensor, b: Tensor, lam: Tensor) -> Tensor:
    """The interval-splitting target λ·U(z_a, a, s) + (1 − λ)·U(z_s, s, b), s = (1 − λ)·a + λ·b.

    Args:
        u: the model u(z, a, b).
        z_a: (batch, *dims); a, b, lam: (batch,), a ≤ b, lam in [0, 1].
    """
    s = (1.0 - lam) * a + lam * b
    # First leg, a → s.
    U_1 = u(z_a, a, s)
    z_s = z_a + expand_as(s - a, z_a) * U_1
    # Second leg, s → b.
    U_2 = u(z_s, s, b)
    return expand_as(lam, z_a) * U_1 + expand_as(1.0 - lam, z_a) * U_2


@METHODS.register("split_meanflow")
class SplitMeanFlow:
    """SplitMeanFlow (see the module docstring): regress U_θ(z_a, a, b) onto the split
    target, and on the boundary rows onto x_1 − x_0."""

    Params: ClassVar[type[Params]] = SplitMeanFlowParams

    def __init__(self, params: SplitMeanFlowParams):
        self.params = params

    def draw(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, int]:
        """(a, b, λ, n_boundary): ordered times, λ ~ U(0, 1) each (batch,), and how many
        leading rows are boundary rows (their b is set to a)."""
        x = batch.x_1
        n = x.shape[0]
        a, b = draw_interval(self.params.time_sampler, x, generator)
        lam = torch.rand(n, generator=generator, device=generator.device).to(dtype=x.dtype, device=x.device)
        n_boundary = leading_rows(n, self.params.boundary_share)
        b = torch.cat([a[:n_boundary], b[n_boundary:]])
        return a, b, lam, n_boundary

    def target(self, model: Callable, z_a: Tensor, a: Tensor, b: Tensor, lam: Tensor, v: Tensor,
               n_boundary: int) -> Tensor:
        """x_1 − x_0 on the first n_boundary rows, the split target on the rest; no gradient."""
        k = n_boundary
        if k == len(v):
            return v
        with torch.no_grad():
            split = split_target(average_velocity(model), z_a[k:], a[k:], b[k:], lam[k:])
        return torch.cat([v[:k], split])

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        x_0, x_1 = batch.x_0, batch.x_1
        a, b, lam, n_boundary = self.draw(batch, generator)
        z_a = x_0 + expand_as(a, x_0) * (x_1 - x_0)
        target = self.target(model, z_a, a, b, lam, x_1 - x_0, n_boundary)
        return self.params.loss(average_velocity(model)(z_a, a, b) - target)

    def sample(self, model: Callable, x_0: Tensor, solver: Solver, generator: torch.Generator,
               record: bool = False, labels: Tensor | None = None) -> Solution:
        return sample_average_velocity(average_velocity(model), x_0, solver, record)
