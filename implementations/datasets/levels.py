"""The grey levels of a dataset's pixels: the quantisation that a discrete likelihood (bits
per dimension) is of. Kept beside the datasets rather than in them, so that adding it left
the datasets' code, and so the keys of results trained on them, unchanged."""

from __future__ import annotations

from typing import Any


def grey_levels(space: Any) -> int | None:
    """Levels equally spaced in [−1, 1] that a value of ``space`` takes: the space's own
    ``levels`` where it declares them; scikit-learn's 8×8 digits 17 (values 0–16, stored as
    round(v·255/16)); any other image dataset (8-bit files, upsampled digits rounded to 8
    bits) 256; None for continuous data (2-D points, latents)."""
    declared = getattr(space, "levels", None)
    if declared is not None:
        return int(declared)
    from implementations.datasets.images import Digits, ImageDataset

    if isinstance(space, Digits):
        return 17 if space.params.resolution == 8 else 256
    if isinstance(space, ImageDataset):
        return 256
    return None
