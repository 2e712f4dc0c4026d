"""Sampling params (a method's settings that change sampling only) share one trained model;
companion samplers (sample_gap); self-calibrating samplers (ar-auto) in the records."""

from __future__ import annotations

import pytest

import harness.metrics  # noqa: F401
import implementations  # noqa: F401
from harness.building import build, configure, for_evaluation
from harness.evaluation import evaluate
from harness.plan import make_plan, sampling_params
from harness.resolve import load_suite
from tests.conftest import SPECS

GUIDED = ("methods=[{name: w0, extends: tarflow-digits-cond, params: {guidance: 0.0}}, "
          "{name: w2, extends: tarflow-digits-cond, params: {guidance: 2.0, guidance_rule: gaussian}}]")


def _plan(*overrides: str):
    return make_plan(load_suite("quickstart", ["datasets=[digits]", "samplers=[ar-sequential]", "seeds=[0, 1]",
                                               "metrics=[fd_digits, nfe]", "leaderboard.rank_by=nfe", *overrides], root=SPECS))


def test_methods_that_differ_in_sampling_params_share_one_training_and_keep_their_own_records():
    plan = _plan(GUIDED)
    assert len(plan.trainings) == 2  # one per seed, not one per (method, seed)
    for job in plan.trainings:
        evals = plan.evals[job.key]
        assert [e.train.method.name for e in evals] == ["w0", "w2"]
        assert len({e.key for e in evals}) == 2
        chosen = [sampling_params(e.spec["method"]) for e in evals]
        assert [(c["guidance"], c["guidance_rule"]) for c in chosen] == [(0.0, "linear"), (2.0, "gaussian")]
        assert set(chosen[0]) == {"guidance", "guidance_rule", "guidance_annealed", "attn_temp", "denoise"}
    # a training param still separates them
    plan = _plan("methods=[{name: a, extends: tarflow-digits-cond}, "
                 "{name: b, extends: tarflow-digits-cond, params: {label_drop: 0.2}}]")
    assert len(plan.trainings) == 4


def test_an_evaluation_samples_with_its_own_method_params():
    plan = _plan(GUIDED, "seeds=[0]")
    job = plan.trainings[0]
    built = build(job, configure(job.hardware))
    first, second = plan.evals[job.key]
    assert for_evaluation(built, first.train.method) is built
    other = for_evaluation(built, second.train.method)
    assert (other.method.params.guidance, other.method.params.guidance_rule) == (2.0, "gaussian")
    assert other.network is built.network and other.per_model is built.per_model and other.method.levels == 17


def _tarflow(sampler: str, *metrics: str):
    plan = make_plan(load_suite("quickstart", [
        "datasets=[digits]", "methods=[{name: tf, extends: tarflow-digits, network: {name: tarflow, grid: 4, "
        "channels: 16, blocks: 3, layers: 1, head_dim: 8}}]", f"samplers=[{sampler}]",
        f"metrics=[{', '.join(metrics)}]", "leaderboard.rank_by=nfe", "budget.eval.num_samples=48", "budget.eval.batch_size=16",
        "budget.eval.warmup=0", "budget.eval.repeats=1"], root=SPECS))
    job = plan.trainings[0]
    built = build(job, configure(job.hardware))
    import torch

    torch.manual_seed(0)
    for block in built.network.blocks:  # an untrained flow whose blocks depend on their inputs
        torch.nn.init.normal_(block.proj_out.weight, std=0.05)
    return plan.evals[job.key][0], built


def test_auto_records_its_calibration_and_every_block_its_passes():
    job, built = _tarflow("ar-auto", "nfe", "{name: sample_gap, params: {solver: ar-sequential, points: 32}}")
    status, metrics, measurements, _ = evaluate(job, built, built.network, {})
    assert status == "ok"
    calibration = measurements["sampler_calibration"]
    assert len(calibration["groups"]) == 3 and "CRM share" in calibration["reason"]
    assert calibration["crm_share"] == [round(b["crm_share"], 4)
                                        for b in measurements["diagnostics"]["gs_jacobi"]["blocks"]]
    stats = measurements["sampler_stats"]
    assert len(stats["passes_per_block"]) == 3
    assert metrics["nfe"] == pytest.approx(sum(stats["passes_per_block"]))  # one call per pass, no guidance
    assert 0 < metrics["sample_gap"] < 1e-4
    assert measurements["provenance"]["sample_gap"] == {
        "companion": {"solver": "ar-sequential", "params": {}, "points": 32, "norm": "max"}}


def test_a_sampler_against_itself_scores_zero_and_an_ode_solver_is_not_applicable():
    job, built = _tarflow("ar-sequential", "nfe", "{name: sample_gap, params: {solver: ar-sequential}}")
    _, metrics, _, _ = evaluate(job, built, built.network, {})
    assert metrics["sample_gap"] == 0.0
    job, built = _tarflow("ar-sequential", "nfe", "{name: sample_gap, params: {solver: euler, params: {steps: 4}}}")
    _, metrics, _, _ = evaluate(job, built, built.network, {})
    assert metrics["sample_gap"] is None


def test_few_euler_steps_are_farther_from_the_adaptive_solve_than_many():
    gaps = {}
    for steps in (2, 16):
        plan = make_plan(load_suite("quickstart", [
            "datasets=[moons]", "methods=[icfm]", f"samplers=[{{name: e{steps}, solver: euler, params: {{steps: {steps}}}}}]",
            "metrics=[{name: sample_gap, params: {solver: dopri5, params: {atol: 1.0e-7, rtol: 1.0e-7}, norm: rms}}]",
            "leaderboard.rank_by=sample_gap",
            "budget.eval.num_samples=200", "budget.eval.warmup=0", "budget.eval.repeats=1",
            "budget.train.steps=200"], root=SPECS))
        job = plan.trainings[0]
        built = build(job, configure(job.hardware))
        _, metrics, _, _ = evaluate(plan.evals[job.key][0], built, built.network, {})
        gaps[steps] = metrics["sample_gap"]
    assert 0 < gaps[16] < gaps[2]
