"""Metrics: pure functions registered once each with name, unit, direction and needs.

Quality metrics compare generated samples with a fresh reference sample from the
dataset's own generator (never the training data). Cost metrics read what the runner
measured (see ``harness.measure``). All maths is in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, PositiveFloat

from harness.registry import METRICS


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class EvalContext:
    """Everything a metric may need about one evaluated (run, sampler).

    ``samples`` and ``reference`` are float64 arrays of shape (n, d).
    """

    samples: np.ndarray | None = None
    reference: np.ndarray | None = None
    nfe: float | None = None
    steps: float | None = None
    latency_s: float | None = None
    num_samples: int = 0
    peak_memory_mib: float | None = None
    train: dict[str, Any] = field(default_factory=dict)
    num_params: int | None = None


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[EvalContext, Any], float | None]
    unit: str  # shown in table headers; "" for dimensionless
    higher_is_better: bool
    description: str
    needs: frozenset[str]
    Params: type[BaseModel] = NoParams

    @property
    def label(self) -> str:
        arrow = "↑" if self.higher_is_better else "↓"
        return f"{self.name} ({self.unit}) {arrow}" if self.unit else f"{self.name} {arrow}"


def metric(name: str, unit: str, higher_is_better: bool, needs: set[str],
           params: type[BaseModel] = NoParams) -> Callable:
    def decorator(fn: Callable[[EvalContext, Any], float | None]) -> Callable:
        doc = (fn.__doc__ or "").strip().splitlines()
        METRICS.add(name, Metric(name, fn, unit, higher_is_better, doc[0] if doc else "", frozenset(needs), params))
        return fn

    return decorator


# --- the maths, as plain functions --------------------------------------------------------


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances, shape (len(x), len(y)), clipped at 0."""
    from scipy.spatial.distance import cdist

    return cdist(x, y, "sqeuclidean")


def wasserstein(x: np.ndarray, y: np.ndarray, p: int = 2) -> float:
    """Exact W_p between two uniform point clouds of equal size.

    With equal sizes and uniform weights the optimal plan is a permutation, so W_p is an
    assignment problem: W_p = (mean_i ‖x_i − y_σ(i)‖^p)^(1/p) for the optimal σ.
    """
    from scipy.optimize import linear_sum_assignment

    if x.shape != y.shape:
        raise ValueError(f"point clouds must have equal shapes for the assignment form, got {x.shape} and {y.shape}")
    sq = squared_distances(x, y)
    cost = sq if p == 2 else np.sqrt(sq) ** p
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean() ** (1.0 / p))


def median_bandwidth(x: np.ndarray, y: np.ndarray) -> float:
    """Median heuristic: the median pairwise distance in the pooled sample (i ≠ j)."""
    from scipy.spatial.distance import pdist

    return float(np.sqrt(np.median(pdist(np.concatenate([x, y]), "sqeuclidean"))))


def mmd_rbf(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Maximum mean discrepancy with k(a, b) = exp(−‖a − b‖² / (2h²)).

    The biased (V-statistic) estimate of MMD², which is ≥ 0 and exactly 0 for identical
    samples; the square root is returned.
    """
    gamma = 1.0 / (2.0 * bandwidth**2)
    k_xx = np.exp(-gamma * squared_distances(x, x)).mean()
    k_yy = np.exp(-gamma * squared_distances(y, y)).mean()
    k_xy = np.exp(-gamma * squared_distances(x, y)).mean()
    return float(np.sqrt(max(k_xx + k_yy - 2.0 * k_xy, 0.0)))


# --- registered metrics -----------------------------------------------------------------


@metric("w2", unit="", higher_is_better=False, needs={"samples", "reference"})
def _w2(ctx: EvalContext, params: NoParams) -> float:
    """Exact 2-Wasserstein distance to a fresh reference sample of the same size."""
    return wasserstein(ctx.samples, ctx.reference, p=2)


@metric("w1", unit="", higher_is_better=False, needs={"samples", "reference"})
def _w1(ctx: EvalContext, params: NoParams) -> float:
    """Exact 1-Wasserstein distance to a fresh reference sample of the same size."""
    return wasserstein(ctx.samples, ctx.reference, p=1)


class MMDParams(NoParams):
    bandwidth: Literal["median"] | PositiveFloat = "median"


@metric("mmd", unit="", higher_is_better=False, needs={"samples", "reference"}, params=MMDParams)
def _mmd(ctx: EvalContext, params: MMDParams) -> float:
    """RBF-kernel MMD to the reference; bandwidth by the median heuristic unless given."""
    h = median_bandwidth(ctx.samples, ctx.reference) if params.bandwidth == "median" else params.bandwidth
    return mmd_rbf(ctx.samples, ctx.reference, h)


@metric("nfe", unit="", higher_is_better=False, needs={"nfe"})
def _nfe(ctx: EvalContext, params: NoParams) -> float | None:
    """Network evaluations per sample, counted at the network call."""
    return ctx.nfe


@metric("steps", unit="", higher_is_better=False, needs={"steps"})
def _steps(ctx: EvalContext, params: NoParams) -> float | None:
    """Accepted solver steps."""
    return ctx.steps


@metric("latency", unit="ms", higher_is_better=False, needs={"latency"})
def _latency(ctx: EvalContext, params: NoParams) -> float | None:
    """Median wall time to sample the evaluation batch (warm-up excluded)."""
    return None if ctx.latency_s is None else 1000.0 * ctx.latency_s


@metric("throughput", unit="samples/s", higher_is_better=True, needs={"latency"})
def _throughput(ctx: EvalContext, params: NoParams) -> float | None:
    """Samples per second at the evaluation batch size (median latency)."""
    return None if not ctx.latency_s else ctx.num_samples / ctx.latency_s


@metric("peak_memory", unit="MiB", higher_is_better=False, needs={"memory"})
def _peak_memory(ctx: EvalContext, params: NoParams) -> float | None:
    """Peak memory while sampling: process RSS on CPU, allocated memory on CUDA."""
    return ctx.peak_memory_mib


@metric("train_time", unit="s", higher_is_better=False, needs={"train"})
def _train_time(ctx: EvalContext, params: NoParams) -> float | None:
    """Training wall time after the first step (set-up, compilation and evaluation excluded)."""
    return ctx.train.get("train_s")


@metric("train_steps_per_s", unit="steps/s", higher_is_better=True, needs={"train"})
def _train_speed(ctx: EvalContext, params: NoParams) -> float | None:
    """Optimiser steps per second after the first step."""
    return ctx.train.get("steps_per_s")


@metric("params", unit="", higher_is_better=False, needs={"model"})
def _params(ctx: EvalContext, params: NoParams) -> float | None:
    """Trainable parameter count of the network."""
    return ctx.num_params
