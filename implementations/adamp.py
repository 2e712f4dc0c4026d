"""AdamP's update rule as a ``torch.optim.Optimizer`` (registered as ``adamp`` in
``implementations.optimizers``): Heo et al. 2021, "AdamP: Slowing Down the Slowdown for
Momentum Optimizers on Scale-invariant Weights", https://arxiv.org/abs/2006.08217,
Algorithm 2."""

from __future__ import annotations

import torch


class AdamPOptimizer(torch.optim.Optimizer):
    """Adam whose update loses its radial component for scale-invariant weights.

    For each weight w with Adam update p, if the cosine similarity between w and its
    gradient is below δ/√dim for the whole tensor or per output channel (the weight is
    scale invariant, e.g. followed by a normalisation), the component of p along w is
    projected out: p ← p − (ŵ·p) ŵ, and weight decay is scaled by ``wd_ratio``. Otherwise
    the step is plain Adam (with decoupled-style decay applied to w as in the paper's code).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 delta=0.1, wd_ratio=0.1, nesterov=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, delta=delta,
                        wd_ratio=wd_ratio, nesterov=nesterov)
        super().__init__(params, defaults)

    @staticmethod
    def _channel_view(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)

    @staticmethod
    def _layer_view(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, -1)

    def _projection(self, p, grad, perturb, delta, wd_ratio, eps):
        """Remove the radial part of ``perturb`` when ``p`` looks scale invariant."""
        for view in (self._channel_view, self._layer_view):
            w, g = view(p.data), view(grad)
            cosine = (w * g).sum(dim=1).abs() / (w.norm(dim=1) * g.norm(dim=1) + eps)
            if cosine.max() < delta / (w.shape[1] ** 0.5):
                unit = p.data / (view(p.data).norm(dim=1).add(eps).reshape(-1, *([1] * (p.ndim - 1))))
                radial = (unit * perturb).reshape(unit.shape[0] if view is self._channel_view else 1, -1)
                radial = radial.sum(dim=1).reshape(-1, *([1] * (p.ndim - 1)))
                return perturb - unit * radial, wd_ratio
        return perturb, 1.0

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias1 = 1 - beta1 ** state["step"]
                bias2 = 1 - beta2 ** state["step"]
                denom = (exp_avg_sq.sqrt() / bias2**0.5).add_(group["eps"])
                step_size = group["lr"] / bias1
                if group["nesterov"]:
                    perturb = (beta1 * exp_avg + (1 - beta1) * grad) / denom
                else:
                    perturb = exp_avg / denom
                wd_ratio = 1.0
                if p.ndim > 1:  # scale invariance is a property of weight matrices / filters
                    perturb, wd_ratio = self._projection(p, grad, perturb, group["delta"],
                                                         group["wd_ratio"], group["eps"])
                if group["weight_decay"] > 0:
                    p.mul_(1 - group["lr"] * group["weight_decay"] * wd_ratio)
                p.add_(perturb, alpha=-step_size)
        return loss
