"""Optimisers a method spec can name under ``optimizer:``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from pydantic import NonNegativeFloat, PositiveFloat

from harness.interfaces import Params
from harness.lazy import lazy_import
from harness.registry import OPTIMIZERS

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")


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
    torch_class: ClassVar[str] = "Adam"  # the torch.optim class

    @classmethod
    def build(cls, params: AdamParams, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return getattr(torch.optim, cls.torch_class)(parameters, lr=params.lr, betas=params.betas, eps=params.eps,
                               weight_decay=params.weight_decay)


@OPTIMIZERS.register("adamw")
class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): decoupled weight decay."""

    Params: ClassVar[type[Params]] = AdamWParams
    torch_class: ClassVar[str] = "AdamW"


class AdamPParams(AdamParams):
    delta: PositiveFloat = 0.1  # cosine-similarity threshold that detects scale invariance
    wd_ratio: PositiveFloat = 0.1  # weight decay kept for scale-invariant weights
    nesterov: bool = False


@OPTIMIZERS.register("adamp")
class AdamP:
    """AdamP (Heo et al. 2021, "AdamP: Slowing Down the Slowdown for Momentum Optimizers
    on Scale-invariant Weights", https://arxiv.org/abs/2006.08217, Algorithm 2)."""

    Params: ClassVar[type[Params]] = AdamPParams

    @staticmethod
    def build(params: AdamPParams, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        from implementations.adamp import AdamPOptimizer  # a torch.optim.Optimizer: imports torch

        return AdamPOptimizer(parameters, lr=params.lr, betas=params.betas, eps=params.eps,
                              weight_decay=params.weight_decay, delta=params.delta,
                              wd_ratio=params.wd_ratio, nesterov=params.nesterov)
