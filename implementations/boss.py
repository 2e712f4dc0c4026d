"""BOSS phase 2: the straightening fine-tune ("redress") on Bellman-optimal segments.

Paper: Nguyen, Nguyen & Nguyen (2024). "Bellman Optimal Step-size Straightening of
Flow-Matching Models" (BOSS), ICLR 2024. https://arxiv.org/abs/2312.16414
Read in the official code (nguyenngocbaocmt02/BOSS at 0c170f9, ``ImageGeneration/``:
``finetune.py`` for the data and the loop, ``losses.py`` ``get_redress_loss_fn``, scripts
``gen_data.sh`` and ``boss.sh``); the paper's own text and tables were not read. See
design/methods-next.md §3.3. Phase 1 (the Bellman step sizes) is
``implementations/common/time_grids.py``.

Algorithm. The spec's ``teacher:`` is the pretrained flow, sampled with K_max-step uniform
Euler (``euler-100``: K_max = 100) with ``keep: path``, so each of its ``num_pairs`` (5000
in the paper) source noises comes with its whole fine trajectory x_{t_0}, ..., x_{t_K_max}.

    1. Schedule (once, before training; ``bind_teacher``): the jump costs c[i][j] of the
       first ``reference_samples`` (100) trajectories (``bellman_costs``) and the cheapest
       path of K = ``steps`` jumps through them (``bellman_path``): nodes
       0 = i_0 < ... < i_K = K_max, times τ_k = t_{i_k}.
    2. Loss (the code's ``l2``): for each row draw k uniformly in {0, ..., K−1} and regress
       the velocity at the segment's start onto the segment's chord slope,

           mean over pixels of ‖v_θ(x_{τ_k}, τ_k) − (x_{τ_{k+1}} − x_{τ_k})/(τ_{k+1} − τ_k)‖²,

       where x_{τ_k} are the teacher's recorded fine-reference states at the schedule's
       nodes; averaged over the batch.
    3. The whole network is fine-tuned, initialised from the teacher (``init: teacher``).

Sampling is Euler on the same K times (K NFE): the schedule is saved with the model in its
training statistics (``boss_schedules``), where the ``boss-K`` sampler (``euler-grid`` with
``grid: boss``) finds it, as the paper samples a straightened model on the schedule it was
fine-tuned on. Any other solver integrates the fine-tuned field as it would any flow's.

What is ours or unverified: the schedule is computed from the training pairs' first
trajectories instead of a separate 100-sample run (the paper's ``gen_data`` and Bellman
step are separate scripts, both from the same pretrained model and K_max = 100 Euler);
nothing is held out unless early stopping asks for it (the code masks some samples out as
an evaluation set); the ``lpips`` losses, LoRA (rank 4) fine-tuning and the warmup, clip
and EMA of the paper's configs are not here (the spec says which of the latter it sets).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from harness.interfaces import Batch, Params, Solution, Solver
from harness.lazy import lazy_import
from harness.limits import MAX_POINTS
from harness.registry import METHODS
from implementations.common.losses import MSE, AnyLoss
from implementations.common.time_grids import (
    MAX_K_MAX,
    bellman_costs,
    bellman_path,
    path_cost,
    uniform_nodes,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor, nn
else:
    np = lazy_import("numpy")
    torch = lazy_import("torch")

NEEDS_PATH = "boss_straighten trains on the teacher's recorded trajectories: add keep: path to teacher:"


class BossParams(Params):
    steps: int = Field(4, strict=True, ge=1, le=MAX_K_MAX,
                       description="K: the schedule's steps (the NFE it is sampled with), at most the teacher's K_max")
    reference_samples: int = Field(100, strict=True, ge=1, le=min(MAX_POINTS, 100_000),
                                   description="trajectories the Bellman costs are estimated from (the first of "
                                               "the teacher's pairs)")
    loss: AnyLoss = MSE(reduce="mean")  # the code's "l2": mean over pixels


@METHODS.register("boss_straighten")
class BossStraighten:
    """Fine-tune a flow's velocity onto the chord slopes of its own Bellman-optimal segments."""

    Params: ClassVar[type[Params]] = BossParams
    requires_teacher: ClassVar[bool] = True
    teacher_keep: ClassVar[str] = "path"

    def __init__(self, params: BossParams):
        self.params = params
        # Set by bind_teacher, read by loss only: sampling never depends on them.
        self.nodes: list[int] | None = None
        self.k_max: int | None = None

    def bind_teacher(self, pairs: Any) -> dict[str, Any]:
        """The Bellman schedule of K steps on the teacher's first trajectories; returns it as
        ``{"boss_schedules": {"K": {...}}}`` for the training statistics."""
        p = self.params
        if pairs.path is None or pairs.times is None:
            raise ValueError(NEEDS_PATH)
        times = pairs.times.to(torch.float64).numpy()
        k_max = len(times) - 1
        if times[0] != 0.0 or times[-1] != 1.0 or np.any(np.diff(times) <= 0):
            raise ValueError(f"boss_straighten needs the teacher's states from t = 0 to t = 1 on an increasing grid, "
                             f"got times {times[0]:g} .. {times[-1]:g} ({k_max} steps)")
        if p.steps > k_max:
            raise ValueError(f"params.steps = {p.steps} does not fit the teacher's fine grid of {k_max} steps: lower "
                             "steps or raise the teacher sampler's steps")
        n = len(pairs.path)
        if p.reference_samples > n:
            raise ValueError(f"params.reference_samples = {p.reference_samples} is more than the teacher's {n} "
                             "pairs: lower reference_samples or raise teacher.num_pairs")
        # (N, K_max+1, D) in float64: the costs are differences of nearby states
        states = pairs.path[:p.reference_samples].reshape(p.reference_samples, k_max + 1, -1).to(torch.float64).numpy()
        cost = bellman_costs(states, times)
        nodes, total = bellman_path(cost, p.steps)
        self.nodes, self.k_max = nodes, k_max
        uniform = uniform_nodes(k_max, p.steps)
        schedule = {"k_max": k_max, "times": [float(times[i]) for i in nodes], "nodes": nodes,
                    "reference_samples": p.reference_samples, "summed_cost": total,
                    # the uniform K-step grid's summed cost, where its nodes lie on the fine grid
                    "uniform_summed_cost": None if uniform is None else path_cost(cost, uniform)}
        return {"boss_schedules": {str(p.steps): schedule}}

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        if self.nodes is None:
            raise RuntimeError("boss_straighten has no schedule: bind_teacher(pairs) must see the teacher's pairs "
                               "before training")
        if batch.path is None or batch.times is None:
            raise ValueError(NEEDS_PATH)
        path, times = batch.path, batch.times  # (B, K_max+1, *dims), (K_max+1,)
        if path.shape[1] != self.k_max + 1:
            raise ValueError(f"the batch's paths have {path.shape[1]} states; the schedule was made on "
                             f"{self.k_max + 1}")
        b = path.shape[0]
        nodes = torch.tensor(self.nodes, device=path.device)
        # Step 1: a segment k ~ U{0, ..., K−1} per row, its ends i_k, i_{k+1} on the fine grid.
        k = torch.randint(self.params.steps, (b,), generator=generator, device=generator.device).to(path.device)
        i, j = nodes[k], nodes[k + 1]
        rows = torch.arange(b, device=path.device)
        x_i, x_j = path[rows, i], path[rows, j]  # (B, *dims)
        t_i, t_j = times[i], times[j]  # (B,)
        # Step 2: the chord slope of the teacher's trajectory over the segment.
        slope = (x_j - x_i) / (t_j - t_i).reshape(b, *[1] * (x_i.ndim - 1))
        # Step 3: regress the velocity at the segment's start onto it.
        return self.params.loss(model(x_i, t_i) - slope, batch.weights)

    def sample(self, model: Callable, x_0: Tensor, solver: Solver, generator: torch.Generator,
               record: bool = False) -> Solution:
        return solver.solve(model, x_0, 0.0, 1.0, record=record)
