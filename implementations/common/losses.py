"""Regression losses on the velocity residual Δ = v_θ(x_t, t) − u_t, reduced per sample
and then averaged over the batch with optional per-pair weights (W-CFM).

- ``mse``:          ‖Δ‖², averaged over dimensions (``reduce: mean``, TorchCFM) or summed
                    (``reduce: sum``, the Rectified Flow code). Only a constant factor apart.
- ``pseudo_huber``: √(‖Δ‖² + c²) − c (Song & Dhariwal 2023, "Improved Techniques for
                    Training Consistency Models"; used for rectified flows by Lee et al.
                    2024), d the data dimension. Two conventions for c exist and both are
                    here: ``c_scale: d`` (the default) is what rfpp's official train.py does,
                    c = 0.00054·d with the loss divided by d (read in sangyun884/rfpp; the
                    design notes had 0.00054·√d); ``c_scale: sqrt_d`` is the consistency
                    models' c = 0.00054·√d, undivided. rfpp adds an LPIPS term on images,
                    which is not part of this loss.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import PositiveFloat

from harness.interfaces import Params
from harness.spec import named_union

if TYPE_CHECKING:
    from torch import Tensor


class Loss(Params):
    def per_sample(self, residual: Tensor) -> Tensor:
        """(batch, *dims) residual -> (batch,) losses."""
        raise NotImplementedError

    def __call__(self, residual: Tensor, weights: Tensor | None = None) -> Tensor:
        per_sample = self.per_sample(residual)
        if weights is None:
            return per_sample.mean()
        return (weights * per_sample).sum() / weights.sum()


class MSE(Loss):
    name: Literal["mse"] = "mse"
    reduce: Literal["mean", "sum"] = "mean"

    def per_sample(self, residual: Tensor) -> Tensor:
        sq = residual.reshape(residual.shape[0], -1).square()
        return sq.mean(dim=1) if self.reduce == "mean" else sq.sum(dim=1)


class PseudoHuber(Loss):
    name: Literal["pseudo_huber"] = "pseudo_huber"
    c: PositiveFloat | None = None  # None: 0.00054 times d or √d, as c_scale says
    # "d": rfpp's code, c = 0.00054·d and the loss divided by d; "sqrt_d": c = 0.00054·√d.
    c_scale: Literal["d", "sqrt_d"] = "d"

    def per_sample(self, residual: Tensor) -> Tensor:
        flat = residual.reshape(residual.shape[0], -1)
        d = flat.shape[1]
        scale = d if self.c_scale == "d" else math.sqrt(d)
        c = self.c if self.c is not None else 0.00054 * scale
        loss = (flat.square().sum(dim=1) + c**2).sqrt() - c
        return loss / d if self.c_scale == "d" else loss


AnyLoss = named_union(MSE, PseudoHuber)
