"""The convolutional autoencoder's parameter model, free of torch (own module: its code
fingerprint covers only what the autoencoder's training depends on)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from harness.interfaces import Params
from harness.limits import Width


class ConvAutoencoderParams(Params):
    channels: Width = Field(32, description="channels of the first convolution; doubled at each downsampling")
    downsample: Annotated[int, Field(strict=True, ge=0, le=5)] = Field(
        1, description="stride-2 downsamplings: the latent's side is the image's / 2^downsample")
    latent_channels: Annotated[int, Field(strict=True, ge=1, le=64)] = Field(2, description="channels of the latent")
