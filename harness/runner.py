"""Execute a run plan: decide which training units it still needs (finished records are
kept, trained models reused, teachers trained before their students), run them inline or
through an executor, and show progress.

A suite interrupted at any point resumes where it stopped: finished records are kept,
trained models are reused from the artefact store, an evaluation of several shards
resumes at its first unfinished shard, unfinished work is redone.

The work itself is in the modules below this one: ``building`` (spec parts to objects),
``training``, ``evaluation``, ``artefacts`` (the store) and ``unit`` (one training and its
evaluations), which the executors run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from harness.artefacts import ArtefactStore
from harness.errors import StorageError
from harness.plan import RunPlan, TrainJob, canonical
from harness.results import (
    RECORD_SCHEMA,
    final_keys,
    lock_results,
    read_suite_file,
    remove_leftovers,
    write_json_atomic,
)
from harness.unit import Summary, Unit

if TYPE_CHECKING:
    from harness.slurm import SlurmExecutor

__all__ = ["Runner", "Summary"]


class Runner:
    """Runs a plan and writes records under ``results_dir``: inline, or with ``workers`` > 1
    in that many local processes (see :mod:`harness.executors`).

    ``concurrency`` is how many trainings run at once on this machine; it is recorded with
    every record's environment because it colours the timings."""

    def __init__(self, results_dir: Path, progress: bool = True, concurrency: int = 1):
        self.results_dir = Path(results_dir)
        self.store = ArtefactStore(self.results_dir)
        self.progress = progress
        self.concurrency = concurrency

    def model_path(self, key: str) -> Path:
        return self.store.model_path(key)

    def run(self, plan: RunPlan, workers: int = 1, origin: dict | None = None, rerun: bool = False,
            slurm: SlurmExecutor | None = None) -> Summary:
        """Run what ``plan`` has not finished in the results folder. ``origin`` (how the
        suite was asked for: its reference, ``--set`` overrides and specs root) goes into
        suite.json, so that ``flowgauge claims`` can compare with the specs as they stand.
        ``rerun``: first delete the records, trained models and teacher pairs of every
        training the plan evaluates, so that they train and evaluate again. ``slurm``: run
        the units as submitit jobs (:mod:`harness.slurm`) instead of here."""
        from harness import distributed

        where = distributed.torchrun_rank()  # one of several processes torchrun started
        if where is not None and where[0] != 0:
            distributed.follow()  # rank 0 runs the suite; this rank trains and samples with it
            return Summary()
        with lock_results(self.results_dir) as writable:
            if rerun and writable:
                self._forget(plan)
            summary = self._run(plan, workers, writable, origin, slurm)
        if where is not None:  # (after an error this process ends, and torchrun stops the others)
            distributed.release_followers()
        return summary

    def _elsewhere(self, plan: RunPlan, jobs: list[TrainJob], where: str, summary: Summary,
                   execute: Callable[[Callable[[TrainJob, dict[str, int]], None]], None]) -> Summary:
        """Run ``jobs`` through an executor (``execute(done)``, which calls ``done(job,
        counts)`` in this process as each unit finishes), with a progress bar of units."""
        bar = tqdm(total=len(jobs), desc=f"suite {plan.suite.name} ({where})", unit="run", disable=not self.progress)

        def done(job: TrainJob, counts: dict[str, int]) -> None:
            summary.merge(counts)
            bar.set_postfix_str(job.label)
            bar.update()

        try:
            execute(done)
        finally:
            bar.close()
        return summary

    def _forget(self, plan: RunPlan) -> None:
        for job in plan.trainings:
            if not plan.evals[job.key]:
                continue  # a teacher that only supplies pairs: kept unless selected itself
            keys = {e.key for e in plan.evals[job.key]}
            for path in (self.results_dir / "records").glob("*.json"):
                if path.stem.rsplit("__", 1)[-1] in keys:
                    path.unlink()
            for path in [self.model_path(job.key), self.model_path(job.key).with_suffix(".json"),
                         *self.store.path("pairs", ".").glob(f"{job.key}__*.pt")]:
                path.unlink(missing_ok=True)

    def _run(self, plan: RunPlan, workers: int, writable: bool = True, origin: dict | None = None,
             slurm: SlurmExecutor | None = None) -> Summary:
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
        if slurm is not None and jobs:
            from harness.slurm import run_in_slurm

            where = "local jobs" if slurm.cluster == "local" else "slurm"
            return self._elsewhere(plan, jobs, where, summary,
                                   lambda done: run_in_slurm(self.results_dir, jobs, pending, slurm, done))
        if workers > 1 and len(jobs) > 1:
            from harness.executors import run_in_processes

            return self._elsewhere(plan, jobs, f"{workers} workers", summary,
                                   lambda done: run_in_processes(self.results_dir, jobs, pending, workers, done))
        bar = tqdm(jobs, desc=f"suite {plan.suite.name}", unit="run", disable=not self.progress)
        for job in bar:
            bar.set_postfix_str(job.label)
            Unit(self.results_dir, self.progress, self.concurrency).run(job, pending[job.key], summary)
        return summary
