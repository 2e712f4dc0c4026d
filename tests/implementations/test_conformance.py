"""One conformance test over everything registered: every method × dataset × network ×
solver trains for a few steps and samples. The parameters are read from the registries
at collection time, so a newly registered entry is covered without editing this file.

An entry whose ``Params`` has required fields needs a tiny setting in the tables below;
without one its case fails with a pydantic ValidationError naming the missing field.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import implementations  # noqa: F401  (fills the registries)
from harness.interfaces import Batch, Dataset, Method, Solution, Solver
from harness.measure import NFECounter
from harness.registry import DATASETS, METHODS, NETWORKS, OPTIMIZERS, SOLVERS
from harness.training import Pairs
from implementations.networks.mlp import MLP, MLPParams, SinusoidalEmbedding
from tests.conftest import expected_calls

# Tiny settings for entries whose defaults are not enough (or too slow).
DATASET_PARAMS: dict[str, dict] = {"toy2d": {"target": "moons"}}
NETWORK_PARAMS: dict[str, dict] = {"mlp": {"width": 32, "depth": 2}, "unet": {"channels": 8, "channel_mult": [1, 2]},
                                   "dit": {"hidden": 16, "depth": 1, "heads": 2, "patch_size": 2},
                                   "tarflow": {"patch_size": 4, "channels": 16, "blocks": 2, "layers": 1, "head_dim": 8}}
METHOD_PARAMS: dict[str, dict] = {"boss_straighten": {"steps": 2, "reference_samples": 8}}
SOLVER_PARAMS: dict[str, dict] = {"euler": {"steps": 4}, "midpoint": {"steps": 4}, "heun": {"steps": 4},
                                  "rk4": {"steps": 4}, "dopri5": {}, "ar-sequential": {},
                                  "ar-jacobi": {"max_iterations": 3}, "ar-gs-jacobi": {"groups": 2}}

BATCH = 64
TRAIN_STEPS = 5


@pytest.fixture(scope="module", autouse=True)
def tiny_image_files(tmp_path_factory):
    """Datasets read from files get tiny files in their real formats, with at least BATCH
    held-out images each."""
    from tests.datafiles import cifar10_files, image_folder, mnist_files

    root = tmp_path_factory.mktemp("data")
    mnist_files(root / "mnist", n_train=16, n_test=BATCH + 6)
    cifar10_files(root / "cifar10", per_batch=BATCH + 6)
    image_folder(root / "folder", per_class=40)
    DATASET_PARAMS.update({"mnist": {"root": str(root / "mnist")}, "cifar10": {"root": str(root / "cifar10")},
                           "image_folder": {"root": str(root / "folder"), "resolution": 8, "held_out": 0.9}})




def skip_unless_accepted(network_name: str, shape: tuple[int, ...]) -> None:
    """A network that declares the shapes it takes (``check_shape``) is not run on others."""
    cls = NETWORKS.get(network_name)
    check = getattr(cls, "check_shape", None)
    if check is not None:
        try:
            check(cls.Params(**NETWORK_PARAMS.get(network_name, {})), shape)
        except ValueError as err:
            pytest.skip(str(err))


def skip_unless_compatible(method_name: str, network_name: str, solver_name: str) -> None:
    """Autoregressive flows (``autoregressive = True``: tarflow) pair only with their own
    networks and the ar-* samplers; velocity methods, networks and ODE solvers with each other."""
    kinds = {name: getattr(registry.get(name), "autoregressive", False)
             for registry, name in ((METHODS, method_name), (NETWORKS, network_name), (SOLVERS, solver_name))}
    if len(set(kinds.values())) > 1:
        pytest.skip(f"autoregressive or not: {kinds}")


def build(registry, name: str, table: dict[str, dict], *args):
    cls = registry.get(name)
    return cls(cls.Params(**table.get(name, {})), *args)


def batch_from(dataset, generator: torch.Generator, n: int = BATCH) -> Batch:
    return Batch(x_0=dataset.sample_source(n, generator), x_1=dataset.sample_target(n, generator))


PATH_STEPS = 8


def with_path(batch: Batch) -> Batch:
    """The batch with a recorded teacher trajectory between each pair, for methods that
    train on one (``teacher_keep = "path"``): a bent line from x_0 to x_1 on a uniform grid."""
    times = torch.linspace(0, 1, PATH_STEPS + 1, dtype=torch.float64)
    t = times.to(batch.x_0.dtype).reshape(1, -1, *[1] * (batch.x_0.ndim - 1))
    x_0, x_1 = batch.x_0.unsqueeze(1), batch.x_1.unsqueeze(1)
    path = (1 - t) * x_0 + t * x_1 + t * (1 - t) * torch.sin(3 * x_0)
    return Batch(x_0=batch.x_0, x_1=batch.x_1, path=path, times=times)


@pytest.mark.parametrize("solver_name", SOLVERS.names())
@pytest.mark.parametrize("network_name", NETWORKS.names())
@pytest.mark.parametrize("dataset_name", DATASETS.names())
@pytest.mark.parametrize("method_name", METHODS.names())
def test_conformance(method_name, dataset_name, network_name, solver_name):
    skip_unless_compatible(method_name, network_name, solver_name)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    dataset = build(DATASETS, dataset_name, DATASET_PARAMS)
    method = build(METHODS, method_name, METHOD_PARAMS)
    solver = build(SOLVERS, solver_name, SOLVER_PARAMS)
    assert isinstance(dataset, Dataset) and isinstance(method, Method) and isinstance(solver, Solver)
    skip_unless_accepted(network_name, dataset.shape)
    n_batch = BATCH if math.prod(dataset.shape) <= 256 else 8  # images: a small batch keeps the U-Net cases quick
    network = build(NETWORKS, network_name, NETWORK_PARAMS, dataset.shape)
    params = list(network.parameters())
    assert params
    optimizer = OPTIMIZERS.get("adam").build(OPTIMIZERS.get("adam").Params(), params)

    # 1. a few optimiser steps: a finite scalar loss whose gradient reaches every parameter
    before = [p.detach().clone() for p in params]
    reached: set[str] = set()
    for step in range(TRAIN_STEPS):
        batch = batch_from(dataset, g, n_batch)
        assert batch.x_0.shape == batch.x_1.shape == (n_batch, *dataset.shape)
        if getattr(method, "teacher_keep", "endpoints") == "path":
            batch = with_path(batch)
        if step == 0 and hasattr(method, "bind_teacher"):  # the harness hands it the teacher's pairs once
            method.bind_teacher(Pairs(batch.x_0, batch.x_1, {}, batch.path, batch.times))
        if hasattr(method, "prepare"):
            batch = method.prepare(batch, g)
            assert batch.x_0.shape == batch.x_1.shape == (n_batch, *dataset.shape)
        optimizer.zero_grad()
        loss = method.loss(network, batch, g)
        assert isinstance(loss, torch.Tensor) and loss.ndim == 0
        assert torch.isfinite(loss), f"step {step}: loss {loss.item()}"
        loss.backward()
        for (name, p) in network.named_parameters():
            assert p.grad is not None, f"no gradient reaches {name}"
            assert torch.isfinite(p.grad).all(), name
            if p.grad.abs().sum() > 0:
                reached.add(name)
        optimizer.step()
    # every parameter gets a gradient within the steps (at step 0 already, unless layers
    # start at zero, as a U-Net's last convolutions do) and moves
    assert reached == {name for name, _ in network.named_parameters()}
    assert all(not torch.equal(a, p.detach()) for a, p in zip(before, params))

    # 2. sampling: the source shape back, finite, at the declared NFE
    x_0 = dataset.sample_source(n_batch, g)
    counter = NFECounter(network)
    with torch.no_grad():
        sol = method.sample(counter, x_0, solver, g)
    assert isinstance(sol, Solution)
    assert sol.x.shape == x_0.shape and sol.x.dtype == x_0.dtype
    assert torch.isfinite(sol.x).all()
    assert sol.steps >= 1
    one_step = getattr(method, "one_step", False)  # a distilled map ignores the solver
    expected = 1 if one_step else expected_calls(type(solver).nfe_convention, sol.steps)
    if expected is None:
        assert counter.calls >= sol.steps
    else:
        assert counter.calls == expected
    assert counter.evaluations == n_batch * counter.calls

    with torch.no_grad():
        recorded = method.sample(network, x_0, solver, g, record=True)
    assert len(recorded.times) == len(recorded.trajectory) >= 2
    assert recorded.times[0] == 0.0 and recorded.times[-1] == 1.0
    assert torch.equal(recorded.trajectory[0], x_0)
    torch.testing.assert_close(recorded.trajectory[-1], recorded.x, atol=0, rtol=0)
    torch.testing.assert_close(recorded.x, sol.x, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("network_name", NETWORKS.names())
@pytest.mark.parametrize("shape", [(2,), (3, 2), (1, 8, 8)])
def test_network_time_conventions(network_name, shape):
    """A network maps (b, *shape) to (b, *shape) and takes t as 0-d or (b,) alike."""
    if getattr(NETWORKS.get(network_name), "autoregressive", False):
        pytest.skip("an autoregressive flow maps x to (z, logdet), with no time (tests/implementations/test_tarflow.py)")
    skip_unless_accepted(network_name, shape)
    torch.manual_seed(0)
    net = build(NETWORKS, network_name, NETWORK_PARAMS, shape)
    x = torch.randn(5, *shape)
    out_scalar = net(x, torch.tensor(0.3))
    out_batch = net(x, torch.full((5,), 0.3))
    assert out_scalar.shape == out_batch.shape == x.shape
    torch.testing.assert_close(out_scalar, out_batch, atol=0, rtol=0)


@pytest.mark.parametrize("time_embedding", ["concat", "sinusoidal"])
@pytest.mark.parametrize("activation", ["selu", "relu", "tanh"])
def test_mlp_time_embeddings(time_embedding, activation):
    torch.manual_seed(0)
    net = MLP(MLPParams(width=16, depth=2, activation=activation, time_embedding=time_embedding), (2,))
    x = torch.randn(7, 2)
    t_batch = torch.linspace(0, 1, 7)
    y = net(x, t_batch)
    assert y.shape == (7, 2) and torch.isfinite(y).all()
    # t as a 0-d tensor and as a python float broadcast over the batch
    for t in (torch.tensor(0.25), 0.25):
        torch.testing.assert_close(net(x, t), net(x, torch.full((7,), 0.25)), atol=0, rtol=0)
    # each row depends on its own time only
    torch.testing.assert_close(net(x[2:3], t_batch[2:3]), y[2:3], atol=1e-6, rtol=0)
    # and the output does depend on time
    assert not torch.allclose(net(x, torch.tensor(0.0)), net(x, torch.tensor(1.0)))
    # float64 networks keep float64
    y64 = net.double()(x.double(), torch.tensor(0.5, dtype=torch.float64))
    assert y64.dtype == torch.float64


def test_mlp_rejects_a_wrong_time_shape():
    net = MLP(MLPParams(width=8, depth=1), (2,))
    with pytest.raises(ValueError, match=r"batch size \[4\]"):
        net(torch.zeros(4, 2), torch.zeros(3))


def test_mlp_layer_sizes():
    net = MLP(MLPParams(width=64, depth=3), (2,))  # TorchCFM's 3×64: 3 hidden layers
    linears = [m for m in net.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 64), (64, 64), (64, 64), (64, 2)]
    net = MLP(MLPParams(width=16, depth=1, time_embedding="sinusoidal", time_embedding_dim=8), (3, 2))
    linears = [m for m in net.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6 + 8, 16), (16, 6)]


def test_sinusoidal_embedding():
    emb = SinusoidalEmbedding(8, max_freq=1000.0)
    torch.testing.assert_close(emb.freqs[[0, -1]], torch.tensor([1.0, 1000.0]), rtol=1e-6, atol=0)
    out = emb(torch.tensor([[0.0], [0.25]]))
    assert out.shape == (2, 8)
    torch.testing.assert_close(out[0], torch.tensor([0.0] * 4 + [1.0] * 4), atol=0, rtol=0)
    # lowest frequency f = 1 at t = 1/4: sin(2π/4) = 1 (column 0), cos(2π/4) = 0 (column 4)
    torch.testing.assert_close(out[1, [0, 4]], torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1, :4].square() + out[1, 4:].square(), torch.ones(4), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="even"):
        SinusoidalEmbedding(7)


# --------------------------------------------------------------------------------------
# Every shipped dataset spec (the registry has one dataset implementation; the specs are
# what users run)
# --------------------------------------------------------------------------------------

DATASET_SPECS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "specs" / "datasets").glob("*.yaml"))


@pytest.mark.parametrize("name", DATASET_SPECS)
def test_every_dataset_spec_builds_samples_and_trains(name, tmp_path, monkeypatch):
    from harness.resolve import Resolver
    from tests.datafiles import cifar10_files

    specs = Path(__file__).resolve().parents[2] / "specs"
    spec = Resolver(specs).validate_file(specs / "datasets" / f"{name}.yaml")
    cls = DATASETS.get(spec.implementation)
    if spec.implementation == "cifar10" and spec.params.get("root") is None:
        # the real batches are not in the repository: tiny ones in the real format instead
        monkeypatch.setenv("FLOWGAUGE_DATA", str(tmp_path))
        cifar10_files(tmp_path / "cifar10", per_batch=BATCH + 8)
    dataset = cls(cls.Params.model_validate(spec.params))
    assert isinstance(dataset, Dataset)
    x_0 = dataset.sample_source(BATCH, torch.Generator().manual_seed(0))
    x_1 = dataset.sample_target(BATCH, torch.Generator().manual_seed(0))
    assert x_0.shape == x_1.shape == (BATCH, *dataset.shape) and x_0.dtype == x_1.dtype == torch.float32
    assert torch.isfinite(x_0).all() and torch.isfinite(x_1).all()
    assert not torch.equal(x_0, x_1)  # source and target differ
    again = dataset.sample_target(BATCH, torch.Generator().manual_seed(0))
    assert torch.equal(x_1, again)  # seeded
    other = dataset.sample_target(BATCH, torch.Generator().manual_seed(1))
    assert not torch.equal(x_1, other)
    # a flow-matching step on it is finite and moves the weights
    method = build(METHODS, "cfm", METHOD_PARAMS)
    network = build(NETWORKS, "mlp", NETWORK_PARAMS, dataset.shape)
    loss = method.loss(network, Batch(x_0=x_0, x_1=x_1), torch.Generator().manual_seed(2))
    assert torch.isfinite(loss) and loss.item() > 0
