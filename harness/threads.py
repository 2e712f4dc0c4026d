"""How many torch threads a run uses when its hardware spec leaves ``threads`` null.

torch's default is one intra-op thread per core. That is right for one large network that
has the machine to itself, and wrong in two common cases measured here (2-core VM,
`benchmarks/torchcfm_speed.py`):

- **Pairing threads.** A method that prepares its batches in prefetch threads (exact OT,
  Sinkhorn: ``method.prefetch``) keeps ``prefetch_workers`` threads busy beside the
  training step. torch's threads then compete with them: OT-CFM on the TorchCFM tutorial
  trained at 253 steps/s with 2 torch threads against 313 with one.
- **Runs sharing the machine.** With ``--workers N`` each of N runs would start one thread
  per core, N times oversubscribing it.

So on CPU a null ``threads`` becomes the cores this run may use (the CPUs this process may
run on, divided among the runs sharing them, and no more than ``OMP_NUM_THREADS`` where the
environment sets it, as torch's own default honours it) less the busy pairing threads, and
at least one. The choice and its reason are recorded with every record
(``environment.threads``, ``environment.threads_choice``). On CUDA torch's default stays.

A thread count can change a convolution's floating-point sums (a U-Net's weights after 10
steps differ by ~1e-4 between 1 and 2 threads here; an MLP's are bitwise equal), so a
null-``threads`` run was never bitwise portable between machines with other core counts;
set ``threads`` to a number where bitwise equality across machines matters.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def omp_limit() -> int | None:
    """``OMP_NUM_THREADS`` when the environment sets it to a positive integer."""
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return value if value >= 1 else None


def pairing_threads(hardware: Any, method: Any) -> int:
    """Threads that prepare batches beside the training step (see ``training.PreparedBatches``)."""
    costly = getattr(method, "prepare", None) is not None and getattr(method, "prefetch", False)
    return hardware.prefetch_workers if costly else 0


def choose_threads(hardware: Any, method: Any, concurrency: int = 1, cores: int | None = None) -> tuple[int | None, str]:
    """(threads, why) for a run; threads None: leave torch's setting as it is."""
    if hardware.threads is not None:
        return hardware.threads, "set by hardware.threads"
    if hardware.device != "cpu":
        return None, f"torch's default on {hardware.device}"
    cores = available_cores() if cores is None else cores
    share = max(1, cores // max(1, concurrency))
    why = f"auto: {cores} cores / {concurrency} run(s) at once = {share}"
    if (limit := omp_limit()) is not None and limit < share:
        share = limit
        why += f", OMP_NUM_THREADS={limit}"
    pairing = pairing_threads(hardware, method)
    threads = max(1, share - pairing)
    if pairing:
        why += f", less {pairing} pairing thread(s)"
    return threads, f"{why} -> {threads}"


def apply_threads(hardware: Any, method: Any, concurrency: int = 1) -> str:
    """Set torch's intra-op threads for this run; returns the recorded reason."""
    threads, why = choose_threads(hardware, method, concurrency)
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return why
