"""What the harness's evaluation path adds to batched sampling: ``harness.evaluation.evaluate``
against a bare loop over the same network and solver, in one process and one run.

Both sides integrate the same source batches with a solver of the same class and
parameters, on one torch thread (CPU) or one GPU:

- ``harness``: :func:`harness.evaluation.evaluate` on a freshly initialised model with
  cost metrics only (``nfe``, ``latency``, ``throughput``), ``warmup: 0``, ``repeats: 1``,
  ``batch_size: B``. It samples the first batch twice (the first call, under the memory
  probe, and the one timed call), then every batch of ``num_samples`` (the first again), and
  does what it always does around them: source blocks from their streams, the NFE counter, the per-batch
  synchronised timing, the copy of each batch to the CPU in float64, the out-of-range check,
  the image grid, the metrics.
- ``bare``: the same source batches (drawn before the clock starts) through
  ``solver.solve(network, x_0)`` under ``torch.no_grad``, the first batch as often as the
  harness samples it, each result kept on the device.

The two alternate, the order flipping every repeat, after one untimed run of each. The
overhead is the ratio of the medians minus one (also given per repeat as a paired ratio).
Target: at most 2 %.

    python benchmarks/sampling_overhead.py --config digits-unet --repeats 9
    python benchmarks/sampling_overhead.py --config mlp-2d --repeats 9

``--profile`` adds one cProfile run of each side and prints where the harness spends time
that the bare loop does not. The JSON goes to ``results/benchmarks/sampling_overhead.json``
(``--out`` changes that), one entry per config, with the machine and the commit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
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
from harness.building import build, configure  # noqa: E402
from harness.evaluation import block_stream, evaluate  # noqa: E402
from harness.measure import synchronize  # noqa: E402
from harness.plan import make_plan  # noqa: E402
from harness.resolve import load_suite  # noqa: E402
from harness.seeding import generator  # noqa: E402

# Sizes where sampling dominates: a U-Net on the 8x8 digits with 16 Euler steps, and the
# 2-D MLP with 100 Euler steps on many points.
CONFIGS = {
    "digits-unet": {
        "dataset": "digits",
        "method": "{name: icfm-unet, extends: icfm, network: {name: unet, channels: 16, channel_mult: [1, 2]}}",
        "sampler": "{name: euler-16, solver: euler, params: {steps: 16}}",
        "num_samples": 1000, "batch_size": 250,
    },
    "mlp-2d": {
        "dataset": "moons",
        "method": "icfm",
        "sampler": "euler-100",
        "num_samples": 50000, "batch_size": 5000,
    },
}

SUITE = """name: sampling-overhead
hardware: {{name: bench, extends: {hardware}, threads: {threads}}}
seeds: [0]
budget:
  train: {{steps: 1}}
  eval: {{num_samples: {num_samples}, batch_size: {batch_size}, warmup: 0, repeats: 1}}
datasets: [{dataset}]
methods: [{method}]
samplers: [{sampler}]
metrics: [nfe, latency, throughput]
leaderboard: {{rank_by: nfe}}
"""


def eval_job(config: dict[str, Any], hardware: str, threads: int, num_samples: int, batch_size: int):
    text = SUITE.format(hardware=hardware, threads=threads, **{**config, "num_samples": num_samples,
                                                                "batch_size": batch_size})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "suite.yaml"
        path.write_text(text)
        suite = load_suite(str(path))
    plan = make_plan(suite)
    train = plan.trainings[0]
    return train, plan.evals[train.key][0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), nargs="+", default=sorted(CONFIGS))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--num-samples", type=int, help="default: the config's")
    parser.add_argument("--batch-size", type=int, help="default: the config's")
    parser.add_argument("--hardware", default="cpu", help="hardware spec to extend (cpu or cuda)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--profile", action="store_true", help="cProfile one run of each side")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "sampling_overhead.json")
    parser.add_argument("--check", action="store_true", help="exit 1 when the overhead exceeds 2 %%")
    args = parser.parse_args()

    from harness.environment import environment

    result: dict[str, Any] = {"repeats": args.repeats, "target_overhead": 0.02,
                              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "configs": {}}
    met = True
    for name in args.config:
        config = CONFIGS[name]
        n = args.num_samples or config["num_samples"]
        bs = args.batch_size or config["batch_size"]
        train_job, job = eval_job(config, args.hardware, args.threads, n, bs)
        device = configure(train_job.hardware)
        built = build(train_job, device)
        network = built.network.eval()
        stats = {"num_params": sum(p.numel() for p in network.parameters())}
        solver_cls = reg.SOLVERS.get(job.sampler.solver)
        solver = solver_cls(solver_cls.Params.model_validate(job.sampler.params))
        budget, seed = job.budget, train_job.seed
        # the harness's source batches: block b from its own stream, batches inside blocks
        batches = []
        for block, start in enumerate(range(0, n, budget.shard_size)):
            x_block = built.space.sample_source(min(budget.shard_size, n - start),
                                                generator(seed, block_stream("eval-source", block)))
            batches += [x_block[i:i + bs].to(device, built.dtype) for i in range(0, len(x_block), bs)]
        # evaluate samples the first batch 1 + warmup + repeats times before its pass (the first
        # call, under the memory probe, then the timing calls): the bare loop does the same
        batches = [batches[0]] * (1 + budget.warmup + budget.repeats) + batches

        def harness_side() -> float:
            synchronize(device)
            start = time.perf_counter()
            status, _, measurements, _ = evaluate(job, built, network, stats, None)
            synchronize(device)
            assert status == "ok", status
            return time.perf_counter() - start

        def bare_side() -> float:
            synchronize(device)
            start = time.perf_counter()
            with torch.no_grad():
                out = [solver.solve(network, x_0).x for x_0 in batches]
            synchronize(device)
            assert len(out) == len(batches)
            return time.perf_counter() - start

        harness_side(), bare_side()  # untimed: allocator, caches, first-call costs
        times: dict[str, list[float]] = {"harness": [], "bare": []}
        for r in range(args.repeats):
            order = (("harness", harness_side), ("bare", bare_side))
            for side, fn in (order if r % 2 == 0 else order[::-1]):
                times[side].append(fn())
        med = {side: statistics.median(t) for side, t in times.items()}
        paired = [h / b - 1 for h, b in zip(times["harness"], times["bare"])]
        overhead = med["harness"] / med["bare"] - 1
        met &= overhead <= result["target_overhead"]
        entry = {"dataset": config["dataset"], "method": job.train.method.name, "network": job.train.method.network,
                 "sampler": job.sampler.name, "solver_params": job.sampler.params, "num_samples": n,
                 "batch_size": bs, "batches_sampled": len(batches), "num_params": stats["num_params"],
                 "device": str(device), "threads": torch.get_num_threads(),
                 "times_s": times, "median_s": med, "overhead": overhead,
                 "paired_overhead_median": statistics.median(paired),
                 "paired_overhead_min_max": [min(paired), max(paired)],
                 "samples_per_s": {side: n / m for side, m in med.items()}}
        print(f"{name}: {job.sampler.name}, {n} samples in batches of {bs} ({len(batches)} sampled), "
              f"{stats['num_params']} parameters, {device}, {torch.get_num_threads()} thread(s)")
        print(f"  harness median {med['harness']:.4f} s   bare median {med['bare']:.4f} s   overhead "
              f"{100 * overhead:+.2f} % (paired median {100 * statistics.median(paired):+.2f} %, "
              f"range {100 * min(paired):+.2f} .. {100 * max(paired):+.2f} %)")
        if args.profile:
            entry["profile"] = profile(harness_side, bare_side)
        result["configs"][name] = entry
        result["environment"] = environment(str(device))
    result["targets_met"] = met
    if args.out.is_file():  # keep the other configs' last results
        old = json.loads(args.out.read_text())
        result["configs"] = {**{k: v for k, v in old.get("configs", {}).items() if k not in result["configs"]},
                             **result["configs"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"target (overhead <= 2 %): {'met' if met else 'MISSED'}; written to {args.out}")
    return 1 if args.check and not met else 0


def profile(harness_side, bare_side, top: int = 15) -> dict[str, Any]:
    """Own time by function in one run of each side; the functions the harness spends more in."""
    import cProfile
    import pstats

    own: dict[str, dict[str, float]] = {}
    for side, fn in (("harness", harness_side), ("bare", bare_side)):
        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        stats = pstats.Stats(prof)
        own[side] = {f"{Path(f).name}:{line}({func})": tt for (f, line, func), (_, _, tt, _, _) in
                     stats.stats.items()}
    extra = {k: v - own["bare"].get(k, 0.0) for k, v in own["harness"].items()}
    ranked = sorted(extra.items(), key=lambda kv: -kv[1])[:top]
    print("  harness time not in the bare loop, by function (own time, s):")
    for k, v in ranked:
        print(f"    {v:8.4f}  {k}")
    return {"extra_own_time_s": dict(ranked), "total_s": {s: sum(v.values()) for s, v in own.items()}}


if __name__ == "__main__":
    sys.exit(main())
