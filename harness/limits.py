"""Upper bounds on every size and count a spec can set.

A spec is data from anyone: a typo (``num_samples: 20000000000``) must be refused by
``validate`` with the field's place, not found out hours later as an out-of-memory kill
or a run that never ends. Each bound is far above what any flowgauge suite uses today
(and states what it protects); raise one here, in one place, when a real use needs it.

The pydantic types below carry the bounds, so a field declared with one of them fails
validation with a message such as ``must be <= 10000000``. Their integers are strict: YAML's
``true`` or ``10.5`` is not a step count (pydantic would read them as 1 and refuse 10.5
only when it has a fraction).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

MAX_POINTS = 10_000_000  # samples, pairs, train splits, validation sets, grids: memory
MAX_BATCH = 1_000_000  # one batch's points: memory
MAX_STEPS = 1_000_000_000  # optimiser steps of one run: time
MAX_SECONDS = 30 * 24 * 3600.0  # one run's training time budget: 30 days
MAX_EPOCHS = 1_000_000.0
MAX_SOLVER_STEPS = 100_000  # fixed steps, or accepted steps of an adaptive solver, per sample
MAX_REPEATS = 1_000  # timed or warm-up sampling calls
MAX_WIDTH = 65_536  # network width or embedding dimension
MAX_DEPTH = 1_024  # network layers or blocks
MAX_ITER = 10_000_000  # iterations of an inner solver (Sinkhorn)
MAX_LIST = 1_000  # entries of a suite's seeds, datasets, methods, samplers, metrics
MAX_RUNS = 100_000  # evaluations (trainings x samplers) in one suite
MAX_THREADS = 1_024
MIN_TOLERANCE = 1e-12  # adaptive solver tolerances: below this float64 cannot follow
# A teacher's recorded trajectories (teacher.keep: path) are held whole, in memory and in one
# cached file: num_pairs × (steps + 1) states, each of the data's dims float32 values.
MAX_PATH_STATES = MAX_POINTS  # states: checked when the spec is read (the dims are not known yet)
MAX_PATH_VALUES = 64 * MAX_POINTS  # float32 values, 2.56 GB: checked before the teacher runs

Points = Annotated[int, Field(strict=True, ge=1, le=MAX_POINTS)]
BatchSize = Annotated[int, Field(strict=True, ge=1, le=MAX_BATCH)]
Steps = Annotated[int, Field(strict=True, ge=1, le=MAX_STEPS)]
StepsOrZero = Annotated[int, Field(strict=True, ge=0, le=MAX_STEPS)]
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
Epochs = Annotated[float, Field(gt=0, le=MAX_EPOCHS)]
SolverSteps = Annotated[int, Field(strict=True, ge=1, le=MAX_SOLVER_STEPS)]
Repeats = Annotated[int, Field(strict=True, ge=1, le=MAX_REPEATS)]
Warmup = Annotated[int, Field(strict=True, ge=0, le=MAX_REPEATS)]
Width = Annotated[int, Field(strict=True, ge=1, le=MAX_WIDTH)]
Depth = Annotated[int, Field(strict=True, ge=1, le=MAX_DEPTH)]
Iterations = Annotated[int, Field(strict=True, ge=1, le=MAX_ITER)]
Threads = Annotated[int, Field(strict=True, ge=1, le=MAX_THREADS)]
Tolerance = Annotated[float, Field(ge=MIN_TOLERANCE, le=1.0)]
Seed = Annotated[int, Field(strict=True, ge=0, lt=2**63)]
