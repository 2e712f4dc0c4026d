"""AdamP (Heo et al. 2021): plain Adam on biases and on weights that are not scale
invariant; for scale-invariant weights (gradient orthogonal to the weight) the update
loses its radial component, so the weight norm changes only to second order."""

from __future__ import annotations

import pytest
import torch

import implementations  # noqa: F401  (fills the registries)
from harness.registry import OPTIMIZERS


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def adamp(parameters, **params):
    entry = OPTIMIZERS.get("adamp")
    return entry.build(entry.Params(**params), parameters)


def run_steps(opt, param, grads):
    for g in grads:
        opt.zero_grad()
        param.grad = g.clone()
        opt.step()


def test_adamp_registered_with_defaults():
    entry = OPTIMIZERS.get("adamp")
    p = entry.Params()
    assert (p.lr, p.betas, p.eps, p.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 0.0)
    assert (p.delta, p.wd_ratio, p.nesterov) == (0.1, 0.1, False)
    opt = entry.build(p, [torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(opt, torch.optim.Optimizer)


@pytest.mark.parametrize("lr,betas", [(1e-3, (0.9, 0.999)), (5e-2, (0.5, 0.9))])
def test_bias_matches_torch_adam(lr, betas):
    """ndim 1: never projected; weight_decay 0: the step is torch.optim.Adam's."""
    init = torch.randn(7, generator=gen(0), dtype=torch.float64)
    grads = [torch.randn(7, generator=gen(i + 1), dtype=torch.float64) for i in range(6)]
    a = torch.nn.Parameter(init.clone())
    b = torch.nn.Parameter(init.clone())
    run_steps(adamp([a], lr=lr, betas=betas), a, grads)
    run_steps(torch.optim.Adam([b], lr=lr, betas=betas, foreach=False), b, grads)
    torch.testing.assert_close(a.data, b.data, rtol=1e-14, atol=1e-15)
    assert not torch.equal(a.data, init)


def scale_invariant_case(rows: int = 5, cols: int = 8, seed: int = 0):
    """A weight and a gradient with (w_i · g_i) = 0 exactly-ish for every row i."""
    g = gen(seed)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    raw = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    grad = raw - (raw * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True) * w
    return w, grad


def test_scale_invariant_update_has_no_radial_component():
    w, grad = scale_invariant_case()
    assert float((w * grad).sum(1).abs().max()) < 1e-12
    p = torch.nn.Parameter(w.clone())
    run_steps(adamp([p], lr=1e-3), p, [grad])
    step = p.data - w
    assert float(step.abs().max()) > 1e-4  # it did move
    radial = (step * w).sum(1)
    assert float(radial.abs().max()) < 1e-10
    # the row norms change only at second order in the step
    growth = p.data.norm(dim=1) - w.norm(dim=1)
    assert torch.all(growth.abs() <= step.norm(dim=1) ** 2 / w.norm(dim=1) + 1e-12)


def test_scale_invariant_plain_adam_would_move_radially():
    """The check above is not vacuous: Adam's elementwise rescaling makes a radial part."""
    w, grad = scale_invariant_case()
    p = torch.nn.Parameter(w.clone())
    run_steps(torch.optim.Adam([p], lr=1e-2, foreach=False), p, [grad])
    assert float(((p.data - w) * w).sum(1).abs().max()) > 1e-4


def test_scale_invariant_over_several_steps_keeps_updates_tangent():
    w, _ = scale_invariant_case(seed=3)
    p = torch.nn.Parameter(w.clone())
    opt = adamp([p], lr=1e-3)
    for k in range(5):
        before = p.data.clone()
        _, grad = scale_invariant_case(seed=10 + k)
        # make the fresh gradient orthogonal to the *current* weight, row by row
        grad = grad - (grad * before).sum(1, keepdim=True) / (before * before).sum(1, keepdim=True) * before
        run_steps(opt, p, [grad])
        radial = ((p.data - before) * before).sum(1)
        assert float(radial.abs().max()) < 1e-10


def test_scale_invariant_weight_decay_scaled_by_wd_ratio():
    """With weight decay the scale-invariant weight shrinks by lr·wd·wd_ratio before the step."""
    w, grad = scale_invariant_case()
    lr, wd, ratio = 1e-2, 0.5, 0.1
    p = torch.nn.Parameter(w.clone())
    q = torch.nn.Parameter(w.clone())
    run_steps(adamp([p], lr=lr, weight_decay=wd, wd_ratio=ratio), p, [grad])
    run_steps(adamp([q], lr=lr), q, [grad])
    step = q.data - w  # the projected step without decay
    torch.testing.assert_close(p.data, w * (1 - lr * wd * ratio) + step, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("lr", [1e-3, 1e-2, 1e-1])
def test_scale_invariant_step_is_tangent_relative_to_its_size(lr):
    """The unit vector is w / (‖w‖ + eps) as in the official code, so the radial residue is
    ~ 2·eps/‖w‖ of the step; relative to ‖step‖·‖w‖ it is at eps level for every lr."""
    w, grad = scale_invariant_case(seed=7)
    p = torch.nn.Parameter(w.clone())
    run_steps(adamp([p], lr=lr), p, [grad])
    step = p.data - w
    cosine = (step * w).sum(1).abs() / (step.norm(dim=1) * w.norm(dim=1))
    assert float(cosine.max()) < 1e-7


@pytest.mark.parametrize("scale", [1.0, -0.3])
def test_parallel_gradient_behaves_like_adam(scale):
    """Gradient parallel to the weight: cosine 1, not scale invariant, so no projection."""
    w = torch.randn(4, 6, generator=gen(1), dtype=torch.float64)
    grads = [scale * (k + 1) * w for k in range(4)]
    a = torch.nn.Parameter(w.clone())
    b = torch.nn.Parameter(w.clone())
    opt = adamp([a], lr=1e-2)
    ref = torch.optim.Adam([b], lr=1e-2, foreach=False)
    for grad in grads:
        run_steps(opt, a, [grad])
        run_steps(ref, b, [grad])
        torch.testing.assert_close(a.data, b.data, rtol=1e-14, atol=1e-15)


def test_conv_filter_shape_scale_invariant():
    """4-D weights use the per-output-channel view too."""
    g = gen(4)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    raw = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    wf, rf = w.reshape(3, -1), raw.reshape(3, -1)
    grad = (rf - (rf * wf).sum(1, keepdim=True) / (wf * wf).sum(1, keepdim=True) * wf).reshape(w.shape)
    p = torch.nn.Parameter(w.clone())
    run_steps(adamp([p], lr=1e-3), p, [grad])
    radial = ((p.data - w).reshape(3, -1) * wf).sum(1)
    assert float(radial.abs().max()) < 1e-10
    assert float((p.data - w).abs().max()) > 1e-4
