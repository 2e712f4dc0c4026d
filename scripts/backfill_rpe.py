"""One-off migration (issue 8): give records written before the ``rpe`` metric existed
their signed relative path energy, without the trained model, and the key the current
suite gives them.

rpe = (PE − W2²(q0, q1)) / W2²(q0, q1). PE is in the record (``path_energy``; before the
fixed flow grid existed it was computed on the sampler's own steps, so only records of a
100-step Euler sampler, the flow grid's default, qualify). W2²(q0, q1) needs no model: the
evaluation's source and reference samples are regenerated from the record's dataset spec
and seed with the streams the runner uses, and checked by recomputing the record's own
``npe`` from them, which must agree to 1e-12 (else the record is left alone).

    python scripts/backfill_rpe.py SUITE RESULTS_DIR [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import harness.metrics  # noqa: F401  registers the metrics
import implementations  # noqa: F401  registers datasets
from harness import registry as reg
from harness.metrics import normalized_path_energy, wasserstein
from harness.plan import make_plan
from harness.resolve import load_suite
from harness.results import record_path, write_json_atomic
from harness.seeding import generator


def w2_squared_source_reference(record: dict) -> float:
    spec = record["spec"]
    dataset_cls = reg.DATASETS.get(spec["dataset"]["implementation"])
    dataset = dataset_cls(dataset_cls.Params.model_validate(spec["dataset"]["params"]))
    n, seed = spec["budget"]["eval"]["num_samples"], record["seed"]
    source = dataset.sample_source(n, generator(seed, "eval-source")).double().reshape(n, -1).numpy()
    reference = dataset.sample_target(n, generator(seed, "eval-reference")).double().reshape(n, -1).numpy()
    return wasserstein(source, reference, p=2) ** 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("results", type=Path)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    plan = make_plan(load_suite(args.suite))
    by_run = {(e.train.key, e.sampler.name): e for evals in plan.evals.values() for e in evals}
    keys = {e.key for e in by_run.values()}
    migrated = 0
    for path in sorted((args.results / "records").glob("*.json")):
        record = json.loads(path.read_text())
        job = by_run.get((record["train_key"], record["sampler"]))
        if record["key"] in keys or job is None or record["status"] != "ok":
            continue
        old, new = ({k: v for k, v in spec.items() if k not in ("metrics", "suite")} for spec in (record["spec"], job.spec))
        sampler = record["spec"]["sampler"]
        if old != new or sampler["solver"] != "euler" or sampler["params"].get("steps") != 100:
            print(f"skipped {path.name}: its spec differs from the suite's by more than its metrics", file=sys.stderr)
            continue
        missing = [m["name"] for m in job.spec["metrics"] if m["name"] not in record["metrics"]]
        if missing != ["rpe"]:
            print(f"skipped {path.name}: missing {missing}, this migration adds rpe only", file=sys.stderr)
            continue
        pe, npe = record["metrics"]["path_energy"], record["metrics"]["npe"]
        w2_sq = w2_squared_source_reference(record)
        if abs(normalized_path_energy(pe, w2_sq) - npe) > 1e-12:
            print(f"skipped {path.name}: the regenerated samples do not reproduce its npe", file=sys.stderr)
            continue
        rpe = (pe - w2_sq) / w2_sq
        print(f"{path.name}: rpe {rpe:+.6g} (npe {npe:.6g}, W2² {w2_sq:.6g})")
        if args.dry_run:
            continue
        updated = {**record, "key": job.key, "metrics": {**record["metrics"], "rpe": rpe},
                   "spec": {**record["spec"], "metrics": job.spec["metrics"]},
                   "migrated": {"rpe": "backfilled by scripts/backfill_rpe.py from path_energy and the regenerated "
                                       "W2²(q0, q1), which reproduced the record's npe"}}
        write_json_atomic(record_path(args.results, job.key, job.label), updated)
        path.unlink()
        migrated += 1
    print(f"{migrated} record(s) migrated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
