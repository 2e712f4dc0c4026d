"""Two-dimensional toy distributions with exact, seeded generators.

A ``toy2d`` dataset pairs a source distribution (N(0, I) unless the spec says otherwise)
with a target distribution. Because every distribution here has an exact generator, the
reference sample for evaluation is always fresh, never the training data.

Geometries (each is a parameterised family; spec files fix the values):

- ``normal``: N(0, std² I).
- ``8gaussians``: an equal mixture of 8 isotropic Gaussians (std ``std``) centred on a
  circle of radius ``radius`` at angles k·π/4. The TorchCFM tutorials use radius 5 and
  covariance √0.1·I, i.e. std = 0.1^(1/4) ≈ 0.562; ``torchdyn``'s generator ignores its
  radius argument, so this one is written out here.
- ``moons``: two interleaved half circles (the shape of sklearn's ``make_moons``), with
  angles drawn uniformly (i.i.d. samples) or, with ``angles: grid``, on sklearn's and
  torchdyn's evenly spaced grid; Gaussian noise
  ``noise`` (sklearn), or torchdyn's ``generate_moons`` noise, one U(0, noise) shift added
  to both coordinates (the TorchCFM tutorials' data); optionally standardised by the
  pooled scalar mean and std (the TorchCFM runner's moons→8gaussians source); then
  x ↦ scale·x + shift.
- ``checkerboard``: uniform on the 8 black squares of a 4×4 board of side ``scale``
  (FFJORD's toy), centred at the origin.
- ``scurve``: sklearn's S curve seen from the side (columns 0 and 2), as the TorchCFM
  runner uses it.
- ``gmm``: any equal-weight isotropic Gaussian mixture (the Rectified Flow toy problems).
- ``spirals``: two interleaved Archimedean spirals r = θ, θ = √u·3π, u ~ U(0, 1), each
  point jittered by U(0, 0.5)² as in FFJORD's ``2spirals``, then scaled by 1/3 with
  Gaussian noise ``noise`` added.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, model_validator

from harness.interfaces import Params, added
from harness.lazy import lazy_import
from harness.limits import Points
from harness.registry import DATASETS
from harness.spec import named_union

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")


class Distribution2D(Params):
    """A named 2D distribution with an exact sampler ``sample(n, generator)``."""

    def sample(self, n: int, generator: torch.Generator) -> Tensor:  # (n, 2), float32
        raise NotImplementedError


class Normal(Distribution2D):
    name: Literal["normal"] = "normal"
    std: PositiveFloat = 1.0

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.std * torch.randn(n, 2, generator=generator)


class EightGaussians(Distribution2D):
    name: Literal["8gaussians"] = "8gaussians"
    radius: PositiveFloat = 5.0
    std: PositiveFloat = 0.1**0.25

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.randint(0, 8, (n,), generator=generator)
        angle = k.to(torch.float32) * (math.pi / 4)
        centers = self.radius * torch.stack([angle.cos(), angle.sin()], dim=1)  # (n, 2)
        return centers + self.std * torch.randn(n, 2, generator=generator)


class Moons(Distribution2D):
    name: Literal["moons"] = "moons"
    noise: NonNegativeFloat = 0.2
    noise_type: Literal["gaussian", "diagonal_uniform"] = "gaussian"
    standardize: bool = False
    scale: float = 3.0
    shift: float | tuple[float, float] = -1.0
    # "random": i.i.d. angles. "grid": sklearn's and torchdyn's layout, half of the points on
    # each moon at evenly spaced angles (only the noise is random): a stratified sample of
    # the same distribution, with less batch-to-batch variance.
    angles: Literal["random", "grid"] = added("random", added_in="8d46d6c")
    # With angles "grid": the grid's size. null: a grid of exactly n points per draw. A
    # number N: each draw takes n distinct points of one N-point grid at random, as the
    # TorchCFM runner does when it splits one make_moons(12 000) set 10 000 / 1 000 / 1 000.
    grid_points: Points | None = added(None, added_in="issue 8")

    @model_validator(mode="after")
    def _grid_points_need_a_grid(self) -> Moons:
        if self.grid_points is not None and self.angles != "grid":
            raise ValueError("grid_points needs angles: grid")
        return self

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        if self.angles == "grid":
            size = n if self.grid_points is None else self.grid_points
            if n > size:
                raise ValueError(f"moons: {n} points asked of a {size}-point grid (grid_points); "
                                 "a draw takes distinct grid points")
            # sklearn: the outer moon at linspace(0, π, size // 2), the inner one at the rest
            n_upper = size // 2
            grid = torch.cat([torch.linspace(0, math.pi, n_upper), torch.linspace(0, math.pi, size - n_upper)])
            index = torch.arange(n) if size == n else torch.randperm(size, generator=generator)[:n]
            upper, theta = index < n_upper, grid[index]
        else:
            upper = torch.rand(n, generator=generator) < 0.5
            theta = math.pi * torch.rand(n, generator=generator)
        x = torch.where(upper, theta.cos(), 1.0 - theta.cos())
        y = torch.where(upper, theta.sin(), 0.5 - theta.sin())
        points = torch.stack([x, y], dim=1)
        if self.noise_type == "gaussian":  # sklearn's make_moons
            points = points + self.noise * torch.randn(n, 2, generator=generator)
        else:  # torchdyn's generate_moons: one U(0, noise) shift added to both coordinates
            points = points + self.noise * torch.rand(n, 1, generator=generator)
        if self.standardize:
            mean, std = self.moments()
            points = (points - mean) / std
        return self.scale * points + torch.as_tensor(self.shift, dtype=points.dtype)

    def moments(self) -> tuple[float, float]:
        """Mean and standard deviation over both coordinates pooled (one scalar each), as the
        DSB / TorchCFM code standardises its moons; exact for uniform angles θ ~ U(0, π).

        Before noise, with E[cos θ] = 0, E[sin θ] = 2/π, E[cos² θ] = E[sin² θ] = 1/2:
        E[x] = 1/2, E[y] = 1/4, E[x²] = 1, E[y²] = 1/2·(1/2) + 1/2·(1/4 − 2/π + 1/2).
        """
        e_sin, e_sin2 = 2 / math.pi, 0.5
        if self.noise_type == "gaussian":
            shift_mean, shift_var = 0.0, self.noise**2
        else:
            shift_mean, shift_var = self.noise / 2, self.noise**2 / 12
        ex, ey = 0.5 + shift_mean, 0.25 + shift_mean
        ex2 = 0.5 * 0.5 + 0.5 * (1 + 0.5) + shift_var + 2 * 0.5 * shift_mean + shift_mean**2
        ey2 = (0.5 * e_sin2 + 0.5 * (0.25 - e_sin + e_sin2)) + shift_var + 2 * 0.25 * shift_mean + shift_mean**2
        mean = (ex + ey) / 2
        var = (ex2 + ey2) / 2 - mean**2
        return mean, math.sqrt(var)


class Checkerboard(Distribution2D):
    name: Literal["checkerboard"] = "checkerboard"
    scale: PositiveFloat = 2.0  # side of one square; the board spans [-2·scale, 2·scale]²

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        x1 = 4 * torch.rand(n, generator=generator) - 2  # column position in [-2, 2)
        x2 = torch.rand(n, generator=generator) - 2 * torch.randint(0, 2, (n,), generator=generator)
        x2 = x2 + torch.floor(x1).remainder(2)  # shift up on odd columns: black squares only
        return self.scale * torch.stack([x1, x2], dim=1)


class Spirals(Distribution2D):
    name: Literal["spirals"] = "spirals"
    noise: NonNegativeFloat = 0.1

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        theta = torch.sqrt(torch.rand(n, generator=generator)) * 3 * math.pi
        arm = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        jitter = 0.5 * torch.rand(n, 2, generator=generator)
        points = torch.stack([-theta.cos() * theta, theta.sin() * theta], dim=1) + jitter
        points = arm[:, None] * points / 3
        return points + self.noise * torch.randn(n, 2, generator=generator)


class SCurve(Distribution2D):
    """sklearn's ``make_s_curve`` projected on its columns (0, 2): with t = 3π(u − 1/2),
    (sin t, sign(t)(cos t − 1)) plus Gaussian noise, times ``scale``."""

    name: Literal["scurve"] = "scurve"
    noise: NonNegativeFloat = 0.05
    scale: float = 1.5

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        t = 3 * math.pi * (torch.rand(n, generator=generator) - 0.5)
        points = torch.stack([t.sin(), t.sign() * (t.cos() - 1)], dim=1)
        return self.scale * (points + self.noise * torch.randn(n, 2, generator=generator))


class GaussianMixture(Distribution2D):
    """Equal-weight mixture of isotropic Gaussians with the given means and one std."""

    name: Literal["gmm"] = "gmm"
    means: list[tuple[float, float]] = Field(min_length=1)
    std: PositiveFloat = 1.0

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        means = torch.tensor(self.means, dtype=torch.float32)
        k = torch.randint(0, len(means), (n,), generator=generator)
        return means[k] + self.std * torch.randn(n, 2, generator=generator)


AnyDistribution2D = named_union(Normal, EightGaussians, Moons, Checkerboard, Spirals, SCurve, GaussianMixture)


class Toy2DParams(Params):
    source: AnyDistribution2D = Normal()
    target: AnyDistribution2D
    train_size: Points | None = Field(
        None, description="a fixed training split of this many target points; null: fresh samples every step"
    )


@DATASETS.register("toy2d")
class Toy2D:
    """Source → target pair of 2D distributions, both with exact generators."""

    Params: ClassVar[type[Params]] = Toy2DParams
    shape: tuple[int, ...] = (2,)

    def __init__(self, params: Toy2DParams):
        self.params = params

    def sample_source(self, n: int, generator: torch.Generator) -> Tensor:
        return self.params.source.sample(n, generator)

    def sample_target(self, n: int, generator: torch.Generator) -> Tensor:
        return self.params.target.sample(n, generator)

    def train_split(self, generator: torch.Generator) -> Tensor | None:
        if self.params.train_size is None:
            return None
        return self.sample_target(self.params.train_size, generator)
