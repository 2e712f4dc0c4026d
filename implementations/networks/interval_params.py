"""Parameter models of the interval networks u_θ(x, a, b), free of torch, and their
(deferred) registration as ``interval-mlp`` and ``interval-unet``.

They are registered here rather than in :mod:`implementations.networks` so that the
existing networks' modules stay exactly as they are; the code is in
:mod:`implementations.networks.interval`, imported when a run first builds one.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from harness.registry import NETWORKS
from implementations.networks.params import MLPParams
from implementations.networks.unet_params import UNetParams


class IntervalMLPParams(MLPParams):
    """The MLP's settings; the interval b − a gets an input of its own, embedded as the
    start time a is (``time_embedding``)."""

    num_classes: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        None, description="a learned class embedding (plus a null class) added to the first layer (null: "
                          "unconditional)")


class IntervalUNetParams(UNetParams):
    """The U-Net's settings; with ``num_classes`` the class table has one more row, the
    null class that classifier-free guidance trains."""


NETWORKS.defer("interval-mlp", "implementations.networks.interval:IntervalMLP", IntervalMLPParams)
NETWORKS.defer("interval-unet", "implementations.networks.interval:IntervalUNet", IntervalUNetParams)
