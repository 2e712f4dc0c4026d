"""Euler on a time grid and BOSS's Bellman-optimal step sizes: the programme against brute
force, the jump costs against their definition, grids validated, and a BOSS sampler
calibrated on a trained model through the harness (artefact reused, NFE counted)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import harness.metrics  # noqa: F401
import implementations  # noqa: F401
from harness.artefacts import ArtefactStore
from harness.building import build, configure
from harness.evaluation import evaluate
from harness.plan import make_plan
from harness.resolve import load_suite
from implementations.common.solvers import Euler, FixedStepParams
from implementations.common.time_grids import (
    EulerGrid,
    GridParams,
    bellman_costs,
    bellman_path,
    path_cost,
)
from tests.conftest import SPECS


def brute_force(cost: np.ndarray, steps: int) -> float:
    last = len(cost) - 1
    return min(path_cost(cost, [0, *inner, last]) for inner in itertools.combinations(range(1, last), steps - 1))


@settings(max_examples=150, deadline=None)
@given(k_max=st.integers(1, 8), data=st.data())
def test_the_programme_finds_the_brute_force_optimum(k_max, data):
    steps = data.draw(st.integers(1, k_max))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    cost = np.triu(rng.exponential(size=(k_max + 1, k_max + 1)), k=1)
    cost[np.tril_indices(k_max + 1)] = np.inf
    path, total = bellman_path(cost, steps)
    assert path[0] == 0 and path[-1] == k_max and len(path) == steps + 1
    assert all(b > a for a, b in itertools.pairwise(path))
    assert total == pytest.approx(path_cost(cost, path), rel=1e-12)
    assert total == pytest.approx(brute_force(cost, steps), rel=1e-12)


def test_the_programme_takes_every_node_when_steps_equal_the_grid_and_refuses_more():
    cost = bellman_costs(np.random.default_rng(0).normal(size=(5, 7, 3)), np.linspace(0, 1, 7))
    assert bellman_path(cost, 6)[0] == list(range(7))
    with pytest.raises(ValueError, match="7 steps do not fit a grid of 6 intervals"):
        bellman_path(cost, 7)


def test_jump_costs_follow_their_definition():
    rng = np.random.default_rng(1)
    times = np.array([0.0, 0.1, 0.35, 0.6, 1.0])  # an uneven fine grid
    states = rng.normal(size=(4, 5, 2))
    cost = bellman_costs(states, times)
    for i in range(4):
        v = (states[:, i + 1] - states[:, i]) / (times[i + 1] - times[i])
        assert cost[i, i + 1] == pytest.approx(0.0, abs=1e-12)  # one fine step is the reference itself
        for j in range(i + 1, 5):
            jump = states[:, i] + (times[j] - times[i]) * v
            assert cost[i, j] == pytest.approx(np.mean(np.sum((jump - states[:, j]) ** 2, axis=1)), rel=1e-12)
        assert np.all(np.isinf(cost[i, :i + 1]))


def test_image_states_cost_what_their_flattened_states_cost():
    times = np.linspace(0, 1, 6)
    images = np.random.default_rng(3).normal(size=(4, 6, 1, 3, 3))
    assert np.array_equal(bellman_costs(images, times), bellman_costs(images.reshape(4, 6, 9), times))


def test_a_straight_flow_costs_nothing_and_a_curved_one_gets_its_steps_where_it_bends():
    times = np.linspace(0, 1, 101)
    x_0, x_1 = np.random.default_rng(2).normal(size=(2, 8, 3))
    straight = x_0[:, None] + times[None, :, None] * (x_1 - x_0)[:, None]
    assert np.nanmax(np.where(np.isinf(bellman_costs(straight, times)), 0, bellman_costs(straight, times))) < 1e-20
    # still until t = 0.6, then x(t) = x_0 + (t - 0.6)^2 x_1: all the bending is late
    bend = np.clip(times - 0.6, 0, None) ** 2
    curved = x_0[:, None] + bend[None, :, None] * x_1[:, None]
    cost = bellman_costs(curved, times)
    path, total = bellman_path(cost, 4)
    assert path[1] >= 60  # a single jump across the still part, the other three where it bends
    assert total < path_cost(cost, [0, 25, 50, 75, 100])


def test_a_uniform_grid_is_euler_and_a_given_grid_is_followed_with_one_call_per_step():
    velocity_calls = []

    def velocity(x, t):
        velocity_calls.append(float(t))
        return torch.sin(3 * x) + t

    x_0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    uniform = EulerGrid(GridParams(steps=5)).solve(velocity, x_0).x
    assert torch.equal(uniform, Euler(FixedStepParams(steps=5)).solve(velocity, x_0).x)
    velocity_calls.clear()
    times = [0.0, 0.5, 0.9, 1.0]
    solution = EulerGrid(GridParams(grid="times", steps=3, times=times)).solve(velocity, x_0, record=True)
    assert velocity_calls == times[:-1] and solution.steps == 3 and solution.times == times
    x = x_0
    for a, b in itertools.pairwise(times):
        x = x + (b - a) * velocity(x, torch.tensor(a, dtype=torch.float64))
    assert torch.allclose(solution.x, x, rtol=0, atol=1e-15)


@pytest.mark.parametrize(("params", "message"), [
    ({"grid": "times", "steps": 2}, "grid 'times' needs times"),
    ({"grid": "times", "steps": 2, "times": [0.0, 1.0]}, "times has 2 entries; 2 steps need 3"),
    ({"grid": "times", "steps": 2, "times": [0.0, 0.7, 0.5]}, "increase strictly from 0 to 1"),
    ({"grid": "times", "steps": 2, "times": [0.1, 0.5, 1.0]}, "increase strictly from 0 to 1"),
    ({"grid": "uniform", "times": [0.0, 1.0]}, "only read with grid 'times'"),
    ({"grid": "boss", "steps": 8, "k_max": 4}, "do not fit BOSS's fine grid of k_max = 4"),
    ({"grid": "boss", "k_max": 1_000_000}, "less than or equal to 2000"),
])
def test_bad_grids_are_refused(params, message):
    with pytest.raises(ValidationError, match=message):
        GridParams.model_validate(params)


def test_a_boss_grid_needs_its_model():
    with pytest.raises(RuntimeError, match="calibrate the solver first"):
        EulerGrid(GridParams(grid="boss", steps=2)).solve(lambda x, t: x, torch.zeros(2, 2))


def test_a_straightened_model_is_sampled_on_the_schedule_it_was_fine_tuned_on():
    solver = EulerGrid(GridParams(grid="boss", steps=2))
    stats = {"boss_schedules": {"2": {"k_max": 100, "times": [0.0, 0.83, 1.0]}}}
    calibration = solver.calibrate(reference_flow=None, train_stats=stats, cache=None)
    assert solver.grid() == [0.0, 0.83, 1.0] and calibration["source"] == "the schedule the model was straightened on"


def _boss_plan(method: str, samplers: str):
    return make_plan(load_suite("quickstart", [
        "datasets=[moons]", f"methods=[{method}]", f"samplers=[{samplers}]", "metrics=[w2, nfe]",
        "leaderboard.rank_by=w2", "budget.eval.num_samples=64", "budget.eval.warmup=0", "budget.eval.repeats=1"],
        root=SPECS))


def test_boss_calibrates_on_the_trained_model_once_and_samples_with_k_calls(tmp_path):
    plan = _boss_plan("icfm", "{name: boss-2, solver: euler-grid, params: {grid: boss, steps: 2, k_max: 20, "
                      "reference_samples: 32}}, {name: boss-4, solver: euler-grid, params: {grid: boss, steps: 4, "
                      "k_max: 20, reference_samples: 32}}")
    job = plan.trainings[0]
    built = build(job, configure(job.hardware))
    store = ArtefactStore(tmp_path)
    results = [evaluate(e, built, built.network, {}, store) for e in plan.evals[job.key]]
    for (status, metrics, measurements, _), steps in zip(results, (2, 4)):
        assert status == "ok" and metrics["nfe"] == steps
        calibration = measurements["sampler_calibration"]
        assert calibration["grid"] == "boss" and len(calibration["times"]) == steps + 1
        assert calibration["times"] == [i / 20 for i in calibration["nodes"]]
        assert calibration["summed_cost"] <= calibration["uniform_summed_cost"] + 1e-12
    cached = sorted(p.name for p in (tmp_path / "calibrations").iterdir())
    assert len(cached) == 2 and cached[0].endswith(".json") and cached[1].endswith(".npz")  # one cost matrix for both K
    # the cached costs are what the reference flow gives
    again = evaluate(plan.evals[job.key][0], built, built.network, {}, store)
    assert again[2]["sampler_calibration"] == results[0][2]["sampler_calibration"]


def test_an_average_velocity_model_jumps_along_a_given_grid():
    plan = _boss_plan("meanflow", "{name: g3, solver: euler-grid, params: {grid: times, steps: 3, times: [0.0, 0.2, 0.7, 1.0]}}")
    job = plan.trainings[0]
    built = build(job, configure(job.hardware))
    seen = []

    def spy(module, args, kwargs):
        a, b = args[1], args[2]  # u(z, a, b, y=labels)
        seen.append((round(float(a.flatten()[0]), 6), round(float(b.flatten()[0]), 6)))

    handle = built.network.register_forward_pre_hook(spy, with_kwargs=True)
    solver = EulerGrid(GridParams(grid="times", steps=3, times=[0.0, 0.2, 0.7, 1.0]))
    with torch.no_grad():
        built.method.sample(built.network, torch.zeros(4, 2), solver, torch.Generator())
    handle.remove()
    assert seen == [(0.0, 0.2), (0.2, 0.7), (0.7, 1.0)]
    status, metrics, _, _ = evaluate(plan.evals[job.key][0], built, built.network, {})
    assert status == "ok" and metrics["nfe"] == 3


def test_a_one_step_map_is_not_calibrated_and_samples_in_one_call():
    plan = _boss_plan("{name: d, extends: rectified-flow-distilled, teacher: {method: rectified-flow, num_pairs: 64}}",
                      "boss-4")
    job = next(j for j in plan.trainings if plan.evals.get(j.key))
    built = build(job, configure(job.hardware))
    status, metrics, measurements, _ = evaluate(plan.evals[job.key][0], built, built.network, {})
    assert status == "ok" and metrics["nfe"] == 1
    assert "one-step map" in measurements["sampler_calibration"]["not applicable"]


def test_a_solver_that_asks_for_what_the_harness_does_not_offer_is_told_what_it_offers(monkeypatch):
    plan = _boss_plan("icfm", "boss-2")
    job = plan.trainings[0]
    built = build(job, configure(job.hardware))
    monkeypatch.setattr(EulerGrid, "calibration_needs", ("reference_flow", "weather"))
    with pytest.raises(ValueError, match="asks for weather to calibrate; the harness offers diagnostics, "
                                         "reference_flow, train_stats, cache"):
        evaluate(plan.evals[job.key][0], built, built.network, {})
