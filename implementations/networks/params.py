"""The networks' parameter models, free of torch so that specs validate without it."""

from __future__ import annotations

from typing import Literal

from harness.interfaces import Params
from harness.limits import Depth, Width

ACTIVATIONS = ("selu", "relu", "silu", "gelu", "elu", "tanh", "leaky_relu")


class MLPParams(Params):
    width: Width = 64
    depth: Depth = 3  # hidden layers: TorchCFM's "3×64" MLP is depth 3, width 64
    activation: Literal[ACTIVATIONS] = "selu"  # type: ignore[valid-type]
    time_embedding: Literal["concat", "sinusoidal"] = "concat"
    time_embedding_dim: Width = 32  # sinusoidal only
