"""Executors: where the trainings of a plan run.

The unit of work is one training job together with its evaluations (one process trains a
model and samples it with every sampler, so a trained model never crosses a process
boundary except through its file under ``models/``). Executors only decide where and in
which order those units run; every unit writes its own records atomically, so any
executor can be interrupted and resumed by the inline one, and the other way round.

- ``inline``: one after another in this process (the default).
- ``process``: up to N worker processes on this machine (``--workers N``), a fresh one per
  unit. A student waits for its teacher's unit to finish (the plan is a DAG); units that
  do not depend on each other run side by side. Workers are started with ``spawn``, so
  each has a fresh torch and applies its run's hardware settings (threads, determinism)
  itself; they die with their driver, and one that dies alone fails only its unit.

Timings taken while other units run on the same machine share its cores and memory
bandwidth; records say how many units ran at once (``environment.concurrent_runs``) so
that tables can tell such timings apart. Quality metrics do not depend on the executor:
CPU runs are bitwise reproducible across processes.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import signal
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from harness.errors import StorageError
from harness.plan import EvalJob, TrainJob

Counts = dict[str, int]
STORAGE_ERROR = "storage error"  # a worker's report that the results folder cannot be written


def _die_with(parent: int) -> None:
    """Have the kernel kill this worker when its driver dies (Linux), however it dies:
    SIGKILL leaves the driver no chance to stop its workers, and an orphan would go on
    writing records beside the resumed run. Elsewhere the driver's own shutdown is all."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the driver died before the request took effect
        os._exit(1)


def _worker_init(parent: int) -> None:
    _die_with(parent)
    # Ctrl-C goes to the whole process group: the parent alone decides what to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import harness.metrics  # noqa: F401  registers the metrics
    import implementations  # noqa: F401  registers methods, networks, datasets, solvers, optimisers


def _run_unit(results_dir: Path, job: TrainJob, evals: list[EvalJob], concurrency: int) -> Counts:
    from harness.unit import Summary, Unit

    summary = Summary()
    Unit(results_dir, progress=False, concurrency=concurrency).run(job, evals, summary)
    return summary.counts


def _unit_main(conn: Connection, parent: int, results_dir: Path, job: TrainJob, evals: list[EvalJob],
               concurrency: int) -> None:
    """A worker process: one unit, its counts sent back through ``conn`` (or the message
    of a :class:`StorageError`, which stops the whole suite)."""
    _worker_init(parent)
    try:
        conn.send(_run_unit(results_dir, job, evals, concurrency))
    except StorageError as err:
        conn.send({STORAGE_ERROR: str(err)})
    conn.close()


def _died(process: multiprocessing.process.BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (the system may have run out of memory)" if -code == signal.SIGKILL else ""
        return f"the worker process was killed by {name}{hint}"
    return f"the worker process exited with status {code} before reporting"


def _record_failure(results_dir: Path, job: TrainJob, evals: list[EvalJob], why: str, concurrency: int) -> Counts:
    from harness.unit import Unit

    unit = Unit(results_dir, progress=False, concurrency=concurrency)
    for e in evals:
        unit.write(e, "failed", {}, {}, {}, error=f"WorkerDied: {why}")
    return {"failed": len(evals)} if evals else {}


def ready(job: TrainJob, keys: set[str], finished: set[str]) -> bool:
    """Whether ``job`` may start: its teacher, when it trains in this run (``keys``), has
    finished (its model is on disk)."""
    teacher = job.teacher
    return teacher is None or teacher.key not in keys or teacher.key in finished


def run_in_processes(results_dir: Path, jobs: Sequence[TrainJob], pending: dict[str, list[EvalJob]],
                     workers: int, on_done: Callable[[TrainJob, Counts], None]) -> None:
    """Run ``jobs`` (teachers before their students, as the plan orders them) in up to
    ``workers`` processes, one fresh process per unit; ``on_done`` is called in this
    process as each unit finishes. A worker that dies (killed by the system for memory,
    say) fails its own unit, recorded with the cause, and the suite goes on; its students
    then fail for want of its model."""
    context = multiprocessing.get_context("spawn")
    workers = min(workers, len(jobs))
    keys = {job.key for job in jobs}
    finished: set[str] = set()
    waiting = list(jobs)
    running: dict[Any, tuple[multiprocessing.process.BaseProcess, Connection, TrainJob]] = {}

    try:
        while waiting or running:
            for job in [j for j in waiting if ready(j, keys, finished)]:
                if len(running) >= workers:
                    break
                waiting.remove(job)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_unit_main, name=f"flowgauge {job.label}",
                                          args=(send, os.getpid(), results_dir, job, pending[job.key], workers))
                process.start()
                send.close()  # the child holds the only writer: EOF when it dies
                running[process.sentinel] = (process, receive, job)
            if not running:
                raise RuntimeError("no runnable training: the plan's teacher order is broken")
            for sentinel in wait(list(running)):
                process, receive, job = running.pop(sentinel)
                try:
                    counts = receive.recv() if receive.poll() else None
                except EOFError:
                    counts = None
                receive.close()
                process.join()
                if counts is None:
                    counts = _record_failure(results_dir, job, pending[job.key], _died(process), workers)
                elif STORAGE_ERROR in counts:
                    raise StorageError(str(counts[STORAGE_ERROR]))
                finished.add(job.key)
                on_done(job, counts)
    except BaseException:
        # Interrupted: stop every worker now. Finished units have written their records;
        # the ones cut short are redone by the next run.
        for process, receive, _ in running.values():
            process.terminate()
        for process, receive, _ in running.values():
            process.join()
            receive.close()
        raise
