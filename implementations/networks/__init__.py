"""Velocity networks v_θ(x, t).

Every network maps x of shape (batch, *shape) and time t (a 0-d tensor, or shape (batch,))
to a tensor shaped like x. A network is an ``nn.Module``, so its class cannot exist
without torch: each is registered deferred, with its ``Params`` model here and its code
imported when a run first builds one.
"""

from __future__ import annotations

from harness.registry import NETWORKS
from implementations.networks.dit_params import DiTParams
from implementations.networks.params import MLPParams
from implementations.networks.tarflow_params import TarFlowParams
from implementations.networks.unet_params import UNetParams

NETWORKS.defer("mlp", "implementations.networks.mlp:MLP", MLPParams)
NETWORKS.defer("unet", "implementations.networks.unet:UNet", UNetParams)
NETWORKS.defer("dit", "implementations.networks.dit:DiT", DiTParams)
NETWORKS.defer("tarflow", "implementations.networks.tarflow:TarFlow", TarFlowParams)
