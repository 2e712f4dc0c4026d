"""One-step distillation of a flow (InstaFlow).

Papers:
- Liu, Zhang, Ma, Peng, Liu (2024). "InstaFlow: One Step is Enough for High-Quality
  Diffusion-Based Text-to-Image Generation". https://arxiv.org/abs/2309.06380
- Liu, Gong, Liu (2023), §2.3 "Distillation" of Rectified Flow.

Algorithm: given pairs (z_0, z_1) where z_1 is the teacher's ODE endpoint from z_0 (the
spec's ``teacher:``, usually a 2-rectified flow), train the one-step map
T(z_0) = z_0 + v_θ(z_0, 0) by minimising ‖T(z_0) − z_1‖² (L2 in low dimension; InstaFlow
uses LPIPS for images), summed over dimensions and averaged over the batch. The network
may start from the teacher's weights (``teacher.init: teacher``), as InstaFlow does.

Sampling is the one step z_0 + v_θ(z_0, 0) whatever the sampler: the distilled model is
a map, not a velocity field, so integrating it with more steps would be meaningless.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from harness.interfaces import Batch, Params, Solution, Solver
from harness.lazy import lazy_import
from harness.registry import METHODS
from implementations.common.losses import MSE, AnyLoss

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
else:
    torch = lazy_import("torch")


class DistillationParams(Params):
    loss: AnyLoss = MSE(reduce="sum")


@METHODS.register("one_step_distillation")
class OneStepDistillation:
    """z_0 ↦ z_0 + v_θ(z_0, 0), regressed onto the teacher's endpoint z_1."""

    Params: ClassVar[type[Params]] = DistillationParams
    requires_teacher: ClassVar[bool] = True
    one_step: ClassVar[bool] = True

    def __init__(self, params: DistillationParams):
        self.params = params

    @staticmethod
    def one_step_map(model: Callable, z_0: Tensor) -> Tensor:
        t = torch.zeros((), dtype=z_0.dtype, device=z_0.device)
        return z_0 + model(z_0, t)

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        return self.params.loss(self.one_step_map(model, batch.x_0) - batch.x_1)

    def sample(self, model: Callable, x_0: Tensor, solver: Solver, generator: torch.Generator,
               record: bool = False) -> Solution:
        x_1 = self.one_step_map(model, x_0)
        if record:
            return Solution(x=x_1, steps=1, times=[0.0, 1.0], trajectory=[x_0, x_1])
        return Solution(x=x_1, steps=1)
