"""Probability paths between a source sample x_0 (t = 0) and a data sample x_1 (t = 1).

Every path here is affine in (x_0, x_1) plus an optional Gaussian term:

    x_t  = α_t·x_1 + σ_t·x_0 + s_t·ε,           ε ~ N(0, I)
    dx_t = α̇_t·x_1 + σ̇_t·x_0 + ṡ_t·ε            (the conditional velocity target)

with (α_t, σ_t, s_t) per path:

- ``linear``           (t, 1 − t, σ)                  I-CFM / OT-CFM (σ = 0: rectified flow)
- ``brownian_bridge``  (t, 1 − t, σ√(t(1 − t)))       SB-CFM (Tong et al. 2024, Prop. 3.4)
- ``lipman``           (t, 1 − (1 − σ_min)t, 0)       Lipman et al. 2023, the "OT" path
- ``vp``               (a(1 − t), √(1 − a(1 − t)²), 0), a(s) = exp(−½∫₀ˢβ), β linear in
                       [β_min, β_max]: Lipman et al.'s VP diffusion path, reversed to t = 1 data
- ``trigonometric``    (sin(πt/2), cos(πt/2), 0)      Albergo & Vanden-Eijnden's trig interpolant

Paths are written once and shared by every method; parameters come from the spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import NonNegativeFloat, PositiveFloat

from harness.interfaces import Params
from harness.lazy import lazy_import
from harness.spec import named_union

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")


@dataclass
class PathSample:
    """x_t and its conditional target velocity dx_t, both of shape (batch, *dims); t: (batch,)."""

    x_t: Tensor
    dx_t: Tensor
    t: Tensor


def expand_time(t: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample times (batch,) to broadcast against x (batch, *dims)."""
    return t.reshape(-1, *([1] * (x.ndim - 1)))


class Path(Params):
    """x_t = α_t·x_1 + σ_t·x_0 + s_t·ε. Subclasses give the coefficients and derivatives."""

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(α_t, σ_t, α̇_t, σ̇_t) for t of shape (batch,)."""
        raise NotImplementedError

    def noise(self, t: Tensor) -> tuple[Tensor, Tensor] | None:
        """(s_t, ṡ_t) of the Gaussian term, or None when the path has none."""
        return None

    def sample(self, x_0: Tensor, x_1: Tensor, t: Tensor, generator: torch.Generator | None = None) -> PathSample:
        alpha, sigma, d_alpha, d_sigma = (expand_time(c, x_0) for c in self.coefficients(t))
        x_t = alpha * x_1 + sigma * x_0
        dx_t = d_alpha * x_1 + d_sigma * x_0
        noise = self.noise(t)
        if noise is not None:
            s, d_s = (expand_time(c, x_0) for c in noise)
            eps = torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype, device=x_0.device)
            x_t = x_t + s * eps
            dx_t = dx_t + d_s * eps
        return PathSample(x_t=x_t, dx_t=dx_t, t=t)


class Linear(Path):
    """x_t = (1 − t)·x_0 + t·x_1 + σ·ε, target x_1 − x_0 (the σ term is constant in t)."""

    name: Literal["linear"] = "linear"
    sigma: NonNegativeFloat = 0.0

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        one = torch.ones_like(t)
        return t, 1 - t, one, -one

    def noise(self, t: Tensor) -> tuple[Tensor, Tensor] | None:
        if self.sigma == 0:
            return None
        return torch.full_like(t, self.sigma), torch.zeros_like(t)


class BrownianBridge(Path):
    """The Brownian bridge of SB-CFM: s_t = σ√(t(1 − t)), ṡ_t = σ(1 − 2t) / (2√(t(1 − t))).

    ṡ_t is singular at t ∈ {0, 1}; like TorchCFM we add 1e-8 under the root's product so
    that t drawn exactly at an end point gives a large finite value instead of inf.
    """

    name: Literal["brownian_bridge"] = "brownian_bridge"
    sigma: PositiveFloat = 1.0

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        one = torch.ones_like(t)
        return t, 1 - t, one, -one

    def noise(self, t: Tensor) -> tuple[Tensor, Tensor]:
        root = torch.sqrt(t * (1 - t) + 1e-8)
        return self.sigma * torch.sqrt(t * (1 - t)), self.sigma * (1 - 2 * t) / (2 * root)


class Lipman(Path):
    """Lipman et al.'s OT path: x_t = t·x_1 + (1 − (1 − σ_min)t)·x_0, target x_1 − (1 − σ_min)x_0."""

    name: Literal["lipman"] = "lipman"
    sigma_min: NonNegativeFloat = 1e-4

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        one = torch.ones_like(t)
        return t, 1 - (1 - self.sigma_min) * t, one, -(1 - self.sigma_min) * one


class VP(Path):
    """Variance preserving: α_t = a(1 − t), σ_t = √(1 − α_t²), with a(s) = exp(−½T(s)) and
    T(s) = β_min·s + ½(β_max − β_min)s². σ̇_t = −α_t α̇_t / σ_t is singular at t = 1, where
    σ_t = 0; σ_t is floored at 1e-5 in that quotient."""

    name: Literal["vp"] = "vp"
    beta_min: PositiveFloat = 0.1
    beta_max: PositiveFloat = 20.0

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        s = 1 - t
        big_t = self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2
        beta = self.beta_min + (self.beta_max - self.beta_min) * s
        alpha = torch.exp(-0.5 * big_t)
        sigma = torch.sqrt(torch.clamp(1 - alpha**2, min=0.0))
        d_alpha = 0.5 * beta * alpha  # d/dt of −½T(1 − t) is +½β(1 − t)
        d_sigma = -alpha * d_alpha / torch.clamp(sigma, min=1e-5)
        return alpha, sigma, d_alpha, d_sigma


class Trigonometric(Path):
    """α_t = sin(πt/2), σ_t = cos(πt/2)."""

    name: Literal["trigonometric"] = "trigonometric"

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        angle = 0.5 * math.pi * t
        return angle.sin(), angle.cos(), 0.5 * math.pi * angle.cos(), -0.5 * math.pi * angle.sin()


AnyPath = named_union(Linear, BrownianBridge, Lipman, VP, Trigonometric)
PATHS: tuple[type[Path], ...] = (Linear, BrownianBridge, Lipman, VP, Trigonometric)
