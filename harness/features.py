"""Feature spaces that image metrics compare distributions in (FID's Inception pool
features, the shipped digits classifier's), and the reference side of each comparison.

A feature space is registered once under a name with a factory
``make(options: dict) -> FeatureExtractor``. An extractor maps images, a float tensor
(n, C, H, W) with values in [−1, 1], to float64 features (n, dim), and says what it is
(:meth:`FeatureExtractor.provenance`: backend and version, mode, resize, the SHA-256 of
its weights). A metric names the space and options it reads through ``features(params)``
(a :class:`FeatureRequest`); the evaluator extracts each requested space once per batch,
however many metrics read it.

The reference statistics of a dataset split in one feature space are computed once and
kept in the artefact store under a key made of the dataset's spec, the split, the
resolution, the feature space, its options and its weights' hash
(:func:`reference_key`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from harness.accumulators import Features
from harness.frechet import Reference
from harness.registry import Registry


class FeatureExtractor(Protocol):
    dim: int

    def __call__(self, images: Any) -> np.ndarray:
        """(n, C, H, W) float images in [−1, 1] -> (n, dim) float64 features."""

    def provenance(self) -> dict[str, Any]:
        """What the features are: backend, version, mode, resize, ``weights_sha256``, ..."""


FEATURES: Registry = Registry("feature space")


@dataclass(frozen=True)
class FeatureRequest:
    """A feature space and its options, as a metric asks for them."""

    space: str
    options: tuple[tuple[str, Any], ...] = ()
    keep: bool = False  # the metric needs the feature vectors, not only their statistics (KID)
    split: str = "held_out"  # the dataset split the reference side is computed on

    @classmethod
    def of(cls, space: str, options: dict[str, Any] | None = None, keep: bool = False,
           split: str = "held_out") -> FeatureRequest:
        return cls(space, tuple(sorted((options or {}).items())), keep, split)

    @property
    def key(self) -> str:
        """A short name for this space, its options and split (a file-name part: no '/');
        metrics that differ only in ``keep`` share it."""
        text = json.dumps([self.space, self.options, self.split], sort_keys=True, default=str)
        return f"{self.space}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"

    def make(self) -> FeatureExtractor:
        return FEATURES.get(self.space)(dict(self.options))


@dataclass
class ReferenceFeatures:
    """The reference side: a split's feature statistics (with Σ^½ cached), the feature
    vectors when a metric keeps them, and what they are (key, hash, split, count)."""

    features: Features
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.features.n

    def frechet(self) -> Reference:
        if not hasattr(self, "_reference"):
            self._reference = Reference.from_stats(self.features.stats)
        return self._reference


@dataclass
class FeaturePair:
    """What a feature metric reads: the generated side, the reference side, and the
    extractor's provenance."""

    generated: Features
    reference: ReferenceFeatures
    extractor: dict[str, Any]

    def provenance(self, params: Any = None) -> dict[str, Any]:
        out = {**self.extractor, "generated": self.generated.n, "reference": self.reference.n,
               "reference_split": self.reference.meta.get("split"),
               "reference_key": self.reference.meta.get("key"),
               "reference_sha256": self.reference.meta.get("sha256"),
               "precision": "float64 statistics"}
        if params is not None and getattr(type(params), "model_fields", None):
            out["params"] = params.model_dump(mode="json")
        return out


def reference_key(dataset_spec: dict, request: FeatureRequest, extractor: dict[str, Any], shape: tuple) -> dict:
    """What identifies a reference's statistics: the dataset's spec (its parameters fix
    the data, split and resolution), the split, the image shape, the feature space and
    options, and the weights' hash."""
    return {"dataset": {k: v for k, v in dataset_spec.items() if k in ("implementation", "params")},
            "split": request.split, "shape": list(shape), "space": request.space,
            "options": [list(o) for o in request.options], "weights_sha256": extractor.get("weights_sha256"),
            "keep": request.keep}


def stats_sha256(features: Features) -> str:
    """A hash of the reference statistics themselves, recorded with every value."""
    h = hashlib.sha256()
    for name, value in sorted(features.state().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def pair_of(generated: np.ndarray, reference: np.ndarray, keep: bool = True,
            extractor: dict[str, Any] | None = None) -> FeaturePair:
    """A feature pair from two whole arrays of features (tests, notebooks, benchmarks)."""
    gen, ref = Features(generated.shape[1], keep), Features(reference.shape[1], keep)
    gen.update(generated)
    ref.update(reference)
    return FeaturePair(gen, ReferenceFeatures(ref, {"split": "given", "sha256": stats_sha256(ref)}), extractor or {})
