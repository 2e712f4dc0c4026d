"""Expand a resolved suite into a run plan: datasets × methods × seeds trainings, each
evaluated with every sampler. Every job carries its canonical spec and a stable key.

The training key hashes only what changes training (dataset, method, hardware, training
budget, seed, and the fingerprint of the implementation code: see ``harness.codeversion``;
not names or descriptions), so adding a sampler or a metric, or renaming a spec, reuses
the trained model, and editing a method's code retrains it. The record key adds the
evaluation part (with the solver's code) and the names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from harness.codeversion import evaluation_code, training_code
from harness.spec import (
    DatasetSpec,
    EvalBudget,
    HardwareSpec,
    MethodSpec,
    MetricSpec,
    SamplerSpec,
    SuiteSpec,
    TrainBudget,
)

DESCRIPTIVE = {"name", "description", "paper", "claims"}


_CANONICAL: dict[int, tuple[Any, Any]] = {}  # id(frozen spec) -> (the spec, kept alive; its value)


def canonical(obj: Any) -> Any:
    """A JSON value with sorted keys: pydantic models dumped, defaults filled in.

    Specs are frozen, so a spec's value is computed once (a suite of thousands of runs
    asks for the same dataset's value thousands of times); callers must not modify it."""
    if hasattr(obj, "model_dump") and obj.model_config.get("frozen"):
        hit = _CANONICAL.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        value = json.loads(json.dumps(obj.model_dump(mode="json"), sort_keys=True))
        if len(_CANONICAL) > 10_000:
            _CANONICAL.clear()
        _CANONICAL[id(obj)] = (obj, value)
        return value
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    return json.loads(json.dumps(obj, sort_keys=True))


def spec_hash(obj: Any) -> str:
    text = json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _training_part(spec: Any) -> dict:
    return {k: v for k, v in canonical(spec).items() if k not in DESCRIPTIVE}


def sampling_param_names(method: dict) -> frozenset[str]:
    """The params of a method spec that change only how a trained model samples (its
    class's ``sampling_params``, e.g. a guidance weight): a training ignores them, so
    methods that differ only in them share one trained model, and each record keys them."""
    from harness import registry as reg

    if method.get("implementation") not in reg.METHODS:
        return frozenset()
    return frozenset(getattr(reg.METHODS.get(method["implementation"]), "sampling_params", ()))


def sampling_params(method: dict) -> dict:
    """The sampling params a canonical method spec sets (see sampling_param_names)."""
    names = sampling_param_names(method)
    return {k: v for k, v in (method.get("params") or {}).items() if k in names}


def _method_training_part(method: dict) -> dict:
    part = _training_part(method)
    names = sampling_param_names(method)
    if names and part.get("params"):
        part["params"] = {k: v for k, v in part["params"].items() if k not in names}
    return part


def training_spec(dataset: dict, method: dict, hardware: dict, budget: dict, seed: int, code: str) -> dict:
    """What a training key hashes: the training parts of canonical specs (a method's
    sampling params left out), the seed, and the fingerprint of the code that trains."""
    return {
        "dataset": _training_part(dataset),
        "method": _method_training_part(method),
        "hardware": _training_part(hardware),
        "budget": budget,
        "seed": seed,
        "code": code,
    }


def training_key_of(record_spec: dict, code: str) -> str:
    """The training key of a record's run, were it trained by code ``code`` (rekey)."""
    return spec_hash(training_spec(record_spec["dataset"], record_spec["method"], record_spec["hardware"],
                                   record_spec["budget"]["train"], record_spec["seed"], code))


@dataclass(frozen=True)
class TrainJob:
    seed: int
    dataset: DatasetSpec
    method: MethodSpec
    hardware: HardwareSpec
    budget: TrainBudget

    @cached_property  # frozen: computed once (a large suite asks for keys many times)
    def code(self) -> str:
        """The fingerprint of the implementation code this training runs (codeversion)."""
        return training_code(canonical(self.dataset), canonical(self.method))

    @cached_property
    def spec(self) -> dict:
        """The canonical training part: everything that changes the trained weights."""
        return training_spec(canonical(self.dataset), canonical(self.method), canonical(self.hardware),
                             canonical(self.budget), self.seed, self.code)

    @cached_property
    def key(self) -> str:
        return spec_hash(self.spec)

    @property
    def teacher(self) -> TrainJob | None:
        """The run whose trained model generates this run's training pairs, if any."""
        if self.method.teacher is None:
            return None
        return TrainJob(self.seed, self.dataset, self.method.teacher.method, self.hardware, self.budget)

    @property
    def label(self) -> str:
        return f"{self.dataset.name}/{self.method.name}/seed{self.seed}"


@dataclass(frozen=True)
class EvalJob:
    train: TrainJob
    sampler: SamplerSpec
    metrics: tuple[MetricSpec, ...]
    budget: EvalBudget
    suite: str

    @cached_property
    def spec(self) -> dict:
        """The fully resolved spec of this (run, sampler), names and papers included."""
        return {
            "suite": self.suite,
            "seed": self.train.seed,
            "dataset": canonical(self.train.dataset),
            "method": canonical(self.train.method),
            "hardware": canonical(self.train.hardware),
            "sampler": canonical(self.sampler),
            "budget": {"train": canonical(self.train.budget), "eval": canonical(self.budget)},
            "metrics": [canonical(m) for m in self.metrics],
            "code": {"train": self.train.code, "eval": evaluation_code(canonical(self.sampler))},
        }

    @cached_property
    def key(self) -> str:
        return record_key(self.train.key, self.spec)

    @property
    def label(self) -> str:
        return f"{self.train.dataset.name}/{self.train.method.name}/{self.sampler.name}/seed{self.train.seed}"


def record_key(train_key: str, spec: dict) -> str:
    """The key of one (run, sampler) record, from its training key and the full spec that
    the record stores: what changes the evaluation (sampler, evaluation budget, metrics) and
    the names that label its row. Descriptions, papers, claims and the suite's name are
    left out, so editing them keeps finished records; a record can be re-keyed from its
    own contents."""
    return spec_hash({
        "train_key": train_key,
        "names": {part: spec[part]["name"] for part in ("dataset", "method", "sampler")},
        "sampler": _training_part(spec["sampler"]),
        "eval": spec["budget"]["eval"],
        "metrics": spec["metrics"],
        **({"sampling": sampling} if (sampling := sampling_params(spec["method"])) else {}),
        **({"code": spec["code"]} if "code" in spec else {}),  # records made before code was fingerprinted lack it
    })


def config_spec(spec: dict) -> dict:
    """What one row of a leaderboard stands for: a record's spec without its seed, its
    names, descriptions and claims. Records that agree on it differ only by seed, and only
    they are averaged together."""
    parts = {part: _training_part(spec[part]) for part in ("dataset", "method", "hardware", "sampler")}
    return {**parts, "budget": spec["budget"], "metrics": spec["metrics"], "code": spec.get("code")}


def config_key(spec: dict) -> str:
    return spec_hash(config_spec(spec))


@dataclass
class RunPlan:
    suite: SuiteSpec
    trainings: list[TrainJob] = field(default_factory=list)
    evals: dict[str, list[EvalJob]] = field(default_factory=dict)  # by training key
    selected_from: frozenset[str] | None = None  # the full plan's record keys, after select()

    @property
    def num_evals(self) -> int:
        return sum(len(v) for v in self.evals.values())

    @property
    def record_keys(self) -> frozenset[str]:
        """The keys of every record the suite produces (also when ``--only`` ran part of it)."""
        if self.selected_from is not None:
            return self.selected_from
        return frozenset(e.key for evals in self.evals.values() for e in evals)


def select(plan: RunPlan, patterns: list[str]) -> RunPlan:
    """The plan with evaluations only for trainings whose label (``dataset/method/seedN``)
    matches one of the shell-style ``patterns``; the others stay in the plan without
    evaluations, so that a selected student's teacher still trains when it must."""
    from fnmatch import fnmatchcase

    from harness.errors import SpecError

    chosen = {job.key for job in plan.trainings if any(fnmatchcase(job.label, p) for p in patterns)}
    if not any(plan.evals[key] for key in chosen):
        labels = ", ".join(job.label for job in plan.trainings[:3])
        raise SpecError(f"--only {' '.join(patterns)}: no run of the suite matches (labels look like {labels}, ...)")
    return RunPlan(plan.suite, list(plan.trainings), {k: (v if k in chosen else []) for k, v in plan.evals.items()},
                   plan.record_keys)


def sampler_applies(method: MethodSpec, sampler: SamplerSpec) -> bool:
    """Whether ``sampler`` can sample ``method``. A method whose class sets
    ``autoregressive = True`` (a flow inverted block by block) is sampled by the solvers
    that set it too (``ar-*``); every other method by the ODE solvers. A suite evaluates each
    method with the samplers that apply to it."""
    from harness import registry as reg

    return (getattr(reg.METHODS.get(method.implementation), "autoregressive", False)
            == getattr(reg.SOLVERS.get(sampler.solver), "autoregressive", False))


def make_plan(suite: SuiteSpec) -> RunPlan:
    """Trainings in dependency order (a teacher before its students), each once by key."""
    plan = RunPlan(suite)

    def add(job: TrainJob) -> None:
        if job.key in plan.evals:
            return
        if job.teacher is not None:
            add(job.teacher)
        plan.trainings.append(job)
        plan.evals[job.key] = []

    for dataset in suite.datasets:
        for method in suite.methods:
            for seed in suite.seeds:
                job = TrainJob(seed, dataset, method, suite.hardware, suite.budget.train)
                add(job)
                # Two method names with identical training specs share one training.
                plan.evals[job.key].extend(
                    EvalJob(job, sampler, tuple(suite.metrics), suite.budget.eval, suite.name)
                    for sampler in suite.samplers if sampler_applies(method, sampler)
                )
    return plan
