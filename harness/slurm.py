"""The slurm executor: a plan's units as submitit jobs on a Slurm cluster, or with
``cluster="local"`` as submitit's local jobs on this machine (the same path; the tests
run it that way).

Tasks. A task is one unit, a training with its evaluations, run by the same code the
process executor runs (:class:`harness.unit.Unit`). With ``shard_tasks``, an evaluation of
several shards (``budget.eval.num_samples`` / ``shard_size`` >= 2) is split three ways:
its unit trains (and evaluates the samplers that are not split); then every shard not yet
saved runs as a task of its own, which loads the trained model, samples that block and
saves what its accumulators hold as ``shards/<record key>/<i>.npz``
(:func:`harness.evaluation.evaluate_shards`); then a merge task runs the evaluation as
usual, finds every shard saved, merges them in block order and writes the record. The
merged record equals the one-process one: exactly for points and tallies (W2, MMD, NFE),
to float64 round-off for feature statistics (see :mod:`harness.accumulators`). A shard
task that fails costs nothing but time: the merge samples what is missing itself.

Order. A unit is submitted once its teacher's unit has finished (its model is on disk);
tasks that become ready together are submitted as one job array, and never more than
``array_parallelism`` are in flight. The driver polls the jobs, adds up their counts, and
on Ctrl-C (or SIGTERM) cancels every job it has in flight before it stops.

Failures. A task that ends without a result (killed, out of memory, over its time limit,
its node lost) or that raises fails its unit's evaluations, recorded with the cause and
where its logs are, and the suite goes on; its students then fail for want of its model.
A results folder that cannot be written stops the suite, as with every executor.

Files. Tasks write records, models, pairs and shards themselves, with the same atomic
writes (temporary file, fsync, rename) as every executor: the results folder must be on a
filesystem that the driver and the nodes share, and so must the Python environment.
submitit keeps each job's pickled call, result and logs under ``folder/<job id>``.

The driver needs submitit and the plan; torch only to record a failed task.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.artefacts import ArtefactStore
from harness.errors import StorageError
from harness.executors import STORAGE_ERROR, Counts, _record_failure, ready
from harness.plan import EvalJob, TrainJob
from harness.spec import SlurmSpec

CLUSTERS = ("slurm", "local")
POLL_S = {"slurm": 10.0, "local": 0.25}  # seconds between looks at the jobs in flight


@dataclass(frozen=True)
class SlurmExecutor:
    """Where and how the tasks go: the Slurm options, submitit's folder for pickles and
    logs, the cluster ("slurm", or "local" for this machine) and whether evaluations of
    several shards run their shards as tasks of their own."""

    options: SlurmSpec
    folder: Path
    cluster: Literal["slurm", "local"] = "slurm"
    shard_tasks: bool = False

    def parameters(self) -> dict[str, Any]:
        """submitit's parameters: generic ones, and ``slurm_*`` ones that the local cluster ignores."""
        o = self.options
        params = {"name": "flowgauge", "timeout_min": o.time_min, "nodes": 1, "tasks_per_node": 1,
                  "gpus_per_node": o.gpus_per_task, "cpus_per_task": o.cpus_per_task, "mem_gb": o.mem_gb,
                  "slurm_partition": o.partition, "slurm_array_parallelism": self.parallelism,
                  "slurm_additional_parameters": dict(o.additional) or None}
        return {k: v for k, v in params.items() if v is not None}

    def make(self) -> Any:
        """A submitit executor with these options."""
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
        executor.update_parameters(**self.parameters())
        return executor

    @property
    def parallelism(self) -> int:
        """Tasks in flight at most: as the options say, else 256 on Slurm (submitit's
        default) and the core count for local jobs."""
        if self.options.array_parallelism is not None:
            return self.options.array_parallelism
        return 256 if self.cluster == "slurm" else os.cpu_count() or 1


# --- what a task runs (in the job's own process) -----------------------------------------


def _load_registries() -> None:
    import harness.metrics  # noqa: F401  registers the metrics
    import implementations  # noqa: F401  registers methods, networks, datasets, solvers, optimisers


def unit_task(results_dir: Path, job: TrainJob, evals: list[EvalJob], defer: Sequence[str],
              concurrency: int) -> Counts:
    """Train (or load) ``job`` and evaluate ``evals``, leaving those in ``defer`` to shard
    tasks and a merge unless the training does not end ok; the counts of the records written."""
    from harness.errors import cancel_on_sigint

    cancel_on_sigint()
    _load_registries()
    from harness.unit import Summary, Unit

    summary = Summary()
    try:
        Unit(results_dir, progress=False, concurrency=concurrency).run(job, evals, summary, defer=frozenset(defer))
    except StorageError as err:
        return {STORAGE_ERROR: str(err)}  # type: ignore[dict-item]
    return summary.counts


def shard_task(results_dir: Path, job: TrainJob, evaluation: EvalJob, index: int, concurrency: int) -> Counts:
    """Sample shard ``index`` of ``evaluation`` with ``job``'s trained model and save it."""
    from harness.errors import cancel_on_sigint

    cancel_on_sigint()
    _load_registries()
    from harness.building import build, configure, for_evaluation
    from harness.evaluation import evaluate_shards
    from harness.seeding import seed_everything
    from harness.unit import Unit

    unit = Unit(results_dir, progress=False, concurrency=concurrency)
    path = unit.store.model_path(job.key)
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        raise RuntimeError(f"run {job.label} ({job.key}) has no trained model at {path}")
    try:
        device = configure(job.hardware)
        seed_everything(job.seed)
        built = build(job, device, unit.store)
        result = unit.train_or_load(job, built)  # loads: the model is there
        evaluate_shards(evaluation, for_evaluation(built, evaluation.train.method), result.model, result.stats,
                        unit.store, [index])
    except StorageError as err:
        return {STORAGE_ERROR: str(err)}  # type: ignore[dict-item]
    return {}


def num_shards(evaluation: EvalJob) -> int:
    return math.ceil(evaluation.budget.num_samples / evaluation.budget.shard_size)


# --- the driver ----------------------------------------------------------------------------


@dataclass
class _Task:
    kind: Literal["unit", "shard", "merge"]
    state: _UnitState
    shard: tuple[EvalJob, int] | None = None
    handle: Any = None  # the submitit job


@dataclass
class _UnitState:
    job: TrainJob
    evals: list[EvalJob]  # every pending evaluation of the unit
    split: list[EvalJob]  # those whose shards run as tasks
    counts: dict[str, int] = field(default_factory=dict)
    merging: list[EvalJob] = field(default_factory=list)  # split evaluations the merge writes
    shards_left: int = 0

    def add(self, counts: Counts) -> None:
        for status, n in counts.items():
            self.counts[status] = self.counts.get(status, 0) + n


class SlurmDriver:
    """Submits the tasks of ``jobs`` in dependency order, waits for them, and calls
    ``on_done(job, counts)`` as each unit ends (after its merge, when it has one).
    ``submitted`` lists each job array as [(kind, label)], in submission order."""

    def __init__(self, results_dir: Path, jobs: Sequence[TrainJob], pending: dict[str, list[EvalJob]],
                 executor: SlurmExecutor, on_done: Callable[[TrainJob, Counts], None]):
        self.results_dir = Path(results_dir)
        self.store = ArtefactStore(self.results_dir)
        self.settings = executor
        self.on_done = on_done
        self.keys = {job.key for job in jobs}
        self.trained: set[str] = set()  # units whose training task has ended (a teacher's model is there)
        self.waiting = [self._state(job, pending[job.key]) for job in jobs]
        self.queue: list[_Task] = []  # ready, not submitted yet
        self.running: list[_Task] = []
        self.submitted: list[list[tuple[str, str]]] = []
        self.executor: Any = None
        # what records note as ``concurrent_runs``: on a cluster every task has an allocation of
        # its own; local jobs share this machine, as many at once as may be in flight
        units = len(self.waiting) if not executor.shard_tasks else executor.parallelism
        self.concurrency = 1 if executor.cluster == "slurm" else max(1, min(executor.parallelism, units))

    def _state(self, job: TrainJob, evals: list[EvalJob]) -> _UnitState:
        split = [e for e in evals if self.settings.shard_tasks and num_shards(e) >= 2]
        return _UnitState(job, list(evals), split)

    def run(self) -> None:
        self.executor = self.settings.make()
        poll = POLL_S[self.settings.cluster]
        try:
            while self.waiting or self.queue or self.running:
                starting = True
                while starting:  # a unit that needs no training task readies its students at once
                    starting = [s for s in self.waiting if ready(s.job, self.keys, self.trained)]
                    for state in starting:
                        self.waiting.remove(state)
                        self._start(state)
                self._submit()
                if not self.running:
                    if self.waiting and not self.queue:
                        raise RuntimeError("no runnable training: the plan's teacher order is broken")
                    continue
                ended = [task for task in self.running if task.handle.done()]
                if not ended:
                    time.sleep(poll)
                for task in ended:
                    self.running.remove(task)
                    self._ended(task)
        except BaseException:
            self._cancel()
            raise

    def _start(self, state: _UnitState) -> None:
        """A unit whose teacher is ready: its training task, or, when every evaluation is
        split and the model is already trained, straight to its shards."""
        if state.split and len(state.split) == len(state.evals) and self._trained(state.job):
            self.trained.add(state.job.key)
            self._after_training(state)
        else:
            self.queue.append(_Task("unit", state))

    def _trained(self, job: TrainJob) -> bool:
        path = self.store.model_path(job.key)
        return path.is_file() and path.with_suffix(".json").is_file()

    def _submit(self) -> None:
        room = max(0, self.settings.parallelism - len(self.running))
        batch, self.queue = self.queue[:room], self.queue[room:]
        if not batch:
            return
        results, concurrency = self.results_dir, self.concurrency
        try:
            with _controller_stderr(self.settings), self.executor.batch():  # one job array
                for task in batch:
                    state = task.state
                    if task.kind == "shard":
                        evaluation, index = task.shard
                        task.handle = self.executor.submit(shard_task, results, state.job, evaluation, index,
                                                           concurrency)
                    elif task.kind == "merge":
                        task.handle = self.executor.submit(unit_task, results, state.job, state.merging, (),
                                                           concurrency)
                    else:
                        task.handle = self.executor.submit(unit_task, results, state.job, state.evals,
                                                           [e.key for e in state.split], concurrency)
        finally:  # interrupted while submitting: the jobs that did start are cancelled with the rest
            self.running += [task for task in batch if _submitted(task.handle)]
        self.submitted.append([(task.kind, task.state.job.label) for task in batch])

    def _ended(self, task: _Task) -> None:
        state = task.state
        counts, why = self._outcome(task)
        if counts is not None and STORAGE_ERROR in counts:
            raise StorageError(str(counts[STORAGE_ERROR]))
        if task.kind == "unit":
            self.trained.add(state.job.key)
            if counts is None:  # every evaluation of the unit, split ones included
                self._finish(state, self._fail(state, state.evals, why))
                return
            state.add(counts)
            self._after_training(state)
        elif task.kind == "shard":
            state.shards_left -= 1  # a failed one is sampled again by the merge
            if state.shards_left == 0:
                self.queue.append(_Task("merge", state))
        else:
            self._finish(state, counts if counts is not None else self._fail(state, state.merging, why))

    def _after_training(self, state: _UnitState) -> None:
        """The split evaluations of a trained model: their missing shards, then the merge.
        Without a model the training diverged or failed, and its task recorded them so."""
        if not state.split or not self._trained(state.job):
            self._finish(state, {})
            return
        state.merging = list(state.split)
        shards = [_Task("shard", state, (e, i)) for e in state.split for i in range(num_shards(e))
                  if not self.store.shard_path(e.key, i).is_file()]
        state.shards_left = len(shards)
        self.queue += shards or [_Task("merge", state)]

    def _finish(self, state: _UnitState, counts: Counts) -> None:
        state.add(counts)
        self.on_done(state.job, state.counts)

    def _fail(self, state: _UnitState, evals: list[EvalJob], why: str) -> Counts:
        return _record_failure(self.results_dir, state.job, evals, why, self.concurrency)

    @staticmethod
    def _outcome(task: _Task) -> tuple[Counts | None, str]:
        """(the task's counts, "") or (None, why it failed)."""
        handle = task.handle
        error = handle.exception()
        if error is None:
            return handle.result(), ""
        lines = [line for line in str(error).splitlines() if line.strip()]
        kind = type(error).__name__
        if kind == "FailedJobError":  # the task's Python raised: its last traceback line says what
            trace = [line for line in lines if not line.startswith(("-----", "You can check", "or at paths", "  - "))]
            cause = trace[-1].strip() if trace else "an exception"
            return None, f"{task.kind} task {handle.job_id} raised {cause} (logs: {handle.paths.stderr})"
        state = getattr(handle, "state", "unknown")
        return None, (f"{task.kind} task {handle.job_id} ended without a result (state {state}: killed, out of "
                      f"memory, over its time limit or its node lost; logs: {handle.paths.stderr})")

    def _cancel(self) -> None:
        for task in self.running:
            with contextlib.suppress(Exception):  # cancel what can be; the interrupt goes on
                task.handle.cancel(check=False)


@contextlib.contextmanager
def _controller_stderr(settings: SlurmExecutor) -> Iterator[None]:
    """Local jobs: submitit starts a controller process per job that inherits this
    process's stderr, and prints a traceback there when it is cancelled (Ctrl-C); while
    they start, stderr goes to ``folder/controllers.log`` instead. (A task's own output
    goes to its job's log files, on Slurm as here.)"""
    if settings.cluster != "local":
        yield
        return
    settings.folder.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(settings.folder / "controllers.log", "ab") as log:
            os.dup2(log.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _submitted(handle: Any) -> bool:
    return handle is not None and type(handle).__name__ != "DelayedJob"


def run_in_slurm(results_dir: Path, jobs: Sequence[TrainJob], pending: dict[str, list[EvalJob]],
                 executor: SlurmExecutor, on_done: Callable[[TrainJob, Counts], None]) -> SlurmDriver:
    """Run ``jobs`` (teachers before their students, as the plan orders them) as submitit
    jobs; ``on_done`` is called in this process as each unit ends. Returns the driver
    (what it submitted, for tests and logs)."""
    driver = SlurmDriver(results_dir, jobs, pending, executor, on_done)
    driver.run()
    return driver
