"""Rectified flow (1-RF).

Paper: Liu, Gong, Liu (2023). "Flow Straight and Fast: Learning to Generate and Transfer
Data with Rectified Flow". https://arxiv.org/abs/2209.03003

Algorithm (1-rectified flow, the paper's Algorithm 1 with independent pairs):
    1. draw X_0 ~ π_0, X_1 ~ π_1 independently, t ~ U(0, 1);
    2. X_t = t·X_1 + (1 − t)·X_0 (no smoothing, σ = 0);
    3. minimise E‖(X_1 − X_0) − v(X_t, t)‖²: the squared norm summed over dimensions and
       averaged over the batch, as in the official code.
Sampling solves dZ_t = v(Z_t, t) dt from Z_0 ~ π_0 (the paper uses Euler with N steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from harness.interfaces import Batch, Params, Solution, Solver
from harness.registry import METHODS
from implementations.common.paths import LinearPath
from implementations.common.timesteps import uniform_time


class RectifiedFlowParams(Params):
    pass


@METHODS.register("rectified_flow")
class RectifiedFlow:
    """1-rectified flow: flow matching on straight lines between independent pairs."""

    Params: ClassVar[type[Params]] = RectifiedFlowParams

    def __init__(self, params: RectifiedFlowParams):
        self.params = params
        self.path = LinearPath(sigma=0.0)

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        t = uniform_time(batch.x_0.shape[0], generator, like=batch.x_0)
        ps = self.path.sample(batch.x_0, batch.x_1, t)
        residual = ps.dx_t - model(ps.x_t, ps.t)
        return residual.reshape(residual.shape[0], -1).square().sum(dim=1).mean()

    def sample(self, model: Callable, x_0: Tensor, solver: Solver, generator: torch.Generator,
               record: bool = False) -> Solution:
        return solver.solve(model, x_0, 0.0, 1.0, record=record)
