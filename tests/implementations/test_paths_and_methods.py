"""The linear probability path, and the CFM and rectified-flow losses and samplers.

Losses are checked on networks whose answer is known in closed form: the zero network
(loss = E‖x_1 − x_0‖², averaged as each paper's code does) and a recording network that
captures the (x_t, t) it is called with.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import implementations  # noqa: F401  (fills the registries)
from harness.interfaces import Batch, Solution
from harness.measure import NFECounter
from harness.registry import METHODS, SOLVERS
from implementations.common.paths import Linear as LinearPath
from implementations.common.paths import PathSample, expand_time


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pair(batch: int = 16, dims: tuple[int, ...] = (2,), seed: int = 0, dtype=torch.float64):
    g = gen(seed)
    x_0 = torch.randn(batch, *dims, generator=g, dtype=dtype)
    x_1 = 3 * torch.randn(batch, *dims, generator=g, dtype=dtype) + 1
    return x_0, x_1


def method(name: str, **params):
    """``sigma=`` is shorthand for the linear path with that smoothing."""
    if "sigma" in params:
        params["path"] = {"name": "linear", "sigma": params.pop("sigma")}
    cls = METHODS.get(name)
    return cls(cls.Params(**params))


# --------------------------------------------------------------------------------------
# LinearPath
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [(2,), (3, 4), (1, 2, 2)])
def test_expand_time_broadcasts(dims):
    x = torch.zeros(5, *dims)
    t = torch.arange(5.0)
    te = expand_time(t, x)
    assert te.shape == (5,) + (1,) * len(dims)
    assert torch.equal((te + x).reshape(5, -1), t[:, None].expand(5, x[0].numel()))


@pytest.mark.parametrize("dims", [(2,), (3, 4)])
def test_linear_path_endpoints(dims):
    x_0, x_1 = pair(8, dims)
    path = LinearPath()
    at_0 = path.sample(x_0, x_1, torch.zeros(8, dtype=torch.float64))
    at_1 = path.sample(x_0, x_1, torch.ones(8, dtype=torch.float64))
    assert isinstance(at_0, PathSample)
    assert torch.equal(at_0.x_t, x_0)
    assert torch.equal(at_1.x_t, x_1)
    assert torch.equal(at_0.dx_t, x_1 - x_0)
    assert at_0.x_t.shape == at_0.dx_t.shape == (8, *dims)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), h=st.sampled_from([1e-3, 1e-4]))
def test_linear_path_finite_difference_equals_target(seed, h):
    """x_t is linear in t, so the central difference equals dx_t up to round-off."""
    x_0, x_1 = pair(8, (3,), seed=seed)
    t = torch.rand(8, generator=gen(seed + 1), dtype=torch.float64) * (1 - 2 * h) + h
    path = LinearPath()
    ps = path.sample(x_0, x_1, t)
    fd = (path.sample(x_0, x_1, t + h).x_t - path.sample(x_0, x_1, t - h).x_t) / (2 * h)
    torch.testing.assert_close(fd, ps.dx_t, atol=1e-9, rtol=0)
    torch.testing.assert_close(ps.x_t, (1 - t[:, None]) * x_0 + t[:, None] * x_1, atol=1e-14, rtol=0)
    assert torch.equal(ps.t, t)


def test_linear_path_with_sigma():
    x_0, x_1 = pair(4096, (2,))
    t = torch.rand(4096, generator=gen(5), dtype=torch.float64)
    path = LinearPath(sigma=0.1)
    a = path.sample(x_0, x_1, t, gen(7))
    b = path.sample(x_0, x_1, t, gen(7))
    c = path.sample(x_0, x_1, t, gen(8))
    assert torch.equal(a.x_t, b.x_t)
    assert not torch.equal(a.x_t, c.x_t)
    assert torch.equal(a.dx_t, x_1 - x_0)  # the smoothing does not change the target
    noise = a.x_t - LinearPath().sample(x_0, x_1, t).x_t
    assert noise.std().item() == pytest.approx(0.1, rel=0.05)  # se ≈ 1.1 %
    assert noise.mean().abs().item() < 0.01
    assert a.x_t.dtype == torch.float64


# --------------------------------------------------------------------------------------
# CFM and rectified flow
# --------------------------------------------------------------------------------------


def zero_model(x, t):
    return torch.zeros_like(x)


class Recorder:
    """Returns zeros and remembers what it was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t):
        self.calls.append((x.detach().clone(), t.detach().clone()))
        return torch.zeros_like(x)


@pytest.mark.parametrize("sigma", [0.0, 0.1])
@pytest.mark.parametrize("dims", [(2,), (3, 2)])
def test_cfm_loss_of_zero_network_is_elementwise_mean(sigma, dims):
    x_0, x_1 = pair(32, dims)
    loss = method("cfm", sigma=sigma).loss(zero_model, Batch(x_0, x_1), gen(0))
    assert loss.ndim == 0
    torch.testing.assert_close(loss, (x_1 - x_0).square().mean(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dims", [(2,), (3, 2)])
def test_rectified_flow_loss_of_zero_network_is_per_sample_sum(dims):
    x_0, x_1 = pair(32, dims)
    loss = method("rectified_flow").loss(zero_model, Batch(x_0, x_1), gen(0))
    expected = (x_1 - x_0).reshape(32, -1).square().sum(dim=1).mean()
    assert loss.ndim == 0
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=0)


def test_rectified_flow_loss_is_cfm_loss_times_dimension():
    x_0, x_1 = pair(32, (5,))
    for model in (zero_model, lambda x, t: x * t[:, None]):
        cfm = method("cfm", sigma=0.0).loss(model, Batch(x_0, x_1), gen(3))
        rf = method("rectified_flow").loss(model, Batch(x_0, x_1), gen(3))
        torch.testing.assert_close(rf, 5 * cfm, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name,params", [("cfm", {"sigma": 0.0}), ("rectified_flow", {})])
def test_network_is_called_on_the_straight_path(name, params):
    x_0, x_1 = pair(64, (2,))
    rec = Recorder()
    method(name, **params).loss(rec, Batch(x_0, x_1), gen(0))
    assert len(rec.calls) == 1
    x_t, t = rec.calls[0]
    assert t.shape == (64,) and t.dtype == x_0.dtype
    assert ((t >= 0) & (t <= 1)).all()
    assert t.unique().numel() == 64  # one time per sample
    torch.testing.assert_close(x_t, (1 - t[:, None]) * x_0 + t[:, None] * x_1, atol=1e-14, rtol=0)


def test_cfm_smoothing_reaches_the_network():
    x_0, x_1 = pair(4096, (2,))
    rec = Recorder()
    method("cfm", sigma=0.1).loss(rec, Batch(x_0, x_1), gen(0))
    x_t, t = rec.calls[0]
    noise = x_t - ((1 - t[:, None]) * x_0 + t[:, None] * x_1)
    assert noise.std().item() == pytest.approx(0.1, rel=0.05)


@pytest.mark.parametrize("name,params", [("cfm", {"sigma": 0.0}), ("cfm", {"sigma": 0.1}), ("rectified_flow", {})])
def test_loss_is_seeded(name, params):
    x_0, x_1 = pair(64, (2,))
    model = torch.nn.Linear(2, 2).double()

    def net(x, t):
        return model(x) * t[:, None]

    m = method(name, **params)
    a = m.loss(net, Batch(x_0, x_1), gen(0))
    b = m.loss(net, Batch(x_0, x_1), gen(0))
    c = m.loss(net, Batch(x_0, x_1), gen(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", [n for n in METHODS.names() if not getattr(METHODS.get(n), "one_step", False)
                                  and not getattr(METHODS.get(n), "autoregressive", False)])
@pytest.mark.parametrize("steps", [1, 4])
def test_sample_with_constant_velocity_and_euler(name, steps):
    x_0 = torch.randn(10, 2, generator=gen(0), dtype=torch.float64)
    c = torch.tensor([0.5, -2.0], dtype=torch.float64)
    euler = SOLVERS.get("euler")(SOLVERS.get("euler").Params(steps=steps))
    counter = NFECounter(lambda x, t: c.expand_as(x))
    sol = method(name).sample(counter, x_0, euler, gen(0))
    assert isinstance(sol, Solution)
    assert sol.steps == steps
    assert counter.calls == steps
    torch.testing.assert_close(sol.x, x_0 + c, atol=1e-12, rtol=0)
    recorded = method(name).sample(counter, x_0, euler, gen(0), record=True)
    assert len(recorded.trajectory) == steps + 1
    assert recorded.times[0] == 0.0 and recorded.times[-1] == 1.0


def test_method_params():
    assert METHODS.get("cfm").Params().path.sigma == 0.0
    with pytest.raises(ValidationError):
        METHODS.get("cfm").Params(path={"name": "linear", "sigma": -0.1})
    with pytest.raises(ValidationError):
        METHODS.get("cfm").Params(coupling="hungarian")
    with pytest.raises(ValidationError):
        METHODS.get("rectified_flow").Params(sigma=0.1)  # 1-RF has no smoothing to set
    assert method("rectified_flow").path.sigma == 0.0
