"""``flowgauge compare BASELINE CANDIDATE``: the regression gate.

Records of the two results folders are matched by what they ran: dataset, method, sampler
and seed (their keys also hash the code and the spec, which is what a candidate changes).
Every metric is compared in its own direction (``leaderboard.badness``: lower is better,
higher is better, or nearer a target):

- **Quality metrics and counts** (w2, FID, NFE, ...): per-seed differences candidate −
  baseline, oriented so that positive is worse, paired by seed (paired t, ``statistics``);
  with one seed there is no interval, so no change can be significant. A run whose seeds
  do not overlap at all between the folders is compared unpaired (Welch's t on the two
  means); some seeds of the baseline missing from the candidate is a missing run.
- **Timings and memory** (latency, throughput, training time and rate, memory): per-seed
  log ratios candidate / baseline, shown as a ratio with its interval, and compared only
  between records measured on the same hardware. A timing that either side took while
  other processes loaded the machine (``measure.OtherLoad``) is reported as *under load*,
  never as a regression.

A change is **regressed** or **improved** only when it is both practically large, beyond
the threshold max(tolerance, k × the A/A noise that ``flowgauge calibrate`` measured), and
statistically supported, its 95 % interval excluding no change. Larger than the threshold
without that support it is **not significant**; within it, **unchanged**. Tolerances come
from the baseline suite's ``gate`` (see ``spec.GateSpec``), then the command line.

Exit status: 0 nothing regressed, 1 a regression, 2 cannot compare (runs of the baseline
missing from the candidate, a metric whose pipeline, data or evaluation budget differ, or
timings from different hardware unless ``timings: skip``). A cannot-compare takes
precedence: a partial comparison is not a pass.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.leaderboard import TIMING_NEEDS, _flatten, badness, format_mean_std
from harness.metrics import METRICS
from harness.spec import GateSpec, Tolerance
from harness.statistics import Interval, Summary, mean_difference, paired_difference, summarize

EXIT_OK, EXIT_REGRESSED, EXIT_CANNOT_COMPARE = 0, 1, 2
VERDICTS = ("regressed", "improved", "not significant", "under load", "unchanged")
NOISE_FORMAT = "flowgauge.noise"
DEFAULT_QUALITY = Tolerance(relative=0.01)  # 1 %: below what any table here would report as a change
DEFAULT_TIMING = Tolerance(relative=0.10)   # asv's default factor, 1.1
ENVIRONMENT_HARDWARE = ("cpu", "cpu_count", "device", "gpu", "gpu_name", "cuda_device")
SPEC_HARDWARE = ("device", "devices", "dtype", "threads", "compile", "autocast")
MAX_LISTED = 30  # differences listed per kind before "and N more"


def is_timing(metric: str) -> bool:
    """Timing and memory metrics: hardware-bound, compared as ratios."""
    return metric in METRICS and bool(METRICS.get(metric).needs & TIMING_NEEDS)


def is_training_metric(metric: str) -> bool:
    """Metrics of the training alone (one value per trained model, the same under every sampler)."""
    return metric in METRICS and METRICS.get(metric).needs == {"train"}


@dataclass(frozen=True)
class Threshold:
    """How large an oriented change must be to matter: quality in the metric's units
    (relative parts scale with |baseline mean|), timings in log ratio."""

    tolerance: Tolerance
    noise: float | None  # A/A noise: relative RMS difference (quality) or RMS log ratio (timings)
    k: float

    def value(self, timing: bool, base_mean: float) -> float:
        noise = self.k * (self.noise or 0.0)
        if timing:
            return max(math.log1p(self.tolerance.relative), noise)
        scale = abs(base_mean)
        return max(self.tolerance.absolute, self.tolerance.relative * scale, noise * scale)

    def describe(self, timing: bool) -> str:
        parts = [f"{100 * self.tolerance.relative:g} %"] if self.tolerance.relative else []
        if self.tolerance.absolute and not timing:
            parts.append(f"{self.tolerance.absolute:g}")
        if self.noise:
            parts.append(f"{self.k:g} × noise {100 * self.noise:.2g} %")
        return "max(" + ", ".join(parts) + ")" if len(parts) > 1 else (parts[0] if parts else "0")


@dataclass
class Change:
    """One metric of one (dataset, method, sampler) over its seeds."""

    dataset: str
    method: str
    sampler: str
    metric: str
    timing: bool
    base: Summary | None
    cand: Summary | None
    estimate: float | None  # oriented: positive is worse (quality: units; timings: log ratio)
    interval: Interval | None  # of the oriented change
    threshold: float
    threshold_text: str
    verdict: str
    note: str = ""

    @property
    def run(self) -> str:
        return f"{self.dataset} / {self.method} / {self.sampler}"

    def change_text(self, precision: int = 3) -> str:
        if self.estimate is None or self.base is None or self.cand is None:
            return self.note or "–"
        if self.timing:
            ratio = self.cand.mean / self.base.mean if self.base.mean else math.inf
            return f"×{ratio:.3g}"
        delta = self.cand.mean - self.base.mean
        rel = f" ({100 * delta / abs(self.base.mean):+.{precision}g} %)" if self.base.mean else ""
        return f"{delta:+.{precision}g}{rel}"

    def interval_text(self) -> str:
        if self.interval is None:
            return "–"
        if self.timing:  # oriented log ratio back to a ratio candidate / baseline
            sign = -1.0 if _higher_is_better(self.metric) else 1.0
            lo, hi = sorted((math.exp(sign * self.interval.low), math.exp(sign * self.interval.high)))
            return f"×[{lo:.3g}, {hi:.3g}]"
        sign = -1.0 if _higher_is_better(self.metric) else 1.0
        lo, hi = sorted((sign * self.interval.low, sign * self.interval.high))
        return f"[{lo:+.3g}, {hi:+.3g}]"


def _higher_is_better(metric: str) -> bool:
    return metric in METRICS and METRICS.get(metric).higher_is_better


@dataclass
class Comparison:
    baseline: Path
    candidate: Path
    changes: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why some things cannot be compared
    notes: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)  # what the candidate changed (context)
    matched: int = 0
    new_runs: list[str] = field(default_factory=list)
    k: float = 3.0
    noise_source: str | None = None

    def counts(self) -> dict[str, int]:
        return {v: sum(c.verdict == v for c in self.changes) for v in VERDICTS}

    @property
    def exit_status(self) -> int:
        if self.problems:
            return EXIT_CANNOT_COMPARE
        return EXIT_REGRESSED if any(c.verdict == "regressed" for c in self.changes) else EXIT_OK

    @property
    def outcome(self) -> str:
        return {EXIT_OK: "PASS", EXIT_REGRESSED: "REGRESSED", EXIT_CANNOT_COMPARE: "CANNOT COMPARE"}[self.exit_status]


# reading ---------------------------------------------------------------------------------

def run_identity(record: dict) -> tuple[str, str, str, int]:
    return record["dataset"], record["method"], record["sampler"], int(record["seed"])


def _label(identity: tuple) -> str:
    dataset, method, sampler, seed = identity
    return f"{dataset}/{method}/{sampler}/seed{seed}"


def _records(results_dir: Path) -> dict[tuple, dict]:
    from harness.errors import SpecError
    from harness.results import suite_records

    if not (results_dir / "records").is_dir():
        raise SpecError(f"no records folder in {results_dir} (expected {results_dir / 'records'}/*.json)")
    records, _ = suite_records(results_dir)
    return {run_identity(r): r for r in records}


def read_noise(path: Path) -> dict:
    """A noise file written by ``flowgauge calibrate``; a SpecError naming it when unreadable."""
    from harness.errors import SpecError

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SpecError(f"{path}: not a readable noise file ({e})") from None
    if not isinstance(document, dict) or document.get("format") != NOISE_FORMAT or not isinstance(
            document.get("metrics"), dict):
        raise SpecError(f"{path}: not a flowgauge noise file (expected \"format\": \"{NOISE_FORMAT}\", written by "
                        "`flowgauge calibrate`)")
    return document


def gate_of(results_dir: Path) -> GateSpec:
    """The gate of the suite stored with ``results_dir`` (defaults when it has none)."""
    from harness.results import read_suite

    suite = read_suite(results_dir, quiet=True) or {}
    return GateSpec.model_validate(suite.get("gate") or {})


def tolerance_for(metric: str, gate: GateSpec) -> Tolerance:
    if metric in gate.tolerances:
        return gate.tolerances[metric]
    if "*" in gate.tolerances:
        return gate.tolerances["*"]
    return DEFAULT_TIMING if is_timing(metric) else DEFAULT_QUALITY


# comparing -------------------------------------------------------------------------------

def _oriented(metric: str, timing: bool, base: float, cand: float) -> float | None:
    """Positive when the candidate is worse: a difference of badness, or a log ratio."""
    if not (math.isfinite(base) and math.isfinite(cand)):
        return None
    if timing:
        if base <= 0 or cand <= 0:
            return None
        log_ratio = math.log(cand / base)
        return -log_ratio if _higher_is_better(metric) else log_ratio
    return badness(metric, cand) - badness(metric, base)


def _interval(pairs: dict[int, tuple[float, float]], metric: str,
              timing: bool) -> tuple[float | None, Interval | None]:
    """The mean oriented change over the seeds both sides ran and its paired t interval
    (None for one seed: there is no spread to test against)."""
    diffs = [d for b, c in pairs.values() if (d := _oriented(metric, timing, b, c)) is not None]
    if not diffs:
        return None, None
    return sum(diffs) / len(diffs), paired_difference(diffs)


def _verdict(estimate: float | None, interval: Interval | None, threshold: float, under_load: bool) -> str:
    if estimate is None:
        return "unchanged"
    if abs(estimate) <= threshold:
        return "unchanged"
    if under_load:
        return "under load"
    if interval is None or interval.low <= 0 <= interval.high:
        return "not significant"
    return "regressed" if estimate > 0 else "improved"


def _metric_value(record: dict, metric: str) -> float | None:
    value = (record.get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def timed_under_load(record: dict, metric: str) -> bool:
    """Whether the timing behind ``metric`` (the training's or the evaluation's) was taken
    on a busy machine (``measure.OtherLoad``)."""
    from harness.measure import busy_timing

    part = record.get("train") if is_training_metric(metric) else record.get("measurements")
    return busy_timing((part or {}).get("load"))


def _hardware(record: dict) -> dict[str, Any]:
    env = record.get("environment") or {}
    spec = ((record.get("spec") or {}).get("hardware")) or {}
    return {**{f"environment.{k}": env.get(k) for k in ENVIRONMENT_HARDWARE if k in env},
            **{f"hardware.{k}": spec.get(k) for k in SPEC_HARDWARE if k in spec}}


def _protocol_problems(label: str, base: dict, cand: dict) -> list[str]:
    """Differences that make every number of a run incomparable: the data and the
    evaluation budget (sample count, repeats)."""
    problems = []
    bs, cs = base.get("spec") or {}, cand.get("spec") or {}
    for part, what in ((("dataset",), "dataset spec"), (("budget", "eval"), "evaluation budget")):
        b, c = bs, cs
        for key in part:
            b, c = (b or {}).get(key), (c or {}).get(key)
        if b != c:
            diff = _diff_lines(_flatten(b or {}), _flatten(c or {}), 3)
            problems.append(f"{label}: the {what} differs ({'; '.join(diff)})")
    return problems


def _metric_problem(metric: str, base: dict, cand: dict) -> str | None:
    """Why one metric of a run cannot be compared: its parameters or its pipeline differ."""
    def params(record: dict) -> Any:
        for m in (record.get("spec") or {}).get("metrics") or []:
            if isinstance(m, dict) and m.get("name") == metric:
                return m.get("params")
        return None

    if params(base) != params(cand):
        return f"the parameters of {metric} differ ({params(base)} vs {params(cand)})"
    bp = ((base.get("measurements") or {}).get("provenance") or {}).get(metric)
    cp = ((cand.get("measurements") or {}).get("provenance") or {}).get(metric)
    if bp != cp:
        diff = _diff_lines(_flatten(bp or {}), _flatten(cp or {}), 3)
        return f"the pipeline of {metric} differs ({'; '.join(diff)})"
    return None


def _diff_lines(a: dict[str, str], b: dict[str, str], limit: int = MAX_LISTED) -> list[str]:
    keys = sorted(set(a) | set(b))
    lines = [f"{k}: {a.get(k, '(absent)')} → {b.get(k, '(absent)')}" for k in keys if a.get(k) != b.get(k)]
    return lines[:limit] + ([f"and {len(lines) - limit} more"] if len(lines) > limit else [])


def _what_changed(pairs: list[tuple[dict, dict]]) -> list[str]:
    """Per method: the spec, code and commit differences of its first matched run (the
    context of a comparison, never a reason to refuse it)."""
    lines, seen = [], set()
    for base, cand in pairs:
        if base["method"] in seen:
            continue
        seen.add(base["method"])
        parts = {}
        for name in ("method", "sampler", "hardware"):
            parts[f"spec.{name}"] = ((base.get("spec") or {}).get(name), (cand.get("spec") or {}).get(name))
        parts["spec.budget.train"] = (((base.get("spec") or {}).get("budget") or {}).get("train"),
                                      ((cand.get("spec") or {}).get("budget") or {}).get("train"))
        parts["code"] = (base.get("code_modules"), cand.get("code_modules"))
        diffs = []
        for prefix, (b, c) in parts.items():
            diffs += _diff_lines(_flatten(b or {}, prefix), _flatten(c or {}, prefix), 8)
        if diffs:
            lines.append(f"{base['method']}: " + "; ".join(diffs))
    return lines[:MAX_LISTED] + ([f"and {len(lines) - MAX_LISTED} more methods"] if len(lines) > MAX_LISTED else [])


def _commit(records: dict[tuple, dict]) -> str:
    commits = {((r.get("environment") or {}).get("git_commit") or "unknown")[:10]
               + (" (dirty)" if (r.get("environment") or {}).get("git_dirty") else "") for r in records.values()}
    return ", ".join(sorted(commits)) if commits else "no records"


def compare(baseline: Path, candidate: Path, gate: GateSpec | None = None, noise: dict | None = None,
            noise_source: str | None = None, metrics: list[str] | None = None) -> Comparison:
    """Compare two results folders (see the module docstring). ``gate`` defaults to the
    baseline suite's; ``noise`` (a ``flowgauge calibrate`` file) scales the thresholds;
    ``metrics`` restricts the comparison to those metrics."""
    gate = gate or gate_of(baseline)
    base_records, cand_records = _records(baseline), _records(candidate)
    out = Comparison(baseline, candidate, k=gate.k, noise_source=noise_source)
    out.notes.append(f"baseline commit {_commit(base_records)}; candidate commit {_commit(cand_records)}")
    unpaired = _disjoint_seeds(base_records, cand_records)
    missing = sorted(i for i in set(base_records) - set(cand_records) if i[:3] not in unpaired)
    if missing:
        shown = ", ".join(_label(i) for i in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        out.problems.append(f"{len(missing)} run(s) of the baseline are not in the candidate: {shown}")
    out.new_runs = [_label(i) for i in sorted(set(cand_records) - set(base_records)) if i[:3] not in unpaired]
    matched = sorted(set(base_records) & set(cand_records))
    out.matched = len(matched)
    if unpaired:
        out.notes.append(f"{len(unpaired)} (dataset, method, sampler) ran other seeds in the candidate than in the "
                         "baseline: compared unpaired (Welch's t on the two means)")
    if not matched and not unpaired:
        out.problems.append("no run of the baseline is in the candidate (dataset/method/sampler/seed)")
        return out

    noise_metrics = (noise or {}).get("metrics") or {}
    groups: dict[tuple[str, str, str, str], dict[int, tuple[dict, dict]]] = {}
    for run, (bases, cands) in sorted(unpaired.items()):
        out.problems += _protocol_problems("/".join(run), bases[0], cands[0])
        ok_b, ok_c = [r for r in bases if r.get("status") == "ok"], [r for r in cands if r.get("status") == "ok"]
        if len(ok_c) < len(cands) and ok_b:
            out.changes.append(Change(*run, "status", False, None, None, None, None, 0.0, "–", "regressed",
                                      note=f"{len(cands) - len(ok_c)} of {len(cands)} candidate seeds did not end ok"))
        if not ok_b or not ok_c:
            continue
        for metric in (m for m in (ok_b[0].get("metrics") or {}) if m in (ok_c[0].get("metrics") or {})):
            if (metrics is not None and metric not in metrics) or is_timing(metric):
                continue  # timings are compared only paired, on matching hardware
            if (problem := _metric_problem(metric, ok_b[0], ok_c[0])) is not None:
                out.problems.append(f"{'/'.join(run)}: {problem}")
                continue
            out.changes.append(_unpaired_change(run, metric, ok_b, ok_c, gate, noise_metrics))
    hardware_differs: set[str] = set()
    for ident in matched:
        base, cand = base_records[ident], cand_records[ident]
        label = _label(ident)
        out.problems += _protocol_problems(label, base, cand)
        if base.get("status") == "ok" and cand.get("status") != "ok":
            out.changes.append(Change(ident[0], ident[1], f"{ident[2]} (seed {ident[3]})", "status", False, None, None,
                                      None, None, 0.0, "–", "regressed",
                                      note=f"{cand.get('status')}: {(cand.get('error') or '')[:120]}".rstrip(": ")))
            continue
        if base.get("status") != "ok":
            out.notes.append(f"{label}: the baseline run is {base.get('status')}; not compared")
            continue
        if _hardware(base) != _hardware(cand):
            hardware_differs.add("; ".join(_diff_lines(_hardware(base), _hardware(cand), 4)))
        names = [m for m in (base.get("metrics") or {}) if m in (cand.get("metrics") or {})]
        for metric in names:
            if metrics is not None and metric not in metrics:
                continue
            if is_timing(metric) and gate.timings == "skip":
                continue
            if (problem := _metric_problem(metric, base, cand)) is not None:
                out.problems.append(f"{label}: {problem}")
                continue
            sampler = "(training)" if is_training_metric(metric) else ident[2]
            groups.setdefault((ident[0], ident[1], sampler, metric), {})[ident[3]] = (base, cand)

    if hardware_differs and gate.timings == "compare" and any(is_timing(g[3]) for g in groups):
        out.problems.append("timings were measured on different hardware (" + " | ".join(sorted(hardware_differs))
                            + "); compare them on one machine, or leave them out with --timings skip")
        groups = {g: v for g, v in groups.items() if not is_timing(g[3])}
    elif gate.timings == "skip":
        out.notes.append("timing and memory metrics left out (timings: skip)")

    for (dataset, method, sampler, metric), by_seed in sorted(groups.items()):
        timing = is_timing(metric)
        pairs = {}
        under_load = False
        for seed, (base, cand) in by_seed.items():
            b, c = _metric_value(base, metric), _metric_value(cand, metric)
            if b is None or c is None:
                continue
            pairs[seed] = (b, c)
            under_load = under_load or (timing and (timed_under_load(base, metric) or timed_under_load(cand, metric)))
        if not pairs:
            continue
        estimate, interval = _interval(pairs, metric, timing)
        base_summary = summarize([b for b, _ in pairs.values()])
        cand_summary = summarize([c for _, c in pairs.values()])
        noise_value = (noise_metrics.get(metric) or {}).get("noise")
        threshold = Threshold(tolerance_for(metric, gate), noise_value, gate.k)
        limit = threshold.value(timing, base_summary.mean)
        verdict = _verdict(estimate, interval, limit, under_load)
        note = "timed on a busy machine" if under_load else ""
        out.changes.append(Change(dataset, method, sampler, metric, timing, base_summary, cand_summary, estimate,
                                  interval, limit, threshold.describe(timing), verdict, note))
    out.differences = _what_changed([(base_records[i], cand_records[i]) for i in matched])
    return out


def _disjoint_seeds(base: dict[tuple, dict], cand: dict[tuple, dict]) -> dict[tuple, tuple[list[dict], list[dict]]]:
    """(dataset, method, sampler) that both folders ran, on seeds that do not overlap: no
    pairing is possible, and a different seed set is a design, not a missing run."""
    runs: dict[tuple, tuple[list[dict], list[dict]]] = {}
    for records, side in ((base, 0), (cand, 1)):
        for ident, record in records.items():
            runs.setdefault(ident[:3], ([], []))[side].append(record)
    return {run: (b, c) for run, (b, c) in runs.items()
            if b and c and not {r["seed"] for r in b} & {r["seed"] for r in c}}


def _unpaired_change(run: tuple, metric: str, bases: list[dict], cands: list[dict], gate: GateSpec,
                     noise_metrics: dict) -> Change:
    """One metric of a run whose seeds differ between the two folders: the difference of
    the oriented means and its Welch t interval (``statistics.mean_difference``)."""
    b = [v for r in bases if (v := _metric_value(r, metric)) is not None and math.isfinite(v)]
    c = [v for r in cands if (v := _metric_value(r, metric)) is not None and math.isfinite(v)]
    base_summary, cand_summary = summarize(b), summarize(c)
    sb, sc = summarize([badness(metric, v) for v in b]), summarize([badness(metric, v) for v in c])
    estimate = sc.mean - sb.mean
    interval = mean_difference(sc, sb.mean, sb.std, sb.n) if sb.std is not None else None
    threshold = Threshold(tolerance_for(metric, gate), (noise_metrics.get(metric) or {}).get("noise"), gate.k)
    limit = threshold.value(False, base_summary.mean)
    return Change(*run, metric, False, base_summary, cand_summary, estimate, interval, limit,
                  threshold.describe(False), _verdict(estimate, interval, limit, False), "unpaired seeds")


# rendering -------------------------------------------------------------------------------

def _row(c: Change) -> list[str]:
    base = "–" if c.base is None else format_mean_std(c.base.mean, c.base.std)
    cand = "–" if c.cand is None else format_mean_std(c.cand.mean, c.cand.std)
    seeds = "–" if c.base is None else str(c.base.n)
    test = c.interval.test if c.interval is not None else ("one seed: no test" if c.base and c.base.n == 1 else "–")
    return [c.run, c.metric, base, cand, c.change_text(), c.interval_text(), c.threshold_text, seeds, test,
            c.verdict + (f" ({c.note})" if c.note and c.verdict != "regressed" else (f": {c.note}" if c.note else ""))]


HEADERS = ["run (dataset / method / sampler)", "metric", "baseline", "candidate", "change", "95 % interval",
           "threshold", "seeds", "test", "verdict"]


def _md_table(rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(cmp: Comparison) -> str:
    """A summary fit for a pull-request comment: outcome, counts, the changes that matter,
    what differs, and the unchanged rest folded away."""
    counts = cmp.counts()
    lines = [f"## flowgauge compare: {cmp.outcome} (exit {cmp.exit_status})", "",
             f"Baseline `{cmp.baseline}`, candidate `{cmp.candidate}`: {cmp.matched} runs matched by "
             "dataset/method/sampler/seed. A change counts when it exceeds its threshold (the larger of the "
             f"metric's tolerance and {cmp.k:g} × the A/A noise"
             + (f" from `{cmp.noise_source}`" if cmp.noise_source else ", none calibrated")
             + ") and its 95 % interval over seeds excludes no change; timings are ratios candidate / baseline.",
             "", " · ".join(f"**{n}** {v}" for v, n in counts.items()), ""]
    if cmp.problems:
        lines += ["### Cannot compare", ""] + [f"- {p}" for p in cmp.problems[:MAX_LISTED]]
        if len(cmp.problems) > MAX_LISTED:
            lines.append(f"- and {len(cmp.problems) - MAX_LISTED} more")
        lines.append("")
    for verdict, title in (("regressed", "Regressed"), ("improved", "Improved"), ("not significant", "Not significant"),
                           ("under load", "Timed under load (not judged)")):
        rows = [_row(c) for c in cmp.changes if c.verdict == verdict]
        if rows:
            lines += [f"### {title}", "", _md_table(rows), ""]
    if cmp.differences:
        lines += ["### What the candidate changed", ""] + [f"- {d}" for d in cmp.differences] + [""]
    if cmp.new_runs:
        lines += [f"New in the candidate (not compared): {len(cmp.new_runs)} run(s), e.g. {cmp.new_runs[0]}", ""]
    unchanged = [_row(c) for c in cmp.changes if c.verdict == "unchanged"]
    if unchanged:
        lines += [f"<details><summary>Unchanged ({len(unchanged)})</summary>", "", _md_table(unchanged), "",
                  "</details>", ""]
    if cmp.notes:
        lines += [f"_{n}_" for n in cmp.notes]
    return "\n".join(lines).rstrip() + "\n"


def to_json(cmp: Comparison) -> dict:
    """The comparison as data (``--format json``)."""
    def summary(s: Summary | None) -> dict | None:
        return None if s is None else {"mean": s.mean, "std": s.std, "n": s.n}

    return {
        "format": "flowgauge.compare", "version": 1, "outcome": cmp.outcome, "exit_status": cmp.exit_status,
        "baseline": str(cmp.baseline), "candidate": str(cmp.candidate), "matched": cmp.matched, "k": cmp.k,
        "noise": cmp.noise_source, "counts": cmp.counts(), "problems": cmp.problems, "notes": cmp.notes,
        "differences": cmp.differences, "new_runs": cmp.new_runs,
        "changes": [{"dataset": c.dataset, "method": c.method, "sampler": c.sampler, "metric": c.metric,
                     "timing": c.timing, "baseline": summary(c.base), "candidate": summary(c.cand),
                     "oriented_change": c.estimate, "threshold": c.threshold,
                     "interval": None if c.interval is None else
                     {"low": c.interval.low, "high": c.interval.high, "test": c.interval.test},
                     "verdict": c.verdict, "note": c.note} for c in cmp.changes],
    }


def html_blocks(cmp: Comparison) -> list:
    """The summary as ``htmldoc`` blocks (escaped by construction), for ``--html``: the
    outcome, the counts, every change that is not unchanged, the problems and what differs."""
    from harness import htmldoc as h

    counts = cmp.counts()
    blocks: list = [h.Heading(f"flowgauge compare: {cmp.outcome} (exit {cmp.exit_status})", 2),
                    h.Paragraph(" · ".join(f"{n} {v}" for v, n in counts.items()))]
    if cmp.problems:
        blocks += [h.Heading("Cannot compare", 3), h.BulletList(cmp.problems[:MAX_LISTED])]
    shown = [c for c in cmp.changes if c.verdict != "unchanged"]
    if shown:
        blocks.append(h.Table(HEADERS, [_row(c) for c in shown], caption="changes (unchanged ones left out)"))
    if cmp.differences:
        blocks += [h.Heading("What the candidate changed", 3), h.BulletList(cmp.differences)]
    return blocks
