"""TARFlow/STARFlow additions: the ar-auto sampler and its calibration, per-block pass
counts, the data's grey levels, the token grid, STARFlow's latent-norm penalty, and the
companion-sampler metric (sample_gap)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

import implementations  # noqa: F401  (fills the registries)
from harness.interfaces import Batch
from harness.metrics import CompanionParams, sample_gap_of
from harness.registry import DATASETS
from implementations.common.ar_solvers import BlockPlan
from implementations.datasets.levels import grey_levels
from implementations.tarflow import block_diagnostics
from tests.implementations.test_tarflow import method, network, sampler

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def diagnostics(shares: list[float], guesses: list[str]) -> dict:
    return {"gs_jacobi": {"blocks": [{"crm_share": s, "best_initial_guess": g} for s, g in zip(shares, guesses)]}}


# --- ar-auto --------------------------------------------------------------------------


def test_auto_gives_groups_to_the_dominant_blocks_and_the_better_guess():
    auto = sampler("ar-auto", dominant_share=0.3, tough_groups=5, max_iterations=7)
    chosen = auto.calibrate(diagnostics([0.6, 0.1, 0.3], ["latent", "zeros", "zeros"]))
    assert chosen["groups"] == [5, 1, 5] and chosen["initial_guess"] == ["latent", "zeros", "zeros"]
    assert auto.plan(0, 3) == BlockPlan(groups=5, max_iterations=None, tolerance=1e-6, initial_guess="latent")
    assert auto.plan(1, 3) == BlockPlan(groups=1, max_iterations=7, tolerance=1e-6, initial_guess="zeros")
    with pytest.raises(ValueError, match="calibrated for 3 blocks, but the flow has 4"):
        auto.plan(0, 4)


def test_auto_without_diagnostics_says_so_and_segments_every_block():
    auto = sampler("ar-auto", tough_groups=3)
    chosen = auto.calibrate(None)
    assert "no CRM diagnostics" in chosen["reason"]
    assert auto.plan(2, 4) == BlockPlan(groups=3, max_iterations=None, tolerance=1e-6)
    # an overflowing CRM (None) is no ranking either
    assert "no CRM" in sampler("ar-auto").calibrate(diagnostics([None, 0.5], ["latent", "latent"]))["reason"]


def test_auto_calibrated_on_a_model_inverts_it_exactly():
    net = network()
    x = torch.randn(32, 1, 8, 8, generator=gen(1), dtype=F64)
    auto = sampler("ar-auto", tolerance=0.0, dominant_share=0.2, tough_groups=4)
    auto.calibrate(method().diagnostics(net, x))
    z, _ = net(x)
    out = method().sample(net, z, auto, gen(0))
    torch.testing.assert_close(out.x, x, atol=1e-10, rtol=0)
    stats = auto.stats()
    assert stats["calls"] == 1 and len(stats["passes_per_block"]) == 3
    assert sum(stats["passes_per_block"]) == out.steps


def test_pass_counts_per_block_are_means_over_calls():
    net = network()
    seq = sampler("ar-sequential")
    z = torch.randn(4, 1, 8, 8, generator=gen(2), dtype=F64)
    for _ in range(3):
        method().sample(net, z, seq, gen(0))
    assert seq.stats() == {"passes_per_block": [15.0, 15.0, 15.0], "calls": 3,
                           "order": "sampling order (0: the block nearest the noise)"}
    assert sampler("ar-jacobi").stats() is None


def test_jacobi_passes_follow_crm_on_a_block_with_strong_dependence():
    """A block whose outputs depend strongly on the earlier tokens ranks first by CRM and
    needs the most Jacobi passes (Liu & Qin's reading of CRM)."""
    net = network(weight_std=0.002)
    nn.init.normal_(net.blocks[0].proj_out.weight, std=0.3)  # forward block 0: sampling index 2
    x = torch.randn(64, 1, 8, 8, generator=gen(3), dtype=F64)
    shares = [b["crm_share"] for b in block_diagnostics(net, x)]
    jac = sampler("ar-jacobi", tolerance=1e-8)
    method().sample(net, net(x)[0], jac, gen(0))
    passes = jac.stats()["passes_per_block"]
    assert max(range(3), key=shares.__getitem__) == 2 == max(range(3), key=passes.__getitem__), (shares, passes)


# --- the data's grey levels and the token grid ------------------------------------------


def test_levels_come_from_the_data_unless_the_spec_sets_them():
    digits = DATASETS.get("digits")
    assert grey_levels(digits(digits.Params())) == 17
    assert grey_levels(digits(digits.Params(resolution=16))) == 256
    assert grey_levels(type("Declared", (), {"levels": 5})()) == 5
    m = method()
    m.bind_data(digits(digits.Params()))
    assert m.levels == 17 and "17 grey levels" in m.likelihood_convention
    m = method(levels=5)
    m.bind_data(digits(digits.Params()))
    assert m.levels == 5
    m = method()
    m.bind_data(object())  # 2-D points or a latent space: no levels
    assert m.levels is None and "continuous" in m.likelihood_convention
    net = network((2,), blocks=2)
    x = torch.tensor([[0.1, -0.3], [0.5, 0.2]], dtype=F64)
    torch.testing.assert_close(m.log_likelihood(net, x, gen(0)), m.log_density(net, x))
    with pytest.raises(ValueError, match="no grey levels"):
        method(noise="uniform").loss(net, Batch(x_0=x, x_1=x), gen(0))


def test_grid_fixes_the_token_count_whatever_the_resolution():
    for side, patch in ((8, 2), (16, 4)):
        net = network((1, side, side), grid=4)
        assert (net.p, net.num_tokens, net.token_dim) == (patch, 16, patch * patch)
        x = torch.randn(2, 1, side, side, generator=gen(0), dtype=F64)
        torch.testing.assert_close(net.unpatchify(net.patchify(x)), x, atol=0, rtol=0)
    with pytest.raises(ValueError, match="grid 3 needs square images"):
        network((1, 8, 8), grid=3)


# --- STARFlow's latent-norm penalty ---------------------------------------------------------


def test_latent_norm_penalty_adds_the_mean_square_of_the_intermediate_outputs():
    net = network((1, 4, 4))
    x = torch.randn(6, 1, 4, 4, generator=gen(1), dtype=F64)
    batch = Batch(x_0=x, x_1=x)
    plain = method(sigma=0.1).loss(net, batch, gen(3))
    penalised = method(sigma=0.1, latent_norm_penalty=0.01).loss(net, batch, gen(3))
    tokens = net.patchify(x + 0.1 * torch.randn(x.shape, generator=gen(3), dtype=F64))
    squares = []
    for block in net.blocks[:-1]:
        tokens, _ = block(tokens)
        squares.append(tokens.square().mean())
    torch.testing.assert_close(penalised, plain + 0.01 * sum(squares), atol=1e-12, rtol=0)


# --- sample_gap -----------------------------------------------------------------------------


def test_sample_gap_norms_and_params():
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    b = np.array([[0.0, 1.5], [2.0, 1.0]])
    assert sample_gap_of(a, b, "max") == 2.0
    assert sample_gap_of(a, b, "rms") == pytest.approx(np.sqrt((0.25 + 4.0) / 4))
    assert CompanionParams(solver="ar-sequential").points == 500
    with pytest.raises(ValidationError, match="'nope' is not registered"):
        CompanionParams(solver="nope")
    with pytest.raises(ValidationError, match="groups"):
        CompanionParams(solver="ar-gs-jacobi", params={"groups": 0})
