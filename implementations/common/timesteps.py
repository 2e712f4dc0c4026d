"""Distributions of the training time t ∈ [0, 1] (t = 1 is data).

- ``uniform``:      t ~ U(0, 1).
- ``logit_normal``: t = sigmoid(m + s·n), n ~ N(0, 1) (Esser et al. 2024, "Scaling Rectified
  Flow Transformers", §3.1). Symmetric around 1/2 for m = 0, so the paper's reversed time
  convention does not change the density; for m ≠ 0 the sign of m flips. Checked against
  diffusers' ``compute_density_for_timestep_sampling`` ("logit_normal"), which cites §3.1.
- ``u_shaped``:     density ∝ e^{a t} + e^{a(1 − t)} on [0, 1] (Lee et al. 2024, "Improving
  the Training of Rectified Flows", a = 4): more weight near both ends. Sampled exactly
  as an equal mixture of the truncated exponential e^{a t} and its mirror image, the same
  mixture the official rfpp code (t_dist.py) draws, there by a numerical inverse CDF.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import PositiveFloat

from harness.interfaces import Params
from harness.lazy import lazy_import
from harness.spec import named_union

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")


class TimeSampler(Params):
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n times in [0, 1], shape (n,), float32 on the generator's device."""
        raise NotImplementedError

    def density(self, t: Tensor) -> Tensor:
        """The probability density at t (for tests and plots)."""
        raise NotImplementedError


class Uniform(TimeSampler):
    name: Literal["uniform"] = "uniform"

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.rand(n, generator=generator, device=generator.device)

    def density(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)


class LogitNormal(TimeSampler):
    name: Literal["logit_normal"] = "logit_normal"
    m: float = 0.0
    s: PositiveFloat = 1.0

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.sigmoid(self.m + self.s * torch.randn(n, generator=generator, device=generator.device))

    def density(self, t: Tensor) -> Tensor:
        logit = torch.log(t / (1 - t))
        return torch.exp(-((logit - self.m) ** 2) / (2 * self.s**2)) / (self.s * math.sqrt(2 * math.pi) * t * (1 - t))


class UShaped(TimeSampler):
    name: Literal["u_shaped"] = "u_shaped"
    a: PositiveFloat = 4.0

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
        mirror = torch.rand(n, generator=generator, device=generator.device) < 0.5
        t = torch.log1p(u * math.expm1(self.a)) / self.a  # inverse CDF of ∝ e^{a t} on [0, 1]
        return torch.where(mirror, 1 - t, t).to(torch.float32)

    def density(self, t: Tensor) -> Tensor:
        norm = 2 * math.expm1(self.a) / self.a
        return (torch.exp(self.a * t) + torch.exp(self.a * (1 - t))) / norm


AnyTimeSampler = named_union(Uniform, LogitNormal, UShaped)
TIME_SAMPLERS: tuple[type[TimeSampler], ...] = (Uniform, LogitNormal, UShaped)
