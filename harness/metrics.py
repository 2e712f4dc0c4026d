"""Metrics: pure functions registered once each with name, unit, direction and needs.

Quality metrics compare generated samples with a fresh reference sample from the
dataset's own generator (never the training data). Cost metrics read what the runner
measured (see ``harness.measure``). All maths is in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

from harness.features import FeaturePair, FeatureRequest
from harness.registry import METRICS


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass
class EvalContext:
    """Everything a metric may need about one evaluated (run, sampler).

    ``samples`` and ``reference`` are float64 arrays of shape (n, d).
    """

    samples: np.ndarray | None = None
    reference: np.ndarray | None = None
    source: np.ndarray | None = None  # the x_0 the samples were generated from
    reference_2: np.ndarray | None = None  # a second, independent reference sample
    # flow(steps): the times and states (n, d) of the method's ODE from ``source`` on a
    # uniform ``steps``-step Euler grid, whatever the sampler; None when the method is a
    # one-step map, not a flow. Supplied (and cached per grid) by the evaluator.
    flow: Callable[[int], Trajectory | None] | None = None
    nfe: float | None = None
    steps: float | None = None
    latency_s: float | None = None
    num_samples: int = 0
    batch_size: int = 0  # samples per sampling call (latency is per call)
    peak_memory_mib: float | None = None  # the process's peak while sampling
    memory_added_mib: float | None = None  # that peak minus what the process held as sampling began
    train: dict[str, Any] = field(default_factory=dict)
    num_params: int | None = None
    shape: tuple[int, ...] = ()  # one sample's shape, (1, 8, 8) for digits: samples are flattened to (n, d)
    # for a metric that declares ``features``: its feature space's generated and reference sides
    feature: FeaturePair | None = None
    # for model metrics (needs "likelihood"): the method's log-likelihood of held-out data,
    # {mean_log_prob_nats, std_error_nats, n, dims, split, finite, convention}; None when
    # the method has none (harness.evaluation._likelihood)
    likelihood: dict[str, Any] | None = None
    # companion(solver, params, points): the samples (points, d) that another sampler (a
    # registered solver with its params) draws from the first ``points`` source points of
    # this evaluation, with the same labels and method noise; None when that solver cannot
    # sample this method. Supplied (and cached) by the evaluator.
    companion: Callable[[str, dict, int], np.ndarray | None] | None = None


@dataclass(frozen=True)
class Trajectory:
    times: list[float]  # t_0 = 0 < ... < t_N = 1
    states: list[np.ndarray]  # (n, d) at each time


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[EvalContext, Any], float | None]
    unit: str  # shown in table headers; "" for dimensionless
    higher_is_better: bool
    description: str
    needs: frozenset[str]
    Params: type[BaseModel] = NoParams
    best_at: float | None = None  # a signed metric whose best value is this one (not an end)
    # noise_floor(rows of one dataset's finished records) -> a sentence for the table, or None
    noise_floor: Callable[[Any], str | None] | None = None
    # False for a column the set-up decides (a sampler's steps and NFE): nothing to win there
    marks_best: bool = True
    # provenance(ctx, params) -> what produced the value (feature network and its hash, sample
    # counts, ...), stored with the record beside the value
    provenance: Callable[[EvalContext, Any], dict] | None = None
    # features(params) -> the feature space it compares in (harness.features); the evaluator
    # accumulates it batch by batch, supplies ctx.feature and records its provenance
    features: Callable[[Any], FeatureRequest] | None = None

    @property
    def label(self) -> str:
        arrow = f"→{self.best_at:g}" if self.best_at is not None else ("↑" if self.higher_is_better else "↓")
        return f"{self.name} ({self.unit}) {arrow}" if self.unit else f"{self.name} {arrow}"

    def badness(self, value: float) -> float:
        """What ranking minimises: the value, its negative, or its distance to ``best_at``."""
        if self.best_at is not None:
            return abs(value - self.best_at)
        return -value if self.higher_is_better else value


def metric(name: str, unit: str, higher_is_better: bool, needs: set[str],
           params: type[BaseModel] = NoParams, best_at: float | None = None,
           noise_floor: Callable[[Any], str | None] | None = None, marks_best: bool = True,
           provenance: Callable[[EvalContext, Any], dict] | None = None,
           features: Callable[[Any], FeatureRequest] | None = None) -> Callable:
    def decorator(fn: Callable[[EvalContext, Any], float | None]) -> Callable:
        summary = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())  # first paragraph
        METRICS.add(name, Metric(name, fn, unit, higher_is_better, summary, frozenset(needs), params, best_at,
                                 noise_floor, marks_best, provenance, features))
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

    # pdist's array is ours: the median may partition it in place instead of copying it
    return float(np.sqrt(np.median(pdist(np.concatenate([x, y]), "sqeuclidean"), overwrite_input=True)))


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


def step_velocities(times: list[float], trajectory: list[np.ndarray]) -> list[tuple[float, np.ndarray]]:
    """(Δt_i, (Z_{i+1} − Z_i)/Δt_i) along a sampler's steps: its effective velocity per step."""
    out = []
    for i in range(len(times) - 1):
        dt = times[i + 1] - times[i]
        if dt > 0:
            out.append((dt, (trajectory[i + 1] - trajectory[i]) / dt))
    return out


def path_energy(times: list[float], trajectory: list[np.ndarray]) -> float:
    """PE = E ∫₀¹ ‖v(Z_t, t)‖² dt, discretised along the sampler's steps.

    For Euler the step velocity is v(Z_i, t_i) exactly, so this equals TorchCFM's running
    sum of ‖v‖²·Δt along its 100-step Euler solve.
    """
    return float(sum(dt * np.mean(np.sum(v**2, axis=1)) for dt, v in step_velocities(times, trajectory)))


def straightness(times: list[float], trajectory: list[np.ndarray]) -> float:
    """S = ∫₀¹ E‖(Z_1 − Z_0) − Ż_t‖² dt (Liu et al. 2023, Eq. 4) along the sampler's steps.

    Zero exactly when every trajectory is a straight line traversed at constant speed.
    """
    chord = trajectory[-1] - trajectory[0]
    return float(sum(dt * np.mean(np.sum((chord - v) ** 2, axis=1)) for dt, v in step_velocities(times, trajectory)))


def normalized_path_energy(pe: float, w2_squared: float) -> float:
    """NPE = |PE − W2²(q_0, q_1)| / W2²(q_0, q_1) (Tong et al. 2024, §5.1): 0 for the OT map,
    whose path energy is the squared Wasserstein distance (Benamou-Brenier)."""
    return abs(pe - w2_squared) / w2_squared


# --- registered metrics -----------------------------------------------------------------


@metric("w2", unit="", higher_is_better=False, needs={"samples", "reference"})
def _w2(ctx: EvalContext, params: NoParams) -> float:
    """Exact 2-Wasserstein distance to a fresh reference sample of the same size."""
    return wasserstein(ctx.samples, ctx.reference, p=2)


@metric("w2_floor", unit="", higher_is_better=False, needs={"reference", "reference_2"})
def _w2_floor(ctx: EvalContext, params: NoParams) -> float:
    """W2 between two independent reference samples of the evaluation size: what a perfect
    model would score (the finite-sample floor of ``w2``; large for far-apart modes)."""
    return wasserstein(ctx.reference_2, ctx.reference, p=2)


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


@metric("nfe", unit="", higher_is_better=False, needs={"nfe"}, marks_best=False)
def _nfe(ctx: EvalContext, params: NoParams) -> float | None:
    """Network evaluations per sample, counted at the network call."""
    return ctx.nfe


@metric("steps", unit="", higher_is_better=False, needs={"steps"}, marks_best=False)
def _steps(ctx: EvalContext, params: NoParams) -> float | None:
    """Accepted solver steps."""
    return ctx.steps


@metric("latency", unit="ms", higher_is_better=False, needs={"latency"})
def _latency(ctx: EvalContext, params: NoParams) -> float | None:
    """Median wall time of one sampling call on a batch of ``eval.batch_size`` samples
    (decoding included; warm-up excluded)."""
    return None if ctx.latency_s is None else 1000.0 * ctx.latency_s


@metric("throughput", unit="samples/s", higher_is_better=True, needs={"latency"})
def _throughput(ctx: EvalContext, params: NoParams) -> float | None:
    """Samples per second at the evaluation batch size (median latency)."""
    return None if not ctx.latency_s else (ctx.batch_size or ctx.num_samples) / ctx.latency_s


@metric("memory_added", unit="MiB", higher_is_better=False, needs={"memory"})
def _memory_added(ctx: EvalContext, params: NoParams) -> float | None:
    """Memory that sampling added at its peak: the peak during sampling minus what the
    process held as it began (resident set on CPU, allocated tensors on CUDA); the cost of
    sampling itself, not of torch, the model and the data already loaded."""
    return ctx.memory_added_mib


@metric("peak_memory", unit="MiB", higher_is_better=False, needs={"memory"})
def _peak_memory(ctx: EvalContext, params: NoParams) -> float | None:
    """The whole process's peak while sampling (resident set on CPU, allocated tensors on
    CUDA): torch, the model and the data included. ``memory_added`` is sampling's own share."""
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


def _nll_per_dim(ctx: EvalContext) -> float | None:
    like = ctx.likelihood
    if like is None or not like["finite"]:
        return None
    return -like["mean_log_prob_nats"] / like["dims"]


def _likelihood_provenance(ctx: EvalContext, params: Any) -> dict:
    like = ctx.likelihood or {}
    return {k: like.get(k) for k in ("split", "n", "dims", "given", "convention", "std_error_nats")}


@metric("nll", unit="nats/dim", higher_is_better=False, needs={"likelihood"}, provenance=_likelihood_provenance)
def _nll(ctx: EvalContext, params: NoParams) -> float | None:
    """Negative log-likelihood of held-out data per dimension, in nats (a model metric: it
    reads the dataset's held-out split, not samples); the method states its dequantisation
    in the value's provenance. Not applicable (—) to methods without a likelihood."""
    return _nll_per_dim(ctx)


@metric("bpd", unit="bits/dim", higher_is_better=False, needs={"likelihood"}, provenance=_likelihood_provenance)
def _bpd(ctx: EvalContext, params: NoParams) -> float | None:
    """Bits per dimension of held-out data: nll / ln 2, under the method's stated
    dequantisation (its provenance). Not applicable (—) to methods without a likelihood."""
    nll = _nll_per_dim(ctx)
    return None if nll is None else nll / math.log(2)


class FlowGrid(NoParams):
    """Flow metrics are properties of the learned ODE, not of a sampler: they are computed
    on one fixed Euler grid from the evaluation's source points, whichever sampler the
    record is for (a sampler's own steps would score any one-step sampler straightness 0,
    and a coarse grid a lower bound)."""

    steps: int = Field(100, strict=True, ge=1, le=100_000, description="uniform Euler steps of the grid")


def _flow(ctx: EvalContext, params: FlowGrid) -> Trajectory | None:
    return None if ctx.flow is None else ctx.flow(params.steps)


@metric("path_energy", unit="", higher_is_better=False, needs={"flow"}, params=FlowGrid)
def _path_energy(ctx: EvalContext, params: FlowGrid) -> float | None:
    """E∫‖v‖²dt of the flow on a fixed Euler grid (TorchCFM's path energy; 100 steps unless
    ``steps`` says otherwise); not applicable to one-step maps.

    TorchCFM sums ‖v‖²·Δt along its own 100-step Euler solve: the same number."""
    flow = _flow(ctx, params)
    return None if flow is None else path_energy(flow.times, flow.states)


def _w2_squared_source_reference(ctx: EvalContext) -> float:
    return wasserstein(ctx.source, ctx.reference, p=2) ** 2


def npe_noise_floor(rows: Any) -> str | None:
    """NPE's resolution on one dataset: the seed-to-seed relative spread of its normaliser
    W2²(q0, q1), estimated from finite source and reference samples. Every method of a
    seed shares those samples, so W2² = PE / (1 + rpe) of any record of the seed gives it.
    NPE differences below it are estimation noise, not a difference between flows."""
    if not {"path_energy", "rpe", "seed"} <= set(rows.columns):
        return None
    both = rows.dropna(subset=["path_energy", "rpe"])
    w2_sq = (both["path_energy"] / (1.0 + both["rpe"])).groupby(both["seed"]).mean()
    if len(w2_sq) < 2:
        return None
    floor = float(w2_sq.std(ddof=1) / w2_sq.mean())
    return (f"npe noise floor: the normaliser W2²(q0, q1) varies by {floor:.2g} (relative std over "
            f"{len(w2_sq)} seeds' evaluation samples), so npe differences below about {floor:.2g} are not resolved.")


@metric("npe", unit="", higher_is_better=False, needs={"flow", "source", "reference"}, params=FlowGrid,
        noise_floor=npe_noise_floor)
def _npe(ctx: EvalContext, params: FlowGrid) -> float | None:
    """Normalised path energy |PE − W2²(q0, q1)| / W2²(q0, q1) (Tong et al. 2024), PE on the
    fixed Euler grid, W2 exact between the source sample and the fresh reference sample.

    It folds both signs; ``rpe`` keeps the sign. At 1 000 points the estimate of W2² alone
    moves NPE by a few hundredths (see the leaderboard's note on its noise floor)."""
    flow = _flow(ctx, params)
    if flow is None:
        return None
    return normalized_path_energy(path_energy(flow.times, flow.states), _w2_squared_source_reference(ctx))


@metric("rpe", unit="", higher_is_better=False, needs={"flow", "source", "reference"}, params=FlowGrid, best_at=0.0)
def _rpe(ctx: EvalContext, params: FlowGrid) -> float | None:
    """Signed relative path energy (PE − W2²(q0, q1)) / W2²(q0, q1): NPE with its sign.

    Positive: the flow spends more energy than the optimal transport. Negative: less than
    any exact transport of q0 to q1 can, so the flow under-transports (it does not reach
    the target distribution), or W2² of the samples is overestimated. Best at 0."""
    flow = _flow(ctx, params)
    if flow is None:
        return None
    w2_sq = _w2_squared_source_reference(ctx)
    return (path_energy(flow.times, flow.states) - w2_sq) / w2_sq


@metric("straightness", unit="", higher_is_better=False, needs={"flow"}, params=FlowGrid)
def _straightness(ctx: EvalContext, params: FlowGrid) -> float | None:
    """Rectified Flow straightness ∫E‖(Z1 − Z0) − Ż_t‖²dt of the flow on a fixed Euler grid
    (100 steps unless ``steps`` says otherwise); not applicable to one-step maps."""
    flow = _flow(ctx, params)
    return None if flow is None else straightness(flow.times, flow.states)


class CompanionParams(NoParams):
    """Which sampler to compare a record's samples with, from the same source points."""

    solver: str = Field(description="a registered solver (ar-sequential, euler, dopri5, ...)")
    params: dict[str, Any] = Field(default_factory=dict, description="that solver's params")
    points: int = Field(500, strict=True, ge=1, le=100_000, description="the first this many samples are compared")
    norm: Literal["max", "rms"] = Field("max", description="max: the largest |difference| of any value; rms: the "
                                                           "root mean square difference per value")

    @model_validator(mode="after")
    def _known_solver(self) -> CompanionParams:
        from harness.registry import SOLVERS

        if self.solver not in SOLVERS:
            raise ValueError(f"solver {self.solver!r} is not registered (known: {', '.join(sorted(SOLVERS))})")
        SOLVERS.get(self.solver).Params.model_validate(self.params)
        return self


def sample_gap_of(samples: np.ndarray, companion: np.ndarray, norm: str) -> float:
    """max |x − x'| or sqrt(mean (x − x')²) over every value of two (n, d) arrays."""
    diff = np.abs(samples - companion)
    return float(diff.max()) if norm == "max" else float(np.sqrt(np.mean(diff ** 2)))


def _gap_provenance(ctx: EvalContext, params: CompanionParams) -> dict:
    return {"companion": {"solver": params.solver, "params": params.params,
                          "points": min(params.points, ctx.num_samples), "norm": params.norm}}


@metric("sample_gap", unit="", higher_is_better=False, needs={"samples", "companion"}, params=CompanionParams,
        best_at=0.0, provenance=_gap_provenance)
def _sample_gap(ctx: EvalContext, params: CompanionParams) -> float | None:
    """The difference between this sampler's samples and a companion sampler's from the
    same source points, labels and method noise (its ``solver`` and ``params``): the largest
    absolute difference of any value (``norm: max``) or the RMS per value, over the first
    ``points`` samples, in the data's units. A solver that inverts a flow exactly scores the
    companion's round-off; an approximate one its error (e.g. Jacobi against sequential
    inversion, few Euler steps against many). Not applicable where the companion cannot
    sample the method."""
    if ctx.samples is None or ctx.companion is None:
        return None
    points = min(params.points, len(ctx.samples))
    other = ctx.companion(params.solver, params.params, points)
    return None if other is None else sample_gap_of(ctx.samples[:points], other, params.norm)


# --- image quality in a digits classifier's feature space (harness.digits_features) -------


class KIDParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    subsets: int = Field(100, ge=1, le=10_000, description="random subsets averaged (clean-fid's default)")
    subset_size: int = Field(1000, ge=2, le=100_000, description="points per subset, at most the sample count")


def kernel_inception_distance(x: np.ndarray, y: np.ndarray, subsets: int, subset_size: int, seed: int = 0) -> float:
    """KID (Bińkowski et al. 2018): the unbiased MMD² with the cubic polynomial kernel
    k(a, b) = (aᵀb / d + 1)³, averaged over random subsets of both samples (drawn with a
    fixed generator, as clean-fid does)."""
    d = x.shape[1]
    m = min(subset_size, len(x), len(y))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        k_aa, k_bb, k_ab = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
        within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
        values.append(within - 2 * k_ab.mean())
    return float(np.mean(values))


def _digits_space(params: Any) -> FeatureRequest:
    return FeatureRequest.of("digits", keep=isinstance(params, KIDParams))


@metric("fd_digits", unit="", higher_is_better=False, needs={"features"}, features=_digits_space)
def _fd_digits(ctx: EvalContext, params: NoParams) -> float:
    """Fréchet distance between generated and held-out digits in the shipped digits
    classifier's 64-d feature space (the CPU stand-in for FID; not FID)."""
    return frechet_of(ctx.feature, "fd_digits")


def frechet_of(pair: FeaturePair, name: str) -> float:
    """The Fréchet distance of a feature pair, after the sample-size guard on both sides."""
    from harness.frechet import check_sample_size

    check_sample_size(pair.generated.n, pair.generated.stats.dim, f"{name}, generated")
    check_sample_size(pair.reference.n, pair.reference.features.stats.dim, f"{name}, reference")
    return pair.reference.frechet().distance(*pair.generated.stats.result())


@metric("kid_digits", unit="", higher_is_better=False, needs={"features"}, params=KIDParams,
        features=_digits_space)
def _kid_digits(ctx: EvalContext, params: KIDParams) -> float:
    """Kernel distance (KID's unbiased cubic-kernel MMD², subsets averaged) between generated
    and held-out digits in the digits classifier's feature space."""
    return kernel_inception_distance(ctx.feature.generated.points(), ctx.feature.reference.features.points(),
                                     params.subsets, params.subset_size)


import harness.digits_features  # noqa: E402,F401  registers the "digits" feature space
import harness.inception  # noqa: E402,F401  registers the Inception feature spaces, fid and kid
