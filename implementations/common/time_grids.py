"""Euler sampling on any time grid, and BOSS's Bellman-optimal grids.

Paper: Nguyen, Nguyen & Nguyen (2024). "Bellman Optimal Step-size Straightening of
Flow-Matching Models" (BOSS), ICLR 2024. https://arxiv.org/abs/2312.16414
Read in the official code (nguyenngocbaocmt02/BOSS, ``ImageGeneration/sampling.py``:
``get_bellman_disc``, ``find_minimum_cost_path``); see design/methods-next.md §3.

Algorithm (BOSS phase 1, Bellman step sizes). On the fine grid t_k = k/K_max (K_max = 100)
integrate N = 100 source samples with K_max-step Euler of the trained field v_θ, recording
x_{t_k}. The cost of one Euler jump from node i to node j > i is the mean over samples of

    c[i][j] = ‖x_{t_i} + (t_j − t_i)·v_θ(x_{t_i}, t_i) − x_{t_j}‖²  (summed over dimensions),

a *local* error against the fine reference. Here v_θ(x_{t_i}, t_i) = (x_{t_{i+1}} − x_{t_i})/
(t_{i+1} − t_i), exactly, because the reference is itself Euler: the costs need no network
call beyond the reference's K_max. The schedule τ of K steps (K = NFE) is the path
0 = i_0 < i_1 < … < i_K = K_max minimising Σ_k c[i_k][i_{k+1}], found by dynamic
programming, O(K·K_max²): D_1(i) = c[i][K_max]; D_k(i) = min_{i<j<K_max} c[i][j] + D_{k−1}(j).

Sampling: Euler on the grid, z_{k+1} = z_k + (τ_{k+1} − τ_k)·v_θ(z_k, τ_k), one network call
per step (NFE = K). The ``euler-grid`` solver takes a uniform grid, a list of times from
the spec, or the BOSS grid of the trained model it samples. The BOSS grid is computed before
the first call through the harness's calibration (``calibration_needs``): the reference
flow of the method on the fine Euler grid, from source noise of a stream of its own (not
the evaluation's), and the cost matrix is cached as an artefact of the trained model, so
every K reuses it. A model straightened on BOSS segments (its training statistics carry
``boss_schedules``) is sampled on the schedule it was fine-tuned on, as the paper does.

Ours: the reference stream, the cache, and ties in the programme broken towards the
earliest next node.
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from harness.interfaces import Params, Solution, Velocity
from harness.lazy import lazy_import
from harness.limits import MAX_POINTS, SolverSteps
from harness.registry import SOLVERS

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor
else:
    np = lazy_import("numpy")
    torch = lazy_import("torch")

MAX_K_MAX = 2_000  # fine-grid intervals of the BOSS reference: the cost matrix is K_max² floats


def bellman_costs(states: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The jump costs c[i][j] (K_max+1, K_max+1) from a fine Euler reference.

    ``states``: (N, K_max+1, *dims), the reference trajectories at ``times`` (K_max+1,); an
    image's dimensions are flattened. Entries with j ≤ i are +inf (no jump backwards or in
    place)."""
    states = np.asarray(states, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    n_nodes = len(times)
    if states.ndim < 3 or states.shape[1] != n_nodes:
        raise ValueError(f"states must be (N, {n_nodes}, *dims), got {states.shape}")
    states = states.reshape(len(states), n_nodes, -1)
    velocity = np.diff(states, axis=1) / np.diff(times)[None, :, None]  # v at nodes 0..K_max-1
    cost = np.full((n_nodes, n_nodes), np.inf)
    for i in range(n_nodes - 1):
        span = times[i + 1:] - times[i]  # (J,)
        jump = states[:, i, None, :] + span[None, :, None] * velocity[:, i, None, :]
        cost[i, i + 1:] = ((jump - states[:, i + 1:, :]) ** 2).sum(axis=2).mean(axis=0)
    return cost


def bellman_path(cost: np.ndarray, steps: int) -> tuple[list[int], float]:
    """The nodes 0 = i_0 < … < i_K = last of the cheapest path of exactly K = ``steps``
    jumps through the cost matrix, and its summed cost."""
    last = len(cost) - 1
    if not 1 <= steps <= last:
        raise ValueError(f"{steps} steps do not fit a grid of {last} intervals")
    # best[k][i]: the cheapest k jumps from node i to the last node; nxt[k][i]: the first jump's end
    best = np.full((steps + 1, last + 1), np.inf)
    nxt = np.zeros((steps + 1, last + 1), dtype=np.int64)
    best[0, last] = 0.0
    for k in range(1, steps + 1):
        for i in range(last):
            total = cost[i, i + 1:] + best[k - 1, i + 1:]
            j = int(np.argmin(total))
            best[k, i], nxt[k, i] = total[j], i + 1 + j
    path = [0]
    for k in range(steps, 0, -1):
        path.append(int(nxt[k, path[-1]]))
    return path, float(best[steps, 0])


def path_cost(cost: np.ndarray, path: list[int]) -> float:
    return float(sum(cost[i, j] for i, j in pairwise(path)))


class GridParams(Params):
    steps: SolverSteps = 8
    grid: Literal["uniform", "boss", "times"] = "uniform"
    # grid "times": the grid itself, 0 = t_0 < ... < t_K = 1 (K = steps)
    times: list[float] | None = Field(None, max_length=100_001)
    # grid "boss": the fine reference's intervals and trajectories
    k_max: int = Field(100, strict=True, ge=2, le=MAX_K_MAX)
    reference_samples: int = Field(100, strict=True, ge=1, le=min(MAX_POINTS, 100_000))

    @model_validator(mode="after")
    def _check(self) -> GridParams:
        if self.grid == "times":
            t = self.times
            if t is None:
                raise ValueError("grid 'times' needs times: [0, ..., 1]")
            if len(t) != self.steps + 1:
                raise ValueError(f"times has {len(t)} entries; {self.steps} steps need {self.steps + 1}")
            if t[0] != 0.0 or t[-1] != 1.0 or any(b <= a for a, b in pairwise(t)):
                raise ValueError("times must increase strictly from 0 to 1")
        elif self.times is not None:
            raise ValueError(f"times is only read with grid 'times' (grid is {self.grid!r})")
        if self.grid == "boss" and self.steps > self.k_max:
            raise ValueError(f"{self.steps} steps do not fit BOSS's fine grid of k_max = {self.k_max}")
        return self


@SOLVERS.register("euler-grid")
class EulerGrid:
    """Euler on a time grid: uniform, the spec's list of times, or BOSS's (N NFE)."""

    Params: ClassVar[type[Params]] = GridParams
    nfe_convention: ClassVar[str] = "N"
    calibration_needs: ClassVar[tuple[str, ...]] = ("reference_flow", "train_stats", "cache")

    def __init__(self, params: GridParams):
        self.params = params
        self.times: list[float] | None = None
        if params.grid == "uniform":
            self.times = [i / params.steps for i in range(params.steps + 1)]
        elif params.grid == "times":
            self.times = list(params.times)

    def calibrate(self, reference_flow: Any, train_stats: dict | None, cache: Any) -> dict | None:
        """The BOSS grid of the trained model (for grid "boss"); returns it, for the record.

        ``reference_flow(steps, points)`` → (times, states (points, steps+1, D)) of the
        method's flow on the uniform Euler grid; ``cache(name, spec, make)`` keeps
        ``make()``'s arrays as an artefact of the trained model."""
        p = self.params
        if p.grid != "boss":
            return None
        schedules = (train_stats or {}).get("boss_schedules") or {}
        fitted = schedules.get(str(p.steps))
        if fitted is not None and fitted.get("k_max") == p.k_max:
            self.times = list(fitted["times"])
            return {"grid": "boss", "times": self.times, "source": "the schedule the model was straightened on",
                    "k_max": p.k_max}

        def make() -> dict[str, np.ndarray]:
            times, states = reference_flow(p.k_max, p.reference_samples)
            return {"cost": bellman_costs(states, np.asarray(times))}

        cost = cache("bellman-costs", {"k_max": p.k_max, "reference_samples": p.reference_samples}, make)["cost"]
        path, total = bellman_path(cost, p.steps)
        uniform = uniform_nodes(p.k_max, p.steps)
        self.times = [i / p.k_max for i in path]
        return {"grid": "boss", "times": self.times, "nodes": path, "k_max": p.k_max,
                "reference_samples": p.reference_samples, "source": "Bellman DP on the model's reference flow",
                "summed_cost": total,
                # the uniform K-step grid's summed cost, where its nodes lie on the fine grid
                "uniform_summed_cost": None if uniform is None else path_cost(cost, uniform)}

    def grid(self) -> list[float]:
        if self.times is None:
            raise RuntimeError("the BOSS grid is computed from the trained model: calibrate the solver first")
        return self.times

    def solve(self, velocity: Velocity, x_0: Tensor, t_0: float = 0.0, t_1: float = 1.0,
              record: bool = False) -> Solution:
        if (t_0, t_1) != (0.0, 1.0):
            raise ValueError("euler-grid integrates from t = 0 to t = 1")
        times = self.grid()
        grid = torch.tensor(times, dtype=torch.float64).to(device=x_0.device, dtype=x_0.dtype)
        x = x_0
        trajectory = [x] if record else []
        for i in range(len(times) - 1):
            x = x + (grid[i + 1] - grid[i]) * velocity(x, grid[i])
            if record:
                trajectory.append(x)
        return Solution(x=x, steps=len(times) - 1, times=list(times) if record else [], trajectory=trajectory)


def uniform_nodes(k_max: int, steps: int) -> list[int] | None:
    """The uniform grid's nodes on the fine grid, when K divides it (else None)."""
    return [i * k_max // steps for i in range(steps + 1)] if k_max % steps == 0 else None

