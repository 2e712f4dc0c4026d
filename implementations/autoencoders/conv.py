"""A small deterministic convolutional autoencoder for latent flow matching on small images.

Latent Flow Matching (Dao, Phung, Nguyen, Tran 2023, "Flow Matching in Latent Space")
trains the flow in the latent space of Stable Diffusion's pretrained KL autoencoder
(``sd-vae-ft-mse``: 8x downsampling, 4 channels, latents scaled by 0.18215), kept frozen.
Those weights cannot be downloaded here, and are made for 256-pixel photographs, so this
is our own stand-in for small images, trained by the harness as an artefact (harness.latent):

    encode: conv 3x3 (C -> c), then ``downsample`` times [SiLU, conv 4x4 stride 2 (doubling
            the channels)], SiLU, conv 3x3 -> latent_channels
    decode: conv 3x3 (latent_channels -> top), then ``downsample`` times [SiLU, transposed
            conv 4x4 stride 2 (halving)], SiLU, conv 3x3 -> C

trained on the mean squared reconstruction error. It is deterministic (no KL term, no
sampling of the posterior as in the paper's ``latent_dist.sample()``); the harness scales
its latents to unit standard deviation, which plays the role of the paper's 0.18215.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from implementations.autoencoders.params import ConvAutoencoderParams


class ConvAutoencoder(nn.Module):
    Params = ConvAutoencoderParams

    def __init__(self, params: ConvAutoencoderParams, shape: tuple[int, ...]):
        super().__init__()
        self.check_shape(params, shape)
        c, k = shape[0], params.downsample
        widths = [params.channels * 2**i for i in range(k + 1)]
        down: list[nn.Module] = [nn.Conv2d(c, widths[0], 3, padding=1)]
        for i in range(k):
            down += [nn.SiLU(), nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1)]
        down += [nn.SiLU(), nn.Conv2d(widths[-1], params.latent_channels, 3, padding=1)]
        up: list[nn.Module] = [nn.Conv2d(params.latent_channels, widths[-1], 3, padding=1)]
        for i in reversed(range(k)):
            up += [nn.SiLU(), nn.ConvTranspose2d(widths[i + 1], widths[i], 4, stride=2, padding=1)]
        up += [nn.SiLU(), nn.Conv2d(widths[0], c, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*down), nn.Sequential(*up)
        self.shape = tuple(shape)
        self.params = params

    @staticmethod
    def check_shape(params: ConvAutoencoderParams, shape: tuple[int, ...]) -> None:
        k = 2**params.downsample
        if len(shape) != 3 or shape[1] % k or shape[2] % k:
            raise ValueError(f"conv autoencoder: needs images (C, H, W) with H and W divisible by 2^downsample = {k}; "
                             f"this dataset's samples have shape {tuple(shape)}")

    def latent_shape(self) -> tuple[int, int, int]:
        k = 2**self.params.downsample
        return (self.params.latent_channels, self.shape[1] // k, self.shape[2] // k)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def loss(self, x: Tensor) -> Tensor:
        """Mean squared reconstruction error per pixel."""
        return torch.mean((self.decode(self.encode(x)) - x) ** 2)
