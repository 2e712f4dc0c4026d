"""What an evaluation accumulates while samples stream in batches, and how shards merge.

Every accumulator has ``update(...)``, ``merge(other)`` (fold in a shard computed
elsewhere, in order), ``state()`` (arrays, saved per shard with ``np.savez``) and
``from_state(arrays)``. Merging the shards of an evaluation gives what one pass over the
same batches gives: exactly for the points and the tally (concatenation and sums), to
float64 round-off for feature statistics (Chan's pairwise update, in
:class:`harness.frechet.FeatureStats`).

- :class:`Points` keeps every generated sample (and its source point): for the metrics
  that need all of them, exact W2 and MMD on 2-D data, flow metrics.
- :class:`Features` keeps float64 sufficient statistics of one feature space (count, mean,
  centred scatter) and, when a metric needs them (KID), the feature vectors too.
- :class:`Tally` counts what every evaluation reports: samples, non-finite and
  out-of-range samples, network evaluations and calls, solver steps, per-batch seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.frechet import FeatureStats


class Points:
    """Named arrays of rows (n, d), concatenated in order."""

    def __init__(self, names: tuple[str, ...] = ()):
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in names}

    def update(self, **arrays: np.ndarray) -> None:
        for name, value in arrays.items():
            if name in self.parts:
                self.parts[name].append(np.asarray(value, dtype=np.float64))

    def merge(self, other: Points) -> Points:
        for name, values in other.parts.items():
            self.parts.setdefault(name, []).extend(values)
        return self

    def result(self, name: str) -> np.ndarray | None:
        values = self.parts.get(name)
        return np.concatenate(values) if values else None

    def state(self) -> dict[str, np.ndarray]:
        return {name: self.result(name) for name in self.parts if self.parts[name]}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], names: tuple[str, ...]) -> Points:
        points = cls(names)
        for name in names:
            if name in state:
                points.parts[name].append(np.asarray(state[name], dtype=np.float64))
        return points


class Features:
    """Feature statistics of one feature space, and optionally the features themselves."""

    def __init__(self, dim: int, keep: bool = False):
        self.stats = FeatureStats(dim)
        self.keep = keep
        self.kept: list[np.ndarray] = []

    def update(self, features: np.ndarray) -> None:
        features = np.asarray(features, dtype=np.float64)
        self.stats.update(features)
        if self.keep:
            self.kept.append(features)

    def merge(self, other: Features) -> Features:
        self.stats.merge(other.stats)
        self.kept.extend(other.kept)
        return self

    @property
    def n(self) -> int:
        return self.stats.n

    def points(self) -> np.ndarray:
        if not self.keep:
            raise ValueError("these feature statistics did not keep the feature vectors")
        return np.concatenate(self.kept) if self.kept else np.zeros((0, self.stats.dim))

    def state(self) -> dict[str, np.ndarray]:
        out = self.stats.state()
        if self.keep:
            out["kept"] = self.points()
        return out

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> Features:
        acc = cls(int(np.shape(state["mean"])[0]), keep="kept" in state)
        acc.stats = FeatureStats.from_state(state)
        if "kept" in state:
            acc.kept = [np.asarray(state["kept"], dtype=np.float64)]
        return acc


@dataclass
class Tally:
    """Counts over the batches of an evaluation."""

    samples: int = 0
    non_finite: int = 0  # samples with a NaN or an infinity
    out_of_range: int = 0  # finite samples beyond the bound (harness.evaluation.OUT_OF_RANGE)
    evaluations: int = 0  # network evaluations, one per sample per call
    calls: int = 0  # network calls
    batches: int = 0
    steps: int = 0  # accepted solver steps, summed over batches
    rejected_steps: int = 0
    batch_s: list[float] = field(default_factory=list)  # wall seconds of each batch, in order

    def merge(self, other: Tally) -> Tally:
        for name in ("samples", "non_finite", "out_of_range", "evaluations", "calls", "batches", "steps",
                     "rejected_steps"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.batch_s = self.batch_s + other.batch_s
        return self

    def state(self) -> dict[str, np.ndarray]:
        return {"tally": np.array(json.dumps(self.__dict__))}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> Tally:
        return cls(**json.loads(str(state["tally"])))


@dataclass
class Shard:
    """Everything one shard of an evaluation accumulated."""

    tally: Tally
    points: Points
    features: dict[str, Features]  # by feature request key
    grid: np.ndarray | None = None  # the shard's first samples, for the image grid

    def merge(self, other: Shard) -> Shard:
        self.tally.merge(other.tally)
        self.points.merge(other.points)
        for key, acc in other.features.items():
            if key in self.features:
                self.features[key].merge(acc)
            else:
                self.features[key] = acc
        if self.grid is None:
            self.grid = other.grid
        return self

    def save(self, path: Path) -> None:
        """Write the shard's state as one ``.npz`` (atomically, through the caller)."""
        arrays = {**self.tally.state(), **{f"points/{k}": v for k, v in self.points.state().items()}}
        for key, acc in self.features.items():
            arrays.update({f"features/{key}/{k}": v for k, v in acc.state().items()})
        if self.grid is not None:
            arrays["grid"] = self.grid
        from harness.results import write_atomic

        write_atomic(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: Path, point_names: tuple[str, ...]) -> Shard:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        points = Points.from_state({k[len("points/"):]: v for k, v in arrays.items() if k.startswith("points/")},
                                   point_names)
        grouped: dict[str, dict[str, Any]] = {}
        for name, value in arrays.items():
            if name.startswith("features/"):
                key, _, part = name[len("features/"):].rpartition("/")
                grouped.setdefault(key, {})[part] = value
        features = {key: Features.from_state(state) for key, state in grouped.items()}
        return cls(Tally.from_state(arrays), points, features, arrays.get("grid"))
