"""TARFlow: the network's exact inverse under every sampler (per block and whole, with
classes too), log-determinants against autograd, Jacobi and GS-Jacobi against the
sequential inverse, exact likelihoods at initialisation, the bits-per-dimension
convention by hand, guidance, denoising, the norm placements, STARFlow's deep-shallow
option, and the errors that keep ODE samplers and autoregressive flows apart.

Every numeric check runs in float64 with an explicit tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import implementations  # noqa: F401  (fills the registries)
from harness.interfaces import Batch
from harness.measure import NFECounter
from harness.registry import METHODS, NETWORKS, SOLVERS
from implementations.common.ar_solvers import BlockPlan, group_bounds, solve_block
from implementations.networks.blocks import MIX_POST_FRACTION, Norm, Residual, layer_placement
from implementations.tarflow import bits_per_dim, guide

F64 = torch.float64
EXACT = 1e-10  # float64 round-off through a few blocks of a tiny transformer


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def network(shape=(1, 8, 8), weight_std: float | None = 0.05, seed: int = 0, **params):
    """A tiny float64 TARFlow; ``weight_std`` gives the zero-initialised output layers
    random weights, so that every block depends on its inputs."""
    settings = {"patch_size": 2, "channels": 16, "blocks": 3, "layers": 2, "head_dim": 8, **params}
    cls = NETWORKS.get("tarflow")
    torch.manual_seed(seed)
    net = cls(cls.Params(**settings), shape).to(F64)
    if weight_std is not None:
        for block in net.blocks:
            nn.init.normal_(block.proj_out.weight, std=weight_std)
    return net.eval()


def method(**params):
    cls = METHODS.get("tarflow")
    return cls(cls.Params(**params))


def sampler(name: str, **params):
    cls = SOLVERS.get(name)
    return cls(cls.Params(**params))


def randn(*shape, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=F64)


# Exact settings of each strategy (tolerance 0: iterate to the cap, which is exact).
STRATEGIES = [("ar-sequential", {}), ("ar-jacobi", {"tolerance": 0.0}),
              ("ar-gs-jacobi", {"groups": 4, "tolerance": 0.0}),
              ("ar-gs-jacobi", {"groups": [3, 1, 15], "tolerance": 0.0, "initial_guess": ["zeros", "latent", "zeros"]})]
LABELS = torch.tensor([0, 2, -1, 1])  # -1: a dropped label (the mean class embedding)


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


def test_patch_tokens_hold_their_pixels():
    net = network((3, 8, 8), patch_size=4)
    assert (net.num_tokens, net.token_dim) == (4, 48)
    x = randn(2, 3, 8, 8)
    tokens = net.patchify(x)
    # token 1 is the top-right patch, channel-major (C, p, p) as torch's unfold
    torch.testing.assert_close(tokens[:, 1], x[:, :, :4, 4:].reshape(2, 48), atol=0, rtol=0)
    assert torch.equal(net.unpatchify(tokens), x)
    vec = network((5,))
    assert (vec.num_tokens, vec.token_dim) == (5, 1)
    assert torch.equal(vec.unpatchify(vec.patchify(randn(3, 5))), randn(3, 5))


def test_refused_shapes_and_labels():
    cls = NETWORKS.get("tarflow")
    for shape in [(1,), (3, 2), (1, 8, 6), (1, 2, 2)]:
        with pytest.raises(ValueError, match="tarflow: needs"):
            cls.check_shape(cls.Params(patch_size=2), shape)
    with pytest.raises(ValidationError, match="head_dim"):
        cls.Params(channels=20, head_dim=8)
    with pytest.raises(ValueError, match="without num_classes"):
        network()(randn(2, 1, 8, 8), torch.tensor([0, 1]))


def test_zero_initialised_blocks_are_fixed_affine_maps():
    """At initialisation (output weight 0) each block is z = (x − μ)·exp(−a) with (a, μ) the
    output bias for every token but the first of its order, which passes unchanged."""
    net = network(weight_std=None)
    tokens = randn(3, net.num_tokens, net.token_dim)
    for k, block in enumerate(net.blocks):
        a, mu = block.proj_out.bias.detach().chunk(2)
        z, logdet = net(tokens, block=k)
        first = -1 if block.flip else 0  # the first token of this block's order
        expected = (tokens - mu) * torch.exp(-a)
        expected[:, first] = tokens[:, first]
        torch.testing.assert_close(z, expected, atol=1e-14, rtol=0)
        torch.testing.assert_close(logdet, torch.full((3,), -(net.num_tokens - 1) * a.sum().item(), dtype=F64),
                                   atol=1e-12, rtol=0)


@pytest.mark.parametrize("conditional", [False, True])
def test_logdet_equals_autograd(conditional):
    """4 tokens × 2 dims: the block's and the flow's log|det J| from the full Jacobian."""
    net = network((2, 2, 2), patch_size=1, weight_std=0.1, num_classes=3 if conditional else None)
    x = randn(3, 2, 2, 2)
    y = torch.tensor([2, -1, 0]) if conditional else None
    for i in range(3):
        yi = None if y is None else y[i:i + 1]
        jac = torch.autograd.functional.jacobian(lambda v: net(v[None], yi)[0].reshape(-1), x[i])
        torch.testing.assert_close(torch.linalg.slogdet(jac.reshape(8, 8))[1], net(x, y)[1][i], atol=1e-12, rtol=0)
        tokens = net.patchify(x[i:i + 1])[0]
        for k in range(net.num_blocks):
            jac = torch.autograd.functional.jacobian(lambda v: net(v[None], yi, block=k)[0].reshape(-1), tokens)
            _, logdet = net(tokens[None], yi, block=k)
            torch.testing.assert_close(torch.linalg.slogdet(jac.reshape(8, 8))[1], logdet[0], atol=1e-12, rtol=0)
            assert abs(logdet.item()) > 1e-3  # not trivially zero


# --------------------------------------------------------------------------------------
# Inversion: every strategy, per block and whole
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,params", STRATEGIES)
@pytest.mark.parametrize("conditional", [False, True])
def test_every_block_inverts(name, params, conditional):
    net = network(num_classes=3 if conditional else None)
    m = method(class_conditional=conditional)
    y = LABELS if conditional else None
    tokens = randn(4, net.num_tokens, net.token_dim)
    solver = sampler(name, **params)
    with torch.no_grad():
        for k, block in enumerate(net.blocks):
            z, _ = net(tokens, y, block=k)
            x, passes = solve_block(m.block_params(net, net, k, y), block.permute(z),
                                    solver.plan(net.num_blocks - 1 - k, net.num_blocks))
            torch.testing.assert_close(block.permute(x), tokens, atol=EXACT, rtol=0)
            assert 1 <= passes <= net.num_tokens - 1


@pytest.mark.parametrize("name,params", STRATEGIES)
@pytest.mark.parametrize("conditional", [False, True])
def test_the_flow_inverts(name, params, conditional):
    net = network(num_classes=3 if conditional else None)
    m = method(class_conditional=conditional)
    x = randn(4, 1, 8, 8)
    y = LABELS if conditional else None
    counter = NFECounter(net)
    with torch.no_grad():
        z, _ = net(x, y)
        sol = m.sample(counter, z, sampler(name, **params), gen(0), labels=y)
    torch.testing.assert_close(sol.x, x, atol=EXACT, rtol=0)
    assert sol.x.dtype == F64
    # NFE: one call per block pass, on the batch's rows
    assert counter.calls == sol.steps and counter.evaluations == 4 * sol.steps
    if name == "ar-sequential":
        assert sol.steps == net.num_blocks * (net.num_tokens - 1)


def test_jacobi_with_as_many_iterations_as_tokens_is_the_sequential_inverse():
    net = network(weight_std=0.1)
    m = method()
    n = net.num_tokens
    with torch.no_grad():
        z, _ = net(randn(5, 1, 8, 8))  # a random model's inverse of N(0, I) noise overflows; this one does not
        seq = m.sample(net, z, sampler("ar-sequential"), gen(0))
        jac = m.sample(net, z, sampler("ar-jacobi", max_iterations=n, tolerance=0.0), gen(0))
        gs1 = m.sample(net, z, sampler("ar-gs-jacobi", groups=n - 1), gen(0))
        gs = m.sample(net, z, sampler("ar-gs-jacobi", groups=3, tolerance=0.0), gen(0))
    assert torch.isfinite(seq.x).all()
    torch.testing.assert_close(jac.x, seq.x, atol=1e-12, rtol=0)
    assert torch.equal(gs1.x, seq.x) and gs1.steps == seq.steps == net.num_blocks * (n - 1)
    torch.testing.assert_close(gs.x, seq.x, atol=1e-12, rtol=0)
    assert jac.steps <= net.num_blocks * n


def test_jacobi_stops_at_its_tolerance_or_its_cap():
    net = network()
    m = method()
    z = randn(5, 1, 8, 8)
    with torch.no_grad():
        exact = m.sample(net, z, sampler("ar-sequential"), gen(0))
        loose = m.sample(net, z, sampler("ar-jacobi", tolerance=1e-4), gen(0))
        capped = m.sample(net, z, sampler("ar-jacobi", max_iterations=[1, 2, 3], tolerance=0.0), gen(0))
    assert loose.steps < exact.steps
    torch.testing.assert_close(loose.x, exact.x, atol=1e-3, rtol=0)
    assert capped.steps == 6
    assert not torch.allclose(capped.x, exact.x, atol=1e-6)


def test_group_bounds():
    assert group_bounds(7, 3) == [(1, 4), (4, 6), (6, 8)]
    assert group_bounds(3, 10) == [(1, 2), (2, 3), (3, 4)]  # at most one group per token
    assert group_bounds(5, 1) == [(1, 6)]


def test_solve_block_on_a_known_triangular_system():
    """a_i = log 2 and μ_i = Σ_{j<i} x_j, so x_i = 2·z_i + Σ_{j<i} x_j (x_0 = z_0), under every plan."""
    z = randn(2, 6, 1)
    expected = torch.zeros_like(z)
    for i in range(6):
        expected[:, i] = z[:, i] * (2.0 if i else 1.0) + expected[:, :i].sum(dim=1)
    for plan in [BlockPlan(groups=5, max_iterations=1), BlockPlan(groups=1), BlockPlan(groups=2),
                 BlockPlan(groups=2, initial_guess="zeros")]:
        seen = torch.zeros_like(z)  # the KV cache's stand-in: the latest value fed at each position
        calls: list[int] = []

        def params_fn(x, start, seen=seen, calls=calls):
            calls.append(start)
            seen[:, start:start + x.shape[1]] = x
            return torch.full_like(x, math.log(2.0)), seen[:, :start + x.shape[1]].cumsum(dim=1)[:, start:]

        x, passes = solve_block(params_fn, z, plan)
        torch.testing.assert_close(x, expected, atol=1e-12, rtol=0)
        assert passes == len(calls) <= 5
        assert calls[0] == 0 and (plan.groups < 5 or calls == [0, 1, 2, 3, 4])


# --------------------------------------------------------------------------------------
# The method: loss, likelihood, guidance, denoising, sampling conventions
# --------------------------------------------------------------------------------------


def test_loss_is_the_nll_per_dimension_of_the_noised_data():
    net = network((1, 4, 4))
    x = randn(6, 1, 4, 4)
    m = method(sigma=0.1)
    loss = m.loss(net, Batch(x_0=randn(6, 1, 4, 4, seed=5), x_1=x), gen(3))
    x_tilde = x + 0.1 * torch.randn(x.shape, generator=gen(3), dtype=F64)
    z, logdet = net(x_tilde)
    torch.testing.assert_close(loss, 0.5 * z.square().mean() - logdet.mean() / 16, atol=1e-14, rtol=0)
    # ... which is −log p per dimension up to ½·log 2π; the source x_0 plays no part
    torch.testing.assert_close(loss + 0.5 * math.log(2 * math.pi), -m.log_density(net, x_tilde).mean() / 16,
                               atol=1e-12, rtol=0)
    again = m.loss(net, Batch(x_0=randn(6, 1, 4, 4, seed=7), x_1=x), gen(3))
    assert torch.equal(loss, again)
    uniform = method(noise="uniform", levels=17).loss(net, Batch(x_0=x, x_1=x), gen(3))
    u = torch.rand(x.shape, generator=gen(3), dtype=F64)
    z, logdet = net(x + (u - 0.5) / 8)
    torch.testing.assert_close(uniform, 0.5 * z.square().mean() - logdet.mean() / 16, atol=1e-14, rtol=0)


def test_conditional_loss_drops_labels_and_needs_them():
    net = network((1, 4, 4), num_classes=3)
    m = method(class_conditional=True, label_drop=0.5)
    x = randn(64, 1, 4, 4)
    y = torch.randint(3, (64,), generator=gen(0))
    loss = m.loss(net, Batch(x_0=x, x_1=x, labels=y), gen(3))
    assert torch.isfinite(loss)
    dropped = m.training_labels(Batch(x_0=x, x_1=x, labels=y), gen(4))
    assert ((dropped == -1) | (dropped == y)).all() and 10 < (dropped == -1).sum() < 54
    with pytest.raises(ValueError, match="class_conditional needs class labels"):
        m.loss(net, Batch(x_0=x, x_1=x), gen(3))
    with pytest.raises(ValueError, match="without num_classes"):
        m.loss(network((1, 4, 4)), Batch(x_0=x, x_1=x, labels=y), gen(3))


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_nll_of_a_known_gaussian_under_the_zero_initialised_flow(blocks):
    """At initialisation every token's map is a composite affine map z = A·x + c, so the
    model is the Gaussian N(−c/A, 1/A²); its density, written with torch.distributions,
    is what log_density gives."""
    net = network((2, 4, 4), weight_std=None, blocks=blocks)
    n, d = net.num_tokens, net.token_dim
    scale_a, shift_c = torch.ones(n, d, dtype=F64), torch.zeros(n, d, dtype=F64)
    for block in net.blocks:
        a, mu = block.proj_out.bias.detach().chunk(2)
        for j in range(n):
            if (n - 1 - j if block.flip else j) == 0:
                continue  # the first token of the block's order is left alone
            scale_a[j], shift_c[j] = scale_a[j] * torch.exp(-a), (shift_c[j] - mu) * torch.exp(-a)
    model = torch.distributions.Normal(-shift_c / scale_a, 1 / scale_a)
    x = model.sample((7,)).to(F64)  # tokens from the model itself
    images = net.unpatchify(x)
    expected = model.log_prob(x).sum(dim=(1, 2))
    torch.testing.assert_close(method().log_density(net, images), expected, atol=1e-10, rtol=0)


def test_bits_per_dim_by_hand():
    """Identity flow (output layers all zero), D = 2, levels = 5: bins of width Δ = 0.5
    centred on the data, log P ≈ log N(x + Δ(u − ½)) + 2·log Δ."""
    net = network((2,), weight_std=None, blocks=2)
    for block in net.blocks:
        nn.init.zeros_(block.proj_out.bias)
    x = torch.tensor([[0.0, 0.5], [-1.0, 1.0]], dtype=F64)
    m = method(levels=5)
    ll = m.log_likelihood(net, x, gen(9))
    u = torch.rand(x.shape, generator=gen(9), dtype=F64)
    x_tilde = x + 0.5 * (u - 0.5)
    by_hand = (-0.5 * x_tilde.square() - 0.5 * math.log(2 * math.pi)).sum(dim=1) + 2 * math.log(0.5)
    torch.testing.assert_close(ll, by_hand, atol=1e-14, rtol=0)
    torch.testing.assert_close(bits_per_dim(ll, 2), -by_hand / (2 * math.log(2)), atol=1e-14, rtol=0)
    assert bits_per_dim(torch.tensor(-6 * math.log(2)), 2).item() == pytest.approx(3.0, abs=1e-15)
    # one bin's probability is at most 1 for a density at most N(0, 1)'s peak: a lower bound
    assert (ll < 2 * math.log(0.5 / math.sqrt(2 * math.pi)) + 1e-12).all()


def test_guidance_rule():
    cond, uncond = randn(3, 4, 2), randn(3, 4, 2, seed=2)
    assert torch.equal(guide(cond, uncond, 0.0), cond)  # w = 0: the conditional prediction
    w = 1.7
    a = randn(3, 4, 2, seed=3)
    assert torch.equal(guide(a, a, w), a)  # equal scales stay: a_c
    torch.testing.assert_close(guide(cond, uncond, w), (1 + w) * cond - w * uncond, atol=1e-14, rtol=0)  # CFG


@pytest.mark.parametrize("annealed", [False, True])
def test_guided_passes_extrapolate_from_the_unconditional_pass(annealed):
    net = network((1, 4, 4), patch_size=1, num_classes=3, weight_std=0.3)  # 16 tokens
    y = torch.tensor([0, 1, 2])
    x = randn(3, 5, 1)
    counter = NFECounter(net)
    m = method(class_conditional=True, guidance=1.5, guidance_annealed=annealed)
    with torch.no_grad():
        a, mu = m.block_params(counter, net, 1, y)(x, 0)
        a_c, mu_c = net(x, y, block=1, start=0)
        a_u, mu_u = net(x, torch.full_like(y, -1), block=1, start=0)
    assert counter.calls == 1 and counter.evaluations == 6  # both halves in one call
    g = 1.5 * torch.arange(1, 6, dtype=F64).view(1, 5, 1) / 15 if annealed else 1.5
    torch.testing.assert_close(a, a_c + g * (a_c - a_u), atol=1e-13, rtol=0)
    torch.testing.assert_close(mu, mu_c + g * (mu_c - mu_u), atol=1e-13, rtol=0)
    assert not torch.allclose(a, a_c)
    # w = 0: the conditional prediction, in one conditional pass
    counter.reset()
    with torch.no_grad():
        a0, mu0 = method(class_conditional=True).block_params(counter, net, 1, y)(x, 0)
    assert torch.equal(a0, a_c) and torch.equal(mu0, mu_c) and counter.evaluations == 3


def test_guided_sampling_costs_two_rows_per_sample():
    net = network(num_classes=3)
    z = randn(4, 1, 8, 8)
    counter = NFECounter(net)
    with torch.no_grad():
        sol = method(class_conditional=True, guidance=2.0).sample(counter, z, sampler("ar-sequential"), gen(0),
                                                                   labels=LABELS)
        plain = method(class_conditional=True).sample(net, z, sampler("ar-sequential"), gen(0), labels=LABELS)
    assert counter.calls == sol.steps and counter.evaluations == 2 * 4 * sol.steps
    assert torch.isfinite(sol.x).all() and not torch.allclose(sol.x, plain.x)
    # an unconditional model's contrast is the attention temperature
    counter.reset()
    with torch.no_grad():
        method(guidance=0.5, attn_temp=0.3).sample(counter, z, sampler("ar-sequential"), gen(0))
        assert counter.evaluations == 2 * 4 * counter.calls
        counter.reset()
        method(guidance=0.5).sample(counter, z, sampler("ar-sequential"), gen(0))  # no contrast: no extra rows
        assert counter.evaluations == 4 * counter.calls


def test_denoising_is_one_score_step():
    """Identity flow: log p = log N(x; 0, I), whose score is −x, so x ← (1 − σ²)·x."""
    net = network(weight_std=None)
    for block in net.blocks:
        nn.init.zeros_(block.proj_out.bias)
    z = randn(3, 1, 8, 8)
    counter = NFECounter(net)
    with torch.no_grad():
        sol = method(sigma=0.2, denoise=True).sample(counter, z, sampler("ar-sequential"), gen(0), record=True)
    torch.testing.assert_close(sol.x, (1 - 0.04) * z, atol=1e-14, rtol=0)
    t = net.num_blocks
    assert sol.steps == counter.calls == t * (net.num_tokens - 1) + t  # + one pass per block
    assert len(sol.trajectory) == t + 2 and sol.times[0] == 0.0 and sol.times[-1] == 1.0
    assert torch.equal(sol.trajectory[-1], sol.x) and torch.equal(sol.trajectory[0], z)
    with pytest.raises(ValidationError, match="denoise"):
        method(noise="uniform", denoise=True)


def test_record_keeps_the_state_after_every_block():
    net = network()
    z = randn(2, 1, 8, 8)
    with torch.no_grad():
        sol = method().sample(net, z, sampler("ar-jacobi"), gen(0), record=True)
    assert sol.times == [0.0, 1 / 3, 2 / 3, 1.0]
    assert torch.equal(sol.trajectory[0], z) and torch.equal(sol.trajectory[-1], sol.x)


def test_samplers_and_methods_refuse_each_other():
    net = network()
    z = randn(2, 1, 8, 8)
    euler = sampler("euler", steps=2)
    with pytest.raises(ValueError, match="ar-sequential, ar-jacobi, ar-gs-jacobi"):
        method().sample(net, z, euler, gen(0))
    for name in ("ar-sequential", "ar-jacobi", "ar-gs-jacobi"):
        solver = SOLVERS.get(name)
        assert solver.autoregressive and solver.nfe_convention == "N"
        with pytest.raises(ValueError, match=f"sampler {name} inverts autoregressive flows.*ODE sampler"):
            sampler(name).solve(lambda x, t: x, randn(2, 3))
    with pytest.raises(ValueError, match="groups lists 2 values, one per block, but the flow has 3 blocks"):
        method().sample(net, z, sampler("ar-gs-jacobi", groups=[1, 2]), gen(0))
    with pytest.raises(ValidationError):
        sampler("ar-gs-jacobi", groups=0)
    mlp = NETWORKS.get("mlp")(NETWORKS.get("mlp").Params(), (2,))
    with pytest.raises(TypeError, match="tarflow network"):
        method().loss(mlp, Batch(x_0=torch.zeros(3, 2), x_1=torch.zeros(3, 2)), gen(0))


# --------------------------------------------------------------------------------------
# Norm placements (blocks.py), shared with the DiT
# --------------------------------------------------------------------------------------


def by_hand(norm: Norm, v: torch.Tensor) -> torch.Tensor:
    inner = norm.norm
    if norm.kind == "layernorm":
        centred = v - v.mean(dim=-1, keepdim=True)
        return centred / torch.sqrt(centred.square().mean(dim=-1, keepdim=True) + 1e-6) * inner.weight + inner.bias
    return v / torch.sqrt(v.square().mean(dim=-1, keepdim=True) + 1e-6) * inner.weight


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("placement", ["pre", "post", "peri"])
def test_each_placement_matches_its_formula(kind, placement):
    torch.manual_seed(0)
    branch = nn.Linear(6, 6).to(F64)
    layer = Residual(branch, 6, placement, kind).to(F64)
    for norm in (layer.norm_in, layer.norm_out):
        if norm is not None:  # learned affines away from their initial 1 and 0
            for p in norm.parameters():
                nn.init.normal_(p)
    x = randn(3, 5, 6)
    with torch.no_grad():
        expected = {"pre": lambda: x + branch(by_hand(layer.norm_in, x)),
                    "post": lambda: by_hand(layer.norm_out, x + branch(x)),
                    "peri": lambda: x + by_hand(layer.norm_out, branch(by_hand(layer.norm_in, x)))}[placement]()
        torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=0)
    assert (layer.norm_in is None) == (placement == "post")
    assert (layer.norm_out is None) == (placement == "pre")


def test_mix_ln_puts_post_ln_in_the_first_quarter():
    assert MIX_POST_FRACTION == 0.25
    assert [layer_placement("mix", i, 8) for i in range(8)] == ["post"] * 2 + ["pre"] * 6
    assert [layer_placement("mix", i, 2) for i in range(2)] == ["post", "pre"]  # at least one
    assert layer_placement("peri", 5, 8) == "peri"
    net = network(layers=4, placement="mix", norm="rmsnorm")
    for block in net.blocks:
        assert [layer.attn.placement for layer in block.layers] == ["post", "pre", "pre", "pre"]
        assert [layer.mlp.placement for layer in block.layers] == ["post", "pre", "pre", "pre"]


@pytest.mark.parametrize("placement", ["pre", "post", "peri", "mix"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_every_placement_inverts(placement, norm):
    net = network(placement=placement, norm=norm, final_norm=True)
    x = randn(2, 1, 8, 8)
    with torch.no_grad():
        z, _ = net(x)
        sol = method().sample(net, z, sampler("ar-gs-jacobi", groups=2, tolerance=0.0), gen(0))
    torch.testing.assert_close(sol.x, x, atol=EXACT, rtol=0)


def test_norms_keep_float64_and_compute_half_precision_in_float32():
    norm = Norm("rmsnorm", 8, affine=False)
    x = randn(4, 8)
    assert norm(x).dtype == F64
    h = x.to(torch.bfloat16)
    assert norm(h).dtype == torch.bfloat16
    assert torch.equal(norm(h), norm(h.float()).to(torch.bfloat16))
    with pytest.raises(ValueError, match="unknown norm"):
        Norm("batchnorm", 8)


# --------------------------------------------------------------------------------------
# STARFlow's deep-shallow allocation
# --------------------------------------------------------------------------------------


def test_deep_shallow_allocation():
    """One deep block nearest the prior (last in the data → noise pass), shallow blocks
    before it; only the deep block sees the class, so only its passes are guided."""
    net = network(blocks=3, layers=1, deep_layers=3, num_classes=3)
    assert [len(block.layers) for block in net.blocks] == [1, 1, 3]
    assert [block.conditional for block in net.blocks] == [False, False, True]
    x = randn(4, 1, 8, 8)
    with torch.no_grad():
        z, _ = net(x, LABELS)
        sol = method(class_conditional=True).sample(net, z, sampler("ar-sequential"), gen(0), labels=LABELS)
        torch.testing.assert_close(sol.x, x, atol=EXACT, rtol=0)
        counter = NFECounter(net)
        method(class_conditional=True, guidance=1.0).sample(counter, z, sampler("ar-sequential"), gen(0),
                                                            labels=LABELS)
    per_block = net.num_tokens - 1
    assert counter.calls == 3 * per_block
    assert counter.evaluations == 4 * per_block * (1 + 1 + 2)  # the deep block's passes carry both halves
    # the shallow blocks ignore the class
    tokens = net.patchify(x)
    assert torch.equal(net(tokens, LABELS, block=0)[0], net(tokens, torch.zeros_like(LABELS), block=0)[0])


# --------------------------------------------------------------------------------------
# STARFlow's options: soft clip, softplus scale, Gaussian guidance (Gu et al. 2025)
# --------------------------------------------------------------------------------------


def test_starflow_outputs_are_soft_clipped_and_scaled_by_softplus():
    net = network((1, 4, 4), patch_size=1, weight_std=30.0, soft_clip=4.0, scale="softplus")
    plain = network((1, 4, 4), patch_size=1, weight_std=30.0)  # the same weights, TARFlow's outputs
    x = randn(5, 16, 1)
    with torch.no_grad():
        a, mu = net(x, None, block=0, start=0)
        a_raw, mu_raw = plain(x, None, block=0, start=0)
    torch.testing.assert_close(mu, 4.0 * torch.tanh(mu_raw / 4.0), atol=1e-12, rtol=0)
    sigma = torch.nn.functional.softplus(4.0 * torch.tanh(a_raw / 4.0) + math.log(math.e - 1))
    torch.testing.assert_close(a, torch.log(sigma), atol=1e-12, rtol=0)
    assert mu_raw.abs().max() > 4 and mu.abs().max() <= 4  # the clip acted, and bounds
    zero = network((1, 4, 4), patch_size=1, weight_std=None, scale="softplus")
    for block in zero.blocks:
        nn.init.zeros_(block.proj_out.bias)
    with torch.no_grad():
        a0, _ = zero(x, None, block=0, start=0)
    torch.testing.assert_close(a0, torch.zeros_like(a0), atol=1e-15, rtol=0)  # â = 0 is σ = 1


@pytest.mark.parametrize("name,params", STRATEGIES[:2])
def test_starflow_options_keep_the_flow_exact(name, params):
    net = network(soft_clip=4.0, scale="softplus", deep_layers=3, num_classes=3)
    m = method(class_conditional=True)
    x = randn(4, 1, 8, 8)
    with torch.no_grad():
        z, logdet = net(x, LABELS)
        sol = m.sample(NFECounter(net), z, sampler(name, **params), gen(0), labels=LABELS)
    torch.testing.assert_close(sol.x, x, atol=EXACT, rtol=0)
    small = network((2, 2, 2), patch_size=1, weight_std=0.5, soft_clip=1.0, scale="softplus")
    v = randn(2, 2, 2)
    jac = torch.autograd.functional.jacobian(lambda u: small(u[None])[0].reshape(-1), v)
    torch.testing.assert_close(torch.linalg.slogdet(jac.reshape(8, 8))[1], small(v[None])[1][0], atol=1e-12, rtol=0)


def test_gaussian_guidance_is_the_tilted_gaussian_and_cfg_at_equal_scales():
    from implementations.tarflow import gaussian_guide

    w = 1.5
    mu_c, mu_u = randn(3, 4, 2), randn(3, 4, 2, seed=2)
    a = randn(3, 4, 2, seed=3)
    # equal scales: standard CFG on the mean, the conditional scale kept
    a_g, mu_g = gaussian_guide(a, mu_c, a, mu_u, w)
    torch.testing.assert_close(mu_g, mu_c + w * (mu_c - mu_u), atol=1e-13, rtol=0)
    torch.testing.assert_close(a_g, a, atol=1e-14, rtol=0)
    # σ_c < σ_u: the Gaussian proportional to p_c^(1+w) / p_u^w (precisions and means)
    a_c, a_u = a - 0.7, a
    a_g, mu_g = gaussian_guide(a_c, mu_c, a_u, mu_u, w)
    precision = (1 + w) * torch.exp(-2 * a_c) - w * torch.exp(-2 * a_u)
    torch.testing.assert_close(torch.exp(-2 * a_g), precision, atol=1e-12, rtol=1e-12)
    mean = ((1 + w) * mu_c * torch.exp(-2 * a_c) - w * mu_u * torch.exp(-2 * a_u)) / precision
    torch.testing.assert_close(mu_g, mean, atol=1e-12, rtol=1e-12)
    # σ_c > σ_u: the ratio is clipped at 1, so the guided step is never wider than p_c
    a_g, mu_g = gaussian_guide(a + 0.7, mu_c, a, mu_u, w)
    torch.testing.assert_close(a_g, a + 0.7, atol=1e-14, rtol=0)
    torch.testing.assert_close(mu_g, (1 + w) * mu_c - w * mu_u, atol=1e-13, rtol=0)
    # w = 0: the conditional step
    a_g, mu_g = gaussian_guide(a_c, mu_c, a_u, mu_u, 0.0)
    torch.testing.assert_close((a_g, mu_g), (a_c, mu_c), atol=1e-15, rtol=0)


def test_the_sampler_uses_the_rule_the_spec_names():
    net = network((1, 4, 4), patch_size=1, num_classes=3, weight_std=0.3)
    y = torch.tensor([0, 1, 2])
    x = randn(3, 5, 1)
    with torch.no_grad():
        a, mu = method(class_conditional=True, guidance=2.0, guidance_annealed=False,
                       guidance_rule="gaussian").block_params(net, net, 1, y)(x, 0)
        a_c, mu_c = net(x, y, block=1, start=0)
        a_u, mu_u = net(x, torch.full_like(y, -1), block=1, start=0)
    from implementations.tarflow import gaussian_guide

    expected = gaussian_guide(a_c, mu_c, a_u, mu_u, 2.0)
    torch.testing.assert_close((a, mu), expected, atol=1e-13, rtol=0)


# --------------------------------------------------------------------------------------
# GS-Jacobi diagnostics: CRM and IGM (Liu & Qin 2025)
# --------------------------------------------------------------------------------------


def test_crm_and_igm_of_a_zero_initialised_flow_are_zero():
    """Output weights 0: every block is an affine map of constants, one Jacobi map from
    any guess is exact (IGM 0), and the bound ‖·‖·‖W_a‖ + ‖W_μ‖ is 0."""
    from implementations.tarflow import block_diagnostics

    net = network(weight_std=None)
    blocks = block_diagnostics(net, randn(6, 1, 8, 8))
    assert len(blocks) == net.num_blocks
    for d in blocks:
        assert d["crm"] == 0.0 and d["crm_share"] is None
        assert d["igm"]["latent"] == pytest.approx(0.0, abs=1e-13) and d["igm"]["zeros"] == pytest.approx(0.0, abs=1e-13)


def test_crm_and_igm_by_hand_and_in_sampling_order():
    from implementations.networks.tarflow import shift
    from implementations.tarflow import block_diagnostics

    net = network(weight_std=0.05)
    x = randn(6, 1, 8, 8)
    blocks = block_diagnostics(net, x)
    assert all(d["crm"] is not None and None not in d["igm"].values() for d in blocks)
    assert sum(d["crm_share"] for d in blocks) == pytest.approx(1.0, abs=1e-12)
    # the block nearest the data is the last entry (sampling order); check it by hand
    first, tokens = net.blocks[0], net.patchify(x)
    with torch.no_grad():
        z, _ = first(tokens, None)
        xp, zp = first.permute(tokens), first.permute(z)
        a = shift(first.raw(xp, None)[0])
        w = first.proj_out.weight
        crm = (torch.linalg.matrix_norm((torch.exp(-a) * xp).mean(0), ord=2) * torch.linalg.matrix_norm(w[:4], ord=2)
               + torch.linalg.matrix_norm(w[4:], ord=2))
        a0, mu0 = first.raw(zp, None)
        igm = torch.linalg.matrix_norm((torch.exp(shift(a0)) * zp + shift(mu0) - xp).mean(0), ord=2)
    assert blocks[-1]["crm"] == pytest.approx(float(crm), rel=1e-12)
    assert blocks[-1]["igm"]["latent"] == pytest.approx(float(igm), rel=1e-12)
    assert blocks[-1]["best_initial_guess"] == min(blocks[-1]["igm"], key=blocks[-1]["igm"].get)


def test_an_overflowing_guess_is_recorded_as_none_not_nan():
    from implementations.tarflow import block_diagnostics

    blocks = block_diagnostics(network(weight_std=0.2), randn(6, 1, 8, 8) * 3)  # random weights, wide data
    values = [d["crm"] for d in blocks] + [v for d in blocks for v in d["igm"].values()]
    assert None in values and all(v is None or math.isfinite(v) for v in values)
