"""GS-Jacobi against sequential inversion of a trained TARFlow/STARFlow, side by side in one
run, at several batch sizes.

Liu & Qin (2025) report 2.5×–5.3× speed-ups of GS-Jacobi over TARFlow's sequential KV-cache
inverse on GPUs, with 256–1024 tokens. Whether the iteration pays depends on the cost of one
block pass: a sequential pass feeds 1 token per row, a Jacobi pass up to N − 1, so the
saving in passes buys time only where a pass's fixed cost (Python, kernel launches)
outweighs its arithmetic: small batches on a CPU, almost any batch on a GPU.

For each batch size B and each trained model named (records of a results folder, whose
models/ holds the weights), the same noise (and classes, for a conditional flow) is inverted
by each sampler, one torch thread, after one untimed call of each; then ``--repeats`` rounds,
each calling every sampler once in a rotated order. Reported per sampler: the median wall
time and the paired ratio sequential / sampler of each round (median, min, max), the block
passes per call, and the largest difference from the sequential samples.

    python benchmarks/gs_jacobi_speed.py --results results/tarflow-digits --suite tarflow-digits \\
        --runs digits/tarflow/seed0 digits-16/starflow/seed0 --batch-sizes 1 16 128 --repeats 11

The JSON goes to ``results/benchmarks/gs_jacobi_speed.json`` (``--out`` changes that).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import harness.metrics  # noqa: E402,F401  registers the metrics
import implementations  # noqa: E402,F401  registers methods, datasets, solvers, networks
from harness import registry as reg  # noqa: E402
from harness.artefacts import ArtefactStore  # noqa: E402
from harness.building import build, configure  # noqa: E402
from harness.plan import make_plan  # noqa: E402
from harness.resolve import load_suite  # noqa: E402
from harness.seeding import generator  # noqa: E402

SAMPLERS = {
    "ar-sequential": ("ar-sequential", {}),
    "ar-jacobi": ("ar-jacobi", {"tolerance": 1e-6}),
    "ar-gs-jacobi-4": ("ar-gs-jacobi", {"groups": 4, "tolerance": 1e-6}),
    "ar-auto": ("ar-auto", {"tolerance": 1e-6}),
    "ar-jacobi-1e-3": ("ar-jacobi", {"tolerance": 1e-3}),
}


def load_run(suite: str, label: str, results: Path, threads: int):
    plan = make_plan(load_suite(suite, [f"hardware={{extends: cpu, threads: {threads}}}"]))
    jobs = {job.label: job for job in plan.trainings}
    if label not in jobs:
        raise SystemExit(f"no run {label} in suite {suite}; runs: {', '.join(jobs)}")
    job = jobs[label]
    # the weights were trained under the suite's own hardware spec: look them up by its key
    original = {j.label: j for j in make_plan(load_suite(suite)).trainings}[label]
    path = ArtefactStore(results).model_path(original.key)
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run the suite into {results} first")
    device = configure(job.hardware)
    built = build(job, device)
    built.network.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return job, built.network.eval(), built


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="results folder of the suite (its models/)")
    parser.add_argument("--suite", default="tarflow-digits")
    parser.add_argument("--runs", nargs="+", default=["digits/tarflow/seed0"], help="dataset/method/seedN labels")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "gs_jacobi_speed.json")
    args = parser.parse_args()

    from harness.environment import environment

    out: dict[str, Any] = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "repeats": args.repeats, "threads": args.threads, "suite": args.suite,
                           "samplers": {k: {"solver": s, "params": p} for k, (s, p) in SAMPLERS.items()
                                        if k in args.samplers},
                           "runs": {}}
    for label in args.runs:
        job, network, built = load_run(args.suite, label, args.results, args.threads)
        method = built.method
        held = built.dataset.held_out_images[:1000].to(built.device, built.dtype)
        with torch.no_grad():
            diagnostics = method.diagnostics(network, held)
        run: dict[str, Any] = {"tokens": network.num_tokens, "blocks": network.num_blocks,
                               "crm_share": [b["crm_share"] for b in diagnostics["gs_jacobi"]["blocks"]],
                               "batch_sizes": {}}
        for b in args.batch_sizes:
            x_0 = built.space.sample_source(b, generator(job.seed, "bench-gs-jacobi")).to(built.device, built.dtype)
            labels = (torch.randint(10, (b,), generator=generator(job.seed, "bench-gs-jacobi-labels"))
                      if method.conditional else None)
            solvers = {}
            for name in args.samplers:
                solver_name, params = SAMPLERS[name]
                cls = reg.SOLVERS.get(solver_name)
                solvers[name] = cls(cls.Params.model_validate(params))
                if hasattr(solvers[name], "calibrate"):
                    solvers[name].calibrate(diagnostics)

            def call(name: str) -> tuple[float, torch.Tensor]:
                extra = {} if labels is None else {"labels": labels}
                t0 = time.perf_counter()
                with torch.no_grad():
                    x = method.sample(network, x_0, solvers[name], generator(job.seed, "bench-method"), **extra).x
                return time.perf_counter() - t0, x

            samples = {name: call(name)[1] for name in args.samplers}  # untimed first call of each
            times: dict[str, list[float]] = {name: [] for name in args.samplers}
            for r in range(args.repeats):
                order = args.samplers[r % len(args.samplers):] + args.samplers[:r % len(args.samplers)]
                for name in order:
                    times[name].append(call(name)[0])
            reference = samples["ar-sequential"] if "ar-sequential" in samples else None
            entry = {}
            for name in args.samplers:
                ratios = ([s / t for s, t in zip(times["ar-sequential"], times[name])]
                          if "ar-sequential" in times else [])
                stats = solvers[name].stats()
                entry[name] = {
                    "median_ms": 1000 * statistics.median(times[name]),
                    "speedup_vs_sequential": ({"median": statistics.median(ratios), "min": min(ratios),
                                               "max": max(ratios)} if ratios else None),
                    "passes_per_call": sum(stats["passes_per_block"]) if stats else None,
                    "passes_per_block": stats["passes_per_block"] if stats else None,
                    "max_abs_gap_vs_sequential": (None if reference is None else
                                                  float((samples[name] - reference).abs().max())),
                }
            run["batch_sizes"][str(b)] = entry
            summary = ", ".join(f"{n} {e['median_ms']:.1f} ms" + (f" ({e['speedup_vs_sequential']['median']:.2f}x)"
                                                                  if e["speedup_vs_sequential"] else "")
                                for n, e in entry.items())
            print(f"{label} B={b}: {summary}", flush=True)
        out["runs"][label] = run
    out["environment"] = environment("cpu")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
