"""Execute a run plan: train each model under its fixed budget, then sample with every
sampler, measure, and write one record per (run, sampler).

A suite interrupted at any point resumes where it stopped: finished records are kept,
trained models are reused from ``models/``, unfinished work is redone.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from harness import registry as reg
from harness.environment import environment
from harness.interfaces import Batch
from harness.measure import NFECounter, PeakMemory, time_calls
from harness.metrics import EvalContext
from harness.plan import EvalJob, RunPlan, TrainJob, canonical
from harness.results import RECORD_SCHEMA, final_keys, record_path, write_json_atomic
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

    def add(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1


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
    """Target minibatches: fresh samples each step, or epochs over a fixed train split."""

    def __init__(self, dataset: Any, batch_size: int, gen: torch.Generator):
        self.dataset = dataset
        self.batch_size = batch_size
        self.gen = gen
        self.split = dataset.train_split(gen)
        self._order = torch.empty(0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        if self.split is None:
            return self.dataset.sample_target(self.batch_size, self.gen)
        while len(self._order) < self.batch_size:
            self._order = torch.cat([self._order, torch.randperm(len(self.split), generator=self.gen)])
        idx, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        return self.split[idx]


def train(job: TrainJob, built: Built, progress: bool) -> TrainResult:
    """Train under the budget: stop at whichever of steps/seconds/samples/epochs comes first."""
    budget, hw = job.budget, job.hardware
    network = built.network
    model = torch.compile(network) if hw.compile else network
    optimizer = build_optimizer(job, network)
    data_gen = generator(job.seed, "data")
    method_gen = generator(job.seed, "method", built.device)
    stream = BatchStream(built.dataset, job.method.batch_size, data_gen)
    split_size = None if stream.split is None else len(stream.split)
    batch_size = job.method.batch_size

    def reached(step: int, elapsed: float) -> str | None:
        if budget.steps is not None and step >= budget.steps:
            return "steps"
        if budget.samples is not None and step * batch_size >= budget.samples:
            return "samples"
        if budget.epochs is not None and split_size and step * batch_size >= budget.epochs * split_size:
            return "epochs"
        if budget.seconds is not None and elapsed >= budget.seconds:
            return "seconds"
        return None

    curve: list[tuple[int, float]] = []
    window = torch.zeros((), device=built.device, dtype=torch.float64)
    window_n = 0
    status, stopped_by = "ok", None
    step, first_step_s = 0, None
    # Per-step bars only on a terminal: in a log file they would be thousands of lines.
    bar = tqdm(total=budget.steps, desc=f"train {job.method.name}/{job.dataset.name}/s{job.seed}",
               leave=False, disable=not (progress and sys.stderr.isatty()), unit="step")
    network.train()
    start = time.perf_counter()
    while (stopped_by := reached(step, time.perf_counter() - start)) is None:
        x_1 = stream.next().to(built.device, built.dtype)
        x_0 = built.dataset.sample_source(batch_size, data_gen).to(built.device, built.dtype)
        with autocast(hw, built.device):
            loss = built.method.loss(model, Batch(x_0=x_0, x_1=x_1), method_gen)
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
    if built.device.type == "cuda":
        torch.cuda.synchronize(built.device)
    wall = time.perf_counter() - start
    bar.close()
    stats = {
        "steps": step,
        "samples_seen": step * batch_size,
        "epochs": None if not split_size else step * batch_size / split_size,
        # The first step carries torch.compile's compilation (and eager warm-up): it is
        # reported on its own and left out of the training time and the step rate.
        "wall_s": wall,
        "first_step_s": first_step_s,
        "train_s": wall - (first_step_s or 0.0),
        "steps_per_s": (step - 1) / (wall - first_step_s) if step > 1 and wall > first_step_s else None,
        "stopped_by": stopped_by,
        "final_loss": curve[-1][1] if curve else None,
        "loss_curve": _thin(curve),
        "num_params": sum(p.numel() for p in network.parameters() if p.requires_grad),
        "reused": False,
    }
    return TrainResult(status, stats, model if status == "ok" else None)


def _thin(curve: list[tuple[int, float]]) -> list[list[float]]:
    """At most LOSS_CURVE_POINTS evenly spaced points, the last one always kept."""
    if len(curve) <= LOSS_CURVE_POINTS:
        return [[s, v] for s, v in curve]
    idx = np.unique(np.linspace(0, len(curve) - 1, LOSS_CURVE_POINTS).round().astype(int))
    return [[curve[i][0], curve[i][1]] for i in idx]


def evaluate(job: EvalJob, built: Built, model: nn.Module, train_stats: dict) -> tuple[str, dict, dict]:
    """Sample with one sampler; measure NFE, latency, memory; compute the metrics."""
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
    finite = bool(np.isfinite(samples).all())
    ctx = EvalContext(
        samples=samples if finite else None,
        reference=reference.double().reshape(n, -1).numpy(),
        nfe=counter.nfe(n),
        steps=solution.steps,
        latency_s=timing.median,
        num_samples=n,
        peak_memory_mib=memory.result.get("peak_mib"),
        train=train_stats,
        num_params=train_stats.get("num_params"),
    )
    metrics: dict[str, float | None] = {}
    for spec in job.metrics:
        metric = reg.METRICS.get(spec.name)
        if "samples" in metric.needs and not finite:
            metrics[spec.name] = None
            continue
        value = metric.fn(ctx, metric.Params.model_validate(spec.params))
        metrics[spec.name] = None if value is None else float(value)
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
        "samples_finite": finite,
    }
    return ("ok" if finite else "diverged"), metrics, measurements


class Runner:
    """Runs a plan in this process and writes records under ``results_dir``."""

    def __init__(self, results_dir: Path, progress: bool = True):
        self.results_dir = Path(results_dir)
        self.progress = progress

    def model_path(self, key: str) -> Path:
        return self.results_dir / "models" / f"{key}.pt"

    def run(self, plan: RunPlan) -> Summary:
        summary = Summary()
        write_json_atomic(self.results_dir / "suite.json", {"schema": RECORD_SCHEMA, "suite": canonical(plan.suite)})
        done = final_keys(self.results_dir)
        bar = tqdm(plan.trainings, desc=f"suite {plan.suite.name}", unit="run", disable=not self.progress)
        for job in bar:
            todo = [e for e in plan.evals[job.key] if e.key not in done]
            for _ in range(len(plan.evals[job.key]) - len(todo)):
                summary.add("cached")
            if not todo:
                continue
            bar.set_postfix_str(f"{job.dataset.name}/{job.method.name}/seed{job.seed}")
            self._run_training(job, todo, summary)
        return summary

    def _run_training(self, job: TrainJob, evals: list[EvalJob], summary: Summary) -> None:
        try:
            device = configure(job.hardware)
            seed_everything(job.seed)
            built = build(job, device)
            result = self._train_or_load(job, built)
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
                status, metrics, measurements = evaluate(e, built, result.model, result.stats)
            except Exception as err:  # noqa: BLE001
                self._write(e, "failed", {}, {}, result.stats, error=_error(err))
                summary.add("failed")
                continue
            self._write(e, status, metrics, measurements, result.stats)
            summary.add(status)

    def _train_or_load(self, job: TrainJob, built: Built) -> TrainResult:
        path = self.model_path(job.key)
        stats_path = path.with_suffix(".json")
        if path.is_file() and stats_path.is_file():
            import json

            built.network.load_state_dict(torch.load(path, map_location=built.device, weights_only=True))
            stats = {**json.loads(stats_path.read_text())["train"], "reused": True}
            model = torch.compile(built.network) if job.hardware.compile else built.network
            return TrainResult("ok", stats, model)
        result = train(job, built, self.progress)
        if result.status == "ok":
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".pt.tmp")
            torch.save(built.network.state_dict(), tmp)
            os.replace(tmp, path)
            write_json_atomic(stats_path, {"key": job.key, "spec": job.spec, "train": result.stats})
        return result

    def _write(self, job: EvalJob, status: str, metrics: dict, measurements: dict, train_stats: dict,
               error: str | None = None) -> None:
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
            "environment": environment(job.train.hardware.device),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(record_path(self.results_dir, job.key, job.label), record)


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}\n" + "".join(traceback.format_exception(err)[-6:])
