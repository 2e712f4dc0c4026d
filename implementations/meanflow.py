"""MeanFlow: one-step generation by learning the average velocity.

Paper: Geng, Deng, Bai, Kolter, He (2025). "Mean Flows for One-step Generative Modeling".
https://arxiv.org/abs/2505.13447. Official code: Gsunshine/meanflow (JAX, ImageNet) and
Gsunshine/py-meanflow (PyTorch, CIFAR-10); details below as read there (methods-next §1).

The paper's algorithm (its convention: t = 0 data, t = 1 noise ε, r ≤ t):
    1. t, r ~ two logit-normal draws, sorted (t ≥ r); a share of the batch gets r = t;
    2. z_t = (1 − t)·x + t·ε, v_t = ε − x;
    3. (u, dudt) = jvp(u_θ, (z_t, r, t), (v_t, 0, 1)), the total derivative d/dt u along
       the flow with r held fixed;
    4. u_tgt = sg(v_t − (t − r)·dudt)  (the MeanFlow identity u = v − (t − r)·du/dt);
    5. loss = E[w·‖u − u_tgt‖²] with the adaptive weight w = 1/sg((‖u − u_tgt‖² + c)^p).
Sampling: x = ε − u_θ(ε, 0, 1) in one step, or z_r = z_t − (t − r)·u_θ(z_t, r, t) per step.

Here, in the project's convention (t = 0 source x_0, t = 1 data x_1; methods-next §1.9),
with start time a = 1 − t, end time b = 1 − r ≥ a and U(z_a, a, b) = −u:
    1. a ≤ b: two draws of ``time_sampler``, ordered; the first ⌊(1 − ratio_r_neq_t)·B⌋ rows
       of the batch get b = a (the JAX code's fixed position mask);
    2. z_a = (1 − a)·x_0 + a·x_1, ṽ = x_1 − x_0 (or the guided ṽ_g, below);
    3. (U, dU/da) = jvp(U_θ, (z_a, a, b), (ṽ, 1, 0)): dU/da = ṽ·∂_z U + ∂_a U, b fixed;
    4. U_tgt = sg(ṽ + (b − a)·dU/da)  (the identity U = ṽ + (b − a)·dU/da);
    5. the same adaptive loss, L the per-sample sum of squares, averaged over the batch.
Sampling (:func:`~implementations.common.average_velocity.sample_average_velocity`):
x = x_0 + U_θ(x_0, 0, 1) with ``euler`` at 1 step, K uniform jumps
z_b = z_a + (b − a)·U_θ(z_a, a, b) at K steps (1 NFE each); any other solver integrates
v(z, t) = U_θ(z, t, t).

Classifier-free guidance trained into the field (the paper's App. B.1; JAX
``guidance_fn``, ``cond_drop``), with ``class_conditional``: the first Σ Bernoulli(0.1)
rows get the null label and keep ṽ; for the others with a in ``guidance_interval``,
    ṽ_g = ω·ṽ + κ·U_θ(z_a, a, a | c) + (1 − ω − κ)·U_θ(z_a, a, a | ∅)
(no gradient), which replaces ṽ in the target and as the JVP's tangent. The effective
guidance scale is ω/(1 − κ); sampling stays at 1 NFE per step.

Defaults follow the official JAX ImageNet code: 25 % of rows with a ≠ b, logit-normal
times with (m, s) = (−0.4, 1.0) in its convention, which is m = +0.4 in this one (the
sign of m flips with t ↦ 1 − t), p = 1 and c = 0.01 (``norm_p``, ``norm_eps``; the
CIFAR-10 PyTorch code uses p = 0.75, c = 1e-3), ω = 1, κ = 0.5, label drop 0.1. Ours:
the JVP runs in float32 with autocast off, as py-meanflow does; the position masks follow
the JAX code (so the dropped-label rows all have a = b, as there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from harness.interfaces import Batch, Params, Solution, Solver
from harness.lazy import lazy_import
from harness.registry import METHODS
from implementations.common.average_velocity import (
    NULL_LABEL,
    AverageVelocity,
    average_velocity,
    draw_interval,
    expand_as,
    leading_rows,
    sample_average_velocity,
)
from implementations.common.timesteps import AnyTimeSampler, LogitNormal

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
else:
    torch = lazy_import("torch")

Tangent = Literal["v,1,0", "v,0,0", "v,0,1", "v,1,1"]
# The JVP tangent on (z, a, b) → the tangent on (a, b). The paper's Table 1b names its
# variants on (z, r, t) in its own convention; with a = 1 − t and b = 1 − r they map as
# paper (v, 0, 1) → "v,1,0" (correct, the default), (v, 0, 0) → "v,0,0",
# paper (v, 1, 0) → "v,0,1", (v, 1, 1) → "v,1,1".
TANGENTS: dict[str, tuple[float, float]] = {"v,1,0": (1.0, 0.0), "v,0,0": (0.0, 0.0), "v,0,1": (0.0, 1.0),
                                            "v,1,1": (1.0, 1.0)}


class MeanFlowParams(Params):
    ratio_r_neq_t: float = Field(0.25, ge=0.0, le=1.0, description="share of the batch with a ≠ b (the rest "
                                                                     "trains b = a, plain flow matching)")
    time_sampler: AnyTimeSampler = Field(LogitNormal(m=0.4, s=1.0), description="a and b: two draws, ordered "
                                         "(default logit_normal m = 0.4, s = 1: the JAX code's (−0.4, 1) in its "
                                         "reversed time)")
    p: float = Field(1.0, ge=0.0, description="adaptive loss weight 1/sg((L + c)^p); p = 0 is plain L2")
    c: float = Field(0.01, gt=0.0, description="adaptive loss weight's offset (JAX 0.01; py-meanflow 1e-3)")
    tangent: Tangent = Field("v,1,0", description="JVP tangent on (z, a, b), for the paper's Table 1b ablation")
    class_conditional: bool = Field(False, description="train on class labels with guidance trained into the field "
                                                      "(the network needs num_classes)")
    omega: float = Field(1.0, gt=0.0, description="guidance ω: the weight of ṽ in ṽ_g")
    kappa: float = Field(0.5, ge=0.0, lt=1.0, description="guidance κ: the weight of the conditional U_θ(z, a, a) "
                                                           "in ṽ_g; effective scale ω/(1 − κ)")
    guidance_interval: tuple[float, float] = Field(
        (0.0, 1.0), description="start times a at which ṽ_g is guided (outside: ω = 1, κ = 0); this convention")
    label_drop: float = Field(0.1, ge=0.0, lt=1.0, description="chance of a row's label being dropped to the null "
                                                              "class")

    @model_validator(mode="after")
    def _interval(self) -> MeanFlowParams:
        lo, hi = self.guidance_interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"guidance_interval must satisfy 0 <= start <= end <= 1. Got {self.guidance_interval}")
        return self

    @property
    def guided(self) -> bool:
        """Whether ṽ_g differs from ṽ (ω = 1, κ = 0 is no guidance)."""
        return self.class_conditional and (self.omega != 1.0 or self.kappa != 0.0)


def meanflow_target(u: AverageVelocity, z_a: Tensor, a: Tensor, b: Tensor, v: Tensor,
                    tangent: Tangent = "v,1,0") -> tuple[Tensor, Tensor]:
    """(U_θ(z_a, a, b), U_tgt = sg(v + (b − a)·dU/da)) with dU/da from one forward-mode JVP.

    Args:
        u: the model u(z, a, b).
        z_a: points on the path at the start times, (batch, *dims).
        a, b: start and end times, (batch,), a ≤ b.
        v: the velocity along which z moves in the total derivative: ṽ = x_1 − x_0, or the
            guided ṽ_g; (batch, *dims).
        tangent: the JVP's tangent on (a, b) (``TANGENTS``); "v,1,0" is MeanFlow's.

    The JVP runs with autocast off (float32 at least), as the official PyTorch code does,
    and with attention on PyTorch's math kernel: the fused (flash, memory-efficient)
    kernels have no forward-mode derivative. U keeps its graph for the backward pass; the
    target is detached.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    da, db = TANGENTS[tangent]
    tangents = (v, torch.full_like(a, da), torch.full_like(b, db))
    with torch.autocast(z_a.device.type, enabled=False), sdpa_kernel(SDPBackend.MATH):
        U, dU_da = torch.func.jvp(u, (z_a, a, b), tangents)
    U_tgt = v + expand_as(b - a, v) * dU_da
    return U, U_tgt.detach()


def adaptive_l2(residual: Tensor, p: float, c: float) -> Tensor:
    """MeanFlow's adaptive loss: mean over the batch of L/sg((L + c)^p), L = Σ residual²."""
    L = residual.reshape(residual.shape[0], -1).square().sum(dim=1)  # (b,)
    return (L / (L.detach() + c) ** p).mean()


@METHODS.register("meanflow")
class MeanFlow:
    """MeanFlow (see the module docstring): regress U_θ(z_a, a, b) onto the MeanFlow
    identity's target, sample in 1 to K jumps."""

    Params: ClassVar[type[Params]] = MeanFlowParams

    def __init__(self, params: MeanFlowParams):
        self.params = params
        self.conditional = params.class_conditional

    def draw(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor | None]:
        """(a, b, labels) for one batch: ordered times with the first rows at b = a, and the
        labels with the first Σ Bernoulli(label_drop) rows set to the null class (None when
        unconditional)."""
        x = batch.x_1
        n = x.shape[0]
        a, b = draw_interval(self.params.time_sampler, x, generator)
        # Step 1: b = a on the first ⌊(1 − ratio)·n⌋ rows (JAX: the first data_proportion rows).
        same = torch.arange(n, device=x.device) < leading_rows(n, 1.0 - self.params.ratio_r_neq_t)
        b = torch.where(same, a, b)
        if not self.conditional:
            return a, b, None
        if batch.labels is None:
            raise ValueError("meanflow: class_conditional needs class labels, and this batch has none (a dataset "
                             "with labels and its training split)")
        # Label dropout: the first Σ Bernoulli(p) rows (JAX cond_drop's position mask).
        drops = torch.rand(n, generator=generator, device=generator.device) < self.params.label_drop
        dropped = torch.arange(n, device=x.device) < int(drops.sum())
        labels = batch.labels.to(x.device)
        return a, b, torch.where(dropped, torch.full_like(labels, NULL_LABEL), labels)

    def guided_velocity(self, model: Callable, z_a: Tensor, a: Tensor, v: Tensor, labels: Tensor) -> Tensor:
        """ṽ_g = ω·ṽ + κ·U_θ(z_a, a, a | c) + (1 − ω − κ)·U_θ(z_a, a, a | ∅) on the rows with
        a label and a in the guidance interval; ṽ elsewhere. No gradient."""
        p = self.params
        if not p.guided:
            return v
        lo, hi = p.guidance_interval
        on = (labels != NULL_LABEL) & (a >= lo) & (a <= hi)
        omega = torch.where(on, p.omega, 1.0).to(v.dtype)
        kappa = torch.where(on, p.kappa, 0.0).to(v.dtype)
        with torch.no_grad():
            u_null = average_velocity(model, torch.full_like(labels, NULL_LABEL))(z_a, a, a)
            u_cond = average_velocity(model, labels)(z_a, a, a) if p.kappa != 0.0 else torch.zeros_like(v)
        omega, kappa = expand_as(omega, v), expand_as(kappa, v)
        return omega * v + kappa * u_cond + (1.0 - omega - kappa) * u_null

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        x_0, x_1 = batch.x_0, batch.x_1
        a, b, labels = self.draw(batch, generator)
        # Step 2: the point on the linear path and its conditional velocity.
        z_a = x_0 + expand_as(a, x_0) * (x_1 - x_0)
        v = x_1 - x_0
        if labels is not None:
            v = self.guided_velocity(model, z_a, a, v, labels)
        # Steps 3 and 4: U and the MeanFlow target.
        U, U_tgt = meanflow_target(average_velocity(model, labels), z_a, a, b, v, self.params.tangent)
        # Step 5: adaptive L2.
        return adaptive_l2(U - U_tgt, self.params.p, self.params.c)

    def sample(self, model: Callable, x_0: Tensor, solver: Solver, generator: torch.Generator,
               record: bool = False, labels: Tensor | None = None) -> Solution:
        return sample_average_velocity(average_velocity(model, labels if self.conditional else None), x_0, solver,
                                       record)
