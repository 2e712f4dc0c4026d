"""2D toy distributions: seeded reproducibility, shapes, and the geometry each one claims.

Statistical checks use a fixed seed and tolerances of several standard errors, so they
are deterministic and not flaky.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import pytest
import torch
from pydantic import ValidationError

import implementations  # noqa: F401  (fills the registries)
from harness.interfaces import Dataset
from harness.registry import DATASETS
from implementations.datasets.toy2d import (
    Checkerboard,
    EightGaussians,
    Moons,
    Normal,
    SCurve,
    Spirals,
    Toy2D,
    Toy2DParams,
)

DISTRIBUTIONS = {
    "normal": Normal(),
    "8gaussians": EightGaussians(),
    "moons": Moons(),
    "checkerboard": Checkerboard(),
    "spirals": Spirals(),
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_toy2d_is_registered_and_satisfies_the_protocol():
    assert DATASETS.get("toy2d") is Toy2D
    ds = Toy2D(Toy2DParams(target="moons"))
    assert isinstance(ds, Dataset)
    assert ds.shape == (2,)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_shape_dtype_and_seeded_reproducibility(name, n):
    dist = DISTRIBUTIONS[name]
    assert dist.name == name
    a = dist.sample(n, gen(0))
    b = dist.sample(n, gen(0))
    c = dist.sample(n, gen(1))
    assert a.shape == (n, 2) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_toy2d_source_and_target_are_seeded(name):
    ds = Toy2D(Toy2DParams(source="normal", target=name))
    for draw in (ds.sample_source, ds.sample_target):
        a, b, c = draw(500, gen(3)), draw(500, gen(3)), draw(500, gen(4))
        assert a.shape == (500, 2) and a.dtype == torch.float32
        assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(ds.sample_target(500, gen(3)), DISTRIBUTIONS[name].sample(500, gen(3)),
                               rtol=0, atol=0)


@pytest.mark.parametrize("std", [1.0, 0.5, 3.0])
def test_normal_moments(std):
    x = Normal(std=std).sample(100_000, gen(0)).double()
    # standard errors: mean std/√n ≈ 0.003·std, std ≈ 0.0022·std
    assert x.mean(0).abs().max().item() < 0.02 * std
    torch.testing.assert_close(x.std(0), torch.full((2,), std, dtype=torch.float64), rtol=0.01, atol=0)
    corr = torch.corrcoef(x.T)[0, 1].item()
    assert abs(corr) < 0.02


def _nearest_centre(x: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    centres = radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # (8, 2)
    k = torch.cdist(x.double(), centres).argmin(dim=1)
    return k, centres


def test_eight_gaussians_geometry():
    dist = EightGaussians()
    assert dist.radius == 5.0
    assert dist.std == pytest.approx(0.1**0.25, rel=1e-12)
    n = 80_000
    x = dist.sample(n, gen(0)).double()
    k, centres = _nearest_centre(x, 5.0)
    # each of the 8 components at angle kπ/4 gets ~1/8 (sd of a fraction ≈ 0.0012)
    fractions = torch.bincount(k, minlength=8).double() / n
    torch.testing.assert_close(fractions, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01, rtol=0)
    # points sit around the radius-5 circle: E|c + ε| ≈ 5 + σ²/(2·5) ≈ 5.03
    assert x.norm(dim=1).mean().item() == pytest.approx(5.0, abs=0.1)
    for j in range(8):
        members = x[k == j]
        # component mean ≈ its centre (se ≈ 0.562/√10000 ≈ 0.006), isotropic std ≈ 0.1^(1/4)
        torch.testing.assert_close(members.mean(0), centres[j], atol=0.03, rtol=0)
        torch.testing.assert_close(members.std(0), torch.full((2,), 0.1**0.25, dtype=torch.float64),
                                   rtol=0.05, atol=0)


def test_eight_gaussians_respects_radius_and_std():
    x = EightGaussians(radius=2.0, std=0.01).sample(10_000, gen(1)).double()
    k, centres = _nearest_centre(x, 2.0)
    assert (x - centres[k]).norm(dim=1).max().item() < 0.06  # 6σ
    assert ((x.norm(dim=1) - 2.0).abs() < 0.06).all()
    assert set(k.tolist()) == set(range(8))


@pytest.mark.parametrize("scale", [2.0, 1.0, 0.5])
def test_checkerboard_geometry(scale):
    n = 64_000
    x = Checkerboard(scale=scale).sample(n, gen(0)).double()
    half = 2 * scale
    assert (x >= -half).all() and (x <= half).all()
    # the code shifts odd columns up by one square, so a point's column and row indices
    # (floor(x/scale), floor(y/scale)) always have an even sum: the 8 "black" squares
    col = torch.floor(x[:, 0] / scale).long()
    row = torch.floor(x[:, 1] / scale).long()
    assert ((col + row) % 2 == 0).all()
    # uniform over those 8 squares: each gets ~1/8 (sd ≈ 0.0013)
    squares = (col + 2) * 4 + (row + 2)
    counts = torch.bincount(squares, minlength=16).double() / n
    black = [(c + 2) * 4 + (r + 2) for c in range(-2, 2) for r in range(-2, 2) if (c + r) % 2 == 0]
    assert len(black) == 8
    torch.testing.assert_close(counts[black], torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01, rtol=0)
    assert counts.sum().item() == pytest.approx(1.0)
    # uniform within a square: the offsets inside the square average to one half
    offsets = torch.stack([x[:, 0] / scale - col, x[:, 1] / scale - row], dim=1)
    torch.testing.assert_close(offsets.mean(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.01, rtol=0)


def test_moons_noiseless_points_lie_on_the_two_half_circles():
    dist = Moons(noise=0.0, scale=3.0, shift=-1.0)
    p = ((dist.sample(20_000, gen(0)) - dist.shift) / dist.scale).double()  # invert x ↦ scale·x + shift
    upper_r = p.norm(dim=1)  # upper moon: unit circle about (0, 0), y ≥ 0
    lower_r = (p - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1)  # about (1, 0.5), y ≤ 0.5
    on_upper = ((upper_r - 1).abs() < 1e-5) & (p[:, 1] >= -1e-6)
    on_lower = ((lower_r - 1).abs() < 1e-5) & (p[:, 1] <= 0.5 + 1e-6)
    assert (on_upper | on_lower).all()
    assert on_upper.double().mean().item() == pytest.approx(0.5, abs=0.02)
    # the angles are uniform on [0, π]: the upper moon's mean x is ≈ 0, its mean y 2/π
    upper = p[on_upper & ~on_lower]
    assert upper[:, 0].mean().item() == pytest.approx(0.0, abs=0.02)
    assert upper[:, 1].mean().item() == pytest.approx(2 / math.pi, abs=0.02)


@pytest.mark.parametrize("scale,shift", [(3.0, -1.0), (2.0, -1.0), (1.0, 0.0)])
def test_moons_mean_and_bounding_box(scale, shift):
    noise = 0.05
    x = Moons(noise=noise, scale=scale, shift=shift).sample(50_000, gen(2)).double()
    # before the map the mean is (0.5, 0.25) and the box [-1, 2] × [-0.5, 1]
    expected_mean = torch.tensor([0.5, 0.25], dtype=torch.float64) * scale + shift
    torch.testing.assert_close(x.mean(0), expected_mean, atol=0.02 * scale, rtol=0)
    p = (x - shift) / scale
    margin = 6 * noise
    assert p[:, 0].min() > -1 - margin and p[:, 0].max() < 2 + margin
    assert p[:, 1].min() > -0.5 - margin and p[:, 1].max() < 1 + margin


def test_spirals_are_point_symmetric_and_bounded():
    x = Spirals(noise=0.0).sample(20_000, gen(0)).double()
    # r = θ ≤ 3π, jitter ≤ 0.5·√2, all over 3
    assert x.norm(dim=1).max().item() <= (3 * math.pi + 0.5 * math.sqrt(2)) / 3 + 1e-5
    # the two arms are mirror images through the origin: the mean is ~0
    assert x.mean(0).abs().max().item() < 0.05


def test_train_split_is_none_by_default():
    ds = Toy2D(Toy2DParams(target="moons"))
    assert ds.params.train_size is None
    assert ds.train_split(gen(0)) is None


def test_train_split_has_train_size_rows_and_is_seeded():
    ds = Toy2D(Toy2DParams(target="moons", train_size=123))
    a = ds.train_split(gen(0))
    assert a.shape == (123, 2) and a.dtype == torch.float32
    assert torch.equal(a, ds.train_split(gen(0)))
    assert not torch.equal(a, ds.train_split(gen(1)))


def test_string_shorthand_and_default_source():
    params = Toy2DParams.model_validate({"target": "moons"})
    assert params.target == Moons()
    assert params.source == Normal()
    params = Toy2DParams.model_validate({"source": "8gaussians", "target": {"name": "checkerboard", "scale": 1.0}})
    assert isinstance(params.source, EightGaussians)
    assert params.target == Checkerboard(scale=1.0)


@pytest.mark.parametrize(
    "data",
    [
        {"target": "moons", "bogus": 1},  # unknown key at the top
        {"target": {"name": "moons", "radius": 3.0}},  # key of another distribution
        {"target": {"name": "checkerboard", "sclae": 2.0}},  # misspelt key
        {"target": "mooons"},  # unknown distribution name
        {"target": {"name": "normal", "std": -1.0}},  # out of range
        {"target": {"name": "moons", "noise": -0.1}},
        {"target": "moons", "train_size": 0},
        {},  # target is required
    ],
)
def test_params_reject_bad_input(data):
    with pytest.raises(ValidationError):
        Toy2DParams.model_validate(data)


@pytest.mark.parametrize("cls", [Normal, EightGaussians, Moons, Checkerboard, Spirals])
def test_distribution_params_reject_unknown_keys_and_are_frozen(cls):
    with pytest.raises(ValidationError):
        cls(unknown=1.0)
    obj = cls()
    with pytest.raises(ValidationError):
        obj.name = "other"


def test_moons_grid_angles_match_the_sklearn_layout():
    from implementations.datasets.toy2d import Moons

    x = Moons(noise=0.0, angles="grid", scale=1.0, shift=0.0).sample(9, torch.Generator().manual_seed(0))
    theta_upper = torch.linspace(0, math.pi, 4)
    theta_lower = torch.linspace(0, math.pi, 5)
    torch.testing.assert_close(x[:4], torch.stack([theta_upper.cos(), theta_upper.sin()], 1))
    torch.testing.assert_close(x[4:], torch.stack([1 - theta_lower.cos(), 0.5 - theta_lower.sin()], 1))


def test_moons_grid_points_draw_distinct_points_of_one_sklearn_grid():
    """The TorchCFM runner splits one make_moons(12 000) set at random: every draw is a
    subset of the same 12 000-point grid, without repeats, and matches sklearn's points."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from implementations.datasets.toy2d import Moons

    size = 12_000
    grid, _ = sklearn_datasets.make_moons(n_samples=size, noise=0.0, shuffle=False)
    moons = Moons(noise=0.0, angles="grid", grid_points=size, scale=1.0, shift=0.0)
    x = moons.sample(1000, torch.Generator().manual_seed(3)).double().numpy()
    d = ((x[:, None, :] - grid[None, :, :]) ** 2).sum(-1)  # (1000, 12 000)
    nearest = d.argmin(1)
    assert d.min(1).max() < 1e-10  # every point is a grid point (float32 rounding)
    assert len(set(nearest.tolist())) == 1000  # no point drawn twice
    assert 400 < (nearest < size // 2).sum() < 600  # both moons, at random
    y = moons.sample(1000, torch.Generator().manual_seed(4)).double().numpy()
    assert not np.allclose(x, y)  # another draw, another subset
    with pytest.raises(ValueError, match="12000-point grid"):
        moons.sample(size + 1, torch.Generator().manual_seed(0))


def test_moons_grid_points_need_a_grid_and_leave_old_specs_unchanged():
    from implementations.datasets.toy2d import Moons

    with pytest.raises(ValidationError, match="grid_points needs angles: grid"):
        Moons(grid_points=100)
    assert "grid_points" not in Moons(angles="grid").model_dump()
    # grid_points equal to the draw's size is the plain grid, bit for bit
    a = Moons(angles="grid").sample(9, torch.Generator().manual_seed(0))
    b = Moons(angles="grid", grid_points=9).sample(9, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_rf_gmm_is_the_rectified_flow_colab_geometry():
    """The Colab's π0: means (±D√3/2, D/2) and (0, −D√3/2), D = 10, variance 0.3; π1 is π0
    mirrored in y. (An earlier spec put the third mean at (0, ∓10).)"""
    from harness.resolve import Resolver

    spec = Resolver(Path(__file__).resolve().parents[2] / "specs").validate_file(
        Path(__file__).resolve().parents[2] / "specs" / "datasets" / "rf-gmm.yaml")
    d = 10.0
    colab_source = [(d * math.sqrt(3) / 2, d / 2), (-d * math.sqrt(3) / 2, d / 2), (0.0, -d * math.sqrt(3) / 2)]
    colab_target = [(x, -y) for x, y in colab_source]
    source, target = spec.params["source"], spec.params["target"]
    np.testing.assert_allclose(source["means"], colab_source, rtol=0, atol=1e-12)
    np.testing.assert_allclose(target["means"], colab_target, rtol=0, atol=1e-12)
    assert source["std"] ** 2 == pytest.approx(0.3) and target["std"] ** 2 == pytest.approx(0.3)
    # and the sampler puts a third of the points around each mean
    from implementations.datasets.toy2d import Toy2D

    data = Toy2D(Toy2D.Params.model_validate(spec.params))
    x = data.sample_target(30_000, torch.Generator().manual_seed(0)).double().numpy()
    nearest = ((x[:, None, :] - np.array(colab_target)[None]) ** 2).sum(-1).argmin(1)
    for k in range(3):
        np.testing.assert_allclose(x[nearest == k].mean(0), colab_target[k], atol=0.03)


def _ffjord_2spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    """FFJORD's ``2spirals`` toy (Grathwohl et al. 2019, lib/toy_data.py), restated in numpy:
    angle √u·540° in radians, point (−cos θ·θ, sin θ·θ) + U(0, ½)² jitter, the second arm
    its negative, all divided by 3, plus N(0, 0.1²) noise."""
    theta = np.sqrt(rng.random((n // 2, 1))) * 540 * (2 * np.pi) / 360
    arm = np.hstack([-np.cos(theta) * theta + 0.5 * rng.random((n // 2, 1)),
                     np.sin(theta) * theta + 0.5 * rng.random((n // 2, 1))])
    return np.vstack([arm, -arm]) / 3 + 0.1 * rng.standard_normal((n, 2))


def _w2_against(ours: np.ndarray, reference) -> tuple[float, float]:
    """(W2 of ours to a reference draw, W2 between two reference draws): the second is what
    two samples of one distribution score at this size."""
    from harness.metrics import wasserstein

    return wasserstein(ours, reference(1)), wasserstein(reference(2), reference(1))


def test_spirals_match_ffjords_definition():
    """The radius law matters: angles √u·3π (uniform along the arc) versus u·3π (crowded
    at the centre) are 0.6 apart in W2 at this size; two draws of one law about 0.18."""
    n = 1500
    ours = Spirals(noise=0.1).sample(n, gen(0)).double().numpy()
    w2, floor = _w2_against(ours, lambda seed: _ffjord_2spirals(n, np.random.default_rng(seed)))
    assert floor < 0.25 and w2 < 1.6 * floor, (w2, floor)


def test_s_curve_matches_sklearn_seen_from_the_side():
    """sklearn's make_s_curve, columns 0 and 2 (as the TorchCFM runner plots and uses it);
    the mirrored S is 0.39 away in W2, two draws about 0.18."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    n = 1500
    ours = SCurve(noise=0.0, scale=1.0).sample(n, gen(0)).double().numpy()
    w2, floor = _w2_against(
        ours, lambda seed: sklearn_datasets.make_s_curve(n, noise=0.0, random_state=seed)[0][:, [0, 2]])
    assert w2 < 1.6 * floor and w2 < 0.3, (w2, floor)


def test_moons_with_random_angles_match_sklearn():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    n = 1500
    ours = Moons(noise=0.1, scale=1.0, shift=0.0).sample(n, gen(0)).double().numpy()
    w2, floor = _w2_against(ours, lambda seed: sklearn_datasets.make_moons(n, noise=0.1, random_state=seed)[0])
    assert w2 < 1.6 * floor, (w2, floor)
