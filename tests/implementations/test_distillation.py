"""One-step distillation (InstaFlow): T(z_0) = z_0 + v_θ(z_0, 0) regressed onto the teacher's
endpoint z_1; sampling is that single network call whatever the solver."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import implementations  # noqa: F401  (fills the registries)
from harness.interfaces import Batch, Solution
from harness.registry import METHODS


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def distill(**params):
    cls = METHODS.get("one_step_distillation")
    return cls(cls.Params(**params))


def pairs(n: int = 32, dims: tuple[int, ...] = (2,), seed: int = 0, dtype=torch.float64):
    g = gen(seed)
    z_0 = torch.randn(n, *dims, generator=g, dtype=dtype)
    z_1 = 2 * torch.randn(n, *dims, generator=g, dtype=dtype) - 1
    return z_0, z_1


class Zero(nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


class Recorder:
    """A velocity field that records its calls; v(x, t) = a fixed affine function of x."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t):
        self.calls.append((x.clone(), t.clone() if torch.is_tensor(t) else t))
        return 0.5 * x + 1.0


class NoSolver:
    """Any use of the solver is an error: the distilled map must not be integrated."""

    Params = None
    nfe_convention = "per_stage"

    def solve(self, *args, **kwargs):
        raise AssertionError("one-step distillation must not call the solver")


def test_requires_teacher_and_is_one_step():
    cls = METHODS.get("one_step_distillation")
    assert cls.requires_teacher is True
    assert getattr(cls, "one_step", False)


@pytest.mark.parametrize("dims", [(2,), (3, 4)])
def test_zero_network_loss_is_mean_squared_pair_distance(dims):
    z_0, z_1 = pairs(32, dims, seed=1)
    loss = distill().loss(Zero(), Batch(x_0=z_0, x_1=z_1), gen(0))
    expected = (z_0 - z_1).reshape(32, -1).square().sum(dim=1).mean()
    assert loss.ndim == 0
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)


def test_loss_of_the_exact_map_is_zero():
    z_0, z_1 = pairs(16, seed=2)
    lookup = {tuple(a.tolist()): b for a, b in zip(z_0, z_1)}

    def perfect(x, t):
        return torch.stack([lookup[tuple(row.tolist())] for row in x]) - x

    assert float(distill().loss(perfect, Batch(x_0=z_0, x_1=z_1), gen(0))) == pytest.approx(0.0, abs=1e-24)


def test_loss_uses_the_configured_loss():
    z_0, z_1 = pairs(8, seed=3)
    mean_loss = distill(loss={"name": "mse", "reduce": "mean"}).loss(Zero(), Batch(x_0=z_0, x_1=z_1), gen(0))
    torch.testing.assert_close(mean_loss, (z_0 - z_1).square().mean(), rtol=1e-12, atol=0)


def test_loss_calls_network_once_at_time_zero_and_backpropagates():
    z_0, z_1 = pairs(8, seed=4, dtype=torch.float32)
    net = nn.Linear(2, 2)
    seen = []

    def wrapped(x, t):
        seen.append((x, t))
        return net(x)

    loss = distill().loss(wrapped, Batch(x_0=z_0, x_1=z_1), gen(0))
    loss.backward()
    assert len(seen) == 1
    x, t = seen[0]
    assert torch.equal(x, z_0)
    assert float(t) == 0.0
    assert net.weight.grad is not None and float(net.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("record", [False, True])
def test_sample_is_one_network_call_at_t_zero(record):
    z_0, _ = pairs(10, (3,), seed=5)
    model = Recorder()
    sol = distill().sample(model, z_0, NoSolver(), gen(0), record=record)
    assert isinstance(sol, Solution)
    assert len(model.calls) == 1
    x, t = model.calls[0]
    assert torch.equal(x, z_0)
    assert torch.is_tensor(t) and t.numel() == 1 and float(t) == 0.0
    assert t.dtype == z_0.dtype
    torch.testing.assert_close(sol.x, z_0 + (0.5 * z_0 + 1.0), rtol=0, atol=0)
    assert sol.steps == 1
    if record:
        assert sol.times == [0.0, 1.0]
        assert len(sol.trajectory) == 2
        assert torch.equal(sol.trajectory[0], z_0) and torch.equal(sol.trajectory[1], sol.x)
    else:
        assert sol.trajectory == []


def test_sample_of_zero_network_is_identity():
    z_0, _ = pairs(6, seed=6)
    sol = distill().sample(Zero(), z_0, NoSolver(), gen(0))
    assert torch.equal(sol.x, z_0)
