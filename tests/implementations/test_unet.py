"""The U-Net: shapes through every configuration of levels, blocks and attention, the
ADM zero-initialised output, time and class conditioning, and the shape it refuses."""

from __future__ import annotations

import pytest
import torch

import implementations  # noqa: F401
from harness.registry import NETWORKS


def wake(net):
    """Give the zero-initialised convolutions (output, residual branches) random weights,
    as training would, so that every input reaches the output."""
    for block in net.modules():
        if isinstance(block, torch.nn.Conv2d) and not block.weight.any():
            torch.nn.init.normal_(block.weight, std=0.1)
    return net


def unet(shape, **params):
    cls = NETWORKS.get("unet")
    torch.manual_seed(0)
    return cls(cls.Params(**params), shape)


@pytest.mark.parametrize("params, shape", [
    ({}, (1, 8, 8)),
    ({"channel_mult": [1, 2, 2], "num_res_blocks": 2, "attention_resolutions": [8, 4], "heads": 2}, (3, 16, 16)),
    ({"channels": 16, "channel_mult": [1], "attention_resolutions": [8]}, (2, 8, 8)),
])
def test_every_configuration_maps_images_to_images(params, shape):
    net = unet(shape, **params)
    x = torch.randn(3, *shape)
    assert torch.equal(net(x, torch.rand(3)), torch.zeros(3, *shape))  # ADM: the output layer starts at 0
    wake(net)  # then the conventions
    out = net(x, torch.tensor(0.3))
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, net(x, torch.full((3,), 0.3)), atol=0, rtol=0)
    assert not torch.allclose(out, net(x, torch.tensor(0.9)))  # time reaches the output
    torch.testing.assert_close(net(x[1:2], torch.tensor(0.3)), out[1:2], atol=1e-5, rtol=0)  # samples independent


@pytest.mark.parametrize("channels", [8, 16, 64])
def test_every_residual_block_sees_the_time_at_any_width(channels):
    """The digits suites' U-Net has levels of 16 and 32 channels, one channel per norm
    group: an embedding added before that norm would vanish (the network would be blind to
    t). The scale-shift after the norm reaches every block's output."""
    net = wake(unet((1, 8, 8), channels=channels, channel_mult=[1, 2]))
    blocks = [m for m in net.modules() if type(m).__name__ == "ResBlock"]
    assert len(blocks) == 8  # 2 down, 2 middle, 4 up
    for block in blocks:
        x = torch.randn(2, block.in_layers[0].num_channels, 4, 4)
        emb_dim = block.emb[1].in_features
        e_1, e_2 = torch.randn(2, emb_dim), torch.randn(2, emb_dim)
        assert (block(x, e_1) - block(x, e_2)).abs().max() > 1e-3
    x = torch.randn(3, 1, 8, 8)
    assert (net(x, torch.tensor(0.1)) - net(x, torch.tensor(0.9))).abs().max() > 1e-3


def test_class_labels_condition_the_output_when_asked_for():
    net = wake(unet((1, 8, 8), num_classes=10))
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    a, b = net(x, t, torch.tensor([0, 1])), net(x, t, torch.tensor([3, 1]))
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
    assert torch.allclose(net(x, t), net(x, t, None))


def test_refuses_shapes_it_cannot_halve():
    with pytest.raises(ValueError, match=r"H divisible by 4 \(3 levels\); this dataset's samples have shape \(1, 6, 6\)"):
        unet((1, 6, 6), channel_mult=[1, 2, 2])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        unet((2,))
    with pytest.raises(ValueError, match="do not split into 3 heads"):
        unet((1, 8, 8), channels=16, attention_resolutions=[8], heads=3)
