"""The DiT's parameter model, free of torch (in its own module: see unet_params.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from harness.interfaces import Params
from harness.limits import Depth, Width


class DiTParams(Params):
    patch_size: Annotated[int, Field(ge=1, le=64)] = Field(2, description="side of the square patches (tokens)")
    hidden: Width = Field(64, description="token width")
    depth: Depth = Field(4, description="transformer blocks")
    heads: Annotated[int, Field(ge=1, le=64)] = Field(4, description="attention heads; hidden must divide by it")
    mlp_ratio: float = Field(4.0, gt=0, le=16, description="MLP width over token width")
    norm: Literal["layernorm", "rmsnorm"] = Field("layernorm", description="the normalisation before attention and MLP "
                                                                          "(no learned affine: adaLN supplies it)")
    num_classes: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        None, description="a learned class embedding added to the time embedding (null: unconditional)")
