"""Distributions of the training time t ∈ [0, 1]."""

from __future__ import annotations

import torch
from torch import Tensor


def uniform_time(n: int, generator: torch.Generator, like: Tensor) -> Tensor:
    """t ~ U(0, 1), shape (n,), in the dtype and device of ``like``."""
    return torch.rand(n, generator=generator, device=generator.device).to(dtype=like.dtype, device=like.device)
