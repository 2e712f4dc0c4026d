"""A small digits classifier whose penultimate layer is the feature space of ``fd_digits``
and ``kid_digits``: the CPU stand-in for Inception features, named for what it is.

Network: conv 3×3 (1→32), ReLU, conv 3×3 (32→64), ReLU, 2×2 max-pool, a 1024→64 linear
layer and ReLU (the 64 features), and a 64→10 linear classifier. Trained by
``scripts/train_digits_classifier.py`` (seeded, CPU, one thread) on the training split of
the ``digits`` dataset spec; its weights ship in ``harness/assets/`` with a JSON file that
records their SHA-256, the test accuracy and how they were made. Images of 16×16 or 32×32
are average-pooled to 8×8 first.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.features import FEATURES as FEATURE_SPACES
from harness.lazy import lazy_import

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")

ASSETS = Path(__file__).resolve().parent / "assets"
WEIGHTS = ASSETS / "digits_classifier.pt"
CARD = ASSETS / "digits_classifier.json"
FEATURES = 64


def classifier() -> Any:
    """A fresh, untrained network of the architecture above."""
    nn = torch.nn
    features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 4 * 4, FEATURES), nn.ReLU())
    return nn.Sequential(features, nn.Linear(FEATURES, 10))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@cache
def load() -> tuple[Any, dict]:
    """The shipped classifier in eval mode, and its card; the weights' hash is checked."""
    if not WEIGHTS.is_file() or not CARD.is_file():
        raise FileNotFoundError(f"no digits classifier at {WEIGHTS}; run python scripts/train_digits_classifier.py")
    card = json.loads(CARD.read_text())
    digest = sha256(WEIGHTS)
    if digest != card["sha256"]:
        raise ValueError(f"{WEIGHTS}: SHA-256 {digest} is not the {card['sha256']} its card records")
    net = classifier()
    net.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return net.eval(), card


def as_digit_images(flat: np.ndarray, shape: tuple[int, ...]) -> Any:
    """(n, d) float samples of a (1, H, W) image dataset as an (n, 1, 8, 8) float32 tensor."""
    if len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2] or shape[1] not in (8, 16, 32):
        raise ValueError(f"the digits features need digit images of shape (1, 8, 8), (1, 16, 16) or (1, 32, 32); "
                         f"this dataset's are {tuple(shape)}")
    x = torch.as_tensor(np.asarray(flat, dtype=np.float32).reshape(-1, *shape))
    return torch.nn.functional.avg_pool2d(x, shape[1] // 8) if shape[1] != 8 else x


def features(flat: np.ndarray, shape: tuple[int, ...], batch_size: int = 1024) -> np.ndarray:
    """The 64 penultimate-layer features (float64) of digit images given flat, (n, d)."""
    net, _ = load()
    images = as_digit_images(flat, shape)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(net[0](images[start:start + batch_size]).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, FEATURES))


class DigitsExtractor:
    """The ``digits`` feature space: the shipped classifier's 64 penultimate features of
    (n, 1, H, W) digit images in [−1, 1] (H = 16 or 32 average-pooled to 8 first)."""

    dim = FEATURES

    def __init__(self, options: dict[str, Any]):
        if options:
            raise ValueError(f"the digits feature space takes no options, got {sorted(options)}")
        self.net, self.card = load()
        if self.net.training:
            raise RuntimeError("the digits classifier must be in eval mode")

    def __call__(self, images: Any) -> np.ndarray:
        images = torch.as_tensor(images, dtype=torch.float32)
        return features(images.reshape(len(images), -1).numpy(), tuple(images.shape[1:]))

    def provenance(self) -> dict[str, Any]:
        return {"features": "harness.digits_features (penultimate layer, 64-d)", "weights_sha256": self.card["sha256"],
                "classifier_held_out_accuracy": self.card["held_out_accuracy"],
                "resize": "average pooling to 8x8"}


FEATURE_SPACES.add("digits", DigitsExtractor)
