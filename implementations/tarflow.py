"""TARFlow: a Transformer autoregressive normalizing flow, trained by exact likelihood.

Paper: Zhai, Zhang, Berthelot, Gu, Li, Chen, Susskind, Jaitly (2024). "Normalizing Flows
are Capable Generative Models". https://arxiv.org/abs/2412.06329 (apple/ml-tarflow)
Network: :mod:`implementations.networks.tarflow` (also STARFlow's deep-shallow option).
Samplers: :mod:`implementations.common.ar_solvers` (sequential, Jacobi, GS-Jacobi).

Algorithm (training):
    1. x̃ = x_1 + σ·ε (Gaussian noise augmentation), or x̃ = x_1 + Δ·(u − ½) with
       u ~ U[0, 1)^D (uniform dequantisation; Δ = 2/(levels − 1), the spacing of the
       data's grey levels in [−1, 1]);
    2. with class labels, drop each to y = −1 (the mean class embedding) w.p. label_drop;
    3. z, log|det ∂z/∂x̃| = f(x̃, y);
    4. loss = ½·mean(z²) − logdet/D: the negative log-likelihood per dimension in nats, up
       to the constant ½·log 2π. The source x_0 is not used. STARFlow adds
       ``latent_norm_penalty``·Σ_k mean(z_k²) over the outputs z_k of all blocks but the last.
Algorithm (sampling): z = x_0 ~ N(0, I); invert the blocks from the one nearest the noise
to the one nearest the data, each with the sampler's strategy; with guidance weight w,
every pass also gives the unconditional (a_u, μ_u) (mean class embedding, attention
logits / attn_temp) and
    a ← a + g_i·(a − a_u),   μ ← μ + g_i·(μ − μ_u),
    g_i = i/(N−1)·w for token i = 1 … N−1 when annealed (the official (j+1)/(N−1)·w with
    j = i − 1 the position that predicts token i), else g_i = w;
or, with ``guidance_rule: gaussian``, STARFlow's Proposition 2 (Gu et al. 2025; see
:func:`gaussian_guide`); then optionally one score step (Tweedie): x ← x + σ²·∇_x log p(x).
STARFlow's stability tricks are network options: a soft clip c·tanh(out/c) of each
block's raw outputs and the scale σ = softplus(â + 0.5413).

Likelihood convention (``log_likelihood``): data on ``levels`` grey levels equally spaced
in [−1, 1] (8-bit images: 256; scikit-learn's 8×8 digits: set 17, their values 0 … 16,
stored as round(v·255/16) so about 1/8 apart — upsampled digits take any 8-bit value:
256). Each value is the centre of a bin of width Δ = 2/(levels − 1), and
    log P(x) ≥ E_u[log p(x + Δ·(u − ½))] + D·log Δ        (uniform dequantisation bound)
of which ``log_likelihood`` returns the one-draw estimate, in nats per sample; bits per
dimension = −log P/(D·ln 2) (:func:`bits_per_dim`). The official ``evaluate_bpd.py`` uses
bins of width 2/256 that tile [−1, 1) (so data x maps to (k + u)/128 − 1); centred bins
keep the sample space the data's own. ``log_density`` is the exact continuous density.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from harness.interfaces import Batch, Params, Solution, Solver
from harness.lazy import lazy_import
from harness.registry import METHODS
from implementations.common.ar_solvers import ParamsFn, solve_block

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
else:
    torch = lazy_import("torch")

AR_SAMPLERS = "ar-sequential, ar-jacobi, ar-gs-jacobi, ar-auto"


class TarFlowMethodParams(Params):
    noise: Literal["gaussian", "uniform"] = Field(
        "gaussian", description="training input: x + sigma·ε (gaussian) or uniform dequantisation over the levels")
    sigma: Annotated[float, Field(ge=0.0, le=10.0)] = Field(
        0.05, description="std of the Gaussian noise augmentation (TARFlow: 0.05 on ImageNet 64, 0.1 on MNIST)")
    levels: Annotated[int, Field(strict=True, ge=2, le=65_536)] | None = Field(
        None, description="grey levels of the data in [−1, 1] (8-bit: 256; 8×8 digits: 17): the dequantisation "
                          "bins' width 2/(levels − 1); null: the dataset's own (its `levels`), or a continuous "
                          "density for data without levels (2-D points, latents)")
    class_conditional: bool = Field(False, description="condition on class labels (network num_classes needed)")
    label_drop: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.1, description="share of training labels dropped to the mean class embedding (for guidance)")
    guidance: Annotated[float, Field(ge=0.0, le=100.0)] = Field(0.0, description="guidance weight w (0: off)")
    guidance_annealed: bool = Field(True, description="ramp the weight linearly along the tokens, as TARFlow's eval")
    guidance_rule: Literal["linear", "gaussian"] = Field(
        "linear", description="linear: TARFlow's extrapolation of a and μ; gaussian: STARFlow's Proposition 2, the "
                              "Gaussian proportional to p_c^(1+w) / p_u^w with the scale ratio clipped at 1")
    attn_temp: Annotated[float, Field(gt=0.0, le=100.0)] = Field(
        1.0, description="attention temperature of the unconditional guidance pass (an unconditional model's "
                         "only contrast)")
    denoise: bool = Field(False, description="one score step x + sigma²·∇log p(x) after sampling (gaussian noise)")
    latent_norm_penalty: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.0, description="STARFlow's penalty weight on the mean square of every intermediate block output "
                         "(all but the last; STARFlow's train.py: 1e-4); 0: none, as TARFlow")

    @model_validator(mode="after")
    def _denoise_needs_noise(self) -> TarFlowMethodParams:
        if self.denoise and (self.noise != "gaussian" or self.sigma == 0):
            raise ValueError("denoise takes its step size sigma² from the Gaussian noise: set noise: gaussian and "
                             "sigma > 0")
        return self


def flow_network(model: Callable):
    """The TARFlow network behind ``model``: the network itself, or it inside the
    harness's NFE counter (``.model``), DistributedDataParallel (``.module``) or
    torch.compile's wrapper (whose attributes delegate)."""
    inner = model
    while inner is not None and not hasattr(inner, "patchify"):
        wrapped = getattr(inner, "model", None)
        inner = wrapped if wrapped is not None else getattr(inner, "module", None)
    if inner is None or not getattr(inner, "autoregressive", False):
        raise TypeError(f"tarflow needs the tarflow network (an autoregressive flow), got {type(model).__name__}")
    return inner


def guide(cond: Tensor, uncond: Tensor, g: Tensor | float) -> Tensor:
    """TARFlow's guidance on one output (a or μ): cond + g·(cond − uncond)."""
    return cond + g * (cond - uncond)


def gaussian_guide(a_c: Tensor, mu_c: Tensor, a_u: Tensor, mu_u: Tensor, w: Tensor | float) -> tuple[Tensor, Tensor]:
    """STARFlow's guidance (Gu et al. 2025, Proposition 2) on one Gaussian step with
    scales σ = exp(a): with s = min(σ_c/σ_u, 1)²,

        σ̃ = σ_c / √(1 + w − w·s),   μ̃ = ((1 + w)·μ_c − w·s·μ_u) / (1 + w − w·s),

    the Gaussian proportional to p_c^(1+w) / p_u^w where σ_c ≤ σ_u (the clip keeps it at
    least as sharp as p_c). With σ_c = σ_u it is CFG on μ: μ_c + w(μ_c − μ_u), σ̃ = σ_c.
    Returns (log σ̃, μ̃)."""
    s = torch.clamp(torch.exp(a_c - a_u), max=1.0) ** 2
    denom = 1.0 + w - w * s
    return a_c - 0.5 * torch.log(denom), ((1.0 + w) * mu_c - w * s * mu_u) / denom


def bits_per_dim(log_likelihood: Tensor, dims: int) -> Tensor:
    """−log P/(D·ln 2): nats per sample to bits per dimension."""
    return -log_likelihood / (dims * math.log(2.0))


@METHODS.register("tarflow")
class TarFlowMethod:
    """TARFlow's loss, sampling by block inversion, exact log-density; see the module docstring."""

    Params: ClassVar[type[Params]] = TarFlowMethodParams
    autoregressive: ClassVar[bool] = True  # needs the tarflow network and an ar-* sampler
    # Params that change sampling only: methods differing in them share one trained model.
    sampling_params: ClassVar[frozenset[str]] = frozenset(
        {"guidance", "guidance_annealed", "guidance_rule", "attn_temp", "denoise"})

    def __init__(self, params: TarFlowMethodParams):
        self.params = params
        self.conditional = params.class_conditional
        self.bind_data(None)

    def bind_data(self, space: object) -> None:
        """Read the grey levels of the space the flow trains on (the harness calls this once
        the dataset or latent space exists): the params' ``levels``, else the space's, else
        none (a continuous density)."""
        from implementations.datasets.levels import grey_levels

        self.levels = self.params.levels or grey_levels(space)
        if self.levels is None:
            self.likelihood_convention = ("continuous data: the exact log-density log p(x) per sample, no "
                                          "dequantisation (bpd = -log p / (D ln 2) can be negative)")
            return
        delta = 2.0 / (self.levels - 1)
        self.likelihood_convention = (
            f"{self.levels} grey levels, each the centre of a bin of width {delta:.6g} on [-1, 1]; one uniform "
            "dequantisation draw per image: log P(x) >= E_u log p(x + delta (u - 1/2)) + D log delta (a lower bound "
            "on the discrete log-likelihood, so nll and bpd are upper bounds)")

    # --- training ---------------------------------------------------------------------

    def dequantise(self, x: Tensor, generator: torch.Generator, noise: str | None = None) -> Tensor:
        """Training input from data x: step 1 of the algorithm."""
        if (noise or self.params.noise) == "gaussian":
            return x + self.params.sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        if self.levels is None:
            raise ValueError("tarflow: noise: uniform dequantises discrete data, and this data has no grey levels; "
                             "set params.levels or use noise: gaussian")
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return x + (2.0 / (self.levels - 1)) * (u - 0.5)

    def training_labels(self, batch: Batch, generator: torch.Generator) -> Tensor | None:
        if not self.conditional:
            return None
        if batch.labels is None:
            raise ValueError("tarflow: class_conditional needs class labels, and this batch has none (a dataset "
                             "without labels, or a coupling that re-pairs the batch)")
        drop = torch.rand(batch.labels.shape, generator=generator, device=batch.x_1.device) < self.params.label_drop
        return torch.where(drop.to(batch.labels.device), torch.full_like(batch.labels, -1), batch.labels)

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        flow = flow_network(model)
        x = self.dequantise(batch.x_1, generator)
        y = self.training_labels(batch, generator)
        if not self.params.latent_norm_penalty:
            z, logdet = model(x, y)
            return 0.5 * z.square().mean() - logdet.mean() / x[0].numel()
        # STARFlow: the same forward pass block by block, penalising the intermediate outputs
        tokens, logdet, penalty = flow.patchify(x), 0.0, 0.0
        for k in range(flow.num_blocks):
            tokens, block_logdet = model(tokens, y, block=k)
            logdet = logdet + block_logdet
            if k < flow.num_blocks - 1:
                penalty = penalty + tokens.square().mean()
        nll = 0.5 * tokens.square().mean() - logdet.mean() / x[0].numel()
        return nll + self.params.latent_norm_penalty * penalty

    # --- likelihood -------------------------------------------------------------------

    def log_density(self, model: Callable, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The exact continuous log-density log p(x) in nats, per sample (b,)."""
        z, logdet = model(x, labels if self.conditional else None)
        flat = z.reshape(len(z), -1)
        return -0.5 * flat.square().sum(dim=1) - 0.5 * flat.shape[1] * math.log(2 * math.pi) + logdet

    def log_likelihood(self, model: Callable, x: Tensor, generator: torch.Generator,
                       labels: Tensor | None = None) -> Tensor:
        """One-draw estimate of the uniform-dequantisation bound on log P(x) of the
        discrete data x (b, *shape) on ``levels`` grey levels, in nats per sample (b,); for
        continuous data (no levels) the exact log-density."""
        if self.levels is None:
            return self.log_density(model, x, labels)
        delta = 2.0 / (self.levels - 1)
        x_tilde = self.dequantise(x, generator, noise="uniform")
        return self.log_density(model, x_tilde, labels) + x[0].numel() * math.log(delta)

    # --- sampling ---------------------------------------------------------------------

    def block_params(self, model: Callable, flow: nn.Module, k: int, labels: Tensor | None) -> ParamsFn:
        """params_fn for block k (see ar_solvers): one call of ``model`` per pass, with a
        KV cache of its own; guided passes carry the conditional rows, then the
        unconditional ones."""
        from implementations.networks.tarflow import KVCache

        p = self.params
        cache = KVCache()
        y = labels if self.conditional else None
        contrast = (flow.blocks[k].conditional and y is not None) or p.attn_temp != 1.0
        guided = p.guidance != 0.0 and contrast  # without a contrast the rule changes nothing
        n_tokens = flow.num_tokens

        def params_fn(x: Tensor, start: int) -> tuple[Tensor, Tensor]:
            if not guided:
                return model(x, y, block=k, start=start, cache=cache)
            b, n = x.shape[0], x.shape[1]
            rows_y = None if y is None else torch.cat([y, torch.full_like(y, -1)])
            temperature = None
            if p.attn_temp != 1.0:
                temperature = torch.cat([torch.ones(b), torch.full((b,), p.attn_temp)]).to(x.device, x.dtype)
            a, mu = model(torch.cat([x, x]), rows_y, block=k, start=start, cache=cache, temperature=temperature)
            g: Tensor | float = p.guidance
            if p.guidance_annealed:
                tokens = torch.arange(start + 1, start + 1 + n, device=x.device, dtype=x.dtype)
                g = (tokens / (n_tokens - 1) * p.guidance).view(1, n, 1)
            if p.guidance_rule == "gaussian":
                return gaussian_guide(a[:b], mu[:b], a[b:], mu[b:], g)
            return guide(a[:b], a[b:], g), guide(mu[:b], mu[b:], g)

        return params_fn

    def denoise(self, model: Callable, flow: nn.Module, x: Tensor, labels: Tensor | None) -> Tensor:
        """One score step x + σ²·∇_x log p(x), through one call per block."""
        y = labels if self.conditional else None
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            tokens, log_p = flow.patchify(x), 0.0
            for k in range(flow.num_blocks):
                tokens, logdet = model(tokens, y, block=k)
                log_p = log_p + logdet
            log_p = log_p - 0.5 * tokens.square().sum(dim=(1, 2))
            (score,) = torch.autograd.grad(log_p.sum(), x)  # rows are independent: per-sample scores
        return (x + self.params.sigma ** 2 * score).detach()

    def diagnostics(self, model: Callable, x: Tensor) -> dict:
        """What the harness records once per trained model (``measurements.diagnostics``):
        Liu & Qin's CRM and IGM per block (:func:`block_diagnostics`) on data ``x``."""
        return {"gs_jacobi": {"order": "sampling order (0: the block nearest the noise)",
                              "blocks": block_diagnostics(flow_network(model), x),
                              "source": "Liu & Qin 2025, CRM and IGM"}}

    def sample(self, model: Callable, x_0: Tensor, solver: Solver, generator: torch.Generator,
               record: bool = False, labels: Tensor | None = None) -> Solution:
        if not getattr(solver, "autoregressive", False):
            raise ValueError(f"tarflow samples by inverting its autoregressive blocks: use one of the samplers "
                             f"{AR_SAMPLERS}, not {type(solver).__name__} (an ODE solver)")
        flow = flow_network(model)
        z = flow.patchify(x_0)
        trajectory = [x_0] if record else []
        steps = 0
        for index, k in enumerate(reversed(range(flow.num_blocks))):  # nearest the noise first
            block = flow.blocks[k]
            x_k, passes = solve_block(self.block_params(model, flow, k, labels), block.permute(z),
                                      solver.plan(index, flow.num_blocks))
            z = block.permute(x_k)
            steps += passes
            solver.count(index, passes)
            if record:
                trajectory.append(flow.unpatchify(z))
        x = flow.unpatchify(z)
        if self.params.denoise:
            x = self.denoise(model, flow, x, labels)
            steps += flow.num_blocks
            if record:
                trajectory.append(x)
        times = [i / (len(trajectory) - 1) for i in range(len(trajectory))] if record else []
        return Solution(x=x, steps=steps, times=times, trajectory=trajectory)


# --- GS-Jacobi diagnostics (Liu & Qin 2025, "Accelerate TarFlow Sampling with GS-Jacobi
# Iteration", arXiv 2505.12849) ---------------------------------------------------------


def _spectral(matrix: Tensor) -> float | None:
    """The largest singular value; None when the matrix is not finite (a guess that
    overflows: records hold no NaN)."""
    if not torch.isfinite(matrix).all():
        return None
    return float(torch.linalg.matrix_norm(matrix.double(), ord=2))


def block_diagnostics(flow: nn.Module, x: Tensor) -> list[dict]:
    """Liu & Qin's per-block metrics on data ``x`` (b, *shape), unconditional (the mean
    class embedding, as their script), in **sampling order** (entry 0: the block nearest
    the noise, as the ar-* samplers' per-block lists):

    - ``crm``, the Convergence Ranking Metric ‖mean_b(exp(−a) ⊙ x_in)‖₂·‖W_a‖₂ + ‖W_μ‖₂
      (spectral norms; W_a, W_μ the log-scale and shift rows of the block's output
      projection), and ``crm_share``, its share of the sum over blocks: blocks with a large
      share converge slowly under Jacobi and deserve groups and iterations. With STARFlow's
      soft clip or softplus scale the bound is looser (both are 1-Lipschitz maps of the raw
      outputs; the formula is applied to the raw weights as is).
    - ``igm``, the Initial Guessing Metric of each initial guess: one Jacobi map
      x̂ = exp(a(x⁰))·z + μ(x⁰) from the guess x⁰ (``latent``: x⁰ = z; ``zeros``: token 0
      of x_in, then zeros), and ‖mean_b(x̂ − x_in)‖₂; the smaller is the better guess.
    """
    with torch.no_grad():
        return _block_diagnostics(flow, x)


def _block_diagnostics(flow: nn.Module, x: Tensor) -> list[dict]:
    from implementations.networks.tarflow import shift

    tokens = flow.patchify(x)
    out = []
    for block in flow.blocks:
        z, _ = block(tokens, None)
        xp, zp = block.permute(tokens), block.permute(z)
        a, _ = block.raw(xp, None)
        a = shift(a)
        dim = xp.shape[-1]
        weight = block.proj_out.weight
        spread = _spectral((torch.exp(-a) * xp).mean(0))
        crm = None if spread is None else spread * _spectral(weight[:dim]) + _spectral(weight[dim:])
        guesses = {"latent": zp, "zeros": torch.cat([xp[:, :1], torch.zeros_like(xp[:, 1:])], dim=1)}
        igm = {}
        for name, guess in guesses.items():
            a0, mu0 = block.raw(guess, None)
            x_hat = torch.exp(shift(a0)) * zp + shift(mu0)  # token 0: (a, μ) = (0, 0), so x̂_0 = z_0 = x_0
            igm[name] = _spectral((x_hat - xp).mean(0))
        finite = {k: v for k, v in igm.items() if v is not None}
        out.append({"crm": crm, "igm": igm, "best_initial_guess": min(finite, key=finite.get) if finite else None})
        tokens = z
    crms = [d["crm"] for d in out]
    total = sum(crms) if None not in crms else 0.0
    for d in out:
        d["crm_share"] = d["crm"] / total if total > 0 else None
    return out[::-1]
