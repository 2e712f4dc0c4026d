"""A/A noise: how much the same suite, run again with the same code, moves each metric.

``flowgauge calibrate SUITE --repeats R --results DIR`` runs the suite R times, the first
into DIR (which then serves as a baseline) and the others into
``DIR/calibration/repeat-<i>``, each training and evaluating afresh. For every run (dataset,
method, sampler, seed) and metric it takes the differences between every two repeats:

- quality metrics and counts: relative, (v_i − v_j) / |mean|;
- timings and memory (``compare.is_timing``): log ratios, log(v_i / v_j).

A metric's **noise** is the root mean square of those differences over all its runs: the
size of the change that an unchanged rerun produces, which is exactly what the gate sees
(a difference between two runs). ``max`` is the largest one seen. ``flowgauge compare``
scales it by the gate's ``k`` into its threshold, so with k = 3 an A/A change is flagged
only when it is three times the typical one; the self-check compares every repeat with the
first under those thresholds and reports what the gate would have said.

On a deterministic CPU run a quality metric's noise is exactly 0 (the same seeds give the
same numbers); its threshold then comes from the suite's tolerance, which must also cover
what another machine's arithmetic changes.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timezone
from pathlib import Path

from harness.compare import NOISE_FORMAT, compare, is_timing, run_identity, timed_under_load
from harness.spec import GateSpec
from harness.statistics import root_mean_square

REPEAT_DIR = "calibration"


def repeat_dirs(results: Path, repeats: int) -> list[Path]:
    """Where each repeat's records go: the first into ``results`` itself."""
    return [results] + [results / REPEAT_DIR / f"repeat-{i}" for i in range(2, repeats + 1)]


def _difference(metric: str, a: float, b: float) -> float | None:
    if not (math.isfinite(a) and math.isfinite(b)):
        return None
    if is_timing(metric):
        return math.log(a / b) if a > 0 and b > 0 else None
    scale = abs(a + b) / 2
    if scale == 0:
        return 0.0 if a == b else None
    return (a - b) / scale


def measure_noise(dirs: list[Path]) -> dict:
    """The noise figures of repeats of one suite (see the module docstring)."""
    from harness.results import suite_records

    runs: list[dict[tuple, dict]] = []
    for d in dirs:
        records, _ = suite_records(d)
        runs.append({run_identity(r): r for r in records if r.get("status") == "ok"})
    shared = set.intersection(*(set(r) for r in runs)) if runs else set()
    per_metric: dict[str, list[float]] = {}
    busy: dict[str, int] = {}
    for ident in sorted(shared):
        names = set.intersection(*(set(run[ident].get("metrics") or {}) for run in runs))
        for metric in sorted(names):
            values = []
            for run in runs:
                record = run[ident]
                v = (record.get("metrics") or {}).get(metric)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    values.append(float(v))
                if is_timing(metric) and timed_under_load(record, metric):
                    busy[metric] = busy.get(metric, 0) + 1
            if len(values) < len(runs):
                continue
            for a, b in itertools.combinations(values, 2):
                if (d := _difference(metric, a, b)) is not None:
                    per_metric.setdefault(metric, []).append(d)
    metrics = {}
    for metric, diffs in sorted(per_metric.items()):
        metrics[metric] = {
            "kind": "timing (log ratio)" if is_timing(metric) else "relative difference",
            "noise": root_mean_square(diffs),
            "max": max(abs(d) for d in diffs),
            "pairs": len(diffs),
            "busy_records": busy.get(metric, 0),
        }
    return {"format": NOISE_FORMAT, "version": 1, "repeats": len(dirs), "runs": len(shared),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "repeat_dirs": [str(d) for d in dirs], "metrics": metrics}


def self_check(dirs: list[Path], noise: dict, gate: GateSpec) -> list[dict]:
    """What the gate says of each repeat against the first, with these noise figures."""
    checks = []
    for d in dirs[1:]:
        result = compare(dirs[0], d, gate, noise, "A/A self-check")
        checks.append({"candidate": str(d), "exit_status": result.exit_status, "counts": result.counts(),
                       "problems": result.problems[:5]})
    return checks


def render_noise(document: dict, k: float) -> str:
    """The noise figures as a markdown table, with the thresholds they give at ``k``."""
    lines = [(f"A/A noise over {document['repeats']} repeats of {document['runs']} runs "
             "(root mean square of the differences between two repeats; timings as log ratios):"), "",
             "| metric | kind | noise | largest | pairs | busy records | k × noise |", "|---|---|---|---|---|---|---|"]
    for metric, m in document["metrics"].items():
        lines.append(f"| {metric} | {m['kind']} | {100 * m['noise']:.3g} % | {100 * m['max']:.3g} % | {m['pairs']} | "
                     f"{m['busy_records']} | {100 * k * m['noise']:.3g} % |")
    for check in document.get("self_check", []):
        counts = ", ".join(f"{n} {v}" for v, n in check["counts"].items() if n)
        lines.append(f"\nSelf-check: {check['candidate']} against the first repeat: exit {check['exit_status']} "
                     f"({counts})")
    return "\n".join(lines) + "\n"
