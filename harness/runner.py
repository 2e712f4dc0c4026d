"""Execute a run plan: train each model under its fixed budget, then sample with every
sampler, measure, and write one record per (run, sampler).

A suite interrupted at any point resumes where it stopped: finished records are kept,
trained models are reused from ``models/``, unfinished work is redone.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import traceback
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from harness import registry as reg
from harness.codeversion import record_code
from harness.environment import environment
from harness.errors import StorageError
from harness.interfaces import Batch
from harness.measure import NFECounter, PeakMemory, time_calls
from harness.metrics import EvalContext, Trajectory
from harness.plan import EvalJob, RunPlan, TrainJob, canonical, spec_hash
from harness.results import (
    RECORD_SCHEMA,
    final_keys,
    lock_results,
    read_suite_file,
    record_path,
    remove_leftovers,
    write_atomic,
    write_json_atomic,
)
from harness.seeding import generator, seed_everything, stream_seed
from harness.spec import HardwareSpec

LOSS_CURVE_POINTS = 200


@dataclass
class Built:
    """The objects a training job's spec resolves to."""

    dataset: Any
    method: Any
    network: nn.Module
    device: torch.device
    dtype: torch.dtype


@dataclass
class TrainResult:
    status: str  # "ok" | "diverged"
    stats: dict[str, Any]
    model: nn.Module | None = None


@dataclass
class Summary:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, status: str, n: int = 1) -> None:
        self.counts[status] = self.counts.get(status, 0) + n

    def merge(self, counts: dict[str, int]) -> None:
        for status, n in counts.items():
            self.add(status, n)


def configure(hardware: HardwareSpec) -> torch.device:
    """Apply every hardware field that acts process-wide; returns the device."""
    if hardware.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("hardware.device is 'cuda' but torch.cuda.is_available() is False")
    if hardware.threads is not None:
        torch.set_num_threads(hardware.threads)
    if hardware.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(hardware.deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = hardware.deterministic
    torch.backends.cudnn.benchmark = not hardware.deterministic
    return torch.device(hardware.device)


def autocast(hardware: HardwareSpec, device: torch.device) -> contextlib.AbstractContextManager:
    if hardware.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, hardware.autocast))


def build(job: TrainJob, device: torch.device) -> Built:
    dtype = getattr(torch, job.hardware.dtype)
    dataset_cls = reg.DATASETS.get(job.dataset.implementation)
    dataset = dataset_cls(dataset_cls.Params.model_validate(job.dataset.params))
    method_cls = reg.METHODS.get(job.method.implementation)
    method = method_cls(method_cls.Params.model_validate(job.method.params))
    net_spec = dict(job.method.network)
    net_cls = reg.NETWORKS.get(net_spec.pop("name"))
    torch.manual_seed(stream_seed(job.seed, "init"))
    network = net_cls(net_cls.Params.model_validate(net_spec), dataset.shape).to(device=device, dtype=dtype)
    return Built(dataset, method, network, device, dtype)


def build_optimizer(job: TrainJob, network: nn.Module) -> torch.optim.Optimizer:
    spec = dict(job.method.optimizer)
    opt_cls = reg.OPTIMIZERS.get(spec.pop("name"))
    return opt_cls.build(opt_cls.Params.model_validate(spec), network.parameters())


class BatchStream:
    """Training pairs (x_0, x_1) on the CPU, drawn in order from one data generator.

    Targets are fresh samples every step, or epochs over a fixed train split; with a
    teacher, both come from the teacher's cached pairs, taken in epochs.
    """

    def __init__(self, dataset: Any, batch_size: int, gen: torch.Generator, pairs: Pairs | None = None):
        self.dataset = dataset
        self.batch_size = batch_size
        self.gen = gen
        self.pairs = pairs
        self.split = None if pairs is not None else dataset.train_split(gen)
        self._order = torch.empty(0, dtype=torch.long)

    @property
    def epoch_size(self) -> int | None:
        if self.pairs is not None:
            return len(self.pairs.z_0)
        return None if self.split is None else len(self.split)

    def _indices(self, size: int) -> torch.Tensor:
        while len(self._order) < self.batch_size:
            self._order = torch.cat([self._order, torch.randperm(size, generator=self.gen)])
        idx, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        return idx

    def next(self) -> Batch:
        if self.pairs is not None:
            idx = self._indices(len(self.pairs.z_0))
            return Batch(x_0=self.pairs.z_0[idx], x_1=self.pairs.z_1[idx])
        if self.split is None:
            x_1 = self.dataset.sample_target(self.batch_size, self.gen)
        else:
            x_1 = self.split[self._indices(len(self.split))]
        return Batch(x_0=self.dataset.sample_source(self.batch_size, self.gen), x_1=x_1)


class PreparedBatches:
    """Applies the method's optional ``prepare`` to every batch, in order.

    Batch i is prepared with a generator of its own (seeded by run seed and i), so the
    result is the same whether it runs inline or ahead of time in worker threads, which
    is how costly pairings (exact OT, Sinkhorn) overlap with the model's step.
    """

    def __init__(self, stream: BatchStream, method: Any, seed: int, workers: int):
        self.stream = stream
        self.prepare = getattr(method, "prepare", None)
        self.seed = seed
        self.index = 0
        self.pool = None
        self.queue: deque[Future] = deque()
        if self.prepare is not None and getattr(method, "prefetch", False) and workers > 0:
            self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flowgauge-prepare")
            self.depth = 2 * workers

    def _job(self) -> tuple[Batch, torch.Generator]:
        batch = self.stream.next()
        gen = generator(self.seed, f"prepare/{self.index}")
        self.index += 1
        return batch, gen

    def next(self) -> Batch:
        if self.prepare is None:
            return self.stream.next()
        if self.pool is None:
            return self.prepare(*self._job())
        while len(self.queue) < self.depth:
            self.queue.append(self.pool.submit(self.prepare, *self._job()))
        return self.queue.popleft().result()

    def close(self) -> None:
        if self.pool is not None:
            for future in self.queue:
                future.cancel()
            self.pool.shutdown(wait=True)


@dataclass
class Pairs:
    """A teacher's generated pairs: z_1 is the teacher's sample from source noise z_0."""

    z_0: torch.Tensor
    z_1: torch.Tensor
    stats: dict[str, Any]


class Validation:
    """Early stopping on a fixed validation set: pairs drawn once from their own stream,
    prepared once, and scored with the same loss randomness (t, ε) at every check, so
    that successive checks compare the weights and nothing else.

    The pairs are made of what the training batches are made of, held out: independent
    source and target draws, or, for a student of a teacher, ``pairs`` the teacher
    generated from source noise of their own stream. (A reflow student scored on
    independent pairs would be scored on the 1-rectified-flow objective, which it fits
    worse the straighter it gets, and early stopping would keep its first weights.)"""

    def __init__(self, job: TrainJob, built: Built, pairs: Pairs | None = None):
        self.spec = job.budget.early_stopping
        self.job, self.built = job, built
        n, bs = self.spec.val_size, job.method.batch_size
        if pairs is not None:
            if len(pairs.z_0) != n:
                raise ValueError(f"validation needs {n} teacher pairs, got {len(pairs.z_0)}")
            x_0, x_1 = pairs.z_0, pairs.z_1
        else:
            gen = generator(job.seed, "validation")
            x_0 = built.dataset.sample_source(n, gen)
            x_1 = built.dataset.sample_target(n, gen)
        prepare = getattr(built.method, "prepare", None)
        self.batches = []
        for i in range(0, n, bs):
            batch = Batch(x_0=x_0[i:i + bs], x_1=x_1[i:i + bs])
            if prepare is not None:
                batch = prepare(batch, generator(job.seed, f"validation-prepare/{i}"))
            self.batches.append(_to(batch, built))
        self.best, self.best_step, self.best_state, self.bad = math.inf, 0, None, 0
        self.curve: list[tuple[int, float]] = []

    def due(self, step: int, epoch_size: int | None) -> bool:
        if self.spec.every_steps is not None:
            return step % self.spec.every_steps == 0
        if not epoch_size:
            raise RuntimeError("early_stopping.every_epochs needs a fixed train split (dataset train_size)")
        every = max(1, round(self.spec.every_epochs * epoch_size / self.job.method.batch_size))
        return step % every == 0

    @torch.no_grad()
    def check(self, model: nn.Module, step: int) -> bool:
        """Score the current weights; True when patience has run out."""
        gen = generator(self.job.seed, "validation-loss", self.built.device)
        self.built.network.eval()
        with autocast(self.job.hardware, self.built.device):
            losses = [float(self.built.method.loss(model, b, gen)) * len(b.x_0) for b in self.batches]
        self.built.network.train()
        value = sum(losses) / self.spec.val_size
        self.curve.append((step, value))
        if value < self.best:
            self.best, self.best_step, self.bad = value, step, 0
            if self.spec.restore_best:
                self.best_state = {k: v.detach().clone() for k, v in self.built.network.state_dict().items()}
        else:
            self.bad += 1
        return self.bad >= self.spec.patience

    def finish(self) -> dict[str, Any]:
        if self.best_state is not None:
            self.built.network.load_state_dict(self.best_state)
        return {"best_val_loss": self.best, "best_step": self.best_step, "restored_best": self.best_state is not None,
                "val_curve": [[s, v] for s, v in self.curve]}


def train(job: TrainJob, built: Built, progress: bool, pairs: Pairs | None = None,
          val_pairs: Pairs | None = None) -> TrainResult:
    """Train under the budget: stop at whichever of steps/seconds/samples/epochs comes first.

    The seconds budget stops before a step that would end past it (by the mean step time so
    far), so training wall time stays within it; the first step always runs.

    ``pairs``: a teacher's training pairs; ``val_pairs``: its held-out pairs, which early
    stopping then scores on (required when a run with a teacher stops early)."""
    budget, hw = job.budget, job.hardware
    network = built.network
    model = torch.compile(network) if hw.compile else network
    optimizer = build_optimizer(job, network)
    data_gen = generator(job.seed, "data")
    method_gen = generator(job.seed, "method", built.device)
    stream = BatchStream(built.dataset, job.method.batch_size, data_gen, pairs)
    batches = PreparedBatches(stream, built.method, job.seed, hw.prefetch_workers)
    split_size = stream.epoch_size
    batch_size = job.method.batch_size

    def reached(step: int, elapsed: float) -> str | None:
        if budget.steps is not None and step >= budget.steps:
            return "steps"
        if budget.samples is not None and step * batch_size >= budget.samples:
            return "samples"
        if budget.epochs is not None and split_size and step * batch_size >= budget.epochs * split_size:
            return "epochs"
        if budget.seconds is not None and step and elapsed + step_time(step, elapsed) > budget.seconds:
            return "seconds"
        return None

    def step_time(step: int, elapsed: float) -> float:
        """The expected time of the next step: the mean after the first (which carries
        warm-up and compilation), or the first when it is all there is."""
        return (elapsed - first_step_s) / (step - 1) if step > 1 else first_step_s

    curve: list[tuple[int, float]] = []
    window = torch.zeros((), device=built.device, dtype=torch.float64)
    window_n = 0
    status, stopped_by = "ok", None
    step, first_step_s = 0, None
    # Per-step bars only on a terminal: in a log file they would be thousands of lines.
    bar = tqdm(total=budget.steps, desc=f"train {job.method.name}/{job.dataset.name}/s{job.seed}",
               leave=False, disable=not (progress and sys.stderr.isatty()), unit="step")
    if budget.early_stopping is not None and pairs is not None and val_pairs is None:
        raise ValueError("early stopping of a run with a teacher needs held-out teacher pairs (val_pairs)")
    validation = Validation(job, built, val_pairs) if budget.early_stopping is not None else None
    network.train()
    start = time.perf_counter()
    while (stopped_by := reached(step, time.perf_counter() - start)) is None:
        batch = _to(batches.next(), built)
        with autocast(hw, built.device):
            loss = built.method.loss(model, batch, method_gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        window += loss.detach().double()
        window_n += 1
        if first_step_s is None:
            first_step_s = time.perf_counter() - start  # includes torch.compile when on
        if step % budget.log_every == 0 or reached(step, time.perf_counter() - start):
            mean = float(window) / window_n
            curve.append((step, mean))
            window.zero_()
            window_n = 0
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{mean:.4g}")
            if not math.isfinite(mean):
                status, stopped_by = "diverged", "non-finite loss"
                break
        if validation is not None and validation.due(step, split_size) and validation.check(model, step):
            stopped_by = "early stopping"
            break
    if built.device.type == "cuda":
        torch.cuda.synchronize(built.device)
    wall = time.perf_counter() - start
    bar.close()
    batches.close()
    stats = {
        "steps": step,
        "samples_seen": step * batch_size,
        "epochs": None if not split_size else step * batch_size / split_size,
        # The first step carries torch.compile's compilation (and eager warm-up): it is
        # reported on its own and left out of the training time and the step rate.
        "wall_s": wall,
        "first_step_s": first_step_s,
        # None after a single step: there is no steady-state training to time.
        "train_s": wall - first_step_s if step > 1 else None,
        "steps_per_s": (step - 1) / (wall - first_step_s) if step > 1 and wall > first_step_s else None,
        "stopped_by": stopped_by,
        "final_loss": curve[-1][1] if curve else None,
        "loss_curve": _thin(curve),
        "num_params": sum(p.numel() for p in network.parameters() if p.requires_grad),
        "reused": False,
    }
    if pairs is not None:
        stats["teacher_pairs"] = pairs.stats
    if val_pairs is not None:
        stats["validation_pairs"] = val_pairs.stats
    if validation is not None and status == "ok":
        stats["early_stopping"] = validation.finish()
    return TrainResult(status, stats, model if status == "ok" else None)


def _to(batch: Batch, built: Built) -> Batch:
    def move(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.to(built.device, built.dtype, non_blocking=True)

    return Batch(x_0=move(batch.x_0), x_1=move(batch.x_1), weights=move(batch.weights))


def _thin(curve: list[tuple[int, float]]) -> list[list[float]]:
    """At most LOSS_CURVE_POINTS evenly spaced points, the last one always kept."""
    if len(curve) <= LOSS_CURVE_POINTS:
        return [[s, v] for s, v in curve]
    idx = np.unique(np.linspace(0, len(curve) - 1, LOSS_CURVE_POINTS).round().astype(int))
    return [[curve[i][0], curve[i][1]] for i in idx]


SAVED_POINTS = 1000  # generated 2-D points kept per record, for plots
GRID_SAMPLES = 64  # generated images kept per record, as one PNG grid
OUT_OF_RANGE = 1e3  # samples this many times beyond the reference's extent count as diverged


def samples_out_of_range(samples: np.ndarray, reference: np.ndarray) -> int:
    """How many samples are non-finite or lie beyond ``OUT_OF_RANGE`` times the reference's
    largest absolute coordinate (plus 1): a finite but exploded model (a loss of 1e29, W2 of
    1e14) is diverged, not a row to rank."""
    bound = OUT_OF_RANGE * (float(np.abs(reference).max()) + 1.0)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(samples).all(axis=1) & (np.abs(samples) <= bound).all(axis=1)
    return int((~ok).sum())
FLOW_GRID_SOLVER = "euler"  # flow metrics (path energy, straightness) integrate on its uniform grid


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


def evaluate(job: EvalJob, built: Built, model: nn.Module,
             train_stats: dict) -> tuple[str, dict, dict, dict[str, tuple[str, Any]]]:
    """Sample with one sampler; measure NFE, latency, memory; compute the metrics.

    Also returns the files to keep beside the record, by name: (suffix, write(binary file)).
    Two-dimensional data: "points", up to SAVED_POINTS source points, the samples generated
    from them and reference points (float32), for the report's sample plots. Images:
    "grid", the first GRID_SAMPLES samples as one PNG."""
    seed, n = job.train.seed, job.budget.num_samples
    hw = job.train.hardware
    solver_cls = reg.SOLVERS.get(job.sampler.solver)
    solver = solver_cls(solver_cls.Params.model_validate(job.sampler.params))
    x_0 = built.dataset.sample_source(n, generator(seed, "eval-source")).to(built.device, built.dtype)
    reference = built.dataset.sample_target(n, generator(seed, "eval-reference"))
    counter = NFECounter(model)
    model.eval()

    def sample(fn: Any) -> Any:
        with torch.no_grad(), autocast(hw, built.device):
            return built.method.sample(fn, x_0, solver, generator(seed, "eval-method", built.device))

    t0 = time.perf_counter()
    with PeakMemory(built.device) as memory:
        solution = sample(counter)
    first_call_s = time.perf_counter() - t0
    timing = time_calls(lambda: sample(model), built.device, job.budget.warmup, job.budget.repeats)
    samples = solution.x.detach().double().cpu().reshape(n, -1).numpy()
    reference_np = reference.double().reshape(n, -1).numpy()
    bad = samples_out_of_range(samples, reference_np)
    finite = bad == 0  # every sample finite and within range: the metrics are published
    specs = [(spec, reg.METRICS.get(spec.name)) for spec in job.metrics]
    flows: dict[int, Trajectory | None] = {}

    def flow(steps: int) -> Trajectory | None:
        """The method's ODE from x_0 on a uniform Euler grid, recorded in a separate call
        (so that storing states costs neither memory nor time above); None for a one-step
        map, which has no flow to measure."""
        if getattr(built.method, "one_step", False):
            return None
        if steps not in flows:
            euler = reg.SOLVERS.get(FLOW_GRID_SOLVER)
            with torch.no_grad(), autocast(hw, built.device):
                recorded = built.method.sample(model, x_0, euler(euler.Params(steps=steps)),
                                               generator(seed, "eval-method", built.device), record=True)
            flows[steps] = Trajectory(recorded.times,
                                      [x.detach().double().cpu().reshape(n, -1).numpy() for x in recorded.trajectory])
        return flows[steps]

    reference_2 = None
    if any("reference_2" in metric.needs for _, metric in specs):
        reference_2 = built.dataset.sample_target(n, generator(seed, "eval-reference-2")).double().reshape(n, -1).numpy()
    ctx = EvalContext(
        reference_2=reference_2,
        samples=samples if finite else None,
        reference=reference_np,
        source=x_0.detach().double().cpu().reshape(n, -1).numpy(),
        flow=flow,
        nfe=counter.nfe(n),
        steps=solution.steps,
        latency_s=timing.median,
        num_samples=n,
        peak_memory_mib=memory.result.get("peak_mib"),
        memory_added_mib=memory.result.get("peak_above_start_mib"),
        train=train_stats,
        num_params=train_stats.get("num_params"),
        shape=tuple(built.dataset.shape),
    )
    metrics: dict[str, float | None] = {}
    provenance: dict[str, dict] = {}  # what produced each value, for the metrics that say
    for spec, metric in specs:
        if ("samples" in metric.needs or "flow" in metric.needs) and not finite:
            metrics[spec.name] = None
            continue
        params = metric.Params.model_validate(spec.params)
        value = metric.fn(ctx, params)
        metrics[spec.name] = None if value is None else float(value)
        if metric.provenance is not None:
            provenance[spec.name] = metric.provenance(ctx, params)
    measurements = {
        "nfe": ctx.nfe,
        "network_calls": counter.calls,
        "steps": solution.steps,
        "rejected_steps": solution.rejected_steps,
        "nfe_convention": getattr(solver, "nfe_convention", None),
        "num_samples": n,
        "batch_size": n,
        "first_call_s": first_call_s,
        "latency": timing.as_dict(),
        "memory": memory.result,
        "samples_finite": bool(np.isfinite(samples).all()),
        "samples_out_of_range": bad,  # non-finite, or beyond OUT_OF_RANGE x the reference's extent
        **({"provenance": provenance} if provenance else {}),
    }
    if any("flow" in metric.needs for _, metric in specs):  # the grid, whatever the sampler
        measurements["flow_grid"] = ("not applicable: a one-step map" if getattr(built.method, "one_step", False)
                                     else {"solver": FLOW_GRID_SOLVER, "steps": sorted(flows)})
    files: dict[str, tuple[str, Any]] = {}
    if len(built.dataset.shape) == 3 and built.dataset.shape[0] in (1, 3) and finite:
        from PIL import Image

        grid = image_grid(samples, tuple(built.dataset.shape))
        files["grid"] = ("png", lambda f, g=grid: Image.fromarray(g).save(f, format="PNG"))
    if samples.shape[1] == 2:
        # A fixed random subset: a stratified reference (moons on a grid of angles) is
        # ordered, and its first points would show one moon only.
        keep = np.sort(np.random.default_rng(0).permutation(n)[:SAVED_POINTS])
        points = {"source": ctx.source[keep], "samples": samples[keep], "reference": ctx.reference[keep]}
        points = {k: v.astype(np.float32) for k, v in points.items()}
        files["points"] = ("npz", lambda f, p=points: np.savez_compressed(f, **p))
    return ("ok" if finite else "diverged"), metrics, measurements, files


class Runner:
    """Runs a plan and writes records under ``results_dir``: inline, or with ``workers`` > 1
    in that many local processes (see :mod:`harness.executors`).

    ``concurrency`` is how many trainings run at once on this machine; it is recorded with
    every record's environment because it colours the timings."""

    def __init__(self, results_dir: Path, progress: bool = True, concurrency: int = 1):
        self.results_dir = Path(results_dir)
        self.progress = progress
        self.concurrency = concurrency

    def model_path(self, key: str) -> Path:
        return self.results_dir / "models" / f"{key}.pt"

    def run(self, plan: RunPlan, workers: int = 1, origin: dict | None = None, rerun: bool = False) -> Summary:
        """Run what ``plan`` has not finished in the results folder. ``origin`` (how the
        suite was asked for: its reference, ``--set`` overrides and specs root) goes into
        suite.json, so that ``flowgauge claims`` can compare with the specs as they stand.
        ``rerun``: first delete the records, trained models and teacher pairs of every
        training the plan evaluates, so that they train and evaluate again."""
        with lock_results(self.results_dir) as writable:
            if rerun and writable:
                self._forget(plan)
            return self._run(plan, workers, writable, origin)

    def _forget(self, plan: RunPlan) -> None:
        for job in plan.trainings:
            if not plan.evals[job.key]:
                continue  # a teacher that only supplies pairs: kept unless selected itself
            keys = {e.key for e in plan.evals[job.key]}
            for path in (self.results_dir / "records").glob("*.json"):
                if path.stem.rsplit("__", 1)[-1] in keys:
                    path.unlink()
            for path in [self.model_path(job.key), self.model_path(job.key).with_suffix(".json"),
                         *(self.results_dir / "pairs").glob(f"{job.key}__*.pt")]:
                path.unlink(missing_ok=True)

    def _run(self, plan: RunPlan, workers: int, writable: bool = True, origin: dict | None = None) -> Summary:
        summary = Summary()
        done = final_keys(self.results_dir)
        pending = {job.key: [e for e in plan.evals[job.key] if e.key not in done] for job in plan.trainings}
        # suite.json: the suite as resolved (JSON types, as it reads back), the keys of the
        # records it produces (tables leave out records of older specs) and how it was asked for.
        suite = {"schema": RECORD_SCHEMA, "suite": canonical(plan.suite), "records": sorted(plan.record_keys),
                 "origin": origin}
        if not writable:
            todo = sum(len(evals) for evals in pending.values())
            if todo:
                raise StorageError(f"{self.results_dir} cannot be written (read-only or no permission) and "
                                   f"{todo} evaluation(s) of this plan are not finished there")
            if read_suite_file(self.results_dir) != suite:
                print(f"warning: {self.results_dir / 'suite.json'} is not this suite's and cannot be rewritten "
                      "(read-only); the tables keep its options", file=sys.stderr)
        else:
            remove_leftovers(self.results_dir)  # safe: the lock says no other run owns them
            if read_suite_file(self.results_dir) != suite:
                write_json_atomic(self.results_dir / "suite.json", suite)
        for job in plan.trainings:
            for _ in range(len(plan.evals[job.key]) - len(pending[job.key])):
                summary.add("cached")
        # A teacher is needed when a student that still has to train needs its pairs or weights.
        needed: set[str] = set()
        for job in reversed(plan.trainings):  # students come after their teachers
            if pending[job.key] or job.key in needed:
                needed.add(job.key)
                if job.teacher is not None and not self.model_path(job.key).is_file():
                    needed.add(job.teacher.key)
        jobs = [job for job in plan.trainings if job.key in needed]
        if workers > 1 and len(jobs) > 1:
            from harness.executors import run_in_processes

            bar = tqdm(total=len(jobs), desc=f"suite {plan.suite.name} ({workers} workers)", unit="run",
                       disable=not self.progress)

            def unit_finished(job: TrainJob, counts: dict[str, int]) -> None:
                summary.merge(counts)
                bar.set_postfix_str(job.label)
                bar.update()

            try:
                run_in_processes(self.results_dir, jobs, pending, workers, unit_finished)
            finally:
                bar.close()
            return summary
        bar = tqdm(jobs, desc=f"suite {plan.suite.name}", unit="run", disable=not self.progress)
        for job in bar:
            bar.set_postfix_str(job.label)
            self._run_training(job, pending[job.key], summary)
        return summary

    def _run_training(self, job: TrainJob, evals: list[EvalJob], summary: Summary) -> None:
        try:
            device = configure(job.hardware)
            seed_everything(job.seed)
            built = build(job, device)
            result = self._train_or_load(job, built)
        except StorageError:
            raise  # the results folder, not the run: nothing more can be written
        except Exception as err:  # noqa: BLE001 - a broken run is recorded; the suite goes on
            for e in evals:
                self._write(e, "failed", {}, {}, {}, error=_error(err))
                summary.add("failed")
            return
        for e in evals:
            if result.status != "ok":
                self._write(e, result.status, {}, {}, result.stats)
                summary.add(result.status)
                continue
            try:
                status, metrics, measurements, files = evaluate(e, built, result.model, result.stats)
            except StorageError:
                raise
            except Exception as err:  # noqa: BLE001
                self._write(e, "failed", {}, {}, result.stats, error=_error(err))
                summary.add("failed")
                continue
            artefacts = {}
            for name, (suffix, write) in files.items():
                path = self.results_dir / "samples" / f"{e.key}.{suffix}"
                write_atomic(path, write)
                artefacts[name] = str(path.relative_to(self.results_dir))
            self._write(e, status, metrics, measurements, result.stats, artefacts=artefacts)
            summary.add(status)

    def _load_weights(self, job: TrainJob, network: nn.Module, device: torch.device) -> None:
        path = self.model_path(job.key)
        if not path.is_file():
            raise RuntimeError(f"run {job.label} ({job.key}) has no trained model at {path}: it diverged or failed")
        try:
            network.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        except RuntimeError as err:
            raise RuntimeError(f"weights of {job.label} do not fit this network: {err}") from None

    def _train_or_load(self, job: TrainJob, built: Built) -> TrainResult:
        path = self.model_path(job.key)
        stats_path = path.with_suffix(".json")
        if path.is_file() and stats_path.is_file():
            self._load_weights(job, built.network, built.device)
            stats = {**json.loads(stats_path.read_text())["train"], "reused": True}
            model = torch.compile(built.network) if job.hardware.compile else built.network
            return TrainResult("ok", stats, model)
        pairs = val_pairs = None
        if job.teacher is not None:
            pairs = self._teacher_pairs(job, built.device)
            if job.budget.early_stopping is not None:
                val_pairs = self._teacher_pairs(job, built.device, "validation", job.budget.early_stopping.val_size)
            if job.method.teacher.init == "teacher":
                self._load_weights(job.teacher, built.network, built.device)
        result = train(job, built, self.progress, pairs, val_pairs)
        if result.status == "ok":
            state = built.network.state_dict()
            write_atomic(path, lambda f: torch.save(state, f))
            write_json_atomic(stats_path, {"key": job.key, "spec": job.spec, "train": result.stats})
        return result

    def _teacher_pairs(self, job: TrainJob, device: torch.device, purpose: str = "training",
                       num_pairs: int | None = None) -> Pairs:
        """The teacher's (z_0, z_1) pairs: loaded when cached, else generated and cached.

        ``purpose`` "training": the spec's ``num_pairs`` pairs the student trains on;
        "validation": ``num_pairs`` held-out pairs from source noise of another stream."""
        spec = job.method.teacher
        teacher = job.teacher
        num_pairs = spec.num_pairs if num_pairs is None else num_pairs
        stream = "teacher-pairs" if purpose == "training" else f"{purpose}-teacher-pairs"
        parts = {"teacher": teacher.key, "sampler": canonical(spec.sampler), "num_pairs": num_pairs}
        key = spec_hash(parts if purpose == "training" else {**parts, "purpose": purpose})
        path = self.results_dir / "pairs" / f"{teacher.key}__{key}.pt"
        if path.is_file():
            data = torch.load(path, map_location="cpu", weights_only=True)
            return Pairs(data["z_0"], data["z_1"], {**json.loads(data["stats"]), "reused": True})
        built = build(teacher, device)
        self._load_weights(teacher, built.network, device)
        solver_cls = reg.SOLVERS.get(spec.sampler.solver)
        solver = solver_cls(solver_cls.Params.model_validate(spec.sampler.params))
        z_0 = built.dataset.sample_source(num_pairs, generator(job.seed, stream))
        counter = NFECounter(built.network)
        built.network.eval()
        start = time.perf_counter()
        with torch.no_grad(), autocast(teacher.hardware, device):
            solution = built.method.sample(counter, z_0.to(device, built.dtype), solver,
                                           generator(job.seed, f"{stream}-method", device))
        z_1 = solution.x.detach().to("cpu", torch.float32)
        if not torch.isfinite(z_1).all():
            raise RuntimeError(f"teacher {teacher.label} generated non-finite pairs")
        stats = {"teacher_key": teacher.key, "teacher": teacher.method.name, "sampler": spec.sampler.name,
                 "num_pairs": num_pairs, "nfe": counter.nfe(num_pairs),
                 "seconds": time.perf_counter() - start, "reused": False}
        write_atomic(path, lambda f: torch.save({"z_0": z_0, "z_1": z_1, "stats": json.dumps(stats)}, f))
        return Pairs(z_0, z_1, stats)

    def _write(self, job: EvalJob, status: str, metrics: dict, measurements: dict, train_stats: dict,
               error: str | None = None, artefacts: dict | None = None) -> None:
        record = {
            "schema": RECORD_SCHEMA,
            "key": job.key,
            "train_key": job.train.key,
            "suite": job.suite,
            "dataset": job.train.dataset.name,
            "method": job.train.method.name,
            "sampler": job.sampler.name,
            "seed": job.train.seed,
            "status": status,
            "error": error,
            "metrics": metrics,
            "measurements": measurements,
            "train": train_stats,
            "spec": job.spec,
            "code_modules": record_code(job.spec)[1],  # the fingerprints behind spec.code, by module
            "environment": {**environment(job.train.hardware.device), "concurrent_runs": self.concurrency},
            "artefacts": artefacts or {},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(record_path(self.results_dir, job.key, job.label), record)


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}\n" + "".join(traceback.format_exception(err)[-6:])
