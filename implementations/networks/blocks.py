"""Transformer pieces written once: the normalisations and where a residual branch puts them.

Notation (methods-next §7): F is an attention or MLP module, N a LayerNorm or RMSNorm.

=========  ===============================  ==============================================
placement  one residual branch              source
=========  ===============================  ==============================================
pre        y = x + F(N(x))                  GPT-2, TARFlow (its default; no final norm)
post       y = N(x + F(x))                  the original Transformer (Vaswani et al. 2017)
peri       y = x + N_out(F(N_in(x)))        Kim et al. 2025, "Peri-LN" (arXiv 2502.02732)
mix        post in the first layers, pre    Li, Yin, Liu 2024, "Mix-LN" (arXiv 2412.13795):
           in the rest                      the first ⌊0.25·depth⌋ layers (at least one) post
=========  ===============================  ==============================================

RMSNorm(x) = x / √(mean(x²) + ε) ⊙ γ (LLaMA style: γ starts at 1, no mean, no bias);
LayerNorm(x) = (x − mean(x)) / √(var(x) + ε) ⊙ γ + β. Both run in float32 when the input
is half precision (TARFlow's LayerNorm under bf16 autocast) and in the input's precision
otherwise, so float64 checks stay float64.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

NormKind = Literal["layernorm", "rmsnorm"]
Placement = Literal["pre", "post", "peri", "mix"]
NORM_EPS = 1e-6
MIX_POST_FRACTION = 0.25  # Mix-LN's α: the share of (shallowest) layers that use Post-LN


class Norm(nn.Module):
    """LayerNorm or RMSNorm over the last dimension, with or without a learned affine."""

    def __init__(self, kind: NormKind, width: int, affine: bool = True, eps: float = NORM_EPS):
        super().__init__()
        if kind == "layernorm":
            self.norm: nn.Module = nn.LayerNorm(width, eps=eps, elementwise_affine=affine)
        elif kind == "rmsnorm":
            self.norm = nn.RMSNorm(width, eps=eps, elementwise_affine=affine)
        else:
            raise ValueError(f"unknown norm {kind!r}; choices are layernorm, rmsnorm")
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            with torch.autocast(x.device.type, enabled=False):
                return self.norm(x.float()).to(x.dtype)
        return self.norm(x)


def layer_placement(placement: Placement, index: int, depth: int) -> Literal["pre", "post", "peri"]:
    """The placement of layer ``index`` (0 = nearest the input) of ``depth``: Mix-LN's
    first ⌊0.25·depth⌋ layers are Post-LN (3 of 12, 6 of 24 as in its scripts; at least
    one, so that a shallow block's mix is not plain pre), the rest Pre-LN; the others are
    the same in every layer."""
    if placement == "mix":
        return "post" if index < max(1, int(MIX_POST_FRACTION * depth)) else "pre"
    return placement


class Residual(nn.Module):
    """One residual branch x → x + F(x) with its norms where ``placement`` puts them.

    ``fn`` is called as ``fn(h, **kwargs)``, so an attention branch can take its cache.
    """

    def __init__(self, fn: nn.Module, width: int, placement: Literal["pre", "post", "peri"], norm: NormKind):
        super().__init__()
        if placement not in ("pre", "post", "peri"):
            raise ValueError(f"a residual branch is pre, post or peri, got {placement!r} (mix is per layer)")
        self.fn = fn
        self.placement = placement
        self.norm_in = Norm(norm, width) if placement in ("pre", "peri") else None
        self.norm_out = Norm(norm, width) if placement in ("post", "peri") else None

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        h = self.fn(self.norm_in(x) if self.norm_in is not None else x, **kwargs)
        if self.placement == "peri":
            return x + self.norm_out(h)  # output norm on the branch, before the residual add
        if self.placement == "post":
            return self.norm_out(x + h)  # on the residual stream, after the add
        return x + h
