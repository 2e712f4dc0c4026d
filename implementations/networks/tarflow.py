"""The TARFlow network: Zhai et al. 2024, "Normalizing Flows are Capable Generative Models"
(https://arxiv.org/abs/2412.06329; apple/ml-tarflow, ``transformer_flow.py``), with
STARFlow's deep-shallow allocation as an option (Gu et al. 2025, arXiv 2506.06276, §3.2).

A stack of T affine autoregressive flow blocks ("MetaBlocks") on patch tokens, mapping
data x to noise z (the generation direction is the inverse):

    tokens x ∈ R^{N×D}: p×p patches of a (C, H, W) image, N = (H/p)², D = C·p²
    (a vector (d,) is d tokens of one value each).
    Block k, on the tokens in its order (as given for even k, reversed for odd k):
        1. h = Linear_in(x) + pos          pos learned (N, Ch), init N(0, 0.01²), kept with
                                           its token when the order is reversed
        2. h += class[y]                   every token; the mean embedding for y < 0 or y None
        3. K causal transformer layers     norms placed as ``placement`` says (blocks.py)
        4. (a, μ) = Linear_out(h)          2D outputs; the weight starts at zero, the bias not
        5. shift by one token              token i's (a_i, μ_i) come from position i − 1, so
                                           they depend on x_{<i} only; token 0 gets (0, 0)
        6. z_i = (x_i − μ_i)·exp(−a_i),    log|det ∂z/∂x| = −Σ_{i,d} a_{i,d}
    then back to the natural token order.

Log-determinants here are **sums** over tokens and channels (nats per sample), where the
official code returns per-dimension means; the method divides by D where it wants a mean.

The network answers three calls, so that every block pass of sampling goes through the
callable the harness hands to ``sample`` (its NFE counter), one call per pass:

    net(x, y)                                       x (b, *shape) → (z (b, *shape), logdet (b,))
    net(tokens, y, block=k)                         one block, tokens (b, N, D) in natural order
                                                    → (z tokens, logdet (b,))
    net(x, y, block=k, start=s, cache=c[, temperature=τ])
                                                    one inverse pass: x (b, n, D) are the tokens
                                                    at positions s … s+n−1 of block k's order,
                                                    c holds positions < s (and keeps these);
                                                    → raw (a, μ), each (b, n, D): the log-scale
                                                    and shift of tokens s+1 … s+n

``temperature`` (shape (b,)) divides each row's attention logits (TARFlow's unconditional
guidance pass). Registered deferred as ``tarflow``; parameters in tarflow_params.py.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.interfaces import Params
from implementations.networks.blocks import Norm, Residual, layer_placement
from implementations.networks.tarflow_params import TarFlowParams


class KVCache:
    """Keys and values a block has computed, per layer, each (b, heads, L, head_dim).

    A pass that starts at position s keeps positions [0, s) and appends its own: Jacobi
    iterations re-run the same positions, and so roll the cache back by themselves.
    """

    def __init__(self) -> None:
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}

    def extend(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if start:
            held_k, held_v = self.keys.get(layer), self.values.get(layer)
            if held_k is None or held_k.shape[2] < start:
                held = 0 if held_k is None else held_k.shape[2]
                raise ValueError(f"KV cache of layer {layer} holds {held} positions; a pass cannot start at {start}")
            k = torch.cat([held_k[:, :, :start], k], dim=2)
            v = torch.cat([held_v[:, :, :start], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class Attention(nn.Module):
    """Causal multi-head self-attention, scale 1/√head_dim, optionally over a KV cache."""

    def __init__(self, width: int, head_dim: int):
        super().__init__()
        self.heads = width // head_dim
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, h: Tensor, cache: KVCache | None = None, layer: int = 0, start: int = 0,
                temperature: Tensor | None = None) -> Tensor:
        b, n, width = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # each (b, heads, n, hd)
        if temperature is not None:
            q = q / temperature.to(q.dtype).view(b, 1, 1, 1)  # logits / τ
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            k, v = cache.extend(layer, start, k, v)
            seen = k.shape[2] - n  # cached positions before this pass
            mask = torch.ones(n, seen + n, dtype=torch.bool, device=h.device).tril(seen)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, width))


class MLP(nn.Module):
    def __init__(self, width: int, ratio: float):
        super().__init__()
        hidden = int(width * ratio)
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class Layer(nn.Module):
    """One transformer layer: an attention branch, then an MLP branch."""

    def __init__(self, params: TarFlowParams, placement: str):
        super().__init__()
        width = params.channels
        self.attn = Residual(Attention(width, params.head_dim), width, placement, params.norm)
        self.mlp = Residual(MLP(width, params.mlp_ratio), width, placement, params.norm)

    def forward(self, h: Tensor, **attention: object) -> Tensor:
        return self.mlp(self.attn(h, **attention))


def shift(out: Tensor) -> Tensor:
    """[0, out_0, …, out_{N−2}]: token i's parameters from position i − 1."""
    return torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], dim=1)


INV_SOFTPLUS_1 = math.log(math.e - 1.0)  # softplus(0.5413) = 1


class MetaBlock(nn.Module):
    """One affine autoregressive flow block; see the module docstring, steps 1–6."""

    def __init__(self, tokens: int, dim: int, params: TarFlowParams, layers: int, flip: bool,
                 num_classes: int | None):
        super().__init__()
        width = params.channels
        self.flip = flip
        self.proj_in = nn.Linear(dim, width)
        self.pos = nn.Parameter(torch.randn(tokens, width) * 0.01)
        self.classes = nn.Parameter(torch.randn(num_classes, width) * 0.01) if num_classes else None
        self.layers = nn.ModuleList(Layer(params, layer_placement(params.placement, i, layers)) for i in range(layers))
        self.final = Norm(params.norm, width) if params.final_norm else None
        self.proj_out = nn.Linear(width, 2 * dim)
        nn.init.zeros_(self.proj_out.weight)  # every block starts as a fixed per-channel affine map
        self.soft_clip, self.scale = params.soft_clip, params.scale

    @property
    def conditional(self) -> bool:
        return self.classes is not None

    def permute(self, x: Tensor) -> Tensor:
        """Tokens (b, N, …) into this block's order, or back: the order is its own inverse."""
        return x.flip(1) if self.flip else x

    def condition(self, y: Tensor | None, rows: int) -> Tensor | None:
        """The class embedding of each row (rows, Ch); the mean embedding where y < 0 or y is None."""
        if self.classes is None:
            return None
        mean = self.classes.mean(dim=0)
        if y is None:
            return mean.expand(rows, -1)
        return torch.where((y < 0)[:, None], mean, self.classes[y.clamp(min=0)])

    def raw(self, x: Tensor, y: Tensor | None = None, start: int = 0, cache: KVCache | None = None,
            temperature: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Outputs at positions start … start+n−1 of tokens x (b, n, D) in this block's
        order: the (a, μ) of tokens start+1 … start+n, each (b, n, D)."""
        n = x.shape[1]
        pos = self.permute(self.pos[None])[0]  # each token keeps its own position embedding
        h = self.proj_in(x) + pos[start:start + n]  # (b, n, Ch)
        c = self.condition(y, x.shape[0])
        if c is not None:
            h = h + c[:, None]
        for i, layer in enumerate(self.layers):
            h = layer(h, cache=cache, layer=i, start=start, temperature=temperature)
        if self.final is not None:
            h = self.final(h)
        out = self.proj_out(h)
        if self.soft_clip is not None:  # STARFlow: c·tanh(out/c) bounds both outputs
            out = self.soft_clip * torch.tanh(out / self.soft_clip)
        a, mu = out.chunk(2, dim=-1)
        if self.scale == "softplus":  # STARFlow: σ = softplus(â + log(e − 1)), so â = 0 is σ = 1
            a = torch.log(torch.nn.functional.softplus(a + INV_SOFTPLUS_1))
        return a, mu

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Tokens x (b, N, D) in natural order → (z (b, N, D), log|det ∂z/∂x| (b,))."""
        xp = self.permute(x)
        a, mu = self.raw(xp, y)
        a, mu = shift(a), shift(mu)
        zp = (xp - mu) * torch.exp(-a)
        return self.permute(zp), -a.sum(dim=(1, 2))


def patch_size(params: TarFlowParams, shape: tuple[int, ...]) -> int:
    """The side of a patch: side / grid when ``grid`` is set, else ``patch_size``."""
    return shape[1] // params.grid if params.grid is not None else params.patch_size


class TarFlow(nn.Module):
    """Patchify, T MetaBlocks (odd ones reversed), unpatchify; see the module docstring."""

    Params: ClassVar[type[Params]] = TarFlowParams
    autoregressive: ClassVar[bool] = True  # pairs with autoregressive methods and ar-* samplers only

    def __init__(self, params: TarFlowParams, shape: tuple[int, ...]):
        super().__init__()
        self.check_shape(params, shape)
        self.shape = tuple(shape)
        if len(shape) == 1:
            self.p, self.num_tokens, self.token_dim = 1, shape[0], 1
        else:
            self.p = patch_size(params, shape)
            self.num_tokens, self.token_dim = (shape[1] // self.p) ** 2, shape[0] * self.p ** 2
        self.num_classes = params.num_classes
        last = params.blocks - 1
        deep = params.deep_layers
        self.blocks = nn.ModuleList(
            MetaBlock(self.num_tokens, self.token_dim, params,
                      layers=deep if deep is not None and k == last else params.layers, flip=k % 2 == 1,
                      num_classes=params.num_classes if deep is None or k == last else None)
            for k in range(params.blocks))

    @staticmethod
    def check_shape(params: TarFlowParams, shape: tuple[int, ...]) -> None:
        """Raise ValueError unless ``shape`` is a vector (d ≥ 2,) or a square image (C, H, H)
        with H divisible by the patch size into at least 2 tokens."""
        if len(shape) == 1 and shape[0] >= 2:
            return
        if params.grid is not None:
            if len(shape) == 3 and shape[1] == shape[2] and shape[1] % params.grid == 0:
                return
            raise ValueError(f"tarflow: grid {params.grid} needs square images (C, H, H) with H a multiple of it; "
                             f"this dataset's samples have shape {tuple(shape)}")
        p = params.patch_size
        if len(shape) == 3 and shape[1] == shape[2] and shape[1] % p == 0 and shape[1] // p >= 2:
            return
        raise ValueError(f"tarflow: needs vectors (d,) with d ≥ 2 or square images (C, H, H) with H a multiple "
                         f"of the patch size {p} and at least 2 patches a side; this dataset's samples have "
                         f"shape {tuple(shape)}")

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def patchify(self, x: Tensor) -> Tensor:
        """(b, *shape) → tokens (b, N, D); an image's token holds its patch as (C, p, p)."""
        b = x.shape[0]
        if len(self.shape) == 1:
            return x.reshape(b, self.num_tokens, 1)
        c, p, g = self.shape[0], self.p, self.shape[1] // self.p
        return x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        b = tokens.shape[0]
        if len(self.shape) == 1:
            return tokens.reshape(b, *self.shape)
        c, side = self.shape[0], self.shape[1]
        p, g = self.p, side // self.p
        return tokens.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, side, side)

    def forward(self, x: Tensor, y: Tensor | None = None, *, block: int | None = None, start: int | None = None,
                cache: KVCache | None = None, temperature: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if y is not None and self.num_classes is None:
            raise ValueError("tarflow: class labels given to a network without num_classes; set the network's "
                             "num_classes or sample unconditionally")
        if start is not None:  # one inverse pass of one block
            if block is None:
                raise ValueError("tarflow: an inverse pass (start=...) needs block=")
            return self.blocks[block].raw(x, y, start, KVCache() if cache is None else cache, temperature)
        if block is not None:
            return self.blocks[block](x, y)
        tokens = self.patchify(x)
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for flow_block in self.blocks:
            tokens, block_logdet = flow_block(tokens, y)
            logdet = logdet + block_logdet
        return self.unpatchify(tokens), logdet
