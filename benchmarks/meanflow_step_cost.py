"""MeanFlow's training step against a flow-matching step on the same network, side by side.

Geng et al. (2025) report that MeanFlow's Jacobian-vector product costs about 16 % more
per training step than flow matching (on TPU); issue 14 asks for at most 1.3x here. Both
steps use the same average-velocity network (``interval-mlp`` on 2-D data, ``interval-unet``
on 8x8 digits), the same batch and the same optimiser: flow matching is the linear-path,
sigma = 0 conditional flow matching loss on u(z, t, t) (one forward and one backward pass),
MeanFlow the spec's defaults (one forward-mode JVP through the network for every row, then
the backward pass; 75 % of rows with r = t still pay for the JVP, as in the official code).

Timing: one torch thread; after ``--warmup`` untimed steps of each, ``--rounds`` rounds,
each timing ``--steps`` steps of both methods in alternating order (so that machine noise
hits both alike). Reported per problem: each method's median seconds per step and the
ratio MeanFlow / flow matching of every round (median, min, max).

    python benchmarks/meanflow_step_cost.py --rounds 9 --steps 50

The JSON goes to ``results/benchmarks/meanflow_step_cost.json`` (``--out`` changes that).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import harness.metrics  # noqa: E402,F401  registers the metrics
import implementations  # noqa: E402,F401  registers methods, datasets, solvers, networks
from harness.building import build, build_optimizer, configure  # noqa: E402
from harness.environment import environment  # noqa: E402
from harness.interfaces import Batch  # noqa: E402
from harness.plan import make_plan  # noqa: E402
from harness.resolve import load_suite  # noqa: E402

PROBLEMS = {
    "moons (interval-mlp 64x3, batch 256)": ("moons", "{name: interval-mlp, width: 64, depth: 3, activation: selu}", 256),
    "digits 8x8 (interval-unet 16 ch, batch 128)": ("digits", "{name: interval-unet, channels: 16, channel_mult: [1, 2]}",
                                                    128),
}


def jobs(dataset: str, network: str, batch_size: int) -> dict:
    plan = make_plan(load_suite("quickstart", [
        f"datasets=[{dataset}]", "seeds=[0]", "samplers=[euler-1]", "metrics=[nfe]", "leaderboard.rank_by=nfe",
        "hardware={name: cpu-1thread, extends: cpu, threads: 1}",
        f"methods=[{{name: flow-matching, extends: icfm, params: {{path: {{name: linear, sigma: 0.0}}}}, "
        f"network: {network}, batch_size: {batch_size}}}, "
        f"{{name: meanflow, extends: meanflow, network: {network}, batch_size: {batch_size}}}]"]))
    return {job.method.name: job for job in plan.trainings}


class Stepper:
    """One method's training step on a fixed batch."""

    def __init__(self, job, batch_size: int):
        device = configure(job.hardware)
        self.built = build(job, device)
        self.optimizer = build_optimizer(job, self.built.network)
        space = self.built.space
        gen = torch.Generator().manual_seed(0)
        split = space.train_split(gen)
        x_1 = split[:batch_size] if split is not None else space.sample_target(batch_size, gen)
        self.batch = Batch(x_0=space.sample_source(batch_size, gen), x_1=x_1)
        self.gen = torch.Generator().manual_seed(1)

    def step(self) -> None:
        method, network = self.built.method, self.built.network
        batch = method.prepare(self.batch, self.gen) if hasattr(method, "prepare") else self.batch
        loss = method.loss(network, batch, self.gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def time(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - start) / steps


def measure(name: str, dataset: str, network: str, batch_size: int, args: argparse.Namespace) -> dict:
    steppers = {m: Stepper(job, batch_size) for m, job in jobs(dataset, network, batch_size).items()}
    for s in steppers.values():
        s.time(args.warmup)
    per_step: dict[str, list[float]] = {m: [] for m in steppers}
    ratios = []
    order = list(steppers)
    for r in range(args.rounds):
        this_round = {}
        for m in (order if r % 2 == 0 else order[::-1]):
            this_round[m] = steppers[m].time(args.steps)
            per_step[m].append(this_round[m])
        ratios.append(this_round["meanflow"] / this_round["flow-matching"])
    out = {"problem": name, "num_params": sum(p.numel() for p in steppers["meanflow"].built.network.parameters()),
           "median_s_per_step": {m: statistics.median(v) for m, v in per_step.items()},
           "ratio_meanflow_over_fm": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                      "rounds": ratios}}
    print(f"{name}: flow matching {out['median_s_per_step']['flow-matching'] * 1e3:.2f} ms/step, MeanFlow "
          f"{out['median_s_per_step']['meanflow'] * 1e3:.2f} ms/step, ratio {out['ratio_meanflow_over_fm']['median']:.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {args.rounds} rounds)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=50, help="timed steps of each method per round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "meanflow_step_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [measure(name, *problem, args) for name, problem in PROBLEMS.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "meanflow_step_cost", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"rounds": args.rounds, "steps": args.steps, "warmup": args.warmup, "threads": 1},
        "environment": environment("cpu"), "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
