"""The TARFlow network's parameter model, free of torch (in its own module: see unet_params.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from harness.interfaces import Params
from harness.limits import Depth, Width


class TarFlowParams(Params):
    """Zhai et al.'s P-Ch-T-K notation: ``patch_size``-``channels``-``blocks``-``layers``."""

    patch_size: Annotated[int, Field(strict=True, ge=1, le=64)] = Field(
        2, description="side of the square patches of an image (tokens); vectors are one value per token")
    grid: Annotated[int, Field(strict=True, ge=2, le=1024)] | None = Field(
        None, description="tokens per image side, whatever the resolution (the patch size is the side / grid; "
                          "overrides patch_size): e.g. 4 gives 16 tokens at 8×8 and at 16×16")
    channels: Width = Field(64, description="transformer width Ch")
    blocks: Depth = Field(4, description="flow blocks T (MetaBlocks); odd ones read the tokens in reverse")
    layers: Depth = Field(2, description="transformer layers K per block (the shallow blocks' with deep_layers)")
    head_dim: Width = Field(64, description="width of one attention head; channels must divide by it")
    mlp_ratio: float = Field(4.0, gt=0, le=16, description="MLP width over the transformer width")
    norm: Literal["layernorm", "rmsnorm"] = Field("layernorm", description="the normalisation")
    placement: Literal["pre", "post", "peri", "mix"] = Field(
        "pre", description="where the norms sit: pre (TARFlow), post, peri (Kim et al. 2025) or mix (Li et al. "
                           "2024: the first quarter of each block's layers post, the rest pre)")
    final_norm: bool = Field(False, description="a norm before each block's output projection (TARFlow has none)")
    num_classes: Annotated[int, Field(strict=True, ge=1, le=100_000)] | None = Field(
        None, description="a learned class embedding added to every token (null: unconditional)")
    deep_layers: Depth | None = Field(
        None, description="STARFlow's deep-shallow allocation: the block nearest the prior (last in the data → "
                          "noise pass) gets this many layers and alone sees the class; the others keep `layers`")

    soft_clip: Annotated[float, Field(gt=0, le=1000)] | None = Field(
        None, description="STARFlow's soft clip of each block's raw outputs, c·tanh(out/c) (STARFlow: 4; "
                          "null: none, as TARFlow)")
    scale: Literal["exp", "softplus"] = Field(
        "exp", description="how the raw log-scale output â becomes the scale σ: exp(â) (TARFlow) or "
                           "softplus(â + 0.5413) (STARFlow; â = 0 gives σ = 1)")

    @model_validator(mode="after")
    def _heads(self) -> TarFlowParams:
        if self.channels % self.head_dim:
            raise ValueError(f"channels {self.channels} do not split into heads of head_dim {self.head_dim}")
        return self
