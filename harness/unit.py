"""One training unit: build a training job's objects, train them (or load the trained
model from the artefact store), evaluate every sampler, and write one record each.

The executors (inline, process) run units; the runner decides which units a plan needs.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness import registry as reg
from harness.artefacts import ArtefactStore
from harness.building import Built, autocast, build, configure, for_evaluation
from harness.codeversion import record_code
from harness.distributed import leader_first
from harness.environment import environment
from harness.errors import StorageError, cancelled
from harness.evaluation import evaluate
from harness.interfaces import Solution
from harness.limits import MAX_PATH_VALUES
from harness.measure import NFECounter
from harness.plan import EvalJob, TrainJob, canonical, spec_hash
from harness.results import RECORD_SCHEMA, record_path, write_atomic, write_json_atomic
from harness.seeding import generator, seed_everything
from harness.threads import apply_threads
from harness.training import Pairs, TrainResult, train


@dataclass
class Summary:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, status: str, n: int = 1) -> None:
        self.counts[status] = self.counts.get(status, 0) + n

    def merge(self, counts: dict[str, int]) -> None:
        for status, n in counts.items():
            self.add(status, n)


class Unit:
    """Runs training units into ``results_dir``. ``concurrency`` (how many run at once on
    this machine) is recorded with every record's environment: it colours the timings.

    A unit whose hardware has ``devices`` > 1 runs in that many processes
    (:mod:`harness.distributed`); in each of them ``group`` is its rank's place, rank 0
    alone writes, and an error is not recorded here but ends the rank (the launcher
    records it: the other ranks must not wait for a rank that went on)."""

    def __init__(self, results_dir: Path, progress: bool = True, concurrency: int = 1, group: Any = None):
        self.results_dir = Path(results_dir)
        self.store = ArtefactStore(self.results_dir)
        self.progress = progress
        self.concurrency = concurrency
        self.threads_choice: str | None = None  # how this process chose its torch threads (harness.threads)
        self.group = group

    @property
    def writes(self) -> bool:
        """Whether this process writes artefacts and records (rank 0, or the only one)."""
        return self.group is None or self.group.leader

    def run(self, job: TrainJob, evals: list[EvalJob], summary: Summary, defer: frozenset[str] = frozenset()) -> None:
        """Build, train or load, evaluate every sampler, write one record each.

        ``defer``: keys of evaluations whose shards run as tasks of their own (the slurm
        executor's sharded evaluation); their records are written here only when the
        training does not end ok, else by a later run that merges the shards."""
        if job.hardware.devices > 1 and self.group is None:
            from harness.distributed import run_unit

            summary.merge(run_unit(self.results_dir, job, evals, self.progress, self.concurrency))
            return
        try:
            device = configure(job.hardware) if self.group is None else self.group.device
            seed_everything(job.seed)
            with leader_first(self.group):  # an autoencoder it trains is read by the others
                built = build(job, device, self.store, self.progress)
            if self.group is None:  # a null hardware.threads becomes the job's own choice
                self.threads_choice = apply_threads(job.hardware, built.method, self.concurrency)
            result = self.train_or_load(job, built)
        except StorageError:
            raise  # the results folder, not the run: nothing more can be written
        except Exception as err:  # a broken run is recorded; the suite goes on
            if self.group is not None:
                raise  # a rank's error ends its process: the launcher records it
            for e in evals:
                self.write(e, "failed", {}, {}, {}, error=_error(err))
                summary.add("failed")
            return
        for e in evals:
            if result.status != "ok":
                self.write(e, result.status, {}, {}, result.stats)
                summary.add(result.status)
                continue
            if e.key in defer:
                continue
            try:
                evaluated = evaluate(e, for_evaluation(built, e.train.method), result.model, result.stats,
                                     self.store, **({} if self.group is None else {"group": self.group}))
            except StorageError:
                raise
            except Exception as err:
                if self.group is not None:
                    raise
                self.write(e, "failed", {}, {}, result.stats, error=_error(err))
                summary.add("failed")
                continue
            if evaluated is None:
                continue  # a rank other than 0: its shards went to rank 0, which writes
            status, metrics, measurements, files = evaluated
            artefacts = {}
            for name, (suffix, write) in files.items():
                path = self.results_dir / "samples" / f"{e.key}.{suffix}"
                write_atomic(path, write)
                artefacts[name] = str(path.relative_to(self.results_dir))
            self.write(e, status, metrics, measurements, result.stats, artefacts=artefacts)
            self.store.drop_shards(e.key)
            summary.add(status)

    def load_weights(self, job: TrainJob, network: nn.Module, device: torch.device) -> None:
        path = self.store.model_path(job.key)
        if not path.is_file():
            raise RuntimeError(f"run {job.label} ({job.key}) has no trained model at {path}: it diverged or failed")
        try:
            network.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        except RuntimeError as err:
            raise RuntimeError(f"weights of {job.label} do not fit this network: {err}") from None

    def train_or_load(self, job: TrainJob, built: Built) -> TrainResult:
        path = self.store.model_path(job.key)
        stats_path = path.with_suffix(".json")
        if path.is_file() and stats_path.is_file():
            self.load_weights(job, built.network, built.device)
            stats = {**json.loads(stats_path.read_text())["train"], "reused": True}
            model = torch.compile(built.network) if job.hardware.compile else built.network
            return TrainResult("ok", stats, model)
        pairs = val_pairs = None
        if job.teacher is not None:
            with leader_first(self.group):  # rank 0 generates and stores the pairs; the others load them
                pairs = self.teacher_pairs(job, built.device)
                if job.budget.early_stopping is not None:
                    val_pairs = self.teacher_pairs(job, built.device, "validation",
                                                   job.budget.early_stopping.val_size)
            if job.method.teacher.init == "teacher":
                self.load_weights(job.teacher, built.network, built.device)
        result = train(job, built, self.progress, pairs, val_pairs,
                       **({} if self.group is None else {"group": self.group}))
        if built.latent_card is not None:
            result.stats["autoencoder"] = built.latent_card
        if result.status == "ok" and self.writes:
            state = built.network.state_dict()
            write_atomic(path, lambda f: torch.save(state, f))
            write_json_atomic(stats_path, {"key": job.key, "spec": job.spec, "train": result.stats})
        return result

    def teacher_pairs(self, job: TrainJob, device: torch.device, purpose: str = "training",
                       num_pairs: int | None = None) -> Pairs:
        """The teacher's (z_0, z_1) pairs: loaded when cached, else generated and cached.

        ``purpose`` "training": the spec's ``num_pairs`` pairs the student trains on;
        "validation": ``num_pairs`` held-out pairs from source noise of another stream.
        With ``keep: path`` the teacher's sampler records its states and the pairs keep
        them, ``path`` (num_pairs, T+1, *dims) float32, at ``times`` (T+1,)."""
        spec = job.method.teacher
        teacher = job.teacher
        num_pairs = spec.num_pairs if num_pairs is None else num_pairs
        keep_path = spec.keep == "path"
        stream = "teacher-pairs" if purpose == "training" else f"{purpose}-teacher-pairs"
        parts = {"teacher": teacher.key, "sampler": canonical(spec.sampler), "num_pairs": num_pairs}
        if keep_path:  # only then: the keys of endpoint pairs cached before ``keep`` existed stay
            parts["keep"] = spec.keep
        key = spec_hash(parts if purpose == "training" else {**parts, "purpose": purpose})
        path = self.store.path("pairs", f"{teacher.key}__{key}.pt")
        if path.is_file():
            data = torch.load(path, map_location="cpu", weights_only=True)
            return Pairs(data["z_0"], data["z_1"], {**json.loads(data["stats"]), "reused": True},
                         data.get("path"), data.get("times"))
        built = build(teacher, device, self.store)
        self.load_weights(teacher, built.network, device)
        if keep_path:
            check_path_size(num_pairs, spec.sampler.params["steps"], built.space.shape)
        solver_cls = reg.SOLVERS.get(spec.sampler.solver)
        solver = solver_cls(solver_cls.Params.model_validate(spec.sampler.params))
        z_0 = built.dataset.sample_source(num_pairs, generator(job.seed, stream))
        counter = NFECounter(built.network)
        built.network.eval()
        start = time.perf_counter()
        with torch.no_grad(), autocast(teacher.hardware, device):
            solution = built.method.sample(counter, z_0.to(device, built.dtype), solver,
                                           generator(job.seed, f"{stream}-method", device), record=keep_path)
        z_1 = solution.x.detach().to("cpu", torch.float32)
        if not torch.isfinite(z_1).all():
            raise RuntimeError(f"teacher {teacher.label} generated non-finite pairs")
        stats = {"teacher_key": teacher.key, "teacher": teacher.method.name, "sampler": spec.sampler.name,
                 "num_pairs": num_pairs, "nfe": counter.nfe(num_pairs),
                 "seconds": time.perf_counter() - start, "reused": False}
        data = {"z_0": z_0, "z_1": z_1}
        if keep_path:
            data["path"], data["times"] = recorded_path(solution, teacher.label)
            stats["keep"] = "path"
            stats["path_shape"] = list(data["path"].shape)
        write_atomic(path, lambda f: torch.save({**data, "stats": json.dumps(stats)}, f))
        return Pairs(z_0, z_1, stats, data.get("path"), data.get("times"))

    def write(self, job: EvalJob, status: str, metrics: dict, measurements: dict, train_stats: dict,
               error: str | None = None, artefacts: dict | None = None) -> None:
        if status == "failed" and cancelled():
            # the failure is the cancellation's doing (e.g. an import it cut short): no record,
            # so the next run redoes this one
            raise KeyboardInterrupt(f"cancelled; {job.label} is left for the next run")
        if not self.writes:
            return
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
            "environment": {**environment(job.train.hardware.device), "concurrent_runs": self.concurrency,
                            **({"threads_choice": self.threads_choice} if self.threads_choice else {})},
            "artefacts": artefacts or {},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(record_path(self.results_dir, job.key, job.label), record)


def check_path_size(num_pairs: int, steps: int, shape: tuple[int, ...]) -> None:
    """Refuse, before the teacher runs, trajectories larger than MAX_PATH_VALUES values."""
    values = num_pairs * (steps + 1) * math.prod(shape)
    if values > MAX_PATH_VALUES:
        raise ValueError(f"teacher.keep: path would store num_pairs x (steps + 1) x dims = {num_pairs} x {steps + 1} "
                         f"x {math.prod(shape)} = {values} float32 values, more than {MAX_PATH_VALUES} "
                         f"({MAX_PATH_VALUES * 4 / 1e9:.2f} GB, harness.limits.MAX_PATH_VALUES); lower "
                         "teacher.num_pairs or the teacher sampler's steps")


def recorded_path(solution: Solution, label: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(path (N, T+1, *dims) float32 on the CPU, times (T+1,) float64) of a recorded solve."""
    if not solution.trajectory or len(solution.trajectory) != len(solution.times):
        raise RuntimeError(f"teacher {label} recorded {len(solution.trajectory)} states at {len(solution.times)} "
                           "times: keep: path needs its sampler to record the whole trajectory")
    path = torch.stack([x.detach().to("cpu", torch.float32) for x in solution.trajectory], dim=1)
    if not torch.isfinite(path).all():
        raise RuntimeError(f"teacher {label} recorded non-finite states")
    return path, torch.tensor(solution.times, dtype=torch.float64)


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}\n" + "".join(traceback.format_exception(err)[-6:])
