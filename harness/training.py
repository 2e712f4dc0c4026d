"""Training under a fixed budget: the batch stream, methods' batch preparation ahead of
time, early stopping on a fixed validation set, the optimisation extras a method spec may
ask for (a moving average of the weights, gradient-norm clipping, a learning-rate warmup),
and the loop itself."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from harness.building import Built, autocast, build_optimizer, to_device
from harness.interfaces import Batch
from harness.measure import OtherLoad
from harness.plan import TrainJob
from harness.seeding import generator

LOSS_CURVE_POINTS = 200


GRAD_NORM_FLUSH = 256  # gradient norms gathered on the device, copied to the CPU this many at a time


@dataclass
class TrainResult:
    status: str  # "ok" | "diverged"
    stats: dict[str, Any]
    model: nn.Module | None = None
    # With ``ema`` on, the model holds the moving average; these are the last raw weights
    # (a CPU copy, not saved to the artefact store).
    raw_state: dict[str, torch.Tensor] | None = None


class WeightAverage:
    """An exponential moving average of a network's trainable parameters (the "EMA model"
    of TorchCFM's CIFAR-10 protocol, ``utils_cifar.ema``): starting from the initial weights,
    after every optimiser step

        θ̄_k = decay · θ̄_(k−1) + (1 − decay) · θ_k,

    with no bias correction and no warm-up of the decay, so θ̄_n = decay^n · θ_0 +
    (1 − decay) · Σ_k decay^(n−k) · θ_k. Buffers (none in this project's networks hold
    state) are not averaged: the network's own are used with the average."""

    def __init__(self, network: nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in network.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_mul_(self.average, self.decay)
        torch._foreach_add_(self.average, [p.detach() for p in self.params], alpha=1.0 - self.decay)
        self.updates += 1

    @torch.no_grad()
    def copy_to_network(self) -> None:
        """Put the average in the network's parameters (in place: a compiled model sees it)."""
        for p, a in zip(self.params, self.average):
            p.copy_(a)

    @contextlib.contextmanager
    def swapped_in(self):
        """The average in the network's parameters meanwhile; the raw weights after."""
        with torch.no_grad():
            raw = [p.detach().clone() for p in self.params]
        self.copy_to_network()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw):
                    p.copy_(r)


class GradientClipping:
    """Scale the gradients so that their global 2-norm is at most ``max_norm``
    (``torch.nn.utils.clip_grad_norm_``), and keep every step's norm before clipping, on the
    device until ``GRAD_NORM_FLUSH`` have gathered (no synchronisation per step)."""

    def __init__(self, network: nn.Module, max_norm: float):
        self.params = [p for p in network.parameters() if p.requires_grad]
        self.max_norm = max_norm
        self._pending: list[torch.Tensor] = []
        self._norms: list[np.ndarray] = []

    def __call__(self) -> None:
        self._pending.append(torch.nn.utils.clip_grad_norm_(self.params, self.max_norm).detach())
        if len(self._pending) >= GRAD_NORM_FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._norms.append(torch.stack(self._pending).double().cpu().numpy())
            self._pending = []

    def norms(self) -> np.ndarray:
        """Every step's global gradient norm before clipping, in order."""
        self._flush()
        return np.concatenate(self._norms) if self._norms else np.empty(0)

    def stats(self) -> dict[str, Any]:
        norms = self.norms()
        finite = norms[np.isfinite(norms)]
        clipped = int((norms > self.max_norm).sum())
        return {"max_norm": self.max_norm, "clipped_steps": clipped,
                "clipped_fraction": clipped / len(norms) if len(norms) else None,
                "median_norm": float(np.median(finite)) if len(finite) else None,
                "p90_norm": float(np.quantile(finite, 0.9)) if len(finite) else None,
                "max_seen_norm": float(finite.max()) if len(finite) else None,
                "non_finite_norms": int(len(norms) - len(finite))}


def warmup_schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """TorchCFM's linear warmup (``warmup_lr`` in its ``train_cifar10.py``): optimiser step
    k = 0, 1, 2, ... runs at lr · min(k, steps) / steps, so the first step at 0 (Adam's
    moments still take its gradient in) and step ``steps`` onwards at the full lr. Call
    ``step()`` after every optimiser step. None when ``steps`` is 0 (no warmup)."""
    if steps == 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(k, steps) / steps)



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
        labels = getattr(dataset, "labels", None) if self.split is not None else None
        self.labels = labels if labels is not None and len(labels) == len(self.split) else None
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
            return self.pairs.batch(idx)
        labels = None
        if self.split is None:
            x_1 = self.dataset.sample_target(self.batch_size, self.gen)
        else:
            idx = self._indices(len(self.split))
            x_1 = self.split[idx]
            labels = None if self.labels is None else self.labels[idx]
        return Batch(x_0=self.dataset.sample_source(self.batch_size, self.gen), x_1=x_1, labels=labels)


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
    """A teacher's generated pairs: z_1 is the teacher's sample from source noise z_0.

    With ``teacher.keep: path`` also the teacher's recorded states between them, ``path``
    (num_pairs, T+1, *dims) float32 with ``path[:, 0] = z_0`` and ``path[:, T] = z_1``, at
    ``times`` (T+1,) float64."""

    z_0: torch.Tensor
    z_1: torch.Tensor
    stats: dict[str, Any]
    path: torch.Tensor | None = None
    times: torch.Tensor | None = None

    def batch(self, idx: torch.Tensor | slice) -> Batch:
        """The rows ``idx`` as a training batch (their paths with them, when kept)."""
        path = None if self.path is None else self.path[idx]
        return Batch(x_0=self.z_0[idx], x_1=self.z_1[idx], path=path, times=self.times)


def bind_teacher(method: Any, pairs: Pairs | None) -> dict[str, Any]:
    """Hand a student its teacher's training pairs once, before training, where it wants
    them (``bind_teacher(pairs)``); what it returns joins the training statistics."""
    hook = getattr(method, "bind_teacher", None)
    if pairs is None or hook is None:
        return {}
    return dict(hook(pairs) or {})


class Validation:
    """Early stopping on a fixed validation set: pairs drawn once from their own stream,
    prepared once, and scored with the same loss randomness (t, ε) at every check, so
    that successive checks compare the weights and nothing else.

    The pairs are made of what the training batches are made of, held out: independent
    source and target draws, or, for a student of a teacher, ``pairs`` the teacher
    generated from source noise of their own stream. (A reflow student scored on
    independent pairs would be scored on the 1-rectified-flow objective, which it fits
    worse the straighter it gets, and early stopping would keep its first weights.) The
    teacher's held-out pairs carry their recorded paths when the teacher keeps them, so a
    student that trains on paths is scored on its own loss, with what ``bind_teacher``
    kept from the training pairs (a schedule), not on a stand-in."""

    def __init__(self, job: TrainJob, built: Built, pairs: Pairs | None = None):
        self.spec = job.budget.early_stopping
        self.job, self.built = job, built
        n, bs = self.spec.val_size, job.method.batch_size
        if pairs is not None:
            if len(pairs.z_0) != n:
                raise ValueError(f"validation needs {n} teacher pairs, got {len(pairs.z_0)}")
        else:
            gen = generator(job.seed, "validation")
            pairs = Pairs(built.space.sample_source(n, gen), built.space.sample_target(n, gen), {})
        prepare = getattr(built.method, "prepare", None)
        self.batches = []
        for i in range(0, n, bs):
            batch = pairs.batch(slice(i, i + bs))
            if prepare is not None:
                batch = prepare(batch, generator(job.seed, f"validation-prepare/{i}"))
            self.batches.append(to_device(batch, built))
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
          val_pairs: Pairs | None = None, group: Any = None) -> TrainResult:
    """Train under the budget: stop at whichever of steps/seconds/samples/epochs comes first.

    The seconds budget stops before a step that would end past it (by the mean step time so
    far), so training wall time stays within it; the first step always runs.

    ``pairs``: a teacher's training pairs, first handed to the method's ``bind_teacher``
    (what it returns joins the statistics); ``val_pairs``: its held-out pairs, which early
    stopping then scores on (required when a run with a teacher stops early).

    The method spec's ``grad_clip`` clips before, its ``warmup_steps`` schedule and ``ema``
    average update after, every optimiser step. With ``ema``, validation scores the average
    and the network ends holding it (the best check's average under ``restore_best``), so
    evaluation and the saved model use it; the raw weights are returned in ``raw_state``.

    ``group`` (a :class:`harness.distributed.Group`): this process is one rank of several
    training the run together. It trains on its slice of every global batch with its own
    method-noise stream, averages the gradients over the ranks before every optimiser step
    (DistributedDataParallel's arithmetic), and the ranks agree on the logged loss and on
    when to stop."""
    budget, hw = job.budget, job.hardware
    network = built.network
    model = torch.compile(network) if hw.compile else network
    optimizer = build_optimizer(job, network)
    trainable = [p for p in network.parameters() if p.requires_grad]
    if group is not None:
        group.same_start(network)
    clip = GradientClipping(network, job.method.grad_clip) if job.method.grad_clip is not None else None
    scheduler = warmup_schedule(optimizer, job.method.warmup_steps)
    ema = WeightAverage(network, job.method.ema) if job.method.ema is not None else None
    data_gen = generator(job.seed, "data")
    method_gen = generator(job.seed, "method" if group is None else group.method_stream, built.device)
    stream = BatchStream(built.space, job.method.batch_size, data_gen, pairs)
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

    def clock() -> float:
        """Seconds since the start: with ranks and a time budget, the slowest rank's, so
        that they all stop at the same step."""
        elapsed = time.perf_counter() - start
        return elapsed if group is None or budget.seconds is None else group.max(elapsed)

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
    bound = bind_teacher(built.method, pairs)
    validation = Validation(job, built, val_pairs) if budget.early_stopping is not None else None
    network.train()
    load = OtherLoad().start()  # the machine's other load while this run trained
    start = time.perf_counter()
    while (stopped_by := reached(step, clock())) is None:
        batch = to_device(batches.next() if group is None else group.rows(batches.next()), built)
        with autocast(hw, built.device):
            loss = built.method.loss(model, batch, method_gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if group is not None:
            group.average_gradients(trainable)
        if clip is not None:
            clip()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update()
        step += 1
        window += loss.detach().double()
        window_n += 1
        if first_step_s is None:
            first_step_s = time.perf_counter() - start  # includes torch.compile when on
        if step % budget.log_every == 0 or reached(step, clock()):
            mean = float(window if group is None else group.mean(window)) / window_n
            curve.append((step, mean))
            window.zero_()
            window_n = 0
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{mean:.4g}")
            if not math.isfinite(mean):
                status, stopped_by = "diverged", "non-finite loss"
                break
        if validation is not None and validation.due(step, split_size):
            with ema.swapped_in() if ema is not None else contextlib.nullcontext():
                patience_out = validation.check(model, step)
            if patience_out:
                stopped_by = "early stopping"
                break
    if built.device.type == "cuda":
        torch.cuda.synchronize(built.device)
    wall = time.perf_counter() - start
    load.stop()
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
        "load": load.as_dict(),
    }
    if group is not None:
        stats["distributed"] = group.describe()
    if pairs is not None:
        stats["teacher_pairs"] = pairs.stats
    clash = sorted(set(bound) & set(stats))
    if clash:
        raise ValueError(f"bind_teacher returned statistics the harness keeps itself: {', '.join(clash)}")
    stats.update(bound)
    if val_pairs is not None:
        stats["validation_pairs"] = val_pairs.stats
    if clip is not None:
        stats["grad_clip"] = clip.stats()
    if scheduler is not None:
        # lr_reached: the rate the schedule has reached, the one a further step would take
        stats["warmup"] = {"steps": job.method.warmup_steps, "lr_reached": optimizer.param_groups[0]["lr"],
                           "completed": step >= job.method.warmup_steps}
    raw_state = None
    if ema is not None and status == "ok":
        raw_state = {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}
        ema.copy_to_network()
        stats["ema"] = {"decay": ema.decay, "updates": ema.updates,
                        "weights": "the moving average: validated, evaluated and saved (the raw weights are not saved)"}
    if validation is not None and status == "ok":
        stats["early_stopping"] = validation.finish()
    return TrainResult(status, stats, model if status == "ok" else None, raw_state)



def _thin(curve: list[tuple[int, float]]) -> list[list[float]]:
    """At most LOSS_CURVE_POINTS evenly spaced points, the last one always kept."""
    if len(curve) <= LOSS_CURVE_POINTS:
        return [[s, v] for s, v in curve]
    idx = np.unique(np.linspace(0, len(curve) - 1, LOSS_CURVE_POINTS).round().astype(int))
    return [[curve[i][0], curve[i][1]] for i in idx]

