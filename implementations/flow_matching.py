"""Conditional flow matching (CFM).

Papers:
- Lipman, Chen, Ben-Hamu, Nickel, Le (2023). "Flow Matching for Generative Modeling".
  https://arxiv.org/abs/2210.02747
- Tong, Fatras, Malkin, Huguet, Zhang, Rector-Brooks, Wolf, Bengio (2024). "Improving and
  generalizing flow-based generative models with minibatch optimal transport" (TorchCFM).
  https://arxiv.org/abs/2302.00482

Algorithm (I-CFM, Tong et al. Algorithm 1 with the independent coupling):
    1. draw x_0 ~ q_0 and x_1 ~ q_1 independently, t ~ U(0, 1);
    2. x_t = (1 − t)·x_0 + t·x_1 + σ·ε,  u_t = x_1 − x_0;
    3. minimise ‖v_θ(x_t, t) − u_t‖²  (averaged over batch and dimensions, as TorchCFM does).
Sampling integrates dx/dt = v_θ(x, t) from t = 0 (source) to t = 1 (data).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from pydantic import NonNegativeFloat
from torch import Tensor, nn

from harness.interfaces import Batch, Params, Solution, Solver
from harness.registry import METHODS
from implementations.common.paths import LinearPath
from implementations.common.timesteps import uniform_time


class CFMParams(Params):
    sigma: NonNegativeFloat = 0.0  # std of the Gaussian smoothing around the straight path
    coupling: Literal["independent"] = "independent"


@METHODS.register("cfm")
class ConditionalFlowMatching:
    """Conditional flow matching on the linear path with smoothing σ."""

    Params: ClassVar[type[Params]] = CFMParams

    def __init__(self, params: CFMParams):
        self.params = params
        self.path = LinearPath(sigma=params.sigma)

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        x_0, x_1 = batch.x_0, batch.x_1
        t = uniform_time(x_0.shape[0], generator, like=x_0)
        ps = self.path.sample(x_0, x_1, t, generator)
        return (model(ps.x_t, ps.t) - ps.dx_t).square().mean()

    def sample(self, model: Callable, x_0: Tensor, solver: Solver, generator: torch.Generator,
               record: bool = False) -> Solution:
        return solver.solve(model, x_0, 0.0, 1.0, record=record)
