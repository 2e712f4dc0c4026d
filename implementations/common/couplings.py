"""Couplings: how a minibatch of source samples x_0 and target samples x_1, drawn
independently, is turned into training pairs (and optional per-pair loss weights).

- ``independent``: the pairs as drawn (I-CFM, rectified flow).
- ``exact_ot``: the exact optimal transport plan for the squared Euclidean cost between the
  two uniform minibatches (OT-CFM, Tong et al. 2024, §3.2). For equal sizes and uniform
  weights the plan is a permutation (a vertex of the Birkhoff polytope), so each x_0 is
  paired with exactly one x_1; POT's network simplex (``ot.emd``) finds it. TorchCFM
  instead draws n pairs from the plan with replacement, which has the same pair
  distribution but repeats some pairs and drops others.
- ``sinkhorn``: the entropic OT plan with regularisation ``reg`` (SB-CFM uses reg = 2σ²),
  from which n pairs are drawn with replacement, as in TorchCFM. Computed by POT's
  log-domain Sinkhorn, which stays finite when reg is small against the costs.
- ``gibbs``: W-CFM (Calvo-Ordoñez, Meunier et al. 2025): keep the independent pairs and
  weight each pair's loss by the Gibbs kernel w = exp(−‖x_0 − x_1‖² / ε), self-normalised
  over the batch; as ε → ∞ this is I-CFM.

Couplings run on the CPU in float64 and are deterministic given their generator, so the
harness may prepare the pairing of the next batch in a worker thread while the model
steps (POT releases the GIL inside its solvers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import PositiveFloat

from harness.interfaces import Params
from harness.lazy import lazy_import
from harness.limits import Iterations
from harness.spec import named_union

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")


@dataclass
class Pairing:
    """Coupled minibatch: x_0[i] is paired with x_1[i]; optional weights of shape (batch,)."""

    x_0: Tensor
    x_1: Tensor
    weights: Tensor | None = None


def squared_cost(x_0: Tensor, x_1: Tensor) -> np.ndarray:
    """C[i, j] = ‖x_0[i] − x_1[j]‖² in float64 on the CPU, shape (n, m)."""
    a = x_0.detach().reshape(x_0.shape[0], -1).to("cpu", torch.float64)
    b = x_1.detach().reshape(x_1.shape[0], -1).to("cpu", torch.float64)
    return torch.cdist(a, b).square_().numpy()


class Coupling(Params):
    costly: ClassVar[bool] = False  # worth preparing ahead of time in a worker thread

    def pair(self, x_0: Tensor, x_1: Tensor, generator: torch.Generator) -> Pairing:
        raise NotImplementedError


class Independent(Coupling):
    name: Literal["independent"] = "independent"

    def pair(self, x_0: Tensor, x_1: Tensor, generator: torch.Generator) -> Pairing:
        return Pairing(x_0, x_1)


def exact_ot_permutation(cost: np.ndarray) -> np.ndarray:
    """σ with x_0[i] ↔ x_1[σ(i)] minimising Σ_i C[i, σ(i)], for a square cost matrix."""
    import ot

    n = cost.shape[0]
    plan = ot.emd(np.full(n, 1.0 / n), np.full(n, 1.0 / n), cost)
    perm = plan.argmax(axis=1)
    if len(np.unique(perm)) != n:  # not a vertex: fall back to an assignment solver
        from scipy.optimize import linear_sum_assignment

        perm = linear_sum_assignment(cost)[1]
    return perm


class ExactOT(Coupling):
    name: Literal["exact_ot"] = "exact_ot"
    costly: ClassVar[bool] = True

    def pair(self, x_0: Tensor, x_1: Tensor, generator: torch.Generator) -> Pairing:
        if x_0.shape[0] != x_1.shape[0]:
            raise ValueError(f"exact_ot needs equal batch sizes, got {x_0.shape[0]} and {x_1.shape[0]}")
        perm = torch.from_numpy(exact_ot_permutation(squared_cost(x_0, x_1))).to(x_1.device)
        return Pairing(x_0, x_1[perm])


class Sinkhorn(Coupling):
    name: Literal["sinkhorn"] = "sinkhorn"
    reg: PositiveFloat | None = None  # None: 2σ² of the method's path (SB-CFM)
    method: Literal["sinkhorn", "sinkhorn_log"] = "sinkhorn"
    max_iter: Iterations = 1000
    tol: PositiveFloat = 1e-9
    marginal_tol: PositiveFloat = 1e-2  # relative error allowed on the column sums
    costly: ClassVar[bool] = True

    def plan(self, cost: np.ndarray, reg: float) -> np.ndarray:
        """The entropic plan with uniform marginals. Plain Sinkhorn (POT's default, as in
        TorchCFM) underflows when reg is small against the costs; that is an error here,
        not a silent fall-back to the independent plan."""
        import warnings

        import ot

        n, m = cost.shape
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = ot.sinkhorn(np.full(n, 1.0 / n), np.full(m, 1.0 / m), cost, reg,
                               method=self.method, numItermax=self.max_iter, stopThr=self.tol)
        # POT makes the row sums exact on its last update, so the column sums tell whether it
        # converged; a plan with wrong marginals is not the entropic plan.
        col_error = np.abs(plan.sum(axis=0) * m - 1.0).max() if np.isfinite(plan).all() else np.inf
        if not col_error <= self.marginal_tol:
            raise ValueError(f"Sinkhorn with reg={reg:g} did not reach the marginals (relative column error "
                             f"{col_error:.3g}) on costs up to {cost.max():.3g}; raise reg or max_iter, "
                             "or use method: sinkhorn_log")
        return plan

    def pair(self, x_0: Tensor, x_1: Tensor, generator: torch.Generator) -> Pairing:
        if self.reg is None:
            raise ValueError("sinkhorn coupling needs reg (set it, or use a path with sigma > 0)")
        pi = torch.from_numpy(self.plan(squared_cost(x_0, x_1), self.reg))
        flat = (pi / pi.sum()).flatten()
        choice = torch.multinomial(flat, x_0.shape[0], replacement=True, generator=_cpu(generator))
        i, j = choice // pi.shape[1], choice % pi.shape[1]
        return Pairing(x_0[i.to(x_0.device)], x_1[j.to(x_1.device)])


class Gibbs(Coupling):
    name: Literal["gibbs"] = "gibbs"
    epsilon: PositiveFloat = 1.0
    # "absolute": ε as given; "mean_cost": ε times the batch's mean pair cost, which makes
    # one ε serve datasets of different scales (a flowgauge choice, not from the paper).
    epsilon_scale: Literal["absolute", "mean_cost"] = "absolute"

    def pair(self, x_0: Tensor, x_1: Tensor, generator: torch.Generator) -> Pairing:
        cost = (x_0 - x_1).reshape(x_0.shape[0], -1).square().sum(dim=1)
        if self.epsilon_scale == "mean_cost":
            epsilon = self.epsilon * cost.mean().clamp(min=torch.finfo(cost.dtype).tiny)
        else:
            epsilon = self.epsilon
        log_w = -cost / epsilon
        weights = torch.softmax(log_w, dim=0) * x_0.shape[0]  # self-normalised, mean 1
        return Pairing(x_0, x_1, weights.detach())


def _cpu(generator: torch.Generator) -> torch.Generator | None:
    return generator if generator.device.type == "cpu" else None


AnyCoupling = named_union(Independent, ExactOT, Sinkhorn, Gibbs)
