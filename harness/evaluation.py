"""Evaluate one trained model with one sampler: sample in batches, accumulate what the
metrics need, measure cost, compute the metrics.

Randomness that does not depend on the batch size. The ``num_samples`` source points
are drawn in blocks of ``shard_size`` (budget.eval): block b from its own stream
(``eval-source`` for b = 0, ``eval-source/b`` after), so sample i is the same whatever
``batch_size`` is; batches never straddle a block. The reference sample is drawn the same
way. Changing ``shard_size`` changes the noise, and so the samples; ``batch_size`` does
not. (A method whose sampler draws noise of its own gets one generator per block; no
registered sampler draws from it today.)

Shards. A block is also a shard: what its batches accumulated (:mod:`harness.accumulators`)
is saved to the artefact store when it finishes, so an interrupted evaluation of many
shards resumes at the first unfinished one, and shards made in other processes merge in
order. The files are deleted once the record is written.

Cost. Peak memory and the first call's time (warm-up, torch.compile) are measured on the
first batch; latency is the median of ``repeats`` timed calls on that batch after
``warmup`` untimed ones (synchronised on CUDA), decoding included for a latent flow;
throughput is samples per second at that batch size. Every batch of the pass is timed
too (``measurements.batches``): its median and spread show what a long run sees.

Guards. Samples that are not finite, or lie beyond ``OUT_OF_RANGE`` times the reference's
extent, are counted and reported; when there is one, no sample metric is published and
the record is ``diverged``. Feature metrics run their networks in eval mode, and a
Fréchet distance refuses fewer vectors than dimensions, naming both numbers.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from harness import registry as reg
from harness.accumulators import Features, Points, Shard, Tally
from harness.artefacts import ArtefactStore
from harness.building import Built, autocast
from harness.features import (
    FeaturePair,
    FeatureRequest,
    ReferenceFeatures,
    reference_key,
    stats_sha256,
)
from harness.measure import NFECounter, OtherLoad, PeakMemory, synchronize, time_calls
from harness.metrics import EvalContext, Trajectory
from harness.plan import EvalJob, canonical
from harness.seeding import generator

SAVED_POINTS = 1000  # generated 2-D points kept per record, for plots
GRID_SAMPLES = 64  # generated images kept per record, as one PNG grid
OUT_OF_RANGE = 1e3  # samples this many times beyond the reference's extent count as diverged
FLOW_GRID_SOLVER = "euler"  # flow metrics (path energy, straightness) integrate on its uniform grid
TOY_DIM = 16  # data of at most this many dimensions keeps its points (plots), whatever the metrics
FEATURE_BATCH = 500  # images per call of a feature network on a reference split


def block_stream(stream: str, block: int) -> str:
    return stream if block == 0 else f"{stream}/{block}"


def draw_blocks(draw: Any, n: int, block_size: int, seed: int, stream: str) -> torch.Tensor:
    """``n`` draws of ``draw(m, generator)`` in blocks of ``block_size``, block b from its own stream."""
    parts = [draw(min(block_size, n - start), generator(seed, block_stream(stream, b)))
             for b, start in enumerate(range(0, n, block_size))]
    return torch.cat(parts)


def samples_out_of_range(samples: np.ndarray, reference: np.ndarray) -> int:
    """How many samples are non-finite or lie beyond ``OUT_OF_RANGE`` times the reference's
    largest absolute coordinate (plus 1): a finite but exploded model (a loss of 1e29, W2 of
    1e14) is diverged, not a row to rank."""
    non_finite, beyond = _bad_rows(samples, _bound(reference))
    return int(non_finite.sum() + beyond.sum())


def _bound(reference: np.ndarray) -> float:
    return OUT_OF_RANGE * (float(np.abs(reference).max()) + 1.0)


def _bad_rows(flat: np.ndarray, bound: float) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore"):
        non_finite = ~np.isfinite(flat).all(axis=1)
        beyond = ~non_finite & (np.abs(flat) > bound).any(axis=1)
    return non_finite, beyond


def image_grid(samples: np.ndarray, shape: tuple[int, ...], count: int = GRID_SAMPLES) -> np.ndarray:
    """The first ``count`` samples (flat, values in [−1, 1]) of (C, H, W) images as one
    uint8 picture: a square grid with a 1-pixel border, (rows·(H+1)+1, cols·(W+1)+1[, 3])."""
    c, h, w = shape
    images = np.clip((samples[:count].reshape(-1, c, h, w) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    grid = np.full((c, rows * (h + 1) + 1, cols * (w + 1) + 1), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = 1 + (i // cols) * (h + 1), 1 + (i % cols) * (w + 1)
        grid[:, top:top + h, left:left + w] = image
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def split_images(dataset: Any, split: str) -> torch.Tensor:
    """The images of a dataset split that a reference is computed on."""
    if split == "held_out":
        return dataset.held_out_images
    if split == "train":
        return dataset.train_split(None)
    raise ValueError(f"unknown reference split {split!r}; use held_out or train")


def reference_features(request: FeatureRequest, extractor: Any, dataset: Any, dataset_spec: dict,
                       store: ArtefactStore | None) -> ReferenceFeatures:
    """The reference statistics of ``request`` on the dataset: from the store when they
    were computed before (same dataset spec, split, shape, feature space and weights),
    else computed now and stored."""
    provenance = extractor.provenance()
    spec = reference_key(dataset_spec, request, provenance, tuple(dataset.shape))

    def make() -> tuple[Features, dict]:
        images = split_images(dataset, request.split)
        acc = Features(extractor.dim, keep=request.keep)
        with torch.no_grad():
            for start in range(0, len(images), FEATURE_BATCH):
                acc.update(extractor(images[start:start + FEATURE_BATCH]))
        return acc, {"n": acc.n, "split": request.split, "sha256": stats_sha256(acc), "extractor": provenance}

    if store is None:
        acc, facts = make()
        return ReferenceFeatures(acc, {**facts, "key": None})

    def save(acc: Features, f: Any) -> None:
        np.savez(f, **acc.state())

    def load(path: Any) -> Features:
        with np.load(path, allow_pickle=False) as data:
            return Features.from_state({k: data[k] for k in data.files})

    acc, card = store.cached("references", spec, "npz", make, save, load)
    return ReferenceFeatures(acc, {"split": card["split"], "sha256": card["sha256"], "key": card["key"],
                                   "n": card["n"], "reused": card["reused"]})


LIKELIHOOD_BATCH = 500  # held-out points per log_likelihood call


def _likelihood(job: EvalJob, built: Built, model: nn.Module) -> dict[str, Any] | None:
    """The model's log-likelihood of held-out data, for model metrics (nll, bpd): the
    dataset's held-out images, or for data without a split ``num_samples`` fresh target
    samples from their own stream; per-sample log p (nats) from the method's
    ``log_likelihood(model, x, generator)``, which states its dequantisation in
    ``likelihood_convention``. None when the method has no likelihood or the flow lives in
    a latent space (a latent flow's likelihood is of latents, not of the data). Computed
    once per trained model (it does not depend on the sampler) and kept in ``built.per_model``."""
    method = built.method
    if not hasattr(method, "log_likelihood") or built.latent is not None:
        return None
    cache = built.per_model.setdefault("likelihood", {})
    if job.budget.num_samples in cache:
        return cache[job.budget.num_samples]
    held = getattr(built.dataset, "held_out_images", None)
    labels = None
    if held is not None:
        data, split = held, "held_out"
        if getattr(method, "conditional", False):
            labels = built.dataset.held_out_labels  # log p(x | y) of each image's own class
    else:
        data = built.dataset.sample_target(job.budget.num_samples, generator(job.train.seed, "eval-likelihood"))
        split = "fresh target samples"
    gen = generator(job.train.seed, "eval-likelihood-method", built.device)
    model.eval()
    values = []
    for start in range(0, len(data), LIKELIHOOD_BATCH):
        x = data[start:start + LIKELIHOOD_BATCH].to(built.device, built.dtype)
        with torch.no_grad(), autocast(job.train.hardware, built.device):
            extra = {} if labels is None else {"labels": labels[start:start + LIKELIHOOD_BATCH].to(built.device)}
            values.append(method.log_likelihood(model, x, gen, **extra).double().cpu())
    logp = torch.cat(values).numpy()
    dims = math.prod(built.dataset.shape)
    # log p(x | y) of a class-conditional flow and log p(x) are different quantities: the
    # provenance says which, so a table never ranks one against the other
    given = "each image's class" if labels is not None else "nothing (unconditional)"
    out = {"mean_log_prob_nats": float(logp.mean()), "n": len(logp), "dims": dims, "split": split, "given": given,
           "std_error_nats": float(logp.std(ddof=1) / math.sqrt(len(logp))) if len(logp) > 1 else None,
           "finite": bool(np.isfinite(logp).all()),
           "convention": getattr(method, "likelihood_convention", "not stated by the method")}
    cache[job.budget.num_samples] = out
    return out


DIAGNOSTIC_POINTS = 1000  # held-out points a method's diagnostics read (Liu & Qin use 1000 images)


def _diagnostics(job: EvalJob, built: Built, model: nn.Module) -> dict | None:
    """A method's own diagnostics of the trained model (``diagnostics(model, x)`` on up to
    DIAGNOSTIC_POINTS held-out points, e.g. an autoregressive flow's per-block convergence
    metrics), recorded as they come in ``measurements.diagnostics``. Once per trained model;
    none for a latent flow or a method without them."""
    method = built.method
    if not hasattr(method, "diagnostics") or built.latent is not None:
        return None
    cache = built.per_model.setdefault("diagnostics", {})
    if "value" not in cache:
        held = getattr(built.dataset, "held_out_images", None)
        data = (held[:DIAGNOSTIC_POINTS] if held is not None else
                built.dataset.sample_target(DIAGNOSTIC_POINTS, generator(job.train.seed, "eval-diagnostics")))
        model.eval()
        with torch.no_grad(), autocast(job.train.hardware, built.device):
            cache["value"] = method.diagnostics(model, data.to(built.device, built.dtype))
    return cache["value"]


def make_solver(job: EvalJob, built: Built, model: nn.Module, train_stats: dict, store: ArtefactStore | None,
                name: str, params: dict) -> tuple[Any, dict | None]:
    """The solver ``name`` with ``params``, tuned to the trained model when it asks to be,
    and what it chose (for the record) or None.

    A solver with ``calibrate`` receives, by keyword, what its ``calibration_needs`` names
    (default: the method's ``diagnostics``): ``diagnostics``, the method's diagnostics of
    the trained model (e.g. an autoregressive flow's per-block convergence metrics);
    ``reference_flow(steps, points)`` -> (times, states (points, steps + 1, *dims)), the
    method's flow on a uniform Euler grid from source noise of a stream of its own;
    ``train_stats``, the training statistics; ``cache(name, spec, make)``, which keeps
    ``make()``'s dict of arrays as an artefact of the trained model (``calibrations/``)."""
    solver_cls = reg.SOLVERS.get(name)
    solver = solver_cls(solver_cls.Params.model_validate(params))
    if not hasattr(solver, "calibrate"):
        return solver, None
    providers = {
        "diagnostics": lambda: _diagnostics(job, built, model),
        "reference_flow": lambda: partial(_reference_flow, job, built, model),
        "train_stats": lambda: train_stats,
        "cache": lambda: partial(_calibration_cache, job, store),
    }
    needs = getattr(solver, "calibration_needs", ("diagnostics",))
    if "reference_flow" in needs and getattr(built.method, "one_step", False):
        # a one-step map ignores the solver: there is no flow to tune a grid to
        return solver, {"not applicable": "a one-step map has no flow to calibrate on; the solver is not used"}
    unknown = sorted(set(needs) - set(providers))
    if unknown:
        raise ValueError(f"solver {name!r} asks for {', '.join(unknown)} to calibrate; "
                         f"the harness offers {', '.join(providers)}")
    return solver, solver.calibrate(**{need: providers[need]() for need in needs})


def _reference_flow(job: EvalJob, built: Built, model: nn.Module, steps: int,
                    points: int) -> tuple[list[float], np.ndarray]:
    """The method's flow from ``points`` source points (and classes) of the calibration's
    own streams on the uniform ``steps``-step Euler grid: its times and the states
    (points, steps + 1, *dims) in the space the flow lives in."""
    seed, space = job.train.seed, built.space
    x_0 = space.sample_source(points, generator(seed, "eval-calibration-source"))
    labels = None
    if getattr(built.method, "conditional", False):
        labels = torch.randint(_num_classes(space), (points,), generator=generator(seed, "eval-calibration-labels"))
    euler = reg.SOLVERS.get(FLOW_GRID_SOLVER)
    grid = euler(euler.Params(steps=steps))
    gen = generator(seed, "eval-calibration-method", built.device)
    batch = min(job.budget.batch_size or job.budget.shard_size, job.budget.shard_size)
    times, parts = [], []
    model.eval()
    for start in range(0, points, batch):
        extra = {} if labels is None else {"labels": labels[start:start + batch].to(built.device)}
        with torch.no_grad(), autocast(job.train.hardware, built.device):
            solution = built.method.sample(model, x_0[start:start + batch].to(built.device, built.dtype), grid, gen,
                                           record=True, **extra)
        times = solution.times
        parts.append(torch.stack([x.detach().double().cpu() for x in solution.trajectory], dim=1).numpy())
    return times, np.concatenate(parts)


def _calibration_cache(job: EvalJob, store: ArtefactStore | None, name: str, spec: dict,
                       make: Any) -> dict[str, np.ndarray]:
    """``make()``'s arrays, kept as an artefact of the trained model and the evaluation's
    method spec (its sampling params included) under ``calibrations/``."""
    if store is None:
        return make()
    part = {"train": job.train.key, "method": canonical(job.train.method), "name": name, "spec": spec}

    def save(arrays: dict, f: Any) -> None:
        np.savez_compressed(f, **arrays)

    def load(path: Any) -> dict:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}

    arrays, _ = store.cached("calibrations", part, "npz", lambda: (make(), {"name": name}), save, load)
    return arrays


def _num_classes(space: Any) -> int:
    labels = getattr(space, "labels", None)
    if labels is None or len(labels) == 0:
        raise ValueError("a conditional method needs a dataset with class labels")
    return int(labels.max()) + 1


def _floors(job: EvalJob, built: Built, specs: list, requests: dict[str, FeatureRequest], extractors: dict,
            references: dict[str, ReferenceFeatures], ctx: EvalContext) -> dict[str, dict[str, float]]:
    """What a perfect model scores on each feature metric, at the evaluation's sample
    count: ``train_images``, that many training images (a perfect model of the data), and,
    for a latent flow, ``reconstructions``, the same images through the autoencoder (a
    perfect model of the latents: no latent flow can do better). Computed once per trained
    model and kept in ``built.per_model``."""
    cache = built.per_model.setdefault("floors", {})
    key = (job.budget.num_samples, tuple((s.name, canonical(s.params).__repr__()) for s, _, _ in specs))
    if key in cache:
        return cache[key]
    train = built.dataset.train_split(None)
    n = min(job.budget.num_samples, len(train))
    images = {"train_images": train[torch.randperm(len(train), generator=generator(job.train.seed, "eval-floor"))[:n]]}
    if built.latent is not None and hasattr(built.latent, "reconstruct"):
        images["reconstructions"] = built.latent.reconstruct(images["train_images"])
    out: dict[str, dict[str, float]] = {}
    for name, x in images.items():
        feats = {}
        for key_, extractor in extractors.items():
            acc = Features(extractor.dim, keep=requests[key_].keep)
            with torch.no_grad():
                for start in range(0, len(x), FEATURE_BATCH):
                    acc.update(extractor(x[start:start + FEATURE_BATCH]))
            feats[key_] = acc
        for spec, metric, params in specs:
            if metric.features is None:
                continue
            key_ = metric.features(params).key
            pair = FeaturePair(feats[key_], references[key_], {})
            try:
                value = metric.fn(replace(ctx, feature=pair, num_samples=n), params)
            except ValueError:  # too few training images for the metric (a Fréchet distance's N > d)
                value = None
            out.setdefault(spec.name, {})[name] = None if value is None else float(value)
    for values in out.values():
        values["num_samples"] = n
    cache[key] = out
    return out


def evaluate(job: EvalJob, built: Built, model: nn.Module, train_stats: dict,
             store: ArtefactStore | None = None, group: Any = None,
             only_shards: Sequence[int] | None = None
             ) -> tuple[str, dict, dict, dict[str, tuple[str, Any]]] | None:
    """Sample with one sampler in batches; measure NFE, latency, memory; compute the metrics.

    ``group`` (a :class:`harness.distributed.Group`): this process is one of several ranks
    sharing the sampling. Rank r samples the blocks b ≡ r (mod world); rank 0 gathers every
    shard, merges them in block order (the one-process result, exactly) and computes the
    metrics; the other ranks return None.

    Also returns the files to keep beside the record, by name: (suffix, write(binary file)).
    Two-dimensional data: "points", up to SAVED_POINTS source points, the samples generated
    from them and reference points (float32), for the report's sample plots. Images:
    "grid", the first GRID_SAMPLES samples as one PNG.

    ``only_shards``: sample and save only these shards, and return None (see
    :func:`evaluate_shards`)."""
    budget = job.budget
    seed, n, shard_size = job.train.seed, budget.num_samples, budget.shard_size
    batch_size = min(budget.batch_size or shard_size, shard_size, n)
    hw = job.train.hardware
    dataset, space = built.dataset, built.space
    shape = tuple(dataset.shape)
    flat_dim = math.prod(shape)
    solver, calibration = make_solver(job, built, model, train_stats, store, job.sampler.solver, job.sampler.params)
    specs = []
    for spec in job.metrics:
        metric = reg.METRICS.get(spec.name)
        specs.append((spec, metric, metric.Params.model_validate(spec.params)))
    needs = set().union(*(m.needs for _, m, _ in specs)) if specs else set()
    toy = flat_dim <= TOY_DIM
    point_names = tuple(name for name, wanted in (("samples", "samples" in needs or toy),
                                                  ("source", bool({"source", "flow"} & needs) or toy)) if wanted)
    requests: dict[str, FeatureRequest] = {}
    for _, metric, params in specs:
        if metric.features is not None:
            request = metric.features(params)
            held = requests.get(request.key)
            requests[request.key] = replace(request, keep=request.keep or (held is not None and held.keep))
    extractors = {key: request.make() for key, request in requests.items()}

    reference = None
    if "reference" in needs or toy:
        reference = draw_blocks(dataset.sample_target, n, shard_size, seed, "eval-reference")
    bound_from = reference if reference is not None else dataset.sample_target(min(n, 256), generator(seed, "eval-range"))
    bound = _bound(bound_from.double().reshape(len(bound_from), -1).numpy())

    def source_block(block: int) -> torch.Tensor:
        m = min(shard_size, n - block * shard_size)
        return space.sample_source(m, generator(seed, block_stream("eval-source", block)))

    conditional = getattr(built.method, "conditional", False)
    num_classes = _num_classes(space) if conditional else 0

    def label_block(block: int) -> torch.Tensor | None:
        """One class per source point of block ``block``, uniform, from its own stream."""
        if not conditional:
            return None
        m = min(shard_size, n - block * shard_size)
        return torch.randint(num_classes, (m,), generator=generator(seed, block_stream("eval-labels", block)))

    def sample(fn: Any, x_0: torch.Tensor, gen: torch.Generator, labels: torch.Tensor | None = None,
               record: bool = False, sampler: Any = solver) -> tuple[torch.Tensor, Any]:
        extra = {} if labels is None else {"labels": labels.to(built.device)}
        with torch.no_grad(), autocast(hw, built.device):
            solution = built.method.sample(fn, x_0.to(built.device, built.dtype), sampler, gen, record=record,
                                           **extra)
            x = solution.x if built.decode is None else built.decode(solution.x)
        return x, solution

    model.eval()
    if only_shards is None:  # (a shard task is not timed: the merge that writes the record is)
        # cost: memory and the first call on the first batch, then timed calls on it
        first = source_block(0)[:batch_size]
        first_labels = None if not conditional else label_block(0)[:batch_size]
        load = OtherLoad().start()  # the machine's other load while this evaluation timed and sampled
        t0 = time.perf_counter()
        with PeakMemory(built.device) as memory:
            sample(model, first, generator(seed, "eval-method", built.device), first_labels)
        first_call_s = time.perf_counter() - t0
        timing = time_calls(lambda: sample(model, first, generator(seed, "eval-method", built.device),
                                           first_labels), built.device, budget.warmup, budget.repeats)

    def run_shard(block: int) -> Shard:
        x_0, labels = source_block(block), label_block(block)
        gen = generator(seed, block_stream("eval-method", block), built.device)
        counter = NFECounter(model)
        tally, points = Tally(), Points(point_names)
        features = {key: Features(ex.dim, keep=requests[key].keep) for key, ex in extractors.items()}
        grid: list[np.ndarray] = []
        for start in range(0, len(x_0), batch_size):
            x_b = x_0[start:start + batch_size]
            synchronize(built.device)
            t_start = time.perf_counter()
            x, solution = sample(counter, x_b, gen, None if labels is None else labels[start:start + batch_size])
            synchronize(built.device)
            tally.batch_s.append(time.perf_counter() - t_start)
            flat = x.detach().double().cpu().reshape(len(x_b), -1).numpy()
            non_finite, beyond = _bad_rows(flat, bound)
            clean = tally.non_finite + tally.out_of_range == 0 and not (non_finite.any() or beyond.any())
            tally.samples += len(x_b)
            tally.non_finite += int(non_finite.sum())
            tally.out_of_range += int(beyond.sum())
            tally.batches += 1
            tally.steps += solution.steps
            tally.rejected_steps += solution.rejected_steps
            if sum(len(g) for g in grid) < GRID_SAMPLES:
                grid.append(flat[:GRID_SAMPLES - sum(len(g) for g in grid)])
            if clean:  # after a bad sample nothing is published: stop accumulating
                points.update(samples=flat, source=x_b.double().reshape(len(x_b), -1).numpy())
                images = x.detach().float().cpu().reshape(len(x_b), *shape)
                for key, extractor in extractors.items():
                    features[key].update(extractor(images))
        tally.evaluations, tally.calls = counter.evaluations, counter.calls
        return Shard(tally, points, features, np.concatenate(grid) if grid else None)

    num_shards = math.ceil(n / shard_size)
    if only_shards is not None:  # a shard task: sample these blocks and save them for a later merge
        for block in only_shards:
            path = store.shard_path(job.key, block)
            if not path.is_file():
                run_shard(block).save(path)
        return None
    merged: Shard | None = None
    resumed = 0
    computed: list[float] = []  # seconds of the batches sampled in this process
    shards: dict[int, Shard] = {}
    for block in range(num_shards) if group is None else group.blocks(num_shards):
        path = store.shard_path(job.key, block) if store is not None and num_shards > 1 else None
        if path is not None and path.is_file():
            shard = Shard.load(path, point_names)
            resumed += 1
        else:
            shard = run_shard(block)
            computed += shard.tally.batch_s
            if path is not None:
                shard.save(path)
        if group is None:
            merged = shard if merged is None else merged.merge(shard)
        else:
            shards[block] = shard
    if group is not None:
        from harness.distributed import gather_shards

        gathered = gather_shards(group, shards, resumed, computed)
        if gathered is None:
            return None  # rank > 0: rank 0 merges and computes the metrics
        shards, resumed, computed = gathered
        for block in range(num_shards):  # in block order: what one process merges
            merged = shards[block] if merged is None else merged.merge(shards[block])
    assert merged is not None
    tally = merged.tally
    bad = tally.non_finite + tally.out_of_range
    finite = bad == 0  # every sample finite and within range: the metrics are published

    samples = merged.points.result("samples")
    source = merged.points.result("source")
    reference_np = None if reference is None else reference.double().reshape(n, -1).numpy()
    flows: dict[int, Trajectory | None] = {}

    def flow(steps: int) -> Trajectory | None:
        """The method's ODE from the source points on a uniform Euler grid, recorded in
        batches in a separate pass (so that storing states costs neither memory nor time
        above); None for a one-step map, which has no flow to measure."""
        if getattr(built.method, "one_step", False):
            return None
        if steps not in flows:
            euler = reg.SOLVERS.get(FLOW_GRID_SOLVER)
            grid = euler(euler.Params(steps=steps))
            all_labels = (torch.cat([label_block(b) for b in range(math.ceil(n / shard_size))]) if conditional
                          else None)
            times, states = None, []
            for start in range(0, n, batch_size):
                x_b = torch.as_tensor(source[start:start + batch_size]).reshape(-1, *space.shape)
                _, recorded = sample(model, x_b, generator(seed, "eval-method", built.device),
                                     None if all_labels is None else all_labels[start:start + batch_size],
                                     record=True, sampler=grid)
                times = recorded.times
                states.append([x.detach().double().cpu().reshape(len(x_b), -1).numpy() for x in recorded.trajectory])
            flows[steps] = Trajectory(times, [np.concatenate(parts) for parts in zip(*states)])
        return flows[steps]

    companions: dict[str, np.ndarray | None] = {}

    def companion(solver_name: str, solver_params: dict, points: int) -> np.ndarray | None:
        """Another sampler's samples from the first ``points`` source points, batch by batch
        as run_shard draws them (same labels, same method noise streams); None when it
        cannot sample this method. The record's own sampler returns its own samples."""
        other_cls = reg.SOLVERS.get(solver_name)
        other_params = other_cls.Params.model_validate(solver_params)
        if (getattr(other_cls, "autoregressive", False) != getattr(built.method, "autoregressive", False)):
            return None
        if solver_name == job.sampler.solver and other_params == getattr(solver, "params", None):
            return samples[:points].copy()
        key = json.dumps([solver_name, other_params.model_dump(mode="json"), points], sort_keys=True)
        if key not in companions:
            other, _ = make_solver(job, built, model, train_stats, store, solver_name, solver_params)
            parts, done = [], 0
            for block in range(math.ceil(points / shard_size)):
                x_0, labels = source_block(block), label_block(block)
                gen = generator(seed, block_stream("eval-method", block), built.device)
                for start in range(0, min(len(x_0), points - done), batch_size):
                    stop = min(start + batch_size, points - done)
                    x, _ = sample(model, x_0[start:stop], gen, None if labels is None else labels[start:stop],
                                  sampler=other)
                    parts.append(x.detach().double().cpu().reshape(stop - start, -1).numpy())
                done += min(len(x_0), points - done)
            companions[key] = np.concatenate(parts)
        return companions[key]

    likelihood = _likelihood(job, built, model) if "likelihood" in needs else None
    diagnostics = _diagnostics(job, built, model)
    reference_2 = None
    if "reference_2" in needs:
        reference_2 = draw_blocks(dataset.sample_target, n, shard_size, seed,
                                  "eval-reference-2").double().reshape(n, -1).numpy()
    ctx = EvalContext(
        reference_2=reference_2,
        samples=samples if finite else None,
        reference=reference_np,
        source=source,
        flow=flow,
        companion=companion,
        nfe=tally.evaluations / n,
        steps=tally.steps / tally.batches,
        latency_s=timing.median,
        num_samples=n,
        batch_size=batch_size,
        peak_memory_mib=memory.result.get("peak_mib"),
        memory_added_mib=memory.result.get("peak_above_start_mib"),
        train=train_stats,
        num_params=train_stats.get("num_params"),
        shape=shape,
        likelihood=likelihood,
    )
    references: dict[str, ReferenceFeatures] = {}
    metrics: dict[str, float | None] = {}
    provenance: dict[str, dict] = {}  # what produced each value, for the metrics that say
    for spec, metric, params in specs:
        if ({"samples", "flow"} & metric.needs or metric.features is not None) and not finite:
            metrics[spec.name] = None
            continue
        metric_ctx = ctx
        if metric.features is not None:
            key = metric.features(params).key
            if key not in references:
                references[key] = reference_features(requests[key], extractors[key], dataset,
                                                     canonical(job.train.dataset), store)
            pair = FeaturePair(merged.features[key], references[key], extractors[key].provenance())
            metric_ctx = replace(ctx, feature=pair)
            provenance[spec.name] = pair.provenance(params)
        value = metric.fn(metric_ctx, params)
        metrics[spec.name] = None if value is None else float(value)
        if metric.provenance is not None:
            provenance[spec.name] = metric.provenance(metric_ctx, params)
    floors = _floors(job, built, specs, requests, extractors, references, ctx) if finite and references else {}
    measurements = {
        "load": load.stop().as_dict(),
        "nfe": ctx.nfe,
        "network_calls": tally.calls,
        "steps": ctx.steps,
        "rejected_steps": tally.rejected_steps,
        "nfe_convention": getattr(solver, "nfe_convention", None),
        "num_samples": n,
        "batch_size": batch_size,
        "shards": {"count": num_shards, "size": shard_size, "resumed": resumed},
        "first_call_s": first_call_s,
        "latency": timing.as_dict(),
        # every batch's wall time, of the shards sampled in this process (a resumed shard's
        # were measured by another)
        "batches": {"count": tally.batches, "timed": len(computed),
                    "median_s": statistics.median(computed) if computed else None,
                    "min_s": min(computed, default=None), "max_s": max(computed, default=None)},
        "memory": memory.result,
        "samples_finite": tally.non_finite == 0,
        "samples_non_finite": tally.non_finite,
        "samples_out_of_range": bad,  # non-finite, or beyond OUT_OF_RANGE x the reference's extent
        **({"provenance": provenance} if provenance else {}),
        **({"floors": floors} if floors else {}),
        **({"diagnostics": diagnostics} if diagnostics else {}),
        **({"sampler_calibration": calibration} if calibration is not None else {}),
        **({"sampler_stats": sampler_stats} if (sampler_stats := getattr(solver, "stats", lambda: None)()) else {}),
    }
    if any("flow" in metric.needs for _, metric, _ in specs):  # the grid, whatever the sampler
        measurements["flow_grid"] = ("not applicable: a one-step map" if getattr(built.method, "one_step", False)
                                     else {"solver": FLOW_GRID_SOLVER, "steps": sorted(flows)})
    files: dict[str, tuple[str, Any]] = {}
    if len(shape) == 3 and shape[0] in (1, 3) and finite and merged.grid is not None:
        from PIL import Image

        grid = image_grid(merged.grid, shape)
        files["grid"] = ("png", lambda f, g=grid: Image.fromarray(g).save(f, format="PNG"))
    if flat_dim == 2 and finite:
        # A fixed random subset: a stratified reference (moons on a grid of angles) is
        # ordered, and its first points would show one moon only.
        keep = np.sort(np.random.default_rng(0).permutation(n)[:SAVED_POINTS])
        points = {"source": source[keep], "samples": samples[keep], "reference": reference_np[keep]}
        points = {k: v.astype(np.float32) for k, v in points.items()}
        files["points"] = ("npz", lambda f, p=points: np.savez_compressed(f, **p))
    return ("ok" if finite else "diverged"), metrics, measurements, files


def evaluate_shards(job: EvalJob, built: Built, model: nn.Module, train_stats: dict, store: ArtefactStore,
                    indices: Sequence[int]) -> None:
    """Sample shards ``indices`` of ``job``'s evaluation and save each to ``store`` (one
    saved already is kept), for a later :func:`evaluate` to merge: an evaluation whose
    shards run as separate tasks (harness.slurm). Nothing is timed, no metric computed."""
    count = math.ceil(job.budget.num_samples / job.budget.shard_size)
    if count < 2:
        raise ValueError(f"{job.label}: an evaluation of one shard has no shards to run apart")
    outside = [i for i in indices if not 0 <= i < count]
    if outside:
        raise ValueError(f"{job.label}: shard indices {outside} are outside 0..{count - 1}")
    evaluate(job, built, model, train_stats, store, only_shards=list(indices))
