"""Rectified flow: 1-rectified flow, and k-rectified flow (reflow) on a teacher's pairs.

Paper: Liu, Gong, Liu (2023). "Flow Straight and Fast: Learning to Generate and Transfer
Data with Rectified Flow". https://arxiv.org/abs/2209.03003

Algorithm (the paper's Algorithm 1):
    1. pairs (X_0, X_1): independent draws from π_0 × π_1 for 1-RF; for k-RF (reflow),
       X_0 ~ π_0 and X_1 = the (k−1)-RF ODE's endpoint from X_0, generated once by the
       teacher and cached (the spec's ``teacher:``);
    2. t ~ U(0, 1) (or another time sampler, Lee et al. 2024), X_t = t·X_1 + (1 − t)·X_0;
    3. minimise E‖(X_1 − X_0) − v(X_t, t)‖²: squared norm summed over dimensions and
       averaged over the batch, as in the official code (or pseudo-Huber, Lee et al. 2024).
Sampling solves dZ_t = v(Z_t, t) dt from Z_0 ~ π_0 (the paper uses Euler with N steps).

Straightness S(Z) = ∫₀¹ E‖(Z_1 − Z_0) − Ż_t‖² dt is a metric (``straightness``); the
paper's claim is that reflow lowers it, so few-step Euler sampling gets better.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from harness.interfaces import Batch, Params, Solution, Solver
from harness.lazy import lazy_import
from harness.registry import METHODS
from implementations.common.losses import MSE, AnyLoss
from implementations.common.paths import Linear
from implementations.common.timesteps import AnyTimeSampler, Uniform
from implementations.flow_matching import sample_times

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
else:
    torch = lazy_import("torch")


class RectifiedFlowParams(Params):
    time_sampler: AnyTimeSampler = Uniform()
    loss: AnyLoss = MSE(reduce="sum")


@METHODS.register("rectified_flow")
class RectifiedFlow:
    """k-rectified flow: straight-line flow matching on independent pairs (k = 1) or on
    the pairs of a (k−1)-rectified teacher (k ≥ 2, given by the spec's ``teacher``)."""

    Params: ClassVar[type[Params]] = RectifiedFlowParams

    def __init__(self, params: RectifiedFlowParams):
        self.params = params
        self.path = Linear(sigma=0.0)

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        t = sample_times(self.params.time_sampler, batch.x_0, generator)
        ps = self.path.sample(batch.x_0, batch.x_1, t)
        return self.params.loss(model(ps.x_t, ps.t) - ps.dx_t)

    def sample(self, model: Callable, x_0: Tensor, solver: Solver, generator: torch.Generator,
               record: bool = False) -> Solution:
        return solver.solve(model, x_0, 0.0, 1.0, record=record)
