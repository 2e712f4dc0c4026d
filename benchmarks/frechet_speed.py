"""The Fréchet distance at FID's 2048 dimensions: harness.frechet against the
``scipy.linalg.sqrtm`` route, in one process and one run.

Three timings of the same distance between two 2048-d Gaussians (random covariances of
full rank), each the median of ``--repeats`` calls, run in turn:

- ``scipy``: the textbook route, ``sqrtm(Σ₁ Σ₂)`` (what clean-fid and pytorch-fid do);
- ``ours``: :func:`harness.frechet.frechet_distance` from scratch (``eigh`` of Σ₁, then
  ``eigvalsh`` of the symmetric R Σ₂ R);
- ``ours, cached``: :meth:`harness.frechet.Reference.distance` with the reference's
  square root already computed, as every evaluation after the first of a suite does.

It prints the speed ratios against scipy and the relative differences of the values, and
writes them to ``results/benchmarks/frechet_speed.json``. Targets: ``ours, cached`` at
least 10x faster than scipy, the same value to 1e-6 relative.

    python benchmarks/frechet_speed.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.frechet import Reference, frechet_distance


def scipy_route(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    from scipy.linalg import sqrtm

    covmean = np.real(sqrtm(s1 @ s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def timed(fn, repeats: int) -> tuple[float, list[float], float]:
    times, value = [], 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "frechet_speed.json")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    d = args.dim
    a, b = rng.normal(size=(d, 2 * d)), rng.normal(size=(d, 2 * d))
    s1, s2 = a @ a.T / (2 * d), b @ b.T / (2 * d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    reference = Reference(mu1, s1)
    _ = reference.sqrt_cov  # computed once, as a suite's first evaluation does
    rows = {
        "scipy": timed(lambda: scipy_route(mu1, s1, mu2, s2), args.repeats),
        "ours": timed(lambda: frechet_distance(mu1, s1, mu2, s2), args.repeats),
        "ours, cached": timed(lambda: reference.distance(mu2, s2), args.repeats),
    }
    base_time, _, base_value = rows["scipy"]
    from harness.environment import dirty_files

    commit = os.popen(f"git -C {REPO} rev-parse HEAD 2>/dev/null").read().strip() or None
    result = {"dim": d, "repeats": args.repeats, "git_commit": commit, "git_dirty_files": dirty_files(REPO),
              "machine": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "numpy": np.__version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": {}}
    print(f"Fréchet distance, d = {d}, median of {args.repeats} calls each")
    for name, (median, times, value) in rows.items():
        speedup = base_time / median
        rel = abs(value - base_value) / abs(base_value)
        result["rows"][name] = {"median_s": median, "times_s": times, "value": value, "speedup_vs_scipy": speedup,
                                "relative_difference": rel}
        print(f"  {name:14s} {median:8.3f} s   {speedup:6.1f}x scipy   value {value:.10g}   rel. diff {rel:.1e}")
    cached = result["rows"]["ours, cached"]
    ok = cached["speedup_vs_scipy"] >= 10 and all(r["relative_difference"] <= 1e-6 for r in result["rows"].values())
    result["targets_met"] = ok
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"targets (cached >= 10x, values within 1e-6): {'met' if ok else 'MISSED'}; written to {args.out}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
