"""One run on several devices: data-parallel training (DistributedDataParallel's
arithmetic: every rank's gradients averaged before each step) and sampling shared across
the ranks (``hardware.devices`` W > 1).

Launch. :func:`run_unit` starts W processes with ``torch.multiprocessing`` (spawn), one
device each on CUDA (``cuda:r``), joined by a process group (nccl on CUDA, gloo on the
CPU, or ``hardware.backend``) rendezvousing through a file, so no port is needed. Every
rank builds, trains and samples; rank 0 alone writes the trained model, the teacher's
pairs, the records and their files. Artefacts a run makes before it trains (an
autoencoder, a teacher's pairs) are made by rank 0 first while the others wait, then read
from the store. A rank that raises ends its process; the others are stopped, the process
group is torn down, and the unit's unwritten records fail with that rank's error.

Under ``torchrun`` (``torchrun --standalone --nproc-per-node W -m harness.cli run ...``)
the processes are the launcher's: rank 0 runs the suite and hands each unit of
``devices`` W to the other ranks, which follow it (:func:`follow`); see below.

What does not depend on W, and what does:

- The data. Every step draws the global batch of ``batch_size`` rows from the run's one
  ``data`` stream, exactly as one device does (a method's ``prepare``, e.g. an exact-OT
  pairing, sees the whole batch), and rank r trains on rows [r·B/W, (r+1)·B/W). So every
  step sees the same pairs whatever W is.
- The update. After backward the ranks' gradients are averaged (one all_reduce of them all
  as one flat buffer, sum / W: what DDP's reducer computes); with a loss that is a mean
  over rows the average of the W slice means is the mean over the batch, so a step's
  update is the one-device update of the same rows and the same method randomness (to
  float round-off: the sum runs in another order). Gradient clipping, warmup and the
  weight average act on that averaged gradient, as on one device; every rank holds the
  same weights after every step. Validation scores every held-out pair on every rank, so
  early stopping decides alike everywhere.
  Why not the ``DistributedDataParallel`` wrapper itself: its forward and autograd hooks
  refuse what some methods send through the network, e.g. MeanFlow's ``torch.func.jvp``
  dual tensors ("Cannot access data pointer of Tensor that doesn't have storage" in
  ``DistributedDataParallel._pre_forward``), and methods that call the network several
  times per step. Averaging after backward works for any loss; what it gives up is DDP's
  overlap of communication with the backward pass (a throughput matter, not a numeric one).
- The method's own randomness (time samples t, noise ε) does depend on W: rank 0 draws
  from the run's ``method`` stream, rank r > 0 from ``method/rank{r}``, each for its slice
  only. A W-device run is therefore equal in distribution to a one-device run, not
  bitwise equal; its training key differs (``hardware.devices`` is part of it).
- Sampling and metrics do not depend on W. The evaluation's noise comes in blocks of
  ``shard_size``, each from its own stream; rank r samples blocks b ≡ r (mod W), rank 0
  gathers every shard and merges them in block order, and the metrics are computed once
  from the merged accumulators (global statistics: the points of W2 and MMD, the feature
  sums of a Fréchet distance; never an average of per-rank values). Given the same
  trained model, W ranks produce the one-process result exactly. An evaluation of one
  shard (num_samples ≤ shard_size) runs on rank 0 alone.
- Timings (latency, throughput, step rate) are rank 0's, taken while the other ranks run;
  on the CPU each rank gets cores / W torch threads unless ``hardware.threads`` is set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.multiprocessing.spawn import ProcessException

from harness.interfaces import Batch
from harness.plan import EvalJob, TrainJob
from harness.spec import HardwareSpec

MAX_ERROR = 8000  # characters of a rank's error sent back (a pipe's buffer holds a few of them)


@dataclass(frozen=True)
class Group:
    """This process's place in the process group that trains one run."""

    rank: int
    world: int
    backend: str
    device: torch.device

    @property
    def leader(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0

    @property
    def method_stream(self) -> str:
        """The stream of the method's randomness on this rank: rank 0 keeps the one-device
        stream's name, the others draw from streams of their own."""
        return "method" if self.rank == 0 else f"method/rank{self.rank}"

    def rows(self, batch: Batch) -> Batch:
        """This rank's contiguous slice of a global batch (``times`` is shared by every row)."""
        n = len(batch.x_0)
        if n % self.world:
            raise ValueError(f"a batch of {n} rows does not split into {self.world} equal slices")
        part = slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

        def cut(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[part]

        return Batch(x_0=batch.x_0[part], x_1=batch.x_1[part], weights=cut(batch.weights), labels=cut(batch.labels),
                     path=cut(batch.path), times=batch.times)

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """Replace every gradient by its mean over the ranks: one all_reduce of one flat
        buffer (per dtype). A parameter no rank gave a gradient keeps None (an optimiser
        skips it, as on one device); one that some ranks did not reach counts zero there."""
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        for same in by_dtype.values():
            present = torch.tensor([p.grad is not None for p in same], dtype=same[0].dtype, device=self.device)
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in same]
            flat = torch.cat([present, *(g.reshape(-1) for g in grads)])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            seen, flat = flat[:len(same)].tolist(), flat[len(same):] / self.world
            offset = 0
            for p, was in zip(same, seen):
                n = p.numel()
                p.grad = flat[offset:offset + n].view_as(p) if was > 0 else None  # views of one buffer
                offset += n

    def same_start(self, network: nn.Module) -> None:
        """Rank 0's parameters and buffers everywhere (they are built from one seed anyway;
        this also holds where initialisation is not deterministic)."""
        with torch.no_grad():
            for tensor in [*network.parameters(), *network.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over the ranks of a tensor (a copy; every rank gets it)."""
        total = value.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.world

    def max(self, value: float) -> float:
        """The largest of the ranks' values: decisions taken on it agree everywhere."""
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def blocks(self, count: int) -> range:
        """This rank's share of ``count`` evaluation blocks: b ≡ rank (mod world)."""
        return range(self.rank, count, self.world)

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0, in rank order; None on the others."""
        out: list[Any] | None = [None] * self.world if self.leader else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        dist.barrier(device_ids=[self.device.index]) if self.device.type == "cuda" else dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world, "backend": self.backend,
                "method_noise": "per rank: rank 0 'method', rank r 'method/rank{r}'",
                "batch_split": "contiguous slices of each global batch",
                "gradients": "averaged over the ranks after backward (one all_reduce)"}


@contextlib.contextmanager
def leader_first(group: Group | None) -> Iterator[None]:
    """Rank 0 runs the block first (making and storing what it makes), the others after
    it, reading what it stored."""
    if group is None:
        yield
        return
    if not group.leader:
        group.barrier()
    yield
    if group.leader:
        group.barrier()


def gather_shards(group: Group, shards: dict[int, Any], resumed: int, computed: list[float]
                  ) -> tuple[dict[int, Any], int, list[float]] | None:
    """Every rank's evaluation shards (by block), resumed count and timed batches, on rank
    0; None on the others."""
    parts = group.gather((shards, resumed, computed))
    if parts is None:
        return None
    every: dict[int, Any] = {}
    for own, _, _ in parts:
        every.update(own)
    return every, sum(r for _, r, _ in parts), [s for _, _, c in parts for s in c]


def backend_of(hardware: HardwareSpec) -> str:
    return hardware.backend or ("nccl" if hardware.device == "cuda" else "gloo")


def check_devices(hardware: HardwareSpec) -> None:
    """Refuse, before any process starts, W devices that this machine does not have."""
    if hardware.device == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count < hardware.devices:
            raise RuntimeError(f"hardware.devices is {hardware.devices} on cuda, but this machine has {count} CUDA "
                               "device(s) (torch.cuda.device_count())")
    if backend_of(hardware) == "nccl" and not dist.is_nccl_available():
        raise RuntimeError("hardware.backend nccl: this torch has no NCCL; use gloo")
    if not dist.is_available():
        raise RuntimeError("hardware.devices > 1 needs torch.distributed, which this torch lacks")


def rank_device(hardware: HardwareSpec, local_rank: int, world: int) -> torch.device:
    """Apply the hardware settings in a rank: one device per rank on CUDA; cores / world
    torch threads per rank on the CPU unless ``hardware.threads`` says. Its device."""
    from harness.building import configure

    configure(hardware)
    if hardware.device == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    if hardware.threads is None:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return torch.device("cpu")


def start(hardware: HardwareSpec, rank: int, world: int, init_method: str) -> Group:
    """Join the process group as ``rank`` of ``world`` (one machine) with the hardware's
    settings applied."""
    device = rank_device(hardware, rank, world)
    backend = backend_of(hardware)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    return Group(rank, world, backend, device)


# --- under torchrun ---------------------------------------------------------------------
#
# ``torchrun --standalone --nproc-per-node W -m harness.cli run SUITE --set hardware.devices=W``
# starts the whole command W times. Rank 0 runs the suite as usual (the results lock, the
# plan, the records); the others follow it: for every unit of devices W, rank 0 hands them
# the unit and they train and sample it with it, until rank 0 says the suite is done. A
# rank that raises ends its process, and torchrun stops the others; the next run resumes.

FOLLOW_TIMEOUT = timedelta(days=7)  # followers wait for rank 0's next unit (single-device units run meanwhile)


def torchrun_rank() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when this process is one of several a launcher such
    as torchrun started (RANK and WORLD_SIZE in the environment), else None."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        return None
    return (rank, world, local) if world > 1 else None


def _join_torchrun() -> tuple[int, int, int]:
    """Join the launcher's process group once per process (env:// rendezvous): gloo for
    CPU tensors and the objects rank 0 hands out, nccl for CUDA tensors where there is CUDA."""
    where = torchrun_rank()
    if where is None:
        raise RuntimeError("not started by torchrun (no RANK and WORLD_SIZE > 1 in the environment)")
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend, timeout=FOLLOW_TIMEOUT)
    return where


def _unit_group(hardware: HardwareSpec, rank: int, world: int, local: int) -> Group:
    return Group(rank, world, backend_of(hardware), rank_device(hardware, local, world))


def lead_unit(results_dir: Path, job: TrainJob, evals: list[EvalJob], progress: bool,
              concurrency: int) -> dict[str, int]:
    """Rank 0 under torchrun: hand the unit to the other ranks and run it with them."""
    from harness.unit import Summary, Unit, _error

    rank, world, local = _join_torchrun()
    try:
        if world != job.hardware.devices:
            raise RuntimeError(f"hardware.devices is {job.hardware.devices}, but torchrun started {world} "
                               "processes: give --nproc-per-node (times nodes) equal to it")
        check_devices(job.hardware)
    except RuntimeError as err:
        return _fail(Unit(results_dir, False, concurrency), evals, _error(err))
    dist.broadcast_object_list([(str(results_dir), job, evals, concurrency)], src=0)
    group = _unit_group(job.hardware, rank, world, local)
    summary = Summary()
    Unit(results_dir, progress, concurrency, group=group).run(job, evals, summary)
    group.barrier()
    return summary.counts


def release_followers() -> None:
    """Rank 0 under torchrun, at the end of a suite: the other ranks may exit."""
    _join_torchrun()
    dist.broadcast_object_list([None], src=0)


def follow() -> None:
    """A rank other than 0 under torchrun: run the units rank 0 hands out, until it says
    the suite is done."""
    from harness.unit import Summary, Unit

    rank, world, local = _join_torchrun()
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            return
        results_dir, job, evals, concurrency = box[0]
        group = _unit_group(job.hardware, rank, world, local)
        Unit(Path(results_dir), False, concurrency, group=group).run(job, evals, Summary())
        group.barrier()


def _rank_main(rank: int, world: int, init_method: str, parent: int, results_dir: Path, job: TrainJob,
               evals: list[EvalJob], progress: bool, concurrency: int, outbox: Any) -> None:
    """One rank: join the group, run the unit, hand rank 0's counts back, or this rank's
    error with the time it happened (the first error is the cause: a rank that fails
    breaks the others' collectives, and their errors follow)."""
    from harness.executors import _worker_init
    from harness.unit import Summary, Unit, _error

    _worker_init(parent)
    group = start(job.hardware, rank, world, init_method)
    try:
        summary = Summary()
        Unit(results_dir, progress and group.leader, concurrency, group=group).run(job, evals, summary)
        group.barrier()  # nobody leaves while another may still need it
        if group.leader:
            outbox.put(("counts", summary.counts))
    except BaseException as err:
        outbox.put(("error", time.time(), rank, _error(err)[-MAX_ERROR:]))
        raise
    finally:
        dist.destroy_process_group()


def run_unit(results_dir: Path, job: TrainJob, evals: list[EvalJob], progress: bool,
             concurrency: int) -> dict[str, int]:
    """Run one unit in ``job.hardware.devices`` processes; its counts by status. A unit
    that cannot start, or whose rank fails, has its unwritten records written as failed
    with the cause."""
    from harness.unit import Unit, _error

    if torchrun_rank() is not None:
        return lead_unit(results_dir, job, evals, progress, concurrency)
    world = job.hardware.devices
    try:
        check_devices(job.hardware)
    except RuntimeError as err:
        return _fail(Unit(results_dir, False, concurrency), evals, _error(err))
    rendezvous = Path(tempfile.mkdtemp(prefix="flowgauge-ddp-"))
    context = torch.multiprocessing.get_context("spawn")
    outbox = context.SimpleQueue()
    try:
        torch.multiprocessing.start_processes(
            _rank_main, nprocs=world, join=True, start_method="spawn",
            args=(world, f"file://{rendezvous / 'store'}", os.getpid(), Path(results_dir), job, evals, progress,
                  concurrency, outbox))
    except ProcessException as err:
        reports = []
        while not outbox.empty():
            reports.append(outbox.get())
        errors = sorted(r[1:] for r in reports if r[0] == "error")
        if errors:  # the first to fail is the cause
            _, rank, text = errors[0]
            why = f"RankFailed: rank {rank} of {world}: {text}"
        else:  # killed without a word (a signal, the out-of-memory killer)
            why = f"RankFailed: rank {err.error_index} of {world}: {err}"
        return _fail(Unit(results_dir, False, concurrency), evals, why)
    finally:
        shutil.rmtree(rendezvous, ignore_errors=True)
    while not outbox.empty():
        report = outbox.get()
        if report[0] == "counts":
            return report[1]
    return {}


def _fail(unit: Any, evals: list[EvalJob], why: str) -> dict[str, int]:
    """Write ``why`` as the failure of each evaluation of the unit that has no record yet."""
    import json

    from harness.results import record_path

    counts: dict[str, int] = {}
    for e in evals:
        path = record_path(unit.results_dir, e.key, e.label)
        status = json.loads(path.read_text()).get("status", "failed") if path.is_file() else None
        if status is None:
            unit.write(e, "failed", {}, {}, {}, error=why)
            status = "failed"
        counts[status] = counts.get(status, 0) + 1
    return counts
