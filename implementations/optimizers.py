"""Optimisers a method spec can name under ``optimizer:``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import torch
from pydantic import NonNegativeFloat, PositiveFloat

from harness.interfaces import Params
from harness.registry import OPTIMIZERS


class AdamParams(Params):
    lr: PositiveFloat = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.0


class AdamWParams(AdamParams):
    weight_decay: NonNegativeFloat = 1e-2  # torch.optim.AdamW's default


@OPTIMIZERS.register("adam")
class Adam:
    """Adam (Kingma & Ba 2015); weight decay, if any, is L2 added to the gradient."""

    Params: ClassVar[type[Params]] = AdamParams

    @staticmethod
    def build(params: AdamParams, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(parameters, lr=params.lr, betas=params.betas, eps=params.eps,
                                weight_decay=params.weight_decay)


@OPTIMIZERS.register("adamw")
class AdamW:
    """AdamW (Loshchilov & Hutter 2019): decoupled weight decay."""

    Params: ClassVar[type[Params]] = AdamWParams

    @staticmethod
    def build(params: AdamWParams, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(parameters, lr=params.lr, betas=params.betas, eps=params.eps,
                                 weight_decay=params.weight_decay)
