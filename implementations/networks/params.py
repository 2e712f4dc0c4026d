"""The networks' parameter models, free of torch so that specs validate without it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from harness.interfaces import Params
from harness.limits import Depth, Width

ACTIVATIONS = ("selu", "relu", "silu", "gelu", "elu", "tanh", "leaky_relu")


class MLPParams(Params):
    width: Width = 64
    depth: Depth = 3  # hidden layers: TorchCFM's "3×64" MLP is depth 3, width 64
    activation: Literal[ACTIVATIONS] = "selu"  # type: ignore[valid-type]
    time_embedding: Literal["concat", "sinusoidal"] = "concat"
    time_embedding_dim: Width = 32  # sinusoidal only


class UNetParams(Params):
    channels: Width = Field(32, description="channels at the first level; level i has channels x channel_mult[i]")
    channel_mult: tuple[Annotated[int, Field(ge=1, le=64)], ...] = Field(
        (1, 2), min_length=1, max_length=8, description="one entry per resolution level; each level but the last "
                                                        "halves the resolution")
    num_res_blocks: Depth = Field(1, description="residual blocks per level on the way down (one more on the way up)")
    attention_resolutions: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        (), max_length=8, description="resolutions (image side) with self-attention after each block")
    heads: Annotated[int, Field(ge=1, le=64)] = Field(1, description="attention heads")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    num_classes: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        None, description="a learned class embedding added to the time embedding (null: unconditional)")
