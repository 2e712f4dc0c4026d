"""Interval networks u_θ(x, a, b): velocity networks conditioned on two times, for
average-velocity methods (MeanFlow, SplitMeanFlow).

MeanFlow (Geng et al. 2025, Table 1c) feeds its network (t, t − r), each time through an
embedding of its own, the embeddings summed. In this project's convention (start time a,
end time b ≥ a; methods-next §1.9) that is (a, h = b − a). Both networks here subclass
the single-time ones and add the embedding of h:

- ``interval-mlp`` (:class:`IntervalMLP`): the MLP whose first layer also takes φ(h),
  φ the MLP's own time embedding (raw or sinusoidal). A linear layer on the concatenation
  [x, φ(a), φ(h)] is W_x·x + W_a·φ(a) + W_h·φ(h): two embeddings with their own weights,
  summed. Its output layer starts at zero (the single-time MLP's does not).
- ``interval-unet`` (:class:`IntervalUNet`): the U-Net, whose time embedding of a gets the
  embedding of h (sinusoidal, then Linear-SiLU-Linear, like a's) added. Its output
  convolution starts at zero, as the U-Net's does.

``forward(x, a, b=None, y=None)``: x (batch, *shape); a and b 0-d tensors, floats or
shape (batch,); b = None means b = a (h = 0), the instantaneous velocity v(x, a), so the
networks also serve as plain v(x, t) networks for ODE solvers and other methods. y, when
the network has ``num_classes``, holds class labels (batch,) where a negative label
(``NULL_LABEL``) or y = None selects the extra null class that classifier-free guidance
trains (MeanFlow's label table also has num_classes + 1 rows).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from harness.interfaces import Params
from implementations.networks.interval_params import IntervalMLPParams, IntervalUNetParams
from implementations.networks.mlp import MLP, SinusoidalEmbedding, broadcast_time
from implementations.networks.unet import UNet, zero


def interval_times(x: Tensor, a: Tensor | float, b: Tensor | float | None) -> tuple[Tensor, Tensor]:
    """(a, h = b − a) as columns (batch, 1) in x's dtype; b = None means h = 0."""
    a = broadcast_time(a, x)
    h = torch.zeros_like(a) if b is None else broadcast_time(b, x) - a
    return a, h


class ClassTable(nn.Module):
    """A learned embedding of num_classes classes plus the null class (the last row)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: Tensor | None, x: Tensor) -> Tensor:  # (b,) -> (b, dim)
        null = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        if y is None:
            return self.table(null)
        if y.shape != null.shape:
            raise ValueError(f"class labels y must have shape ({x.shape[0]},). Got {tuple(y.shape)}")
        return self.table(torch.where(y < 0, null, y))


def no_classes(y: Tensor | None, name: str) -> None:
    if y is not None:
        raise ValueError(f"{name} got class labels but has no num_classes")


class IntervalMLP(MLP):
    """The MLP on [x, φ(a), φ(b − a)] (see the module docstring)."""

    Params: ClassVar[type[Params]] = IntervalMLPParams
    interval_conditioned: ClassVar[bool] = True

    def __init__(self, params: IntervalMLPParams, shape: tuple[int, ...]):
        super().__init__(params, shape)
        first = self.net[0]
        t_dim = first.in_features - math.prod(self.shape)
        # One more block of inputs, for φ(h).
        self.net[0] = nn.Linear(first.in_features + t_dim, params.width)
        # A zero output layer: the field starts at u = 0, as adaLN-Zero and the U-Net's do.
        zero(self.net[-1])
        self.classes = ClassTable(params.num_classes, params.width) if params.num_classes else None

    def forward(self, x: Tensor, a: Tensor | float, b: Tensor | float | None = None,
                y: Tensor | None = None) -> Tensor:
        a, h = interval_times(x, a, b)  # (b, 1) each
        if self.embed is not None:
            a, h = self.embed(a), self.embed(h)  # (b, t_dim) each
        hidden = self.net[0](torch.cat([x.reshape(x.shape[0], -1), a, h], dim=-1))  # (b, width)
        if self.classes is not None:
            hidden = hidden + self.classes(y, x)
        else:
            no_classes(y, "interval-mlp")
        return self.net[1:](hidden).reshape(x.shape)


class IntervalEmbedding(nn.Module):
    """The embedding of h = b − a (and of the class) that the U-Net adds to a's."""

    def __init__(self, channels: int, emb_dim: int, num_classes: int | None):
        super().__init__()
        self.interval = nn.Sequential(SinusoidalEmbedding(channels), nn.Linear(channels, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.classes = ClassTable(num_classes, emb_dim) if num_classes else None

    def forward(self, condition: tuple[Tensor, Tensor | None, Tensor]) -> Tensor:  # -> (b, emb_dim)
        h, y, x = condition
        emb = self.interval(h)
        if self.classes is not None:
            emb = emb + self.classes(y, x)
        else:
            no_classes(y, "interval-unet")
        return emb


class IntervalUNet(UNet):
    """The U-Net with the embedding of b − a added to that of a (see the module docstring).

    ``UNet.forward(x, t, y)`` adds ``self.label(y)`` to the time embedding when both are
    set; here ``self.label`` is the :class:`IntervalEmbedding` and ``y`` carries (h, y, x),
    so the U-Net's own body runs unchanged.
    """

    Params: ClassVar[type[Params]] = IntervalUNetParams
    interval_conditioned: ClassVar[bool] = True

    def __init__(self, params: IntervalUNetParams, shape: tuple[int, ...]):
        super().__init__(params, shape)
        self.label = IntervalEmbedding(params.channels, 4 * params.channels, params.num_classes)

    def forward(self, x: Tensor, a: Tensor | float, b: Tensor | float | None = None,
                y: Tensor | None = None) -> Tensor:
        a, h = interval_times(x, a, b)
        return super().forward(x, a[:, 0], (h, y, x))
