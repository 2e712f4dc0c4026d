"""What a run plan will cost before anything runs (``flowgauge run SUITE --estimate``).

Counts the trainings and evaluations, those already done in the results folder, the total
network evaluations (NFE per sample × samples) and the expected time, taken from earlier
records of the same run keys (in the results folder and any other folder named) where they
exist. A fixed-step sampler's NFE follows from its spec; an adaptive one's is known only
from an earlier record, else the total is a lower bound.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from harness import registry as reg
from harness.plan import RunPlan


@dataclass
class Estimate:
    trainings: int = 0
    trainings_done: int = 0
    evaluations: int = 0
    evaluations_done: int = 0
    nfe: float = 0.0
    nfe_unknown: int = 0  # evaluations whose NFE is not known before they run
    seconds: float = 0.0
    seconds_unknown: list[str] = field(default_factory=list)  # what has no earlier record

    def text(self) -> str:
        nfe = f"{self.nfe:,.0f}" + (f" + {self.nfe_unknown} evaluation(s) of adaptive NFE" if self.nfe_unknown else "")
        unknown = len(self.seconds_unknown)
        time = f"{self.seconds / 60:,.1f} min" + (f" + {unknown} step(s) with no earlier record" if unknown else "")
        return (f"trainings: {self.trainings} ({self.trainings_done} already trained or not needed)\n"
                f"evaluations: {self.evaluations} ({self.evaluations_done} already recorded)\n"
                f"network evaluations still to run: {nfe}\n"
                f"expected time, summed over runs from earlier records of the same keys (training and sampling, "
                f"on the machine that made them; --workers divides it): {time}")


def earlier_records(folders: list[Path], statuses: tuple[str, ...] = ("ok",)) -> dict[str, dict]:
    """Records of ``statuses`` by key, from every ``records/`` folder named (later folders win)."""
    found: dict[str, dict] = {}
    for folder in folders:
        for path in sorted((Path(folder) / "records").glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and record.get("status") in statuses and "key" in record:
                found[record["key"]] = record
    return found


def fixed_nfe(sampler) -> float | None:
    """NFE per sample of a fixed-step sampler from its spec (steps × evaluations per step);
    None for an adaptive or data-dependent one."""
    solver = reg.SOLVERS.get(sampler.solver)
    steps = sampler.params.get("steps", getattr(solver.Params.model_fields.get("steps"), "default", None))
    if getattr(solver, "nfe_convention", "counted") == "counted" or steps is None:
        return None
    return float(steps * getattr(solver, "evals_per_step", 1))


def estimate(plan: RunPlan, results: Path, also: list[Path] | None = None) -> Estimate:
    # finished in this folder: a resumed run skips them (a failed one is redone)
    done = earlier_records([results], ("ok", "diverged", "not applicable"))
    records = {**earlier_records(also or []), **earlier_records([results])}
    by_train: dict[str, dict] = {}
    for record in records.values():
        by_train.setdefault(record.get("train_key", ""), record)
    est = Estimate()
    for job in plan.trainings:
        est.trainings += 1
        evals = plan.evals[job.key]
        if (results / "models" / f"{job.key}.pt").is_file() or all(e.key in done for e in evals):
            est.trainings_done += 1
        elif (earlier := by_train.get(job.key)) is not None and earlier["train"].get("train_s") is not None:
            est.seconds += earlier["train"]["train_s"]
        else:
            est.seconds_unknown.append(f"training {job.label}")
        for e in evals:
            est.evaluations += 1
            if e.key in done:
                est.evaluations_done += 1
                continue
            earlier = records.get(e.key)
            nfe = (earlier or {}).get("measurements", {}).get("nfe") or fixed_nfe(e.sampler)
            if nfe is None:
                est.nfe_unknown += 1
            else:
                est.nfe += nfe * e.budget.num_samples
            batches = (earlier or {}).get("measurements", {}).get("batches") or {}
            if batches.get("median_s") is not None:
                est.seconds += batches["median_s"] * batches["count"]
            else:
                est.seconds_unknown.append(f"evaluation {e.label}")
    return est

