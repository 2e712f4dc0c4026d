"""Fréchet distances between feature distributions (FID, and ``fd_digits`` in a small
classifier's feature space), from statistics that stream.

The Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (Heusel et al. 2017, "GANs Trained
by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", Eq. 6; Dowson &
Landau 1982) is

    d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½.

The trace term is computed as Σᵢ √λᵢ over the eigenvalues of the symmetric matrix
R Σ₂ R, R = Σ₁^½ from the symmetric eigen-decomposition of Σ₁ (``eigh``; tiny negative
eigenvalues from round-off clipped to 0). That is the same number as the usual
``scipy.linalg.sqrtm(Σ₁ Σ₂)`` route, without a non-symmetric matrix square root, and R of
a reference is computed once and kept (:class:`Reference`). Everything is float64.

:class:`FeatureStats` accumulates the statistics of features that arrive in batches:
``update(batch)``, ``merge(other)``, ``result()``. It keeps the count, the mean and the
centred scatter matrix M = Σ (x − x̄)(x − x̄)ᵀ, which are sufficient statistics (the same
information as n, Σx, Σxxᵀ) that merge exactly by Chan et al.'s pairwise update and
do not lose digits to the cancellation Σxxᵀ − n x̄x̄ᵀ suffers when the mean is large
against the spread. Its state is three arrays, saved per shard and merged later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np


class FeatureStats:
    """Count, mean and centred scatter of d-dimensional features, accumulated in float64."""

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"feature dimension must be at least 1, got {dim}")
        self.dim = dim
        self.n = 0
        self.mean = np.zeros(dim)
        self.scatter = np.zeros((dim, dim))

    def update(self, features: Any) -> FeatureStats:
        """Add a batch of features, shape (b, d) (any array-like; a torch tensor too)."""
        x = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (batch, {self.dim}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{int((~np.isfinite(x)).any(axis=1).sum())} of {len(x)} feature vectors are not finite")
        if len(x) == 0:
            return self
        batch = FeatureStats(self.dim)
        batch.n = len(x)
        batch.mean = x.mean(axis=0)
        centred = x - batch.mean
        batch.scatter = centred.T @ centred
        return self.merge(batch)

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Fold ``other`` (a shard of the same features) into this one; returns self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {other.dim} into {self.dim}")
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.scatter = other.n, other.mean.copy(), other.scatter.copy()
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        self.scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n)
        self.mean = self.mean + delta * (other.n / n)
        self.n = n
        return self

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(μ, Σ) with the unbiased covariance, Σ = M / (n − 1)."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        return self.mean.copy(), self.scatter / (self.n - 1)

    def state(self) -> dict[str, np.ndarray]:
        """The whole state as arrays (``np.savez`` them per shard)."""
        return {"n": np.array(self.n), "mean": self.mean, "scatter": self.scatter}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FeatureStats:
        stats = cls(int(np.shape(state["mean"])[0]))
        stats.n = int(state["n"])
        stats.mean = np.array(state["mean"], dtype=np.float64)
        stats.scatter = np.array(state["scatter"], dtype=np.float64)
        return stats


def psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix (eigenvalues < 0 from
    round-off clipped to 0)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    values, vectors = np.linalg.eigh((sigma + sigma.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sqrt_sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ₁^½ Σ₂ Σ₁^½)^½ = tr √(Σ₁ Σ₂), from Σ₁^½ and Σ₂."""
    inner = sqrt_sigma1 @ np.asarray(sigma2, dtype=np.float64) @ sqrt_sigma1
    values = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def check_sample_size(n: int, dim: int, what: str) -> None:
    """A Fréchet distance from fewer feature vectors than dimensions rests on a singular
    covariance estimate: refused, naming both numbers."""
    if n <= dim:
        raise ValueError(f"{what}: {n} feature vectors for {dim} feature dimensions; a Fréchet distance needs more "
                         f"vectors than dimensions (use at least {dim + 1} samples)")


@dataclass
class Reference:
    """The reference side of a Fréchet distance (a dataset split's feature statistics),
    with Σ^½ computed once, on first use, and kept."""

    mean: np.ndarray
    cov: np.ndarray
    n: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_stats(cls, stats: FeatureStats, **meta: Any) -> Reference:
        mean, cov = stats.result()
        return cls(mean, cov, stats.n, dict(meta))

    @cached_property
    def sqrt_cov(self) -> np.ndarray:
        return psd_sqrt(self.cov)

    def distance(self, mean: np.ndarray, cov: np.ndarray) -> float:
        """The squared Fréchet distance between N(mean, cov) and this reference."""
        return frechet_distance(self.mean, self.cov, mean, cov, sqrt_cov1=self.sqrt_cov)


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray,
                     sqrt_cov1: np.ndarray | None = None) -> float:
    """d² between N(mean1, cov1) and N(mean2, cov2) (what FID reports), in float64;
    ``sqrt_cov1`` is cov1's symmetric square root when the caller keeps it."""
    mean1, mean2 = np.asarray(mean1, dtype=np.float64), np.asarray(mean2, dtype=np.float64)
    cov1, cov2 = np.asarray(cov1, dtype=np.float64), np.asarray(cov2, dtype=np.float64)
    if mean1.shape != mean2.shape or cov1.shape != cov2.shape or cov1.shape != (len(mean1), len(mean1)):
        raise ValueError(f"shapes do not match: means {mean1.shape}, {mean2.shape}; covariances {cov1.shape}, "
                         f"{cov2.shape}")
    root = psd_sqrt(cov1) if sqrt_cov1 is None else sqrt_cov1
    diff = mean1 - mean2
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt_product(root, cov2))
    return max(value, 0.0)  # round-off can take an exact 0 a hair below
