"""A DiT-style patch transformer velocity network: Peebles & Xie 2023, "Scalable
Diffusion Models with Transformers" (https://arxiv.org/abs/2212.09748), Section 3.2,
with adaLN-Zero blocks.

The image (C, H, W) is cut into p×p patches, each linearly embedded (a convolution with
kernel and stride p) and given a fixed 2-D sine-cosine position embedding. The condition
c is the time embedding (sinusoidal, then an MLP), plus a class embedding when
``num_classes`` is set. Each block regresses from c a shift, scale and gate for its
attention and its MLP (adaptive layer norm); the regressions, the gates and the final
linear layer start at zero, so every block starts as the identity (adaLN-Zero). The
normalisation is LayerNorm, or RMSNorm, without learned affine parameters.

Registered deferred as ``dit`` in :mod:`implementations.networks`; its parameters are in
:mod:`implementations.networks.dit_params`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from harness.interfaces import Params
from implementations.networks.blocks import Norm
from implementations.networks.dit_params import DiTParams
from implementations.networks.mlp import SinusoidalEmbedding, broadcast_time


def sincos_2d(side: int, dim: int) -> Tensor:
    """Fixed position embeddings (side², dim): half the channels encode the row, half the
    column, each as [sin, cos] at geometrically spaced frequencies."""
    if dim % 4:
        raise ValueError(f"dit: hidden must be a multiple of 4 for the 2-D position embedding, got {dim}")
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    pos = torch.arange(side, dtype=torch.float64)
    angles = pos[:, None] * freqs[None, :]  # (side, dim/4)
    one = torch.cat([angles.sin(), angles.cos()], dim=1)  # (side, dim/2)
    rows = one[:, None, :].expand(side, side, dim // 2)
    cols = one[None, :, :].expand(side, side, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(side * side, dim).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float, norm: str):
        super().__init__()
        self.norm1, self.norm2 = Norm(norm, hidden, affine=False), Norm(norm, hidden, affine=False)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        width = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, width), nn.GELU(approximate="tanh"), nn.Linear(width, hidden))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        h = modulate(self.norm1(x), shift1, scale1)
        x = x + gate1[:, None] * self.attn(h, h, h, need_weights=False)[0]
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """Patchify, position embedding, ``depth`` adaLN-Zero blocks, a modulated final
    linear layer, unpatchify; see the module docstring."""

    Params: ClassVar[type[Params]] = DiTParams

    def __init__(self, params: DiTParams, shape: tuple[int, ...]):
        super().__init__()
        self.check_shape(params, shape)
        self.shape = tuple(shape)
        c_img, side = shape[0], shape[1]
        p, hidden = params.patch_size, params.hidden
        if hidden % params.heads:
            raise ValueError(f"dit: hidden {hidden} does not split into {params.heads} heads")
        self.p, self.grid = p, side // p
        self.embed = nn.Conv2d(c_img, hidden, p, stride=p)
        self.register_buffer("pos", sincos_2d(self.grid, hidden), persistent=False)
        self.time = nn.Sequential(SinusoidalEmbedding(hidden), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, hidden))
        self.label = nn.Embedding(params.num_classes, hidden) if params.num_classes else None
        self.blocks = nn.ModuleList(Block(hidden, params.heads, params.mlp_ratio, params.norm)
                                    for _ in range(params.depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.final = nn.Linear(hidden, p * p * c_img)
        for layer in (self.final_ada[1], self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @staticmethod
    def check_shape(params: DiTParams, shape: tuple[int, ...]) -> None:
        """Raise ValueError unless ``shape`` is (C, H, H) with H divisible by the patch size."""
        if len(shape) != 3 or shape[1] != shape[2] or shape[1] % params.patch_size:
            raise ValueError(f"dit: needs square images (C, H, H) with H divisible by the patch size "
                             f"{params.patch_size}; this dataset's samples have shape {tuple(shape)}")

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        c_img = self.shape[0]
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # (b, grid², hidden)
        cond = self.time(broadcast_time(t, x))
        if self.label is not None and y is not None:
            cond = cond + self.label(y)
        for block in self.blocks:
            tokens = block(tokens, cond)
        shift, scale = self.final_ada(cond).chunk(2, dim=1)
        return unpatchify(self.final(modulate(self.final_norm(tokens), shift, scale)), c_img, self.p)


def unpatchify(tokens: Tensor, channels: int, p: int) -> Tensor:
    """(b, g², p·p·C) tokens, each holding its patch's pixels in (row, column, channel)
    order, row-major over the g×g grid, back to images (b, C, g·p, g·p)."""
    b, n, _ = tokens.shape
    g = math.isqrt(n)
    out = tokens.reshape(b, g, g, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return out.reshape(b, channels, g * p, g * p)



