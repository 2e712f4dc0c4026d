"""The DiT: tokens back to pixels in the right places, every block the identity at
initialisation (adaLN-Zero), both normalisations, conditioning, and refused shapes."""

from __future__ import annotations

import pytest
import torch

import implementations  # noqa: F401
from harness.registry import NETWORKS
from implementations.networks.dit import sincos_2d, unpatchify


def dit(shape, **params):
    cls = NETWORKS.get("dit")
    torch.manual_seed(0)
    return cls(cls.Params(**params), shape)


def test_unpatchify_puts_every_pixel_back():
    x = torch.randn(2, 3, 8, 8)
    p, g = 4, 2
    tokens = torch.stack([torch.stack([x[:, c, gi * p + i, gj * p + j] for i in range(p) for j in range(p)
                                       for c in range(3)], dim=1) for gi in range(g) for gj in range(g)], dim=1)
    assert tokens.shape == (2, g * g, p * p * 3)
    assert torch.equal(unpatchify(tokens, 3, p), x)


def test_position_embeddings_are_distinct_and_fixed():
    pos = sincos_2d(4, 16)
    assert pos.shape == (16, 16) and len({tuple(row.tolist()) for row in pos}) == 16
    assert torch.equal(pos, sincos_2d(4, 16))
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d(4, 6)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_blocks_start_as_identity_and_the_output_at_zero(norm):
    net = dit((1, 8, 8), norm=norm)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(net(x, torch.rand(3)), torch.zeros_like(x))
    tokens = torch.randn(3, 16, 64)
    cond = torch.randn(3, 64)
    for block in net.blocks:
        assert torch.equal(block(tokens, cond), tokens)  # gates are zero: x + 0
    for module in net.modules():  # train it a little: the conventions hold and every input matters
        if isinstance(module, torch.nn.Linear) and not module.weight.any():
            torch.nn.init.normal_(module.weight, std=0.05)
    out = net(x, torch.tensor(0.3))
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, net(x, torch.full((3,), 0.3)), atol=0, rtol=0)
    assert not torch.allclose(out, net(x, torch.tensor(0.8)))
    torch.testing.assert_close(net(x[:1], torch.tensor(0.3)), out[:1], atol=1e-5, rtol=0)


def test_class_labels_and_refused_shapes():
    net = dit((3, 8, 8), num_classes=5, patch_size=4)
    for module in net.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.any():
            torch.nn.init.normal_(module.weight, std=0.05)
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    assert not torch.allclose(net(x, t, torch.tensor([0, 1]))[0], net(x, t, torch.tensor([2, 1]))[0])
    with pytest.raises(ValueError, match=r"divisible by the patch size 3; this dataset's samples have shape \(1, 8, 8\)"):
        dit((1, 8, 8), patch_size=3)
    with pytest.raises(ValueError, match="does not split into 3 heads"):
        dit((1, 8, 8), hidden=64, heads=3)
