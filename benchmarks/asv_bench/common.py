"""What the benchmarks share: the method families, their fixed-size jobs, and a fixed batch.

Every family is resolved from the project's own specs (``specs/``, found from this file, so
that the benchmarks see the checkout's specs whatever the working directory) through the
quickstart suite with overrides: one dataset, one method, one seed, one torch thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "specs"

THREADS = 1  # torch intra-op threads: timings comparable across machines with more cores


@dataclass(frozen=True)
class Family:
    """One method family: a method spec (by name, or inline YAML) on a dataset, the batch
    its training step and its sampling use, and the sampler it samples with."""

    dataset: str
    method: str
    sampler: str
    train_batch: int
    sample_batch: int


# The method families, by the name the benchmarks' ``method`` parameter shows. 2-D families
# train the project's 2-D defaults (MLP 3x64 SELU, batch 256) on moons and sample a fixed
# batch with Euler-8; TARFlow trains the tarflow-digits recipe on 8x8 digits and samples with
# its sequential inverse (KV cache, one token per block pass).
FAMILIES: dict[str, Family] = {
    "icfm": Family("moons", "icfm", "euler-8", 256, 1000),
    "rectified-flow": Family("moons", "rectified-flow", "euler-8", 256, 1000),
    "otcfm": Family("moons", "otcfm", "euler-8", 256, 1000),
    "meanflow": Family("moons", "meanflow", "euler-8", 256, 1000),
    "split-meanflow": Family("moons", "split-meanflow", "euler-8", 256, 1000),
    "tarflow": Family("digits", "{name: tarflow, extends: tarflow-digits, batch_size: 64}", "ar-sequential",
                      64, 16),
}


def load(suite: str, overrides: list[str]) -> Any:
    import harness.metrics  # noqa: F401  registers the metrics
    import implementations  # noqa: F401  registers methods, datasets, solvers, networks, optimisers
    from harness.resolve import load_suite

    return load_suite(suite, overrides, root=SPECS)


def jobs(family: Family) -> tuple[Any, Any]:
    """(the training job, its evaluation job at the family's sampler) of ``family``."""
    from harness.plan import make_plan

    suite = load("quickstart", [
        f"datasets=[{family.dataset}]", f"methods=[{family.method}]", f"samplers=[{family.sampler}]",
        "seeds=[0]", "metrics=[nfe]", "leaderboard.rank_by=nfe",
        f"hardware={{name: cpu-{THREADS}thread, extends: cpu, threads: {THREADS}}}",
    ])
    plan = make_plan(suite)
    train = plan.trainings[0]
    return train, plan.evals[train.key][0]


def built_family(method: str) -> tuple[Family, Any, Any, Any]:
    """(the family, its training job, its evaluation job, the built method) of ``method``:
    the hardware configured, ``THREADS`` torch threads, seeded, as a benchmark's setup needs."""
    import torch

    from harness.building import build, configure
    from harness.seeding import seed_everything

    family = FAMILIES[method]
    train, evaluation = jobs(family)
    device = configure(train.hardware)
    torch.set_num_threads(THREADS)
    seed_everything(0)
    return family, train, evaluation, build(train, device)


def fixed_batch(built: Any, size: int, seed: int = 0) -> Any:
    """A training batch of ``size`` rows, the same every time: source noise, data from the
    training split (or the exact sampler), and classes where the data has them."""
    import torch

    from harness.interfaces import Batch

    gen = torch.Generator().manual_seed(seed)
    space = built.space
    split = space.train_split(gen)
    if split is None:
        return Batch(x_0=space.sample_source(size, gen), x_1=space.sample_target(size, gen))
    rows = torch.randperm(len(split), generator=gen)[:size]
    labels = getattr(space, "labels", None)
    return Batch(x_0=space.sample_source(size, gen), x_1=split[rows],
                 labels=None if labels is None else labels[rows])
