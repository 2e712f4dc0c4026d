"""A small U-Net velocity network for images, in the style of DDPM (Ho et al. 2020,
"Denoising Diffusion Probabilistic Models", Appendix B) and ADM (Dhariwal & Nichol 2021,
"Diffusion Models Beat GANs on Image Synthesis", Section 3): residual blocks with group
normalisation and SiLU, the time embedding as a scale and shift after each block's second
norm (ADM's scale-shift norm), self-attention at
chosen resolutions, skip connections from the down path to the up path, and the last
convolution of each residual branch (and of the output) initialised to zero, as ADM does.

Registered deferred as ``unet`` in :mod:`implementations.networks`; its parameters are in
:mod:`implementations.networks.params`. Input (batch, C, H, W) with H and W divisible by
2^(levels − 1); time t as a 0-d tensor or shape (batch,); an optional class label y of
shape (batch,) when ``num_classes`` is set.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from harness.interfaces import Params
from implementations.networks.mlp import SinusoidalEmbedding, broadcast_time
from implementations.networks.unet_params import UNetParams


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


def zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """norm, SiLU, conv; then the time (and class) embedding as a per-channel scale and
    shift *after* the second norm (ADM's ``use_scale_shift_norm``), SiLU, dropout, zeroed
    conv; plus the skip. An embedding added before that norm (DDPM's form) is removed by
    it wherever a group holds one channel, as GroupNorm(gcd(32, c)) does for c ≤ 32: such a
    block cannot see the time."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * c_out))
        self.out_norm = group_norm(c_out)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), zero(nn.Conv2d(c_out, c_out, 3, padding=1)))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(self.in_layers(x)) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)


class Attention(nn.Module):
    """Multi-head self-attention over the H·W positions, residual, output projection zeroed."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: {channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = nn.functional.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """Down path of ``len(channel_mult)`` levels, a middle (ResBlock, attention, ResBlock),
    an up path mirroring it with skip connections; see the module docstring."""

    Params: ClassVar[type[Params]] = UNetParams

    def __init__(self, params: UNetParams, shape: tuple[int, ...]):
        super().__init__()
        self.check_shape(params, shape)
        self.shape = tuple(shape)
        c_img, side = shape[0], shape[1]
        ch, emb_dim = params.channels, 4 * params.channels
        self.time = nn.Sequential(SinusoidalEmbedding(ch), nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label = nn.Embedding(params.num_classes, emb_dim) if params.num_classes else None
        self.inp = nn.Conv2d(c_img, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips, c, resolution = [ch], ch, side
        for level, mult in enumerate(params.channel_mult):
            for _ in range(params.num_res_blocks):
                blocks = nn.ModuleList([ResBlock(c, ch * mult, emb_dim, params.dropout)])
                c = ch * mult
                if resolution in params.attention_resolutions:
                    blocks.append(Attention(c, params.heads))
                self.down.append(blocks)
                skips.append(c)
            if level < len(params.channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
                resolution //= 2
        self.middle = nn.ModuleList([ResBlock(c, c, emb_dim, params.dropout), Attention(c, params.heads),
                                     ResBlock(c, c, emb_dim, params.dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(params.channel_mult))):
            for i in range(params.num_res_blocks + 1):
                blocks = nn.ModuleList([ResBlock(c + skips.pop(), ch * mult, emb_dim, params.dropout)])
                c = ch * mult
                if resolution in params.attention_resolutions:
                    blocks.append(Attention(c, params.heads))
                if level > 0 and i == params.num_res_blocks:
                    blocks.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                nn.Conv2d(c, c, 3, padding=1)))
                    resolution *= 2
                self.up.append(blocks)
        self.out = nn.Sequential(group_norm(c), nn.SiLU(), zero(nn.Conv2d(c, c_img, 3, padding=1)))

    @staticmethod
    def check_shape(params: UNetParams, shape: tuple[int, ...]) -> None:
        """Raise ValueError unless ``shape`` is (C, H, W) with H = W divisible by 2^(levels − 1)."""
        factor = 2 ** (len(params.channel_mult) - 1)
        if len(shape) != 3 or shape[1] != shape[2] or shape[1] % factor:
            raise ValueError(f"unet: needs square images (C, H, H) with H divisible by {factor} "
                             f"({len(params.channel_mult)} levels); this dataset's samples have shape {tuple(shape)}")

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        emb = self.time(broadcast_time(t, x))
        if self.label is not None and y is not None:
            emb = emb + self.label(y)
        h = self.inp(x)
        skips = [h]
        for blocks in self.down:
            for block in blocks:
                h = block(h, emb) if isinstance(block, ResBlock) else block(h)
            skips.append(h)
        for block in self.middle:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        for blocks in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return self.out(h)
