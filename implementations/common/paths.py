"""Probability paths between a source sample x_0 (t = 0) and a data sample x_1 (t = 1).

A path turns a pair and a time into the interpolant x_t and the conditional velocity
target dx_t that a velocity network regresses on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PathSample:
    """x_t and its conditional target velocity dx_t, both of shape (batch, *dims); t: (batch,)."""

    x_t: Tensor
    dx_t: Tensor
    t: Tensor


def expand_time(t: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample times (batch,) to broadcast against x (batch, *dims)."""
    return t.reshape(-1, *([1] * (x.ndim - 1)))


@dataclass(frozen=True)
class LinearPath:
    """x_t = (1 − t)·x_0 + t·x_1 + σ·ε, target u_t = x_1 − x_0 (σ = 0: rectified flow).

    The Gaussian smoothing σ·ε is constant in t, so it does not change the target.
    """

    sigma: float = 0.0

    def sample(self, x_0: Tensor, x_1: Tensor, t: Tensor, generator: torch.Generator | None = None) -> PathSample:
        t_ = expand_time(t, x_0)
        x_t = (1 - t_) * x_0 + t_ * x_1
        if self.sigma > 0:
            eps = torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype, device=x_0.device)
            x_t = x_t + self.sigma * eps
        return PathSample(x_t=x_t, dx_t=x_1 - x_0, t=t)
