"""Conditional flow matching (CFM) with a choice of coupling, path, time sampler and loss.

Papers:
- Lipman, Chen, Ben-Hamu, Nickel, Le (2023). "Flow Matching for Generative Modeling".
  https://arxiv.org/abs/2210.02747
- Tong, Fatras, Malkin, Huguet, Zhang, Rector-Brooks, Wolf, Bengio (2024). "Improving and
  generalizing flow-based generative models with minibatch optimal transport" (TorchCFM).
  https://arxiv.org/abs/2302.00482
- Calvo-Ordoñez, Meunier et al. (2025). "Weighted Conditional Flow Matching" (W-CFM).

Algorithm (Tong et al., Algorithm 1 and its variants):
    1. draw x_0 ~ q_0 and x_1 ~ q_1 independently;
    2. couple the minibatch: independent (I-CFM), exact OT (OT-CFM), entropic OT with
       reg = 2σ² (SB-CFM), or independent pairs with Gibbs weights (W-CFM);
    3. t ~ p(t); x_t and the target u_t from the path (linear with σ, Brownian bridge, ...);
    4. minimise the (weighted) loss of v_θ(x_t, t) − u_t.
Sampling integrates dx/dt = v_θ(x, t) from t = 0 (source) to t = 1 (data).

The variants are specs, not classes: ``icfm.yaml``, ``otcfm.yaml``, ``sbcfm.yaml``,
``wcfm.yaml`` differ only in ``params``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from pydantic import model_validator

from harness.interfaces import Batch, Params, Solution, Solver
from harness.lazy import lazy_import
from harness.registry import METHODS
from implementations.common.couplings import AnyCoupling, Independent, Sinkhorn
from implementations.common.losses import MSE, AnyLoss
from implementations.common.paths import AnyPath, Linear
from implementations.common.timesteps import AnyTimeSampler, Uniform

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
else:
    torch = lazy_import("torch")


class CFMParams(Params):
    coupling: AnyCoupling = Independent()
    path: AnyPath = Linear()
    time_sampler: AnyTimeSampler = Uniform()
    loss: AnyLoss = MSE()

    @model_validator(mode="after")
    def _sb_regularisation(self) -> CFMParams:
        """An entropic coupling without ``reg`` takes SB-CFM's reg = 2σ² from the path."""
        if isinstance(self.coupling, Sinkhorn) and self.coupling.reg is None:
            sigma = getattr(self.path, "sigma", 0.0)
            if not sigma:
                raise ValueError("coupling sinkhorn needs reg, or a path with sigma > 0 to take reg = 2·sigma² from")
            object.__setattr__(self, "coupling", self.coupling.model_copy(update={"reg": 2 * sigma**2}))
        return self


def sample_times(sampler: Callable, x: Tensor, generator: torch.Generator) -> Tensor:
    """Training times (batch,) in x's dtype and device."""
    return sampler.sample(x.shape[0], generator).to(dtype=x.dtype, device=x.device)


@METHODS.register("cfm")
class ConditionalFlowMatching:
    """Conditional flow matching; the coupling runs in ``prepare``."""

    Params: ClassVar[type[Params]] = CFMParams

    def __init__(self, params: CFMParams):
        self.params = params
        self.prefetch = params.coupling.costly

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        pairing = self.params.coupling.pair(batch.x_0, batch.x_1, generator)
        return Batch(x_0=pairing.x_0, x_1=pairing.x_1, weights=pairing.weights)

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        t = sample_times(self.params.time_sampler, batch.x_0, generator)
        ps = self.params.path.sample(batch.x_0, batch.x_1, t, generator)
        return self.params.loss(model(ps.x_t, ps.t) - ps.dx_t, batch.weights)

    def sample(self, model: Callable, x_0: Tensor, solver: Solver, generator: torch.Generator,
               record: bool = False) -> Solution:
        return solver.solve(model, x_0, 0.0, 1.0, record=record)
