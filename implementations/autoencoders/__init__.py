"""Autoencoders whose latent space a flow can be trained in (``latent:`` of a method spec).

Each maps images (batch, C, H, W) in [−1, 1] to latents and back: ``encode(x)``,
``decode(z)``, ``latent_shape(shape)``, and ``loss(x)`` to train it. Registered deferred,
like the networks: the class is an ``nn.Module``.
"""

from __future__ import annotations

from harness.registry import AUTOENCODERS
from implementations.autoencoders.params import ConvAutoencoderParams

AUTOENCODERS.defer("conv", "implementations.autoencoders.conv:ConvAutoencoder", ConvAutoencoderParams)
