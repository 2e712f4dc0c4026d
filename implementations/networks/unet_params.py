"""The U-Net's parameter model, free of torch (and in a module of its own, so that the
MLP's code fingerprint, which covers ``params.py``, does not change with it)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from harness.interfaces import Params
from harness.limits import Depth, Width


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
