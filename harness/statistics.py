"""Statistics over seeds, in one place: summaries for tables, intervals and verdicts for
claims, and the regression gate (`harness.compare`, paired by seed; `harness.noise`, A/A noise).

Seeds are the unit of replication. A table shows the mean ± the sample standard deviation
over seeds. A verdict is a statement about an interval, never about two means alone:

- **Difference of means** (a measured mean against a published one): the t interval of
  the difference with the standard error √(s²_pub/n_pub + s²/n) and Welch's degrees of
  freedom when the source publishes a spread over seeds; √(s²/n) with n − 1 degrees of
  freedom when it publishes one number (then taken as exact).
- **Paired by seed** (a relation between quantities measured on the same seeds): the t
  interval of the per-seed differences, lhs_s − rhs_s, each side evaluated with seed s's
  values. Same seeds share data and noise, so this is far more sensitive.
- **Bootstrap** (a relation whose terms do not share seeds): each term's seeds resampled
  independently, the expression of means recomputed, the percentile interval of
  lhs − rhs; a fixed generator, so the verdict is reproducible.

Three verdicts follow from where the interval lies (equivalence testing, two one-sided
tests): ``reproduced`` when it lies inside what the claim allows, ``not reproduced`` when
it lies wholly outside, ``inconclusive`` when it straddles the boundary: the data cannot
decide. A noisier measurement widens the interval and so makes ``inconclusive`` more
likely, never ``reproduced``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95  # two-sided confidence level of every interval here
BOOTSTRAP_RESAMPLES = 10_000


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof = 1; None for one value) and count."""

    mean: float
    std: float | None
    n: int

    @property
    def sem(self) -> float | None:
        return None if self.std is None else self.std / math.sqrt(self.n)


def summarize(values: Sequence[float]) -> Summary:
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("summarize needs at least one value")
    return Summary(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else None, int(x.size))


def root_mean_square(values: Sequence[float]) -> float:
    """√(mean of squares): the typical size of differences whose expectation is zero (two
    runs of the same code, ``harness.noise``)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("root_mean_square needs at least one value")
    return float(np.sqrt(np.mean(x * x)))


@dataclass(frozen=True)
class Interval:
    """A two-sided ``level`` interval [low, high] of a difference, and how it was made."""

    estimate: float
    low: float
    high: float
    test: str  # e.g. "Welch t, 95 %"

    def describe(self, digits: int = 3) -> str:
        return f"{self.estimate:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"


def _t_quantile(df: float, level: float = LEVEL) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def mean_difference(ours: Summary, value: float, value_std: float | None = None, value_n: int | None = None,
                    level: float = LEVEL) -> Interval | None:
    """Interval of mean(ours) − value; None for one seed of ours (its spread is unknown)."""
    if ours.std is None:
        return None
    a = ours.std**2 / ours.n
    if value_std is not None and value_n is not None:
        b = value_std**2 / value_n
        se = math.sqrt(a + b)
        # Welch-Satterthwaite degrees of freedom
        denominator = a**2 / (ours.n - 1) + (b**2 / (value_n - 1) if value_n > 1 else 0.0)
        df = (a + b) ** 2 / denominator if denominator > 0 else math.inf
        test = "Welch t"
    else:
        se, df, test = math.sqrt(a), ours.n - 1, "one-sample t"
    half = _t_quantile(df, level) * se if se > 0 else 0.0
    estimate = ours.mean - value
    return Interval(estimate, estimate - half, estimate + half, f"{test}, {100 * level:g} %")


def paired_difference(differences: Sequence[float], level: float = LEVEL) -> Interval | None:
    """t interval of the mean of per-seed differences; None for fewer than two seeds."""
    s = summarize(differences)
    if s.std is None:
        return None
    half = _t_quantile(s.n - 1, level) * s.sem
    return Interval(s.mean, s.mean - half, s.mean + half, f"paired t over {s.n} seeds, {100 * level:g} %")


def bootstrap_difference(samples: Sequence[Sequence[float]], difference: Callable[[list[float]], float],
                         level: float = LEVEL, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Interval | None:
    """Percentile interval of ``difference(means)``, each sample's values resampled
    independently; None when a sample has fewer than two values."""
    arrays = [np.asarray(s, dtype=float) for s in samples]
    if any(a.size < 2 for a in arrays):
        return None
    rng = np.random.default_rng(seed)
    means = [a[rng.integers(0, a.size, size=(resamples, a.size))].mean(axis=1) for a in arrays]  # (resamples,) each
    draws = np.array([difference([m[i] for m in means]) for i in range(resamples)])
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return None
    low, high = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    estimate = difference([float(a.mean()) for a in arrays])
    return Interval(estimate, float(low), float(high), f"bootstrap over seeds ({resamples} resamples), {100 * level:g} %")


def within(interval: Interval, low: float, high: float) -> str:
    """Verdict of an interval against the region [low, high] that a claim allows (either
    end may be infinite): inside, outside, or straddling its boundary."""
    if low <= interval.low and interval.high <= high:
        return "reproduced"
    if interval.high < low or interval.low > high:
        return "not reproduced"
    return "inconclusive"
