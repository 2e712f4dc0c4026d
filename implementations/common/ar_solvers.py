"""Samplers for autoregressive flows (TARFlow, STARFlow): inverting one affine
autoregressive block, sequentially, by Jacobi iteration, or by Gauss-Seidel-Jacobi.

Papers:
- Zhai et al. (2024). "Normalizing Flows are Capable Generative Models" (TARFlow): the
  sequential inverse with a KV cache. https://arxiv.org/abs/2412.06329
- Liu & Qin (2025). "Accelerate TarFlow Sampling with GS-Jacobi Iteration".
  https://arxiv.org/abs/2505.12849 (encoreus/GS-Jacobi_for_TarFlow)

Problem (Liu & Qin §3). Given a block's output z ∈ R^{N×D} (tokens in the block's order),
find x with x = F(x), where F_i(x) = z_i·exp(a_i(x_{<i})) + μ_i(x_{<i}) and F_0(x) = z_0.
The system is triangular: token i is exact once tokens < i are.

Algorithm (GS-Jacobi). Split the unknown tokens 1 … N−1 into G consecutive groups. For
each group [s, e) in order, starting from the initial guess, repeat at most J times:
    1. (a, μ) of tokens s … e−1 from one pass over positions s−1 … e−2, attending to the
       positions < s−1 through the KV cache (exact: earlier groups are done);
    2. x_{s:e} ← z_{s:e}·exp(a) + μ (optionally clamped to [−c, c]);
    3. stop when max |Δx_{s:e}| ≤ tolerance.
After j iterations the first j tokens of a group are exact, so J = group size (the
default) solves the block exactly. G = 1 is Jacobi (Song et al. 2021's parallel decoding
for one block); G = N−1 with J = 1 is the sequential inverse.

The pass that last ran a group leaves its keys and values in the cache for the next
group: exact when the group ran to its size, off by at most the tolerance otherwise.
Liu & Qin measure convergence by ‖Δx‖_F/(B·C); here it is the largest change of any
value, so the tolerance is in the data's units whatever the batch size.

NFE convention ("N"): N = ``Solution.steps`` = block passes, each one call at the network
(so at the harness's counter) on the batch's rows. A pass runs one block's K layers over
1 token (sequential) up to N−1 tokens (Jacobi), so passes of different samplers differ
in cost: compare their latency, not NFE alone. With classifier-free guidance each pass
carries the conditional and the unconditional rows together (2 rows per sample: the
harness reports NFE = 2N). The denoising step, where a method has one, adds T passes.
Per sample: sequential T·(N−1); Jacobi ≤ T·(N−1), iterations summed over blocks;
GS-Jacobi the iterations summed over groups and blocks.

Per-block settings are lists in **sampling order**: entry 0 is the block nearest the
noise, the first inverted (the last in the data → noise pass), as in Liu & Qin's
``num_GS_list``, ``max_jacobi_list`` and ``guess_list``. A single value applies to every block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import Field

from harness.interfaces import Params, Solution, Velocity
from harness.lazy import lazy_import
from harness.limits import MAX_DEPTH, MAX_SOLVER_STEPS
from harness.registry import SOLVERS

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")

Guess = Literal["latent", "zeros"]
Count = Annotated[int, Field(strict=True, ge=1, le=MAX_SOLVER_STEPS)]
PerBlockCount = Count | Annotated[list[Count], Field(min_length=1, max_length=MAX_DEPTH)]
PerBlockGuess = Guess | Annotated[list[Guess], Field(min_length=1, max_length=MAX_DEPTH)]
StopTolerance = Annotated[float, Field(ge=0.0, le=1.0)]
Clamp = Annotated[float, Field(gt=0.0, le=1e6)]

# params_fn(x, s): the raw (a, μ) of tokens s+1 … s+n from one pass over x (b, n, D), the
# tokens at positions s … s+n−1; the KV cache behind it holds positions < s.
ParamsFn = Callable[["Tensor", int], tuple["Tensor", "Tensor"]]


@dataclass(frozen=True)
class BlockPlan:
    """How to invert one block.

    Attributes:
        groups: token groups solved in order (Gauss-Seidel); at most one per unknown token.
        max_iterations: Jacobi iterations per group; None: the group's size (exact).
        tolerance: stop a group when no value moved by more than this.
        initial_guess: "latent": x⁰ = z; "zeros": x⁰ = [z_0, 0, …, 0] (Liu & Qin's guess 0 and 1).
        clamp: clamp each iterate to [−clamp, clamp] (Liu & Qin use 3), or None.
    """

    groups: int
    max_iterations: int | None = None
    tolerance: float = 0.0
    initial_guess: Guess = "latent"
    clamp: float | None = None


def group_bounds(unknowns: int, groups: int) -> list[tuple[int, int]]:
    """Tokens 1 … ``unknowns`` in ``groups`` consecutive [s, e) groups (at most one per
    token) whose sizes differ by at most one, the larger first."""
    groups = min(groups, unknowns)
    base, extra = divmod(unknowns, groups)
    bounds, s = [], 1
    for g in range(groups):
        e = s + base + (g < extra)
        bounds.append((s, e))
        s = e
    return bounds


def solve_block(params_fn: ParamsFn, z: Tensor, plan: BlockPlan) -> tuple[Tensor, int]:
    """Invert one block by GS-Jacobi (module docstring). z: (b, N, D) in the block's token
    order. Returns x (b, N, D) and the number of passes (calls of ``params_fn``)."""
    x = z.clone() if plan.initial_guess == "latent" else torch.zeros_like(z)
    x[:, 0] = z[:, 0]  # token 0: a = μ = 0
    passes = 0
    for s, e in group_bounds(z.shape[1] - 1, plan.groups):
        for _ in range(plan.max_iterations or e - s):
            # 1. one pass over positions s−1 … e−2 gives tokens s … e−1. An unconverged
            # iterate may overflow; it is fed as 0, because attention's 0·inf = NaN at a
            # masked position would spread to the tokens already exact.
            feed = torch.nan_to_num(x[:, s - 1:e - 1], nan=0.0, posinf=0.0, neginf=0.0)
            a, mu = params_fn(feed, s - 1)
            passes += 1
            # 2. the affine update
            new = z[:, s:e] * torch.exp(a) + mu
            if plan.clamp is not None:
                new = new.clamp(-plan.clamp, plan.clamp)
            # 3. converged?
            change = (new - x[:, s:e]).abs().max()
            x[:, s:e] = new
            if change <= plan.tolerance:
                break
    return x, passes


def per_block(value, index: int, num_blocks: int, name: str, sampler: str):
    """``value`` for the block ``index`` (sampling order): the value, or its list's entry."""
    if not isinstance(value, list):
        return value
    if len(value) != num_blocks:
        raise ValueError(f"{sampler}: {name} lists {len(value)} values, one per block, but the flow has "
                         f"{num_blocks} blocks")
    return value[index]


class AutoregressiveSolver:
    """Base of the ar-* samplers: a plan per block; no ODE to solve."""

    Params: ClassVar[type[Params]]
    nfe_convention: ClassVar[str] = "N"
    autoregressive: ClassVar[bool] = True  # for autoregressive-flow methods (tarflow) only
    name: ClassVar[str] = ""

    def __init__(self, params: Params):
        self.params = params
        self.passes: list[int] = []  # block passes per block (sampling order), summed over calls
        self.calls = 0

    def plan(self, index: int, num_blocks: int) -> BlockPlan:
        """The plan of the ``index``-th block inverted (0: nearest the noise)."""
        raise NotImplementedError

    def count(self, index: int, passes: int) -> None:
        """Tally the passes one call spent on block ``index`` (sampling order)."""
        if index == 0:
            self.calls += 1
        self.passes.extend([0] * (index + 1 - len(self.passes)))
        self.passes[index] += passes

    def stats(self) -> dict | None:
        """Mean block passes per sampling call, per block in sampling order (for the record)."""
        if not self.calls:
            return None
        return {"passes_per_block": [round(n / self.calls, 3) for n in self.passes], "calls": self.calls,
                "order": "sampling order (0: the block nearest the noise)"}

    def solve(self, velocity: Velocity, x_0: Tensor, t_0: float = 0.0, t_1: float = 1.0,
              record: bool = False) -> Solution:
        raise ValueError(f"sampler {self.name} inverts autoregressive flows (method tarflow) and has no ODE to "
                         "solve; a method that integrates a velocity field needs an ODE sampler (euler, midpoint, "
                         "heun, rk4, dopri5)")


class SequentialParams(Params):
    pass


@SOLVERS.register("ar-sequential")
class ARSequential(AutoregressiveSolver):
    """TARFlow's inverse: one token per pass, through the KV cache; T·(N−1) passes."""

    Params: ClassVar[type[Params]] = SequentialParams
    name = "ar-sequential"

    def plan(self, index: int, num_blocks: int) -> BlockPlan:
        return BlockPlan(groups=MAX_SOLVER_STEPS, max_iterations=1)


class JacobiParams(Params):
    max_iterations: PerBlockCount | None = Field(
        None, description="Jacobi iterations per block (a list: per block in sampling order); null: N−1, exact")
    tolerance: StopTolerance = Field(
        1e-6, description="stop iterating (a block, or a group) when no value moved by more than this")
    initial_guess: PerBlockGuess = Field("latent", description="latent: x⁰ = z; zeros: x⁰ = [z_0, 0, …, 0]")
    clamp: Clamp | None = Field(None, description="clamp each iterate to [−clamp, clamp] (Liu & Qin: 3)")


@SOLVERS.register("ar-jacobi")
class ARJacobi(AutoregressiveSolver):
    """All tokens of a block per pass, iterated to the tolerance or the cap."""

    Params: ClassVar[type[Params]] = JacobiParams
    name = "ar-jacobi"

    def plan(self, index: int, num_blocks: int) -> BlockPlan:
        p = self.params
        return BlockPlan(groups=1, max_iterations=per_block(p.max_iterations, index, num_blocks, "max_iterations",
                                                            self.name),
                         tolerance=p.tolerance, clamp=p.clamp,
                         initial_guess=per_block(p.initial_guess, index, num_blocks, "initial_guess", self.name))


class GSJacobiParams(JacobiParams):
    groups: PerBlockCount = Field(4, description="token groups per block, solved in order (a list: per block in "
                                                 "sampling order); 1 is Jacobi, N−1 sequential")
    max_iterations: PerBlockCount | None = Field(
        None, description="Jacobi iterations per group (a list: per block in sampling order); null: the "
                          "group's size, exact")


@SOLVERS.register("ar-gs-jacobi")
class ARGSJacobi(AutoregressiveSolver):
    """Liu & Qin's GS-Jacobi: groups in order, Jacobi inside each."""

    Params: ClassVar[type[Params]] = GSJacobiParams
    name = "ar-gs-jacobi"

    def plan(self, index: int, num_blocks: int) -> BlockPlan:
        p = self.params

        def pick(name: str):
            return per_block(getattr(p, name), index, num_blocks, name, self.name)

        return BlockPlan(groups=pick("groups"), max_iterations=pick("max_iterations"), tolerance=p.tolerance,
                         initial_guess=pick("initial_guess"), clamp=p.clamp)


class AutoParams(Params):
    dominant_share: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.3, description="a block whose share of the summed CRM is at least this is 'tough' (Liu & Qin: the "
                         "one or two blocks above about 30 %)")
    tough_groups: Count = Field(8, description="token groups of a tough block (Gauss-Seidel over them)")
    tough_max_iterations: Count | None = Field(
        None, description="Jacobi iterations per group of a tough block; null: the group's size, exact")
    max_iterations: Count | None = Field(
        None, description="Jacobi iterations of every other block (one group); null: N−1, exact")
    tolerance: StopTolerance = Field(1e-6, description="stop a block or group when no value moved by more than this")
    clamp: Clamp | None = Field(None, description="clamp each iterate to [−clamp, clamp] (Liu & Qin: 3)")


@SOLVERS.register("ar-auto")
class ARAuto(AutoregressiveSolver):
    """GS-Jacobi with per-block settings chosen from the model's own diagnostics (Liu &
    Qin §4's recipe, automated; the thresholds are ours): the harness hands the method's
    diagnostics of the trained model to :meth:`calibrate` before sampling. Blocks whose CRM
    share reaches ``dominant_share`` get ``tough_groups`` groups (and ``tough_max_iterations``);
    the others are solved by Jacobi over all tokens (``max_iterations``); each block starts
    from the initial guess with the smaller IGM. Without diagnostics (a latent flow) every
    block gets ``tough_groups`` groups, and the record says so."""

    Params: ClassVar[type[Params]] = AutoParams
    name = "ar-auto"

    def __init__(self, params: Params):
        super().__init__(params)
        self.blocks: list[BlockPlan] | None = None
        self.reason = "not calibrated"

    def calibrate(self, diagnostics: dict | None) -> dict:
        """Choose the per-block plans from ``diagnostics`` (a method's
        ``{"gs_jacobi": {"blocks": [{crm_share, best_initial_guess}, ...]}}`` in sampling
        order); returns the choice, for the record."""
        p = self.params
        blocks = ((diagnostics or {}).get("gs_jacobi") or {}).get("blocks")
        if not blocks or any(b.get("crm_share") is None for b in blocks):
            self.blocks = None
            self.reason = "no CRM diagnostics of this model: every block gets tough_groups groups"
            return {"reason": self.reason, "groups": p.tough_groups}
        plans = []
        for b in blocks:
            tough = b["crm_share"] >= p.dominant_share
            plans.append(BlockPlan(groups=p.tough_groups if tough else 1,
                                   max_iterations=p.tough_max_iterations if tough else p.max_iterations,
                                   tolerance=p.tolerance, clamp=p.clamp,
                                   initial_guess=b.get("best_initial_guess") or "latent"))
        self.blocks = plans
        self.reason = f"CRM share >= {p.dominant_share:g}: tough (groups); IGM: initial guess"
        return {"reason": self.reason, "order": "sampling order (0: the block nearest the noise)",
                "groups": [q.groups for q in plans], "max_iterations": [q.max_iterations for q in plans],
                "initial_guess": [q.initial_guess for q in plans],
                "crm_share": [round(b["crm_share"], 4) for b in blocks]}

    def plan(self, index: int, num_blocks: int) -> BlockPlan:
        p = self.params
        if self.blocks is None:
            return BlockPlan(groups=p.tough_groups, max_iterations=p.tough_max_iterations, tolerance=p.tolerance,
                             clamp=p.clamp)
        if len(self.blocks) != num_blocks:
            raise ValueError(f"ar-auto: calibrated for {len(self.blocks)} blocks, but the flow has {num_blocks}")
        return self.blocks[index]
