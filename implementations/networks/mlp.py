"""The MLP velocity network (registered, deferred, in ``implementations.networks``)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from harness.interfaces import Params
from implementations.networks.params import ACTIVATIONS, MLPParams

MODULES: dict[str, type[nn.Module]] = {
    "selu": nn.SELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}
assert set(MODULES) == set(ACTIVATIONS)


def broadcast_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Time as a column (batch, 1) in x's dtype, whether given as a scalar or per sample."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"Time t must be a scalar or have the batch size [{x.shape[0]}]. Got {tuple(t.shape)}")
    return t.reshape(x.shape[0], 1)


class SinusoidalEmbedding(nn.Module):
    """[sin(2π f_k t), cos(2π f_k t)] with frequencies f_k spaced geometrically in [1, max_freq]."""

    def __init__(self, dim: int, max_freq: float = 1000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"sinusoidal embedding dimension must be even, got {dim}")
        freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:  # (b, 1) -> (b, dim)
        angles = 2 * math.pi * t * self.freqs.to(t.dtype)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class MLP(nn.Module):
    """A fully connected velocity network; time is concatenated to the input, either raw
    (TorchCFM's ``time_varying=True`` MLP) or through a sinusoidal embedding."""

    Params: ClassVar[type[Params]] = MLPParams

    def __init__(self, params: MLPParams, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)
        dim = math.prod(self.shape)
        if params.time_embedding == "sinusoidal":
            self.embed: nn.Module | None = SinusoidalEmbedding(params.time_embedding_dim)
            t_dim = params.time_embedding_dim
        else:
            self.embed = None
            t_dim = 1
        act = MODULES[params.activation]
        layers: list[nn.Module] = [nn.Linear(dim + t_dim, params.width), act()]
        for _ in range(params.depth - 1):
            layers += [nn.Linear(params.width, params.width), act()]
        layers.append(nn.Linear(params.width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = broadcast_time(t, x)  # (b, 1)
        if self.embed is not None:
            t = self.embed(t)  # (b, t_dim)
        h = torch.cat([x.reshape(x.shape[0], -1), t], dim=-1)  # (b, dim + t_dim)
        return self.net(h).reshape(x.shape)
